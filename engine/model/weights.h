// Model weights in host memory as float32, dequantised at load. Layout: row-major, a linear
// layer's weight is [out_features, in_features] (PyTorch's and GGUF's order), so y = x W^T.
#ifndef SEMSHARE_ENGINE_MODEL_WEIGHTS_H_
#define SEMSHARE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/model_config.h"

namespace semshare::engine {

// A dense float32 matrix [rows, cols], row-major. A vector is rows == 1.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // [rows * cols]

  bool empty() const { return data.empty(); }
  const float* row(int64_t r) const { return data.data() + r * cols; }
};

struct LayerWeights {
  Matrix attn_norm;   // [1, d_model]
  Matrix wq;          // [n_heads * head_dim, d_model]
  Matrix wk;          // [n_kv_heads * head_dim, d_model]
  Matrix wv;          // [n_kv_heads * head_dim, d_model]
  Matrix bq, bk, bv;  // [1, out] each, qwen2 only (empty otherwise)
  Matrix wo;          // [d_model, n_heads * head_dim]
  Matrix ffn_norm;    // [1, d_model]
  Matrix w_gate;      // [d_ff, d_model]
  Matrix w_up;        // [d_ff, d_model]
  Matrix w_down;      // [d_model, d_ff]
};

struct ModelWeights {
  Matrix tok_embd;    // [vocab, d_model]
  Matrix out_norm;    // [1, d_model]
  Matrix lm_head;     // [vocab, d_model]; empty when config.tied_embeddings (use tok_embd)
  Matrix rope_freqs;  // [1, rope_dim / 2] divisors of RoPE frequencies (GGUF llama3.x), or empty
  std::vector<LayerWeights> layers;

  const Matrix& output() const { return lm_head.empty() ? tok_embd : lm_head; }
  int64_t ByteSize() const;
};

// Checks every tensor's shape against the config; names the first mismatch.
absl::Status ValidateWeights(const ModelConfig& config, const ModelWeights& weights);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_WEIGHTS_H_
