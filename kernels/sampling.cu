// Argmax and top-k / top-p sampling (algorithm note in sampling.cuh).
#include <climits>

#include "kernels/common.cuh"
#include "kernels/sampling.cuh"
#include "kernels/select_impl.cuh"

namespace semshare::kernels {
namespace {

// One block per row; (value, index) reduced with the lowest index winning ties (and NaN never
// winning), the rule of engine/sampling.h.
__global__ void __launch_bounds__(kSelThreads)
    ArgmaxRowsKernel(const float* __restrict__ logits, int64_t vocab, int32_t* __restrict__ out) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  const float* row = logits + blockIdx.x * vocab;
  float best = -INFINITY;
  int32_t bi = INT_MAX;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = row[j];
    if (v > best || (v == best && j < bi)) {
      best = v;
      bi = static_cast<int32_t>(j);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) {
      best = ov;
      bi = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp != 0) return;
  const int warps = blockDim.x >> 5;
  best = lane < warps ? sv[lane] : -INFINITY;
  bi = lane < warps ? si[lane] : INT_MAX;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) {
      best = ov;
      bi = oi;
    }
  }
  if (lane == 0) out[blockIdx.x] = bi == INT_MAX ? 0 : bi;  // all NaN: token 0
}

__global__ void __launch_bounds__(kSelThreads)
    SampleKernel(const float* __restrict__ logits, int64_t vocab, float temperature, int k,
                 float top_p, float u, int32_t* out) {
  __shared__ SelectShared sh;
  __shared__ float cv[kMaxSampleCandidates];
  __shared__ int32_t ci[kMaxSampleCandidates];
  const int t = threadIdx.x;
  cv[t] = -INFINITY;
  ci[t] = INT32_MAX;
  uint32_t thresh = 0;
  long long need = 0, ties = 0;
  const bool all = k >= vocab;
  if (!all) {
    RadixThreshold(logits, nullptr, vocab, k, &sh);
    thresh = sh.prefix;
    need = sh.remaining;
    ties = sh.ties;
  }
  __syncthreads();
  auto keep = [&](int64_t i) { return all || OrderKey(logits[i]) > thresh; };
  auto tie = [&](int64_t i) { return !all && OrderKey(logits[i]) == thresh; };
  // Compaction writes indices into ci (k <= 1024 of them).
  const int64_t count = BlockCompact(vocab, keep, tie, need, ties, true, ci, nullptr, &sh);
  __syncthreads();
  if (t < count) cv[t] = logits[ci[t]];
  __syncthreads();
  // Bitonic sort of 1024 (value desc, index asc); pads (-inf, INT32_MAX) sink to the end.
  for (int size = 2; size <= kMaxSampleCandidates; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const int j = t ^ stride;
      if (j > t) {
        const bool first_before = cv[t] > cv[j] || (cv[t] == cv[j] && ci[t] < ci[j]);
        const bool ascending_block = (t & size) == 0;  // this half sorts "best first"
        if (first_before != ascending_block) {
          const float tv = cv[t];
          cv[t] = cv[j];
          cv[j] = tv;
          const int32_t ti = ci[t];
          ci[t] = ci[j];
          ci[j] = ti;
        }
      }
      __syncthreads();
    }
  }
  if (t == 0) {
    const int64_t n = count < kMaxSampleCandidates ? count : kMaxSampleCandidates;
    const float mx = cv[0];
    const float inv_t = 1.0f / temperature;
    // Weights as the CPU Sampler forms them: the float argument (l - l_max) * (1 / T), its exp
    // rounded to float (exp in double, then rounded: the correctly rounded expf), sums in
    // double. Weights of the same bits as the CPU's keep the top-p cut and the pick identical
    // for the same u.
    auto weight = [&](int64_t c) {
      return static_cast<double>(
          static_cast<float>(exp(static_cast<double>((cv[c] - mx) * inv_t))));
    };
    double sum = 0;
    for (int64_t c = 0; c < n; ++c) sum += weight(c);
    int64_t keep_n = n;
    if (top_p < 1.0f) {
      double cum = 0;
      keep_n = 0;
      while (keep_n < n) {
        cum += weight(keep_n) / sum;
        ++keep_n;
        if (cum >= top_p) break;
      }
      sum = 0;
      for (int64_t c = 0; c < keep_n; ++c) sum += weight(c);
    }
    double r = static_cast<double>(u) * sum;
    int32_t pick = ci[keep_n - 1];
    for (int64_t c = 0; c < keep_n; ++c) {
      r -= weight(c);
      if (r < 0) {
        pick = ci[c];
        break;
      }
    }
    *out = pick;
  }
}

}  // namespace

cudaError_t ArgmaxRows(const float* logits, int64_t n, int64_t vocab, int32_t* out,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT_MAX) return cudaErrorInvalidValue;
  ArgmaxRowsKernel<<<static_cast<unsigned>(n), kSelThreads, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

cudaError_t Argmax(const float* logits, int64_t vocab, int32_t* out, cudaStream_t stream) {
  if (vocab <= 0) return cudaErrorInvalidValue;
  return ArgmaxRows(logits, 1, vocab, out, stream);
}

cudaError_t SampleTopKTopP(const float* logits, int64_t vocab, float temperature, int top_k,
                           float top_p, float u, int32_t* out, cudaStream_t stream) {
  if (vocab <= 0 || !(temperature > 0.0f) || !(top_p > 0.0f && top_p <= 1.0f) || top_k < 0 ||
      !(u >= 0.0f && u < 1.0f)) {
    return cudaErrorInvalidValue;
  }
  int k = top_k == 0 || top_k > kMaxSampleCandidates ? kMaxSampleCandidates : top_k;
  if (k > vocab) k = static_cast<int>(vocab);
  SampleKernel<<<1, kSelThreads, 0, stream>>>(logits, vocab, temperature, k, top_p, u, out);
  return cudaGetLastError();
}

}  // namespace semshare::kernels
