#include "engine/llama_forward.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/rope.h"

namespace semshare::engine {

LlamaForward::LlamaForward(const Model& model, Backend& backend, int64_t max_chunk)
    : model_(model),
      backend_(backend),
      max_chunk_(max_chunk),
      inv_freq_(RopeInvFreq(model.config, model.weights.rope_freqs)) {}

KvCache LlamaForward::NewCache() const {
  const ModelConfig& c = model_.config;
  return KvCache(c.n_layers, c.n_kv_heads * c.head_dim);
}

absl::Status LlamaForward::Forward(std::span<const int32_t> ids, std::span<const int32_t> pos,
                                   KvCache& cache, float* logits) {
  const ModelConfig& c = model_.config;
  if (ids.size() != pos.size() || ids.empty()) {
    return absl::InvalidArgumentError("forward: ids and positions must be non-empty and equal");
  }
  if (cache.n_layers() != c.n_layers || cache.kv_dim() != c.n_kv_heads * c.head_dim) {
    return absl::InvalidArgumentError("forward: KV cache shape does not match the model");
  }
  int32_t prev = cache.next_position() - 1;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: token id ", ids[i], " outside vocabulary of ", c.vocab_size));
    }
    if (pos[i] <= prev) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: position ", pos[i], " is not after the previous position ", prev));
    }
    prev = pos[i];
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t i0 = 0; i0 < n; i0 += max_chunk_) {
    ForwardChunk(ids.data() + i0, pos.data() + i0, std::min(max_chunk_, n - i0), cache);
  }
  if (logits != nullptr) {
    // x_ holds the last chunk's residual stream; its last row is the last token.
    const int64_t last = (n - 1) % max_chunk_;
    const float* xl = x_.data() + last * c.d_model;
    std::vector<float> hl(c.d_model);
    backend_.RmsNorm(xl, model_.weights.out_norm.data.data(), 1, c.d_model, c.rms_eps, hl.data());
    backend_.MatMul(hl.data(), 1, model_.weights.output(), Matrix{}, logits);
  }
  return absl::OkStatus();
}

void LlamaForward::ForwardChunk(const int32_t* ids, const int32_t* pos, int64_t n, KvCache& cache) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  x_.resize(n * d);
  h_.resize(n * d);
  q_.resize(n * qd);
  k_.resize(n * kvd);
  v_.resize(n * kvd);
  att_.resize(n * qd);
  gate_.resize(n * c.d_ff);
  up_.resize(n * c.d_ff);

  RopeParams rope{c.rope_style, c.rope_dim, inv_freq_.data()};
  AttentionParams ap{c.n_heads, c.n_kv_heads, c.head_dim,
                     1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.sliding_window};

  backend_.Embed(w.tok_embd, ids, n, x_.data());
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    backend_.RmsNorm(x_.data(), lw.attn_norm.data.data(), n, d, c.rms_eps, h_.data());
    backend_.MatMul(h_.data(), n, lw.wq, lw.bq, q_.data());
    backend_.MatMul(h_.data(), n, lw.wk, lw.bk, k_.data());
    backend_.MatMul(h_.data(), n, lw.wv, lw.bv, v_.data());
    backend_.Rope(q_.data(), pos, n, c.n_heads, c.head_dim, rope);
    backend_.Rope(k_.data(), pos, n, c.n_kv_heads, c.head_dim, rope);

    LayerKv& kv = cache.layer(l);
    kv.k.insert(kv.k.end(), k_.begin(), k_.begin() + n * kvd);
    kv.v.insert(kv.v.end(), v_.begin(), v_.begin() + n * kvd);
    kv.pos.insert(kv.pos.end(), pos, pos + n);

    backend_.Attention(q_.data(), pos, n, kv.k.data(), kv.v.data(), kv.pos.data(), kv.rows(), ap,
                       att_.data());
    backend_.MatMul(att_.data(), n, lw.wo, Matrix{}, h_.data());
    backend_.Add(x_.data(), h_.data(), n * d);

    backend_.RmsNorm(x_.data(), lw.ffn_norm.data.data(), n, d, c.rms_eps, h_.data());
    backend_.MatMul(h_.data(), n, lw.w_gate, Matrix{}, gate_.data());
    backend_.MatMul(h_.data(), n, lw.w_up, Matrix{}, up_.data());
    backend_.SwiGlu(gate_.data(), up_.data(), n * c.d_ff, gate_.data());
    backend_.MatMul(gate_.data(), n, lw.w_down, Matrix{}, h_.data());
    backend_.Add(x_.data(), h_.data(), n * d);
  }
}

}  // namespace semshare::engine
