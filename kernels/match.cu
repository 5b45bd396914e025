// Token matching: E-cache rows, SimHash key packing, candidate selection and best match
// (algorithm note in match.cuh). Written by hand: the candidate rule (band-hit count with
// TokenMatcher's exact cap and tie order, then an arg-max over a sparse subset of a cosine row)
// is no library primitive. The hit histogram is counted with __match_any_sync (one shared
// atomic per distinct hit count in a warp, not 32 colliding ones: most r share hits == 0).
#include <climits>

#include "kernels/common.cuh"
#include "kernels/match.cuh"

namespace semshare::kernels {
namespace {

constexpr int kEcacheThreads = 256;
constexpr int kPackThreads = 256;
constexpr int kMatchThreads = 256;  // a multiple of 32: every warp is full in the r loops
constexpr int kMatchWarps = kMatchThreads / 32;
// Hit counts are cached as bytes in dynamic shared memory for m up to this (32 KiB, inside the
// 48 KiB default with the kernel's ~1 KiB of static shared memory); larger m recomputes them.
constexpr int64_t kMaxCachedHits = 32 * 1024;

__global__ void EcacheKernel(const bf16* __restrict__ table, int64_t vocab, int64_t dim,
                             const int32_t* __restrict__ ids, const float* __restrict__ inv_freq,
                             float* __restrict__ out) {
  __shared__ float red[32];
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  float* o = out + i * dim;
  if (id < 0 || id >= vocab) {  // uniform over the block: no thread reaches BlockSum
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) o[c] = 0.0f;
    return;
  }
  const bf16* row = table + static_cast<int64_t>(id) * dim;
  const int64_t half = dim / 2;
  const double pos = static_cast<double>(i);
  float ss = 0.0f;
  for (int64_t k = threadIdx.x; k < half; k += blockDim.x) {
    const float x0 = __bfloat162float(row[2 * k]), x1 = __bfloat162float(row[2 * k + 1]);
    float y0 = x0, y1 = x1;
    if (inv_freq != nullptr) {
      double s, c;
      sincos(pos * static_cast<double>(inv_freq[k]), &s, &c);
      y0 = static_cast<float>(static_cast<double>(x0) * c - static_cast<double>(x1) * s);
      y1 = static_cast<float>(static_cast<double>(x0) * s + static_cast<double>(x1) * c);
    }
    o[2 * k] = y0;
    o[2 * k + 1] = y1;
    ss += y0 * y0 + y1 * y1;
  }
  const bool odd = (dim & 1) != 0;
  if (odd && threadIdx.x == 0) {  // unrotated last dimension
    const float x = __bfloat162float(row[dim - 1]);
    o[dim - 1] = x;
    ss += x * x;
  }
  const float norm = sqrtf(BlockSum(ss, red));
  if (!(norm > 0.0f)) return;
  const float inv = 1.0f / norm;
  // Each thread rescales the elements it wrote itself (its own global writes are visible).
  for (int64_t k = threadIdx.x; k < half; k += blockDim.x) {
    o[2 * k] *= inv;
    o[2 * k + 1] *= inv;
  }
  if (odd && threadIdx.x == 0) o[dim - 1] *= inv;
}

__global__ void PackKernel(const float* __restrict__ proj, int64_t total, int bands, int bits,
                           uint32_t* __restrict__ codes) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  uint32_t key = 0;
  if (bits > 0) {
    const int64_t i = t / bands, b = t - i * bands;
    const float* p = proj + (i * bands + b) * bits;  // row i, band b of [n, bands * bits]
    for (int j = 0; j < bits; ++j) key |= static_cast<uint32_t>(p[j] > 0.0f) << j;
  }
  codes[t] = key;
}

struct MatchShared {
  uint32_t tcode[kMatchMaxBands];
  int hist[kMatchMaxBands + 1];  // reference tokens by hit count 0..bands
  int warp_counts[kMatchWarps];
  float warp_best[kMatchWarps];
  int warp_best_r[kMatchWarps];
  int level;  // h*: keep hits > level, and `need` of hits == level (0: every hits > 0)
  long long need;
};

__device__ __forceinline__ int Hits(const uint32_t* __restrict__ rc, const uint32_t* tcode,
                                    int bands) {
  int h = 0;
  for (int b = 0; b < bands; ++b) h += rc[b] == tcode[b] ? 1 : 0;
  return h;
}

// (c, r) beats (bc, br): TokenMatcher's order, larger cosine then lower index; r < 0 is "none".
__device__ __forceinline__ bool Better(float c, int r, float bc, int br) {
  return r >= 0 && (br < 0 || c > bc || (c == bc && r < br));
}

// Exclusive prefix count of `flag` over the block in thread order; the block total in *total.
// Call from every thread.
__device__ __forceinline__ int BlockExclusiveCount(int flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int within = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();  // warp_counts may still be read by the previous call
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < kMatchWarps; ++w) {
    const int c = warp_counts[w];
    if (w < warp) before += c;
    sum += c;
  }
  *total = sum;
  return before + within;
}

__global__ void __launch_bounds__(kMatchThreads)
    MatchKernel(const uint32_t* __restrict__ tcodes, const uint32_t* __restrict__ rcodes,
                const float* __restrict__ cos, int64_t ld, int64_t m, int bands, long long cap,
                bool cache, int32_t* __restrict__ ref_index, float* __restrict__ cosine) {
  extern __shared__ uint8_t hits_cache[];  // [m] when cache
  __shared__ MatchShared sh;
  const int64_t i = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int b = threadIdx.x; b < bands; b += blockDim.x) sh.tcode[b] = tcodes[i * bands + b];
  for (int h = threadIdx.x; h <= bands; h += blockDim.x) sh.hist[h] = 0;
  __syncthreads();

  // Pass 1: histogram of hit counts (trip count uniform over the block: full warps).
  for (int64_t base = 0; base < m; base += blockDim.x) {
    const int64_t r = base + threadIdx.x;
    int h = -1;
    if (r < m) {
      h = Hits(rcodes + r * bands, sh.tcode, bands);
      if (cache) hits_cache[r] = static_cast<uint8_t>(h);
    }
    const unsigned peers = __match_any_sync(0xffffffffu, h);
    if (h >= 0 && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[h], __popc(peers));
  }
  __syncthreads();

  // Threshold: the cap best by (hits desc, r asc) are every r with hits > h* plus the first
  // `need` r with hits == h*.
  if (threadIdx.x == 0) {
    long long total = 0;
    for (int h = 1; h <= bands; ++h) total += sh.hist[h];
    int level = 0;
    long long need = 0;
    if (cap > 0 && total > cap) {
      long long above = 0;
      for (level = bands; level > 1; --level) {
        if (above + sh.hist[level] >= cap) break;
        above += sh.hist[level];
      }
      need = cap - above;  // 1..hist[level]
    }
    sh.level = level;
    sh.need = need;
  }
  __syncthreads();
  const int level = sh.level;
  const long long need = sh.need;

  // Pass 2: best kept candidate by cosine; only cosine > 0 counts (best starts at 0).
  const float* crow = cos + i * ld;
  float best = 0.0f;
  int best_r = -1;
  long long ties_seen = 0;  // same value in every thread
  for (int64_t base = 0; base < m; base += blockDim.x) {
    const int64_t r = base + threadIdx.x;
    const bool in = r < m;
    const int h = !in ? 0 : cache ? hits_cache[r] : Hits(rcodes + r * bands, sh.tcode, bands);
    bool keep = in && h > level;
    if (level > 0 && ties_seen < need) {  // uniform branch: BlockExclusiveCount syncs
      const int tie = in && h == level ? 1 : 0;
      int tie_total = 0;
      const int rank = BlockExclusiveCount(tie, sh.warp_counts, &tie_total);
      if (tie) keep = ties_seen + rank < need;
      ties_seen += tie_total;
    }
    if (keep) {
      const float c = crow[r];
      const int ri = static_cast<int>(r);
      if (c > best || (c == best && best_r >= 0 && ri < best_r)) {
        best = c;
        best_r = ri;
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float oc = __shfl_xor_sync(0xffffffffu, best, o);
    const int orr = __shfl_xor_sync(0xffffffffu, best_r, o);
    if (Better(oc, orr, best, best_r)) {
      best = oc;
      best_r = orr;
    }
  }
  if (lane == 0) {
    sh.warp_best[warp] = best;
    sh.warp_best_r[warp] = best_r;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float bc = 0.0f;
    int br = -1;
    for (int w = 0; w < kMatchWarps; ++w) {
      if (Better(sh.warp_best[w], sh.warp_best_r[w], bc, br)) {
        bc = sh.warp_best[w];
        br = sh.warp_best_r[w];
      }
    }
    ref_index[i] = br;
    cosine[i] = br >= 0 ? fminf(bc, 1.0f) : 0.0f;  // rounding can give 1 + ulp for equal rows
  }
}

}  // namespace

cudaError_t EcacheRows(const void* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                       const float* inv_freq, float* out, cudaStream_t stream) {
  if (n < 0 || dim < 0 || n > INT_MAX) return cudaErrorInvalidValue;
  if (n == 0 || dim == 0) return cudaSuccess;
  EcacheKernel<<<static_cast<unsigned>(n), kEcacheThreads, 0, stream>>>(
      static_cast<const bf16*>(table), vocab, dim, ids, inv_freq, out);
  return cudaGetLastError();
}

cudaError_t PackCodes(const float* proj, int64_t n, int bands, int bits, uint32_t* codes,
                      cudaStream_t stream) {
  if (n < 0 || bands < 0 || bits < 0 || bits > 32) return cudaErrorInvalidValue;
  const int64_t total = n * bands;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = CeilDiv(total, kPackThreads);
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  PackKernel<<<static_cast<unsigned>(blocks), kPackThreads, 0, stream>>>(proj, total, bands, bits,
                                                                         codes);
  return cudaGetLastError();
}

cudaError_t MatchCandidates(const uint32_t* tcodes, const uint32_t* rcodes, const float* cos,
                            int64_t ld, int64_t n, int64_t m, int bands, int64_t max_candidates,
                            int32_t* ref_index, float* cosine, cudaStream_t stream) {
  if (n < 0 || m < 0 || n > INT_MAX || m > INT_MAX || ld < m || bands < 1 ||
      bands > kMatchMaxBands) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  const bool cache = m <= kMaxCachedHits;
  // A cap at or above m never binds; clamping keeps the kernel's arithmetic in range.
  const long long cap = max_candidates <= 0 ? 0 : max_candidates < m ? max_candidates : m;
  MatchKernel<<<static_cast<unsigned>(n), kMatchThreads, cache ? static_cast<size_t>(m) : 0,
                stream>>>(tcodes, rcodes, cos, ld, m, bands, cap, cache, ref_index, cosine);
  return cudaGetLastError();
}

}  // namespace semshare::kernels
