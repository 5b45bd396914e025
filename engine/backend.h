// The op-level compute interface. The forward pass (llama_forward.h) is written once against
// it; CpuBackend (engine/cpu/) always exists, CudaBackend (engine/cuda/) when built with CUDA.
//
// Conventions (engine/README.md): row-major; activations float32; a token's heads are
// contiguous ([n, heads, head_dim]); a linear weight is [out, in] so y = x W^T. Pointers are
// in the backend's memory space (host for CpuBackend). Ops are synchronous from the caller's
// view; they do not allocate except where noted. An op is thread-compatible, not thread-safe:
// one request's forward pass uses a backend from one thread at a time (backends may run
// their own worker threads inside an op).
#ifndef SEMSHARE_ENGINE_BACKEND_H_
#define SEMSHARE_ENGINE_BACKEND_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "engine/model/weights.h"

namespace semshare::engine {

// Rotary position embedding parameters shared by every layer.
struct RopeParams {
  RopeStyle style = RopeStyle::kAdjacent;
  int64_t rope_dim = 0;             // rotated dims per head (pairs = rope_dim / 2)
  const float* inv_freq = nullptr;  // [rope_dim / 2] angle per position for pair k
};

struct AttentionParams {
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // key/value heads; query head h reads kv head h / (n_heads/n_kv)
  int64_t head_dim = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  int64_t window = 0;  // sliding window in positions; 0 = unlimited
};

// One sequence of a varlen attention call (Backend::AttentionVarlen): its query rows are rows
// [q_begin, q_begin + n) of the call's stacked q, q_pos and out; it attends over its own KV.
struct AttentionSeq {
  int64_t q_begin = 0;             // first row in the stacked q / q_pos / out
  int64_t n = 0;                   // query rows (0: nothing to do)
  const float* k = nullptr;        // [m, n_kv_heads, head_dim]
  const float* v = nullptr;        // [m, n_kv_heads, head_dim]
  const int32_t* k_pos = nullptr;  // [m], ascending
  int64_t m = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // y[n, w.rows] = x[n, w.cols] * w^T (+ bias[w.rows] when bias is non-empty).
  virtual void MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) = 0;
  // y[n, d] = x / rms(x) * gamma[d]; y may alias x.
  virtual void RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
                       float* y) = 0;
  // Rotates x[n, heads, head_dim] in place, token i at position pos[i].
  virtual void Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
                    const RopeParams& rope) = 0;
  // out[n, n_heads, head_dim] = softmax(q k^T * scale, masked) v for query i at q_pos[i] over
  // kv rows j (k, v: [m, n_kv_heads, head_dim], positions k_pos[m], ascending) with
  // k_pos[j] <= q_pos[i] (and q_pos[i] - k_pos[j] < window when window > 0). A query with no
  // visible row gets zeros.
  virtual void Attention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                         const float* v, const int32_t* k_pos, int64_t m, const AttentionParams& p,
                         float* out) = 0;
  // Attention of several sequences in one op (a batched forward's step, sequence offsets instead
  // of a padded batch): for each seq s, the rows [s.q_begin, s.q_begin + s.n) of q
  // [rows, n_heads, head_dim] and q_pos attend over s's KV into the same rows of out, with the
  // same bits as Attention(q + s.q_begin * n_heads * head_dim, q_pos + s.q_begin, s.n, s.k, s.v,
  // s.k_pos, s.m, p, out + ...) (the result never depends on the other sequences). Sequences'
  // row ranges do not overlap. The default makes those Attention calls one after another; a
  // backend overrides it to schedule all sequences' work at once.
  virtual void AttentionVarlen(const float* q, const int32_t* q_pos,
                               std::span<const AttentionSeq> seqs, const AttentionParams& p,
                               float* out) {
    const int64_t q_stride = p.n_heads * p.head_dim;
    for (const AttentionSeq& s : seqs) {
      if (s.n <= 0) continue;
      Attention(q + s.q_begin * q_stride, q_pos + s.q_begin, s.n, s.k, s.v, s.k_pos, s.m, p,
                out + s.q_begin * q_stride);
    }
  }
  // out[i] = silu(gate[i]) * up[i] for i < count; out may alias gate.
  virtual void SwiGlu(const float* gate, const float* up, int64_t count, float* out) = 0;
  // out[n, table.cols] = table rows ids[n].
  virtual void Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) = 0;
  // dst[i, :] = src[idx[i], :] for i < n, rows of row_len floats.
  virtual void GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                          float* dst) = 0;
  // x[i] += y[i] for i < count.
  virtual void Add(float* x, const float* y, int64_t count) = 0;

  // Fused steps of the forward pass, with the same bits as the ops they replace (defaults call
  // those ops; a backend overrides them to save a pass over memory or a thread dispatch).
  //
  // Rope(q, pos, n, q_heads, ...) and Rope(k, pos, n, k_heads, ...): q [n, q_heads, head_dim]
  // and k [n, k_heads, head_dim] at the same positions.
  virtual void RopeQk(float* q, int64_t q_heads, float* k, int64_t k_heads, const int32_t* pos,
                      int64_t n, int64_t head_dim, const RopeParams& rope) {
    Rope(q, pos, n, q_heads, head_dim, rope);
    Rope(k, pos, n, k_heads, head_dim, rope);
  }
  // Add(x, y, n * d), then RmsNorm(x, gamma, n, d, eps, out): the residual add and the next
  // norm. y may alias out; x may not alias either.
  virtual void AddRmsNorm(float* x, const float* y, const float* gamma, int64_t n, int64_t d,
                          float eps, float* out) {
    Add(x, y, n * d);
    RmsNorm(x, gamma, n, d, eps, out);
  }

  // Retention scores: mass[j] = sum over queries i < n and heads of the attention probability
  // query i gives kv row j (same masking as Attention). mass: [m].
  virtual void AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                             const int32_t* k_pos, int64_t m, const AttentionParams& p,
                             float* mass) = 0;
  // out[i] = ||a_i - b_i||_2 over rows of `dim` floats, i < n (KV deviation).
  virtual void RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) = 0;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_BACKEND_H_
