// KV gather and re-rotation (algorithm note in kv_gather.cuh).
#include "kernels/common.cuh"
#include "kernels/kv_gather.cuh"

namespace semshare::kernels {
namespace {

template <typename T>
__global__ void GatherKernel(const T* __restrict__ src, int64_t row_len,
                             const int32_t* __restrict__ idx, T* __restrict__ dst) {
  const int64_t i = blockIdx.x;
  const T* s = src + static_cast<int64_t>(idx[i]) * row_len;
  T* d = dst + i * row_len;
  for (int64_t c = threadIdx.x; c < row_len; c += blockDim.x) d[c] = s[c];
}

template <typename T>
__global__ void ScatterKernel(const T* __restrict__ src, int64_t row_len,
                              const int32_t* __restrict__ idx, T* __restrict__ dst) {
  const int64_t i = blockIdx.x;
  const T* s = src + i * row_len;
  T* d = dst + static_cast<int64_t>(idx[i]) * row_len;
  for (int64_t c = threadIdx.x; c < row_len; c += blockDim.x) d[c] = s[c];
}

}  // namespace

template <typename T>
cudaError_t ScatterRows(const T* src, int64_t row_len, const int32_t* idx, int64_t n, T* dst,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  ScatterKernel<T><<<static_cast<unsigned>(n), 256, 0, stream>>>(src, row_len, idx, dst);
  return cudaGetLastError();
}

template <typename T>
cudaError_t GatherRows(const T* src, int64_t row_len, const int32_t* idx, int64_t n, T* dst,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  GatherKernel<T><<<static_cast<unsigned>(n), 256, 0, stream>>>(src, row_len, idx, dst);
  return cudaGetLastError();
}

template <typename T>
cudaError_t GatherRerotate(const T* src, const int32_t* idx, const int32_t* delta, int64_t n,
                           const RopeArgs& args, T* dst, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t row = args.heads * args.head_dim;
  // Gather into dst, then rotate dst in place by delta (two light passes over n rows).
  cudaError_t e = GatherRows<T>(src, row, idx, n, dst, stream);
  if (e != cudaSuccess) return e;
  return Rope<T, T>(dst, row, delta, n, args, dst, row, nullptr, stream);
}

template cudaError_t GatherRows<float>(const float*, int64_t, const int32_t*, int64_t, float*,
                                       cudaStream_t);
template cudaError_t GatherRows<bf16>(const bf16*, int64_t, const int32_t*, int64_t, bf16*,
                                      cudaStream_t);
template cudaError_t GatherRows<int32_t>(const int32_t*, int64_t, const int32_t*, int64_t, int32_t*,
                                         cudaStream_t);
template cudaError_t ScatterRows<float>(const float*, int64_t, const int32_t*, int64_t, float*,
                                        cudaStream_t);
template cudaError_t ScatterRows<bf16>(const bf16*, int64_t, const int32_t*, int64_t, bf16*,
                                       cudaStream_t);
template cudaError_t GatherRerotate<float>(const float*, const int32_t*, const int32_t*, int64_t,
                                           const RopeArgs&, float*, cudaStream_t);
template cudaError_t GatherRerotate<bf16>(const bf16*, const int32_t*, const int32_t*, int64_t,
                                          const RopeArgs&, bf16*, cudaStream_t);

}  // namespace semshare::kernels
