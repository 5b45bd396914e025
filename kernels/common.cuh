// Shared helpers of the kernels: element conversion between float and bf16 (templated so each
// op family instantiates both), warp/block reductions, and ceil-division. Device-only code
// beside small host helpers; nothing here launches.
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
