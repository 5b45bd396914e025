// Retention scores and KV compaction.
// AttentionMass: mass[j] = sum over window queries i and heads h of softmax_j(q_ih . k_j *
// scale) under the attention mask (same visibility rule as attention.cuh). Three passes:
// (1) the masked scores S [w * n_heads, m] into the workspace, a block per (64 kv rows, kv
// group, 32 query/head pairs of that group) staging both in shared memory (one pass over K);
// (2) one warp per (query, head) row of S: max and normaliser; (3) a thread per kv row sums
// the probabilities over the rows of S. The window is small (tens of queries), so S is a few
// tens of MB at most and every pass is a coalesced sweep; the score arithmetic,
// w * n_heads * m * head_dim FMAs, runs on the CUDA cores from shared memory.
// CompactRows: the kept rows (ascending indices from SelectTopK) gathered out of place into
// k_out, v_out, pos_out; the caller swaps buffers (in-place compaction would race across
// blocks).
#ifndef SEMSHARE_KERNELS_RETENTION_CUH_
#define SEMSHARE_KERNELS_RETENTION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention.cuh"

namespace semshare::kernels {

// Workspace floats AttentionMass needs: w * n_heads * (m + 2).
int64_t AttentionMassWorkspace(const AttnShape& s);

// q: [w = s.n, q_stride], k: [m, kv_stride] (T float or bf16); mass [m] float;
// workspace AttentionMassWorkspace(s) floats.
template <typename T>
cudaError_t AttentionMass(const T* q, const int32_t* q_pos, const T* k, const int32_t* k_pos,
                          const AttnShape& s, float* mass, float* workspace, cudaStream_t stream);

// k_out[r] = k[idx[r]], v_out[r] = v[idx[r]], pos_out[r] = pos[idx[r]] for r < count.
template <typename T>
cudaError_t CompactRows(const T* k, const T* v, const int32_t* pos, int64_t row_len,
                        const int32_t* idx, int64_t count, T* k_out, T* v_out, int32_t* pos_out,
                        cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_RETENTION_CUH_
