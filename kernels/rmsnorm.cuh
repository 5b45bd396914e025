// RMSNorm: y[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * gamma. One block per row: a
// strided pass accumulates the sum of squares in float (block reduction through shared memory),
// a second pass scales. x is read twice; rows are at most a few KB, so the second read hits L1/
// L2. Input float or bf16, output float or bf16 (the forward pass normalises the float residual
// stream into the bf16 GEMM operand); y may alias x when the types match.
#ifndef SEMSHARE_KERNELS_RMSNORM_CUH_
#define SEMSHARE_KERNELS_RMSNORM_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// x: [n, d] (row stride x_stride elements), gamma: [d] float, y: [n, d] (row stride d).
template <typename Tin, typename Tout>
cudaError_t RmsNorm(const Tin* x, int64_t x_stride, const float* gamma, int64_t n, int64_t d,
                    float eps, Tout* y, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_RMSNORM_CUH_
