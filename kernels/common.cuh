// Shared helpers of the kernels: element conversion between float and bf16 (templated so each
// op family instantiates both), warp/block reductions, and ceil-division. Device-only code
// beside small host helpers, and the split-combining kernel of flash decoding (CombineSplits),
// which attention.cu and paged_attention.cu launch.
#ifndef SEMSHARE_KERNELS_COMMON_CUH_
#define SEMSHARE_KERNELS_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

using bf16 = __nv_bfloat16;

__host__ __device__ inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ float ToF(T x);
template <>
__device__ __forceinline__ float ToF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToF<bf16>(bf16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 FromF<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Flash-decoding's second step, for any attention shape with n, n_heads, head_dim and
// out_stride: each split of a (query row i, head h) left a record [m, l, o[head_dim]] (running
// max, sum of exp, unnormalised output) at part[((i * n_heads + h) * splits + split) * (2 +
// head_dim)]; out = sum_s o_s e^(m_s - m) / sum_s l_s e^(m_s - m), zeros when nothing was
// visible. One block per (i, h).
template <typename Tout, typename Shape>
__global__ void CombineSplits(const float* __restrict__ part, Shape s, int splits,
                              Tout* __restrict__ out) {
  const int64_t i = blockIdx.x / s.n_heads, h = blockIdx.x % s.n_heads;
  const int D = static_cast<int>(s.head_dim);
  const float* rec = part + (i * s.n_heads + h) * splits * (2 + D);
  float mm = -INFINITY;
  for (int sp = 0; sp < splits; ++sp) mm = fmaxf(mm, rec[sp * (2 + D)]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float ll = 0.0f, o = 0.0f;
    if (mm != -INFINITY) {
      for (int sp = 0; sp < splits; ++sp) {
        const float f = __expf(rec[sp * (2 + D)] - mm);
        ll += rec[sp * (2 + D) + 1] * f;
        o += rec[sp * (2 + D) + 2 + d] * f;
      }
    }
    out[i * s.out_stride + h * D + d] = FromF<Tout>(ll > 0.0f ? o / ll : 0.0f);
  }
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `red` is __shared__ float[32]. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float BlockSum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? red[lane] : 0.0f;
  return WarpSum(v);
}

// Launch-error check: the error of the launch just made (configuration errors), without
// synchronising.
inline cudaError_t LastLaunchError() { return cudaGetLastError(); }

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_COMMON_CUH_
