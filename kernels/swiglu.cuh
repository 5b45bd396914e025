// Element-wise ops of the forward pass: SwiGLU (out = silu(gate) * up), residual add, bias
// add and float<->bf16 conversion. Grid-stride loops, one element per thread per step; these
// are memory-bound and the forward pass fuses the residual adds into the GEMM epilogue
// (beta = 1), so they carry little of the time.
#ifndef SEMSHARE_KERNELS_SWIGLU_CUH_
#define SEMSHARE_KERNELS_SWIGLU_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// out[i] = silu(gate[i]) * up[i], i < count; out may alias gate.
template <typename Tin, typename Tout>
cudaError_t SwiGlu(const Tin* gate, const Tin* up, int64_t count, Tout* out, cudaStream_t stream);
// Fused form for a [n, 2 * f] gate|up GEMM output: out[i, c] = silu(gu[i, c]) * gu[i, f + c].
template <typename Tin, typename Tout>
cudaError_t SwiGluPacked(const Tin* gu, int64_t n, int64_t f, Tout* out, cudaStream_t stream);
// x[i] += y[i], i < count.
cudaError_t AddInPlace(float* x, const float* y, int64_t count, cudaStream_t stream);
// x[i, c] += bias[c] for x [n, d].
cudaError_t AddBias(float* x, const float* bias, int64_t n, int64_t d, cudaStream_t stream);
// out[i] = (Tout) in[i], i < count.
template <typename Tin, typename Tout>
cudaError_t Convert(const Tin* in, int64_t count, Tout* out, cudaStream_t stream);
// Fills x[count] with value (test poisoning, pads).
template <typename T>
cudaError_t Fill(T* x, int64_t count, float value, cudaStream_t stream);
// Seeded uniform(-scale, scale) values (counter-based hash, so any launch shape gives the same
// values): random weights generated on the device for benchmarks.
template <typename T>
cudaError_t FillRandom(T* x, int64_t count, uint64_t seed, float scale, float offset,
                       cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_SWIGLU_CUH_
