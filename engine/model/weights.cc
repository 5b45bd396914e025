#include "engine/model/weights.h"

#include "absl/strings/str_cat.h"

namespace semshare::engine {

int64_t ModelWeights::ByteSize() const {
  auto bytes = [](const Matrix& m) { return static_cast<int64_t>(m.data.size() * sizeof(float)); };
  int64_t total = bytes(tok_embd) + bytes(out_norm) + bytes(lm_head);
  for (const LayerWeights& l : layers) {
    for (const Matrix* m : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo,
                            &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      total += bytes(*m);
    }
  }
  return total;
}

absl::Status ValidateWeights(const ModelConfig& c, const ModelWeights& w) {
  auto check = [](const Matrix& m, int64_t rows, int64_t cols, const std::string& name) {
    if (m.rows != rows || m.cols != cols || static_cast<int64_t>(m.data.size()) != rows * cols) {
      return absl::InvalidArgumentError(absl::StrCat("weights: ", name, " is [", m.rows, ", ",
                                                     m.cols, "], expected [", rows, ", ", cols,
                                                     "]"));
    }
    return absl::OkStatus();
  };
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  if (auto s = check(w.tok_embd, c.vocab_size, c.d_model, "token embedding"); !s.ok()) return s;
  if (auto s = check(w.out_norm, 1, c.d_model, "output norm"); !s.ok()) return s;
  if (!c.tied_embeddings) {
    if (auto s = check(w.lm_head, c.vocab_size, c.d_model, "lm_head"); !s.ok()) return s;
  }
  if (static_cast<int64_t>(w.layers.size()) != c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: ", w.layers.size(), " layers, config says ", c.n_layers));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("layer ", i, " ");
    absl::Status s;
    if (!(s = check(l.attn_norm, 1, c.d_model, p + "attn_norm")).ok()) return s;
    if (!(s = check(l.wq, q, c.d_model, p + "wq")).ok()) return s;
    if (!(s = check(l.wk, kv, c.d_model, p + "wk")).ok()) return s;
    if (!(s = check(l.wv, kv, c.d_model, p + "wv")).ok()) return s;
    if (!(s = check(l.wo, c.d_model, q, p + "wo")).ok()) return s;
    if (!(s = check(l.ffn_norm, 1, c.d_model, p + "ffn_norm")).ok()) return s;
    if (!(s = check(l.w_gate, c.d_ff, c.d_model, p + "w_gate")).ok()) return s;
    if (!(s = check(l.w_up, c.d_ff, c.d_model, p + "w_up")).ok()) return s;
    if (!(s = check(l.w_down, c.d_model, c.d_ff, p + "w_down")).ok()) return s;
    if (c.qkv_bias) {
      if (!(s = check(l.bq, 1, q, p + "bq")).ok()) return s;
      if (!(s = check(l.bk, 1, kv, p + "bk")).ok()) return s;
      if (!(s = check(l.bv, 1, kv, p + "bv")).ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace semshare::engine
