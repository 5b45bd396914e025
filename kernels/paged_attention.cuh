// Varlen attention over a paged KV cache (continuous batching): the query rows of many sequences
// in one launch, each sequence's rows attending to its own KV rows only, found through its block
// table; sequence offsets, no padding.
//
// Layout (one layer; engine/cuda/paged_kv.h owns the memory):
//   k_pages, v_pages: [num_blocks, block_size, kv_stride] bf16 (K post-RoPE);
//   pos_pages:        [num_blocks, block_size] int32, the position of each row;
//   block_tables:     int32, sequence s's blocks at block_tables[table_offset[s] ...]: its
//                     logical row j lives at block block_tables[table_offset[s] + j / block_size],
//                     slot j % block_size;
//   seq_rows:         [n_seqs] int32, KV rows of each sequence in this layer (positions of a
//                     sequence's rows ascending, as engine/kv_cache.h requires);
//   q:                [n, q_stride] bf16, query row i of sequence q_seq[i] at position q_pos[i];
//   out:              [n, out_stride].
// Row j is visible to query i iff pos(j) <= q_pos[i] and (window <= 0 or q_pos[i] - pos(j) <
// window): causal by position, so a chunk's own K/V rows (written before the launch) mask
// themselves. A query with no visible row gets zeros.
//
// Algorithm: one block of 4 warps per (query row, kv head, group slice, split). GQA: the
// block's query heads (up to kMaxGroup of the n_heads / n_kv_heads that share the kv head) are
// all held in registers, so a K/V row is read once for the whole group, not once per query head
// (decode is memory-bound: the KV bytes read are the roofline). Each warp walks rows j = j0 +
// warp, j0 + warp + 4, ... of its split, two rows' loads in flight at a time (head_dim > 32),
// with a flash-style online softmax per head (running max
// m and sum l in float, exp of the difference; the float accumulator rescaled when m grows);
// lanes own head_dim / 32 dims. The warps merge through shared memory. With several splits (few
// queries, long contexts: decode), partial (m, l, o[head_dim]) records go to the workspace and a
// second kernel merges them (flash-decoding). Float accumulation throughout; P is not rounded to
// bf16 (unlike FlashPrefill in attention.cuh), so the result is closer to the float reference.
// Not tuned: no tensor cores, no shared-memory tiling of a page across query rows (a long
// prefill chunk re-reads its sequence's KV once per query row, from L2).
#ifndef SEMSHARE_KERNELS_PAGED_ATTENTION_CUH_
#define SEMSHARE_KERNELS_PAGED_ATTENTION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

struct PagedAttnShape {
  int64_t n = 0;           // query rows, all sequences
  int64_t n_seqs = 0;      // sequences
  int64_t max_rows = 0;    // most KV rows of any sequence in this layer (sizes the splits)
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // kv heads (n_heads % n_kv_heads == 0)
  int64_t head_dim = 0;    // <= 256
  int64_t block_size = 0;  // rows per page
  int64_t q_stride = 0;    // elements between query rows (>= n_heads * head_dim)
  int64_t kv_stride = 0;   // elements between KV rows within a page (>= n_kv_heads * head_dim)
  int64_t out_stride = 0;  // elements between output rows (>= n_heads * head_dim)
  float scale = 1.0f;
  int64_t window = 0;  // <= 0: unlimited
};

// Bytes of workspace PagedAttention uses for these shapes (0 when it needs none).
int64_t PagedAttentionWorkspace(const PagedAttnShape& s);

// See the file comment. Tout: float or bf16. workspace: PagedAttentionWorkspace(s) bytes (with
// less, one split is used). cudaErrorInvalidValue for unsupported shapes (head_dim > 256,
// heads not divisible, strides too small).
template <typename Tout>
cudaError_t PagedAttention(const void* q, const int32_t* q_pos, const int32_t* q_seq,
                           const void* k_pages, const void* v_pages, const int32_t* pos_pages,
                           const int32_t* block_tables, const int32_t* table_offset,
                           const int32_t* seq_rows, const PagedAttnShape& s, Tout* out,
                           void* workspace, int64_t workspace_bytes, cudaStream_t stream);

// dst[idx[i]] = src[i], i < n (row positions into a layer's pos_pages).
cudaError_t ScatterInt32(const int32_t* src, const int32_t* idx, int64_t n, int32_t* dst,
                         cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_PAGED_ATTENTION_CUH_
