// Embedding gather (algorithm note in embed.cuh).
#include "kernels/common.cuh"
#include "kernels/embed.cuh"

namespace semshare::kernels {
namespace {

template <typename Tout>
__global__ void EmbedKernel(const bf16* __restrict__ table, int64_t vocab, int64_t d,
                            const int32_t* __restrict__ ids, Tout* __restrict__ out) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  const bool ok = id >= 0 && id < vocab;
  const bf16* row = table + (ok ? static_cast<int64_t>(id) : 0) * d;
  Tout* o = out + i * d;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    o[c] = FromF<Tout>(ok ? __bfloat162float(row[c]) : 0.0f);
  }
}

}  // namespace

template <typename Tout>
cudaError_t EmbedGather(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n,
                        Tout* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  EmbedKernel<Tout><<<static_cast<unsigned>(n), 256, 0, stream>>>(static_cast<const bf16*>(table),
                                                                  vocab, d, ids, out);
  return cudaGetLastError();
}

template cudaError_t EmbedGather<float>(const void*, int64_t, int64_t, const int32_t*, int64_t,
                                        float*, cudaStream_t);
template cudaError_t EmbedGather<bf16>(const void*, int64_t, int64_t, const int32_t*, int64_t,
                                       bf16*, cudaStream_t);

}  // namespace semshare::kernels
