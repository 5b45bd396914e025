// Attention of a set of queries (positions q_pos) over KV rows (positions k_pos, ascending):
// out = softmax(q k^T * scale, masked) v, where row j is visible to query i iff
// k_pos[j] <= q_pos[i] and (window <= 0 or q_pos[i] - k_pos[j] < window). A query with no
// visible row gets zeros. GQA: query head h reads kv head h / (n_heads / n_kv_heads).
//
// Two kernels:
// - FlashPrefill (bf16 q/k/v, head_dim 64 or 128, 16-byte aligned rows): flash-style. A block
//   takes 64 queries of one head; per 64-key tile it loads K and V to shared memory, computes
//   S = Q K^T on the tensor cores (WMMA bf16, float accumulation), and each warp runs the
//   online softmax over its 16 query rows (running max m and sum l per row; the float output
//   accumulator O in shared memory is rescaled by exp(m_old - m_new) when the max grows), then
//   O += P V on the tensor cores with P rounded to bf16. Key tiles past the block's largest
//   query position end the loop (k_pos ascending); tiles wholly outside the sliding window are
//   skipped. Output O / l.
// - Generic (any head_dim <= 256, float or bf16): one block of 4 warps per (query, head, kv
//   split); each warp walks rows of its split with an online softmax, lanes owning head_dim/32
//   dims; warps merge through shared memory. With several splits (few queries, long context:
//   decode), partial (m, l, O) go to a workspace and a second kernel merges them
//   (flash-decoding). Used for decode and for shapes FlashPrefill does not take.
#ifndef SEMSHARE_KERNELS_ATTENTION_CUH_
#define SEMSHARE_KERNELS_ATTENTION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

struct AttnShape {
  int64_t n = 0;           // queries
  int64_t m = 0;           // kv rows
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // kv heads (n_heads % n_kv_heads == 0)
  int64_t head_dim = 0;
  int64_t q_stride = 0;    // elements between consecutive queries' rows (>= n_heads * head_dim)
  int64_t kv_stride = 0;   // elements between consecutive kv rows (>= n_kv_heads * head_dim)
  int64_t out_stride = 0;  // elements between consecutive output rows
  float scale = 1.0f;
  int64_t window = 0;  // <= 0: unlimited
};

// Whether FlashPrefill accepts these shapes and pointers.
bool FlashPrefillSupported(const AttnShape& s, const void* q, const void* k, const void* v);

// q: [n, q_stride] bf16, k/v: [m, kv_stride] bf16, positions device int32, out: [n, out_stride]
// of Tout (float or bf16). cudaErrorInvalidValue when not supported.
template <typename Tout>
cudaError_t FlashPrefill(const void* q, const int32_t* q_pos, const void* k, const void* v,
                         const int32_t* k_pos, const AttnShape& s, Tout* out, cudaStream_t stream);

// Bytes of workspace Generic uses for these shapes (0 when it needs none).
int64_t GenericAttentionWorkspace(const AttnShape& s);

// T: float or bf16 for q/k/v; Tout: float or bf16. workspace: GenericAttentionWorkspace(s)
// bytes of device memory (may be null when that is 0; with less, one split is used).
template <typename T, typename Tout>
cudaError_t GenericAttention(const T* q, const int32_t* q_pos, const T* k, const T* v,
                             const int32_t* k_pos, const AttnShape& s, Tout* out, void* workspace,
                             int64_t workspace_bytes, cudaStream_t stream);

// Picks FlashPrefill when supported, Generic otherwise (bf16 inputs).
template <typename Tout>
cudaError_t Attention(const void* q, const int32_t* q_pos, const void* k, const void* v,
                      const int32_t* k_pos, const AttnShape& s, Tout* out, void* workspace,
                      int64_t workspace_bytes, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_ATTENTION_CUH_
