// SimHash codes (algorithm note in simhash.cuh).
#include "kernels/common.cuh"
#include "kernels/simhash.cuh"

namespace semshare::kernels {
namespace {

constexpr int kMaxPlanes = 4096;

__global__ void SimHashKernel(const float* __restrict__ ecache, const float* __restrict__ planes,
                              int64_t dim, int bands, int bits, uint32_t* __restrict__ codes) {
  extern __shared__ float row[];  // [dim]
  __shared__ uint8_t sign[kMaxPlanes];
  const int64_t i = blockIdx.x;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) row[c] = ecache[i * dim + c];
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int planes_n = bands * bits;
  for (int p = warp; p < planes_n; p += warps) {
    const float* pr = planes + static_cast<int64_t>(p) * dim;
    float dot = 0.0f;
    for (int64_t c = lane; c < dim; c += 32) dot += row[c] * pr[c];
    dot = WarpSum(dot);
    if (lane == 0) sign[p] = dot > 0.0f ? 1 : 0;
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bands; b += blockDim.x) {
    uint32_t key = 0;
    for (int j = 0; j < bits; ++j) key |= static_cast<uint32_t>(sign[b * bits + j]) << j;
    codes[i * bands + b] = key;
  }
}

}  // namespace

cudaError_t SimHashCodes(const float* ecache, const float* planes, int64_t n, int64_t dim,
                         int bands, int bits, uint32_t* codes, cudaStream_t stream) {
  if (bits < 1 || bits > 32 || bands < 1 || bands * bits > kMaxPlanes ||
      dim * static_cast<int64_t>(sizeof(float)) > 44 * 1024) {
    return cudaErrorInvalidValue;
  }
  if (n <= 0) return cudaSuccess;
  SimHashKernel<<<static_cast<unsigned>(n), 256, dim * sizeof(float), stream>>>(ecache, planes, dim,
                                                                                bands, bits, codes);
  return cudaGetLastError();
}

}  // namespace semshare::kernels
