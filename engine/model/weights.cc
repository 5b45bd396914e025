#include "engine/model/weights.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/model/dequant.h"

namespace semshare::engine {

int64_t Matrix::StoredBytes() const {
  if (quantized()) return blocks == nullptr ? 0 : rows * row_bytes;
  return static_cast<int64_t>(data.size() * sizeof(float));
}

absl::Status MakeBlockMatrix(GgmlType type, int64_t rows, int64_t cols, const uint8_t* blocks,
                             std::shared_ptr<const void> owner, Matrix* out) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits || !traits->can_dequantize) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: ggml type ", static_cast<uint32_t>(type), " is not supported"));
  }
  const int64_t row_bytes = GgmlRowBytes(type, cols);
  if (row_bytes < 0 || rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("weights: a row of ", cols,
                                                   " elements is not a "
                                                   "whole number of ",
                                                   std::string(traits->name), " blocks"));
  }
  *out = Matrix{};
  out->rows = rows;
  out->cols = cols;
  out->type = type;
  if (type == GgmlType::kF32) {  // float data is always held in `data`
    out->data.resize(static_cast<size_t>(rows * cols));
    if (rows * cols > 0) std::memcpy(out->data.data(), blocks, out->data.size() * sizeof(float));
    return absl::OkStatus();
  }
  out->blocks = blocks;
  out->row_bytes = row_bytes;
  out->owner = std::move(owner);
  return absl::OkStatus();
}

void DequantizeRows(const Matrix& m, int64_t r0, int64_t count, float* dst) {
  if (r0 < 0 || count < 0 || r0 + count > m.rows) {  // a broken invariant of the caller
    std::fprintf(stderr, "DequantizeRows: rows %lld+%lld of %lld\n", static_cast<long long>(r0),
                 static_cast<long long>(count), static_cast<long long>(m.rows));
    std::abort();
  }
  if (!m.quantized()) {
    std::memcpy(dst, m.row(r0), static_cast<size_t>(count * m.cols) * sizeof(float));
    return;
  }
  // Rows are contiguous whole blocks, so a run of rows is one call.
  const absl::Status s = Dequantize(m.type, m.block_row(r0), count * m.cols, dst);
  if (!s.ok()) {  // the type and shape were validated when the Matrix was made
    std::fprintf(stderr, "DequantizeRows: %s\n", s.ToString().c_str());
    std::abort();
  }
}

Matrix ToFloatMatrix(const Matrix& m) {
  if (!m.quantized()) return m;
  Matrix f;
  f.rows = m.rows;
  f.cols = m.cols;
  f.data.resize(static_cast<size_t>(m.rows * m.cols));
  if (!m.empty()) DequantizeRows(m, 0, m.rows, f.data.data());
  return f;
}

int64_t ModelWeights::ByteSize() const {
  int64_t total = tok_embd.StoredBytes() + out_norm.StoredBytes() + lm_head.StoredBytes();
  for (const LayerWeights& l : layers) {
    for (const Matrix* m : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo,
                            &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      total += m->StoredBytes();
    }
  }
  return total;
}

absl::Status ValidateWeights(const ModelConfig& c, const ModelWeights& w) {
  auto check = [](const Matrix& m, int64_t rows, int64_t cols, const std::string& name,
                  bool float_only = false) {
    bool ok = m.rows == rows && m.cols == cols;
    if (ok && m.quantized()) {
      ok = !float_only && m.blocks != nullptr && m.row_bytes == GgmlRowBytes(m.type, cols);
    } else if (ok) {
      ok = static_cast<int64_t>(m.data.size()) == rows * cols;
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: ", name, " is [", m.rows, ", ", m.cols, "] of ",
                       std::string(GetGgmlTypeTraits(static_cast<uint32_t>(m.type))->name),
                       ", expected [", rows, ", ", cols, "]", float_only ? " of F32" : ""));
    }
    return absl::OkStatus();
  };
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  if (auto s = check(w.tok_embd, c.vocab_size, c.d_model, "token embedding"); !s.ok()) return s;
  if (auto s = check(w.out_norm, 1, c.d_model, "output norm", true); !s.ok()) return s;
  if (!c.tied_embeddings) {
    if (auto s = check(w.lm_head, c.vocab_size, c.d_model, "lm_head"); !s.ok()) return s;
  }
  if (w.rope_freqs.quantized()) return absl::InvalidArgumentError("weights: rope_freqs not F32");
  if (static_cast<int64_t>(w.layers.size()) != c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: ", w.layers.size(), " layers, config says ", c.n_layers));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("layer ", i, " ");
    absl::Status s;
    if (!(s = check(l.attn_norm, 1, c.d_model, p + "attn_norm", true)).ok()) return s;
    if (!(s = check(l.wq, q, c.d_model, p + "wq")).ok()) return s;
    if (!(s = check(l.wk, kv, c.d_model, p + "wk")).ok()) return s;
    if (!(s = check(l.wv, kv, c.d_model, p + "wv")).ok()) return s;
    if (!(s = check(l.wo, c.d_model, q, p + "wo")).ok()) return s;
    if (!(s = check(l.ffn_norm, 1, c.d_model, p + "ffn_norm", true)).ok()) return s;
    if (!(s = check(l.w_gate, c.d_ff, c.d_model, p + "w_gate")).ok()) return s;
    if (!(s = check(l.w_up, c.d_ff, c.d_model, p + "w_up")).ok()) return s;
    if (!(s = check(l.w_down, c.d_model, c.d_ff, p + "w_down")).ok()) return s;
    if (c.qkv_bias) {
      if (!(s = check(l.bq, 1, q, p + "bq", true)).ok()) return s;
      if (!(s = check(l.bk, 1, kv, p + "bk", true)).ok()) return s;
      if (!(s = check(l.bv, 1, kv, p + "bv", true)).ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace semshare::engine
