// RMSNorm (algorithm note in rmsnorm.cuh).
#include "kernels/common.cuh"
#include "kernels/rmsnorm.cuh"

namespace semshare::kernels {
namespace {

template <typename Tin, typename Tout>
__global__ void RmsNormKernel(const Tin* x, int64_t x_stride, const float* __restrict__ gamma,
                              int64_t d, float eps, Tout* y) {
  __shared__ float red[32];
  const Tin* xr = x + blockIdx.x * x_stride;
  Tout* yr = y + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = ToF<Tin>(xr[c]);
    ss += v * v;
  }
  ss = BlockSum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    yr[c] = FromF<Tout>(ToF<Tin>(xr[c]) * inv * gamma[c]);
  }
}

}  // namespace

template <typename Tin, typename Tout>
cudaError_t RmsNorm(const Tin* x, int64_t x_stride, const float* gamma, int64_t n, int64_t d,
                    float eps, Tout* y, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int threads = d >= 1024 ? 512 : 128;
  RmsNormKernel<Tin, Tout>
      <<<static_cast<unsigned>(n), threads, 0, stream>>>(x, x_stride, gamma, d, eps, y);
  return cudaGetLastError();
}

#define SEMSHARE_INST(TI, TO)                                                                     \
  template cudaError_t RmsNorm<TI, TO>(const TI*, int64_t, const float*, int64_t, int64_t, float, \
                                       TO*, cudaStream_t);
SEMSHARE_INST(float, float)
SEMSHARE_INST(float, bf16)
SEMSHARE_INST(bf16, bf16)
#undef SEMSHARE_INST

}  // namespace semshare::kernels
