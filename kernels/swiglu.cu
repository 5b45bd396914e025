// Element-wise ops (algorithm note in swiglu.cuh).
#include "kernels/common.cuh"
#include "kernels/swiglu.cuh"

namespace semshare::kernels {
namespace {

unsigned Blocks(int64_t count) {
  const int64_t b = CeilDiv(count, 256);
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);
}

template <typename Tin, typename Tout>
__global__ void SwiGluKernel(const Tin* gate, const Tin* up, int64_t count, Tout* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = ToF<Tin>(gate[i]);
    out[i] = FromF<Tout>(g / (1.0f + __expf(-g)) * ToF<Tin>(up[i]));
  }
}

template <typename Tin, typename Tout>
__global__ void SwiGluPackedKernel(const Tin* gu, int64_t n, int64_t f, Tout* out) {
  const int64_t count = n * f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i - r * f;
    const float g = ToF<Tin>(gu[r * 2 * f + c]);
    out[i] = FromF<Tout>(g / (1.0f + __expf(-g)) * ToF<Tin>(gu[r * 2 * f + f + c]));
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

__global__ void AddBiasKernel(float* x, const float* bias, int64_t n, int64_t d) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * d;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += bias[i % d];
  }
}

template <typename Tin, typename Tout>
__global__ void ConvertKernel(const Tin* in, int64_t count, Tout* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FromF<Tout>(ToF<Tin>(in[i]));
  }
}

template <typename T>
__global__ void FillKernel(T* x, int64_t count, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = FromF<T>(value);
  }
}

__device__ __forceinline__ uint64_t Mix(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void FillRandomKernel(T* x, int64_t count, uint64_t seed, float scale, float offset) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = Mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i));
    const float u = static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    x[i] = FromF<T>(offset + scale * (2.0f * u - 1.0f));
  }
}

}  // namespace

template <typename Tin, typename Tout>
cudaError_t SwiGlu(const Tin* gate, const Tin* up, int64_t count, Tout* out, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  SwiGluKernel<Tin, Tout><<<Blocks(count), 256, 0, stream>>>(gate, up, count, out);
  return cudaGetLastError();
}

template <typename Tin, typename Tout>
cudaError_t SwiGluPacked(const Tin* gu, int64_t n, int64_t f, Tout* out, cudaStream_t stream) {
  if (n * f <= 0) return cudaSuccess;
  SwiGluPackedKernel<Tin, Tout><<<Blocks(n * f), 256, 0, stream>>>(gu, n, f, out);
  return cudaGetLastError();
}

cudaError_t AddInPlace(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  AddKernel<<<Blocks(count), 256, 0, stream>>>(x, y, count);
  return cudaGetLastError();
}

cudaError_t AddBias(float* x, const float* bias, int64_t n, int64_t d, cudaStream_t stream) {
  if (n * d <= 0) return cudaSuccess;
  AddBiasKernel<<<Blocks(n * d), 256, 0, stream>>>(x, bias, n, d);
  return cudaGetLastError();
}

template <typename Tin, typename Tout>
cudaError_t Convert(const Tin* in, int64_t count, Tout* out, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  ConvertKernel<Tin, Tout><<<Blocks(count), 256, 0, stream>>>(in, count, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t Fill(T* x, int64_t count, float value, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  FillKernel<T><<<Blocks(count), 256, 0, stream>>>(x, count, value);
  return cudaGetLastError();
}

template <typename T>
cudaError_t FillRandom(T* x, int64_t count, uint64_t seed, float scale, float offset,
                       cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  FillRandomKernel<T><<<Blocks(count), 256, 0, stream>>>(x, count, seed, scale, offset);
  return cudaGetLastError();
}

template cudaError_t SwiGlu<float, float>(const float*, const float*, int64_t, float*,
                                          cudaStream_t);
template cudaError_t SwiGlu<float, bf16>(const float*, const float*, int64_t, bf16*, cudaStream_t);
template cudaError_t SwiGluPacked<float, bf16>(const float*, int64_t, int64_t, bf16*, cudaStream_t);
template cudaError_t SwiGluPacked<bf16, bf16>(const bf16*, int64_t, int64_t, bf16*, cudaStream_t);
template cudaError_t Convert<float, bf16>(const float*, int64_t, bf16*, cudaStream_t);
template cudaError_t Convert<bf16, float>(const bf16*, int64_t, float*, cudaStream_t);
template cudaError_t Fill<float>(float*, int64_t, float, cudaStream_t);
template cudaError_t Fill<bf16>(bf16*, int64_t, float, cudaStream_t);
template cudaError_t FillRandom<float>(float*, int64_t, uint64_t, float, float, cudaStream_t);
template cudaError_t FillRandom<bf16>(bf16*, int64_t, uint64_t, float, float, cudaStream_t);

}  // namespace semshare::kernels
