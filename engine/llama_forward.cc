#include "engine/llama_forward.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/rope.h"

namespace semshare::engine {

absl::Status CheckForwardArgs(const ModelConfig& c, std::span<const int32_t> ids,
                              std::span<const int32_t> pos, int64_t cache_layers,
                              int64_t cache_kv_dim, int32_t next_position) {
  if (ids.size() != pos.size() || ids.empty()) {
    return absl::InvalidArgumentError("forward: ids and positions must be non-empty and equal");
  }
  if (cache_layers != c.n_layers || cache_kv_dim != c.n_kv_heads * c.head_dim) {
    return absl::InvalidArgumentError("forward: KV cache shape does not match the model");
  }
  int32_t prev = next_position - 1;
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
  return absl::OkStatus();
}

LlamaForward::LlamaForward(const Model& model, Backend& backend, int64_t max_chunk)
    : model_(model),
      backend_(backend),
      max_chunk_(max_chunk),
      inv_freq_(RopeInvFreq(model.config, model.weights.rope_freqs)) {
  const ModelConfig& c = model.config;
  rope_ = RopeParams{c.rope_style, c.rope_dim, inv_freq_.data()};
  attn_ = AttentionParams{c.n_heads, c.n_kv_heads, c.head_dim,
                          1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.sliding_window};
}

KvCache LlamaForward::NewCache() const {
  const ModelConfig& c = model_.config;
  return KvCache(c.n_layers, c.n_kv_heads * c.head_dim);
}

absl::Status LlamaForward::Forward(std::span<const int32_t> ids, std::span<const int32_t> pos,
                                   KvCache& cache, float* logits) {
  const ModelConfig& c = model_.config;
  if (auto s =
          CheckForwardArgs(c, ids, pos, cache.n_layers(), cache.kv_dim(), cache.next_position());
      !s.ok()) {
    return s;
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t i0 = 0; i0 < n; i0 += max_chunk_) {
    if (interrupted()) return absl::CancelledError("forward: interrupted (request cancelled)");
    const int64_t k = std::min(max_chunk_, n - i0);
    const SeqChunk chunk{ids.subspan(i0, k), pos.subspan(i0, k), &cache,
                         i0 + k == n ? logits : nullptr};
    BatchPass({&chunk, 1});
    const int64_t end = k;
    BatchLogits({&chunk, 1}, {&end, 1});
  }
  return absl::OkStatus();
}

absl::Status LlamaForward::ForwardBatch(std::span<const SeqChunk> seqs) {
  const ModelConfig& c = model_.config;
  if (seqs.empty()) return absl::OkStatus();
  std::vector<int64_t> ends(seqs.size());
  int64_t n = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqChunk& sc = seqs[i];
    if (sc.cache == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward batch: sequence ", i, " has no cache"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].cache == sc.cache) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward batch: sequences ", j, " and ", i, " share a KV cache"));
      }
    }
    if (auto s = CheckForwardArgs(c, sc.ids, sc.pos, sc.cache->n_layers(), sc.cache->kv_dim(),
                                  sc.cache->next_position());
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward batch: sequence ", i, ": ", s.message()));
    }
    n += static_cast<int64_t>(sc.ids.size());
    ends[i] = n;
  }
  BatchPass(seqs);
  BatchLogits(seqs, ends);
  return absl::OkStatus();
}

void LlamaForward::BatchLogits(std::span<const SeqChunk> seqs, std::span<const int64_t> ends) {
  const ModelConfig& c = model_.config;
  const int64_t d = c.d_model;
  int64_t r = 0;
  for (const SeqChunk& sc : seqs) r += sc.logits != nullptr ? 1 : 0;
  if (r == 0) return;
  // One output GEMM over every wanted row: the [vocab, d_model] output matrix is the largest
  // weight of a small model, read once per iteration instead of once per sequence.
  logit_h_.resize(r * d);
  int64_t j = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].logits == nullptr) continue;
    std::copy_n(x_.data() + (ends[i] - 1) * d, d, logit_h_.data() + j * d);
    ++j;
  }
  backend_.RmsNorm(logit_h_.data(), model_.weights.out_norm.data.data(), r, d, c.rms_eps,
                   logit_h_.data());
  if (r == 1) {
    for (const SeqChunk& sc : seqs) {
      if (sc.logits != nullptr) {
        backend_.MatMul(logit_h_.data(), 1, model_.weights.output(), Matrix{}, sc.logits);
      }
    }
    return;
  }
  logit_out_.resize(r * c.vocab_size);
  backend_.MatMul(logit_h_.data(), r, model_.weights.output(), Matrix{}, logit_out_.data());
  j = 0;
  for (const SeqChunk& sc : seqs) {
    if (sc.logits == nullptr) continue;
    std::copy_n(logit_out_.data() + j * c.vocab_size, c.vocab_size, sc.logits);
    ++j;
  }
}

void LlamaForward::Reserve(int64_t s) {
  const ModelConfig& c = model_.config;
  const int64_t d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  h_.resize(s * d);
  q_.resize(s * qd);
  k_.resize(s * kvd);
  v_.resize(s * kvd);
  att_.resize(s * qd);
  gate_.resize(s * c.d_ff);
  up_.resize(s * c.d_ff);
}

void LlamaForward::Embed(const int32_t* ids, int64_t n, float* x) {
  backend_.Embed(model_.weights.tok_embd, ids, n, x);
}

void LlamaForward::Qkv(int64_t l, const float* x, const int32_t* pos, int64_t s) {
  const ModelConfig& c = model_.config;
  Reserve(s);
  backend_.RmsNorm(x, model_.weights.layers[l].attn_norm.data.data(), s, c.d_model, c.rms_eps,
                   h_.data());
  ProjectQkv(l, pos, s);
}

void LlamaForward::ProjectQkv(int64_t l, const int32_t* pos, int64_t s) {
  const ModelConfig& c = model_.config;
  const LayerWeights& lw = model_.weights.layers[l];
  backend_.MatMul(h_.data(), s, lw.wq, lw.bq, q_.data());
  backend_.MatMul(h_.data(), s, lw.wk, lw.bk, k_.data());
  backend_.MatMul(h_.data(), s, lw.wv, lw.bv, v_.data());
  backend_.RopeQk(q_.data(), c.n_heads, k_.data(), c.n_kv_heads, pos, s, c.head_dim, rope_);
}

void LlamaForward::StoreKv(LayerKv& kv, const int32_t* rows, const int32_t* pos, int64_t s,
                           int64_t first) {
  const int64_t kvd = model_.config.n_kv_heads * model_.config.head_dim;
  const float* k = k_.data() + first * kvd;
  const float* v = v_.data() + first * kvd;
  if (rows == nullptr) {
    kv.k.insert(kv.k.end(), k, k + s * kvd);
    kv.v.insert(kv.v.end(), v, v + s * kvd);
    kv.pos.insert(kv.pos.end(), pos, pos + s);
    return;
  }
  for (int64_t i = 0; i < s; ++i) {
    std::copy_n(k + i * kvd, kvd, kv.k.data() + rows[i] * kvd);
    std::copy_n(v + i * kvd, kvd, kv.v.data() + rows[i] * kvd);
  }
}

void LlamaForward::Attend(int64_t l, float* x, const int32_t* pos, int64_t s, const LayerKv& kv) {
  const LayerWeights& lw = model_.weights.layers[l];
  backend_.Attention(q_.data(), pos, s, kv.k.data(), kv.v.data(), kv.pos.data(), kv.rows(), attn_,
                     att_.data());
  backend_.MatMul(att_.data(), s, lw.wo, Matrix{}, h_.data());
  backend_.Add(x, h_.data(), s * model_.config.d_model);
}

void LlamaForward::Mlp(int64_t l, float* x, int64_t s) {
  const ModelConfig& c = model_.config;
  Reserve(s);
  backend_.RmsNorm(x, model_.weights.layers[l].ffn_norm.data.data(), s, c.d_model, c.rms_eps,
                   h_.data());
  MlpOnNormed(l, s);
  backend_.Add(x, h_.data(), s * c.d_model);
}

void LlamaForward::MlpOnNormed(int64_t l, int64_t s) {
  const ModelConfig& c = model_.config;
  const LayerWeights& lw = model_.weights.layers[l];
  backend_.MatMul(h_.data(), s, lw.w_gate, Matrix{}, gate_.data());
  backend_.MatMul(h_.data(), s, lw.w_up, Matrix{}, up_.data());
  backend_.SwiGlu(gate_.data(), up_.data(), s * c.d_ff, gate_.data());
  backend_.MatMul(gate_.data(), s, lw.w_down, Matrix{}, h_.data());
}

void LlamaForward::Logits(const float* x_row, float* logits) {
  const ModelConfig& c = model_.config;
  logit_h_.resize(c.d_model);
  backend_.RmsNorm(x_row, model_.weights.out_norm.data.data(), 1, c.d_model, c.rms_eps,
                   logit_h_.data());
  backend_.MatMul(logit_h_.data(), 1, model_.weights.output(), Matrix{}, logits);
}

void LlamaForward::BatchPass(std::span<const SeqChunk> seqs) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t d = c.d_model;
  batch_ids_.clear();
  batch_pos_.clear();
  for (const SeqChunk& sc : seqs) {
    batch_ids_.insert(batch_ids_.end(), sc.ids.begin(), sc.ids.end());
    batch_pos_.insert(batch_pos_.end(), sc.pos.begin(), sc.pos.end());
  }
  const int64_t n = static_cast<int64_t>(batch_ids_.size());
  const int32_t* pos = batch_pos_.data();
  x_.resize(n * d);
  Embed(batch_ids_.data(), n, x_.data());
  Reserve(n);
  // The same ops as Qkv, Attend and Mlp per layer, with the backend's fused steps where they give
  // the same bits: each residual add with the norm after it (the MLP's add with the next layer's
  // attention norm), RoPE of q and k together, and attention of all sequences in one call.
  backend_.RmsNorm(x_.data(), w.layers[0].attn_norm.data.data(), n, d, c.rms_eps, h_.data());
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    ProjectQkv(l, pos, n);
    attn_seqs_.clear();
    int64_t o = 0;
    for (const SeqChunk& sc : seqs) {
      const int64_t k = static_cast<int64_t>(sc.ids.size());
      LayerKv& kv = sc.cache->layer(l);
      StoreKv(kv, nullptr, pos + o, k, o);
      attn_seqs_.push_back(AttentionSeq{o, k, kv.k.data(), kv.v.data(), kv.pos.data(), kv.rows()});
      o += k;
    }
    backend_.AttentionVarlen(q_.data(), pos, attn_seqs_, attn_, att_.data());
    backend_.MatMul(att_.data(), n, lw.wo, Matrix{}, h_.data());
    backend_.AddRmsNorm(x_.data(), h_.data(), lw.ffn_norm.data.data(), n, d, c.rms_eps, h_.data());
    MlpOnNormed(l, n);
    if (l + 1 < c.n_layers) {
      backend_.AddRmsNorm(x_.data(), h_.data(), w.layers[l + 1].attn_norm.data.data(), n, d,
                          c.rms_eps, h_.data());
    } else {
      backend_.Add(x_.data(), h_.data(), n * d);
    }
  }
}

}  // namespace semshare::engine
