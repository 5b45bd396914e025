// Embedding gather: out[i, :] = table[ids[i], :] for a BF16 table [vocab, d], written as float
// (the residual stream) or bf16. One block per token; each thread copies strided columns, so
// a row read is coalesced. Ids outside [0, vocab) write zeros (the engine validates ids on the
// host; the kernel must still not read out of bounds).
#ifndef SEMSHARE_KERNELS_EMBED_CUH_
#define SEMSHARE_KERNELS_EMBED_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// table: [vocab, d] bf16 (__nv_bfloat16); ids: [n] device; out: [n, d] of Tout (float or bf16).
template <typename Tout>
cudaError_t EmbedGather(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n,
                        Tout* out, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_EMBED_CUH_
