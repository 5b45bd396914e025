// Device-side building blocks shared by deviation.cu (top-k token selection, retention
// eviction) and sampling.cu (top-k candidates): a block-wide radix select of the k-th largest
// float and an order-preserving block compaction. Not a launcher header: include only from .cu
// files. Every function here must be called by all threads of a block of kSelThreads threads.
#ifndef SEMSHARE_KERNELS_SELECT_IMPL_CUH_
#define SEMSHARE_KERNELS_SELECT_IMPL_CUH_

#include "kernels/common.cuh"

namespace semshare::kernels {

constexpr int kSelThreads = 1024;

// Monotone map float -> uint32 (a > b  <=>  key(a) > key(b)); NaN sorts above +inf. -0.0 maps
// to +0.0's key: they compare equal as floats, so they must tie (the index rule decides, as in
// the CPU sampler's (value desc, index asc) order), not rank -0.0 below +0.0.
__device__ __forceinline__ uint32_t OrderKey(float x) {
  const uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct SelectShared {
  int hist[256];
  int warp_counts[32];
  uint32_t prefix;
  uint32_t mask;
  long long remaining;
  long long ties;  // eligible elements whose key equals the threshold
};

// Exclusive prefix over the block of flag (0/1); returns this thread's offset and writes the
// block total to *total. Uses sh->warp_counts.
__device__ __forceinline__ int BlockExclusiveScan(int flag, SelectShared* sh, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int within = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();
  if (lane == 0) sh->warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < (kSelThreads >> 5); ++w) {
    const int c = sh->warp_counts[w];
    if (w < warp) before += c;
    sum += c;
  }
  *total = sum;
  return before + within;
}

// Finds the key T of the k-th largest eligible score (eligible: forced == null or !forced[i])
// and how many eligible elements equal to T belong to the top k (sh->remaining), plus the
// count of eligible elements equal to T (sh->ties). Requires 1 <= k <= eligible count.
__device__ inline void RadixThreshold(const float* s, const uint8_t* forced, int64_t n, int64_t k,
                                      SelectShared* sh) {
  if (threadIdx.x == 0) {
    sh->prefix = 0;
    sh->mask = 0;
    sh->remaining = k;
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh->hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = sh->prefix, mask = sh->mask;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if (forced != nullptr && forced[i]) continue;
      const uint32_t key = OrderKey(s[i]);
      if ((key & mask) == prefix) atomicAdd(&sh->hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long above = 0;
      int digit = 255;
      for (; digit > 0; --digit) {
        if (above + sh->hist[digit] >= sh->remaining) break;
        above += sh->hist[digit];
      }
      sh->remaining -= above;
      sh->prefix |= static_cast<uint32_t>(digit) << shift;
      sh->mask |= 0xffu << shift;
      sh->ties = sh->hist[digit];
    }
    __syncthreads();
  }
}

// Writes, in ascending index order, the indices i < n with keep(i) to out and returns their
// count (every thread gets it). keep(i, tie_rank_fn) is evaluated per element; tie elements
// are ranked in index order through `tie(i)` flags: an element with tie(i) is kept iff its rank
// among tie elements (ascending, or descending when prefer_low is false) is < ties_needed.
template <typename Keep, typename Tie>
__device__ int64_t BlockCompact(int64_t n, Keep keep, Tie tie, long long ties_needed,
                                long long ties_total, bool prefer_low, int32_t* out,
                                uint8_t* mask_out, SelectShared* sh) {
  int64_t count = 0, tie_seen = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < n;
    const int is_tie = in && tie(i) ? 1 : 0;
    int tie_total = 0;
    const int tie_rank = BlockExclusiveScan(is_tie, sh, &tie_total);
    bool k = in && keep(i);
    if (is_tie) {
      const long long r = tie_seen + tie_rank;
      k = prefer_low ? r < ties_needed : (ties_total - 1 - r) < ties_needed;
    }
    int total = 0;
    const int off = BlockExclusiveScan(k ? 1 : 0, sh, &total);
    if (k && out != nullptr) out[count + off] = static_cast<int32_t>(i);
    if (in && mask_out != nullptr) mask_out[i] = k ? 1 : 0;
    count += total;
    tie_seen += tie_total;
  }
  return count;
}

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_SELECT_IMPL_CUH_
