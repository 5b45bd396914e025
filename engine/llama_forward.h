// The Llama-family decoder forward pass (llama, qwen2, mistral), written once against the
// Backend interface:
//   x = embed(ids)
//   per layer: h = rmsnorm(x); q,k,v = h Wq,Wk,Wv (+bias); rope(q,k); kv_cache += (k,v);
//              x += attn(q, cache) Wo;  h = rmsnorm(x); x += (silu(h Wg) * h Wu) Wd
//   logits = rmsnorm(x_last) W_out
// Long inputs are processed in chunks of `max_chunk` tokens so scratch memory stays bounded;
// the result does not depend on the chunk size beyond float summation order.
//
// Batched (ForwardBatch, the serving engine loop's step): the rows of several sequences, each
// with its own KV cache, go through one pass: norms, projections and the MLP as one GEMM over
// all rows, RoPE per row at its own position, attention of each sequence over its own cache
// (one Backend::AttentionVarlen call per layer: sequence offsets into the stacked rows, no
// padding), and the logits of the sequences that want them as one GEMM over their last rows.
#ifndef SEMSHARE_ENGINE_LLAMA_FORWARD_H_
#define SEMSHARE_ENGINE_LLAMA_FORWARD_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"

namespace semshare::engine {

// The argument contract of a forward pass (LlamaForward::Forward, cuda::CudaForward::Forward):
// ids and positions non-empty and of equal length, ids in the vocabulary, positions ascending
// and after `next_position` (the cache's), the cache shaped for the model. InvalidArgument
// naming the first violation.
absl::Status CheckForwardArgs(const ModelConfig& c, std::span<const int32_t> ids,
                              std::span<const int32_t> pos, int64_t cache_layers,
                              int64_t cache_kv_dim, int32_t next_position);

// One sequence's share of a batched forward: tokens ids[k] at positions pos[k] (ascending,
// after the cache's) are appended to *cache; the last one's logits go to logits[vocab] when
// logits is non-null.
struct SeqChunk {
  std::span<const int32_t> ids;
  std::span<const int32_t> pos;
  KvCache* cache = nullptr;
  float* logits = nullptr;
};

class LlamaForward {
 public:
  // Borrows model and backend; both must outlive this object. Not thread-safe: one per
  // request (it owns scratch buffers).
  LlamaForward(const Model& model, Backend& backend, int64_t max_chunk = 512);

  // Runs tokens ids[n] at positions pos[n] (ascending, all after the cache's positions),
  // appends their K/V to `cache`, and writes the logits of the last token to logits[vocab]
  // when logits is non-null. InvalidArgument for out-of-range ids or positions.
  absl::Status Forward(std::span<const int32_t> ids, std::span<const int32_t> pos, KvCache& cache,
                       float* logits);

  // Several sequences in one pass (see the file comment). Every chunk is checked as Forward's
  // arguments are (InvalidArgument naming the sequence) before anything runs; two chunks may
  // not share a cache. The rows of all chunks are processed together (scratch grows to their
  // sum: the caller bounds it, the engine loop by its token budget). Sequential Forward calls
  // give the same logits up to float summation order (GEMM blocking differs with row count).
  absl::Status ForwardBatch(std::span<const SeqChunk> seqs);

  // An optional stop check, consulted before each chunk of Forward and before each layer of a
  // selective prefill (engine/reuse): when it returns true the pass stops with CANCELLED (the
  // cache then holds what was appended so far; callers drop it). Null: never. The server sets
  // it to "the client cancelled or the deadline passed" for the duration of a request.
  void set_interrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  bool interrupted() const { return interrupt_ && interrupt_(); }

  // An empty cache shaped for this model.
  KvCache NewCache() const;
  const Model& model() const { return model_; }

  // The steps of one layer, for prefill variants that compute a subset of tokens per layer
  // (engine/reuse). `x` is the residual stream [s, d_model] of the s tokens at positions
  // pos[s]; scratch is sized for s tokens by Qkv.
  //
  // Qkv: norm + Q/K/V projections + RoPE of layer l into q() [s, q_dim], k(), v() [s, kv_dim].
  void Qkv(int64_t l, const float* x, const int32_t* pos, int64_t s);
  const float* q() const { return q_.data(); }
  const float* k() const { return k_.data(); }
  const float* v() const { return v_.data(); }
  // Writes k()/v() of the s tokens into `kv` at rows[s] (existing rows, overwritten), or
  // appends them (with their positions) when rows is null. `first` skips that many rows of
  // k()/v() (a batched pass stores each sequence's slice).
  void StoreKv(LayerKv& kv, const int32_t* rows, const int32_t* pos, int64_t s, int64_t first = 0);
  // Attention of q() over all rows of `kv`, output projection, residual add into x.
  void Attend(int64_t l, float* x, const int32_t* pos, int64_t s, const LayerKv& kv);
  // Norm + SwiGLU MLP + residual add into x.
  void Mlp(int64_t l, float* x, int64_t s);
  // Final norm of one residual row [d_model] and the output projection into logits[vocab].
  void Logits(const float* x_row, float* logits);
  // Embedding rows of ids into x [n, d_model].
  void Embed(const int32_t* ids, int64_t n, float* x);
  Backend& backend() { return backend_; }
  const RopeParams& rope() const { return rope_; }
  const AttentionParams& attention() const { return attn_; }

 private:
  // One pass over the stacked rows of `seqs` (checked); x_ holds their residual streams after.
  void BatchPass(std::span<const SeqChunk> seqs);
  // Qkv's and Mlp's steps after their norm, on the s normed rows in h_ (sized by Reserve):
  // projections + RoPE into q_, k_, v_; the MLP into h_ (before its residual add).
  void ProjectQkv(int64_t l, const int32_t* pos, int64_t s);
  void MlpOnNormed(int64_t l, int64_t s);
  // The logits of the chunks that want them: their last rows of x_ (at `ends`, one past each
  // chunk's last row), final norm and one output GEMM, scattered to each chunk's pointer.
  void BatchLogits(std::span<const SeqChunk> seqs, std::span<const int64_t> ends);
  void Reserve(int64_t s);

  const Model& model_;
  Backend& backend_;
  const int64_t max_chunk_;
  std::vector<float> inv_freq_;  // [rope_dim / 2]
  RopeParams rope_;
  AttentionParams attn_;
  // Scratch, sized for max_chunk tokens.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_;
  std::vector<float> logit_h_;    // [rows, d_model] normed last rows for the logits
  std::vector<float> logit_out_;  // [rows, vocab] logits of a batch, before scattering
  std::vector<int32_t> batch_ids_, batch_pos_;  // [rows] a batch's stacked ids and positions
  std::vector<AttentionSeq> attn_seqs_;         // [sequences] a batch's varlen attention call
  std::function<bool()> interrupt_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_LLAMA_FORWARD_H_
