// Deviation norms and top-k selection (algorithm note in deviation.cuh).
#include "kernels/common.cuh"
#include "kernels/deviation.cuh"
#include "kernels/select_impl.cuh"

namespace semshare::kernels {
namespace {

template <typename Ta, typename Tb>
__global__ void RowDistanceKernel(const Ta* __restrict__ a, int64_t a_stride,
                                  const Tb* __restrict__ b, int64_t b_stride, int64_t n,
                                  int64_t dim, bool accumulate, float* __restrict__ out) {
  const int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  float ss = 0.0f;
  for (int64_t c = lane; c < dim; c += 32) {
    const float d = ToF<Ta>(a[row * a_stride + c]) - ToF<Tb>(b[row * b_stride + c]);
    ss += d * d;
  }
  ss = WarpSum(ss);
  if (lane == 0) out[row] = (accumulate ? out[row] : 0.0f) + sqrtf(ss);
}

__global__ void __launch_bounds__(kSelThreads)
    SelectKernel(const float* __restrict__ s, const uint8_t* __restrict__ forced, int64_t n,
                 int64_t k, bool prefer_low, int32_t* out_idx, uint8_t* mask, int64_t* out_count) {
  __shared__ SelectShared sh;
  __shared__ int eligible_sh;
  if (threadIdx.x == 0) eligible_sh = 0;
  __syncthreads();
  int local = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) local += forced == nullptr || !forced[i];
  atomicAdd(&eligible_sh, local);
  __syncthreads();
  const int64_t eligible = eligible_sh;
  const int64_t kk = k < eligible ? k : eligible;
  uint32_t thresh = 0;
  long long need = 0, ties = 0;
  bool all = kk >= eligible, none = kk <= 0;
  if (!all && !none) {
    RadixThreshold(s, forced, n, kk, &sh);
    thresh = sh.prefix;
    need = sh.remaining;
    ties = sh.ties;
  }
  auto is_eligible = [&](int64_t i) { return forced == nullptr || !forced[i]; };
  auto keep = [&](int64_t i) {
    if (!is_eligible(i)) return true;
    if (all) return true;
    if (none) return false;
    return OrderKey(s[i]) > thresh;
  };
  auto tie = [&](int64_t i) { return !all && !none && is_eligible(i) && OrderKey(s[i]) == thresh; };
  const int64_t count = BlockCompact(n, keep, tie, need, ties, prefer_low, out_idx, mask, &sh);
  if (threadIdx.x == 0) *out_count = count;
}

}  // namespace

template <typename Ta, typename Tb>
cudaError_t RowDistance(const Ta* a, int64_t a_stride, const Tb* b, int64_t b_stride, int64_t n,
                        int64_t dim, bool accumulate, float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  RowDistanceKernel<Ta, Tb><<<static_cast<unsigned>(CeilDiv(n * 32, 256)), 256, 0, stream>>>(
      a, a_stride, b, b_stride, n, dim, accumulate, out);
  return cudaGetLastError();
}

cudaError_t SelectTopK(const float* scores, const uint8_t* forced, int64_t n, int64_t k,
                       bool prefer_low, int32_t* out_idx, uint8_t* mask, int64_t* out_count,
                       cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  SelectKernel<<<1, kSelThreads, 0, stream>>>(scores, forced, n, k, prefer_low, out_idx, mask,
                                              out_count);
  return cudaGetLastError();
}

template cudaError_t RowDistance<float, float>(const float*, int64_t, const float*, int64_t,
                                               int64_t, int64_t, bool, float*, cudaStream_t);
template cudaError_t RowDistance<bf16, bf16>(const bf16*, int64_t, const bf16*, int64_t, int64_t,
                                             int64_t, bool, float*, cudaStream_t);
template cudaError_t RowDistance<float, bf16>(const float*, int64_t, const bf16*, int64_t, int64_t,
                                              int64_t, bool, float*, cudaStream_t);

}  // namespace semshare::kernels
