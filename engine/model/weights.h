// Model weights in host memory. A linear layer's weight is [out_features, in_features],
// row-major (PyTorch's and GGUF's order), so y = x W^T.
//
// A Matrix holds its elements either as float32 (`data`: norms, biases, rope_freqs, and weights a
// model ships as float32 or as safetensors) or in the ggml block format the GGUF file stores
// (`blocks`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16), read in place from the
// file's mapping and never dequantised as a whole: CpuBackend::MatMul (engine/cpu/quant_matmul.h)
// consumes the blocks directly, and DequantizeRows gives float rows where a caller needs them
// (embedding lookups, the token matcher, uploads to a GPU).
#ifndef SEMSHARE_ENGINE_MODEL_WEIGHTS_H_
#define SEMSHARE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/ggml_type.h"
#include "engine/model/model_config.h"

namespace semshare::engine {

// A matrix [rows, cols], row-major. A vector is rows == 1. Copying a Matrix copies `data` but
// shares `blocks` (the bytes are immutable and kept alive by `owner`).
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // [rows * cols] when type == kF32, else empty

  GgmlType type = GgmlType::kF32;
  const uint8_t* blocks = nullptr;              // [rows, row_bytes] ggml blocks when type != kF32
  int64_t row_bytes = 0;                        // GgmlRowBytes(type, cols) when type != kF32
  std::shared_ptr<const void> owner = nullptr;  // keeps `blocks` alive (the file mapping)

  bool quantized() const { return type != GgmlType::kF32; }
  bool empty() const { return quantized() ? blocks == nullptr : data.empty(); }
  // Float row r; only for type == kF32 (use DequantizeRows otherwise).
  const float* row(int64_t r) const { return data.data() + r * cols; }
  // Stored bytes of row r; only for quantized().
  const uint8_t* block_row(int64_t r) const { return blocks + r * row_bytes; }
  // Bytes this matrix holds (float data or its blocks).
  int64_t StoredBytes() const;
};

// A quantized matrix viewing `rows` rows of `type` blocks at `blocks` (borrowed; `owner`, when
// given, keeps them alive). InvalidArgument when cols is not a whole number of blocks or the
// type cannot be dequantised.
absl::Status MakeBlockMatrix(GgmlType type, int64_t rows, int64_t cols, const uint8_t* blocks,
                             std::shared_ptr<const void> owner, Matrix* out);

// dst[count, m.cols] = rows r0 .. r0+count of m as float32 (exact: ggml's dequantisation).
// Thread-safe, no allocation. Rows must be in range (checked).
void DequantizeRows(const Matrix& m, int64_t r0, int64_t count, float* dst);

// The whole matrix as a float32 Matrix: a costly copy (4 bytes an element), for tests and
// uploads; a float Matrix is copied as is.
Matrix ToFloatMatrix(const Matrix& m);

struct LayerWeights {
  Matrix attn_norm;   // [1, d_model] float
  Matrix wq;          // [n_heads * head_dim, d_model]
  Matrix wk;          // [n_kv_heads * head_dim, d_model]
  Matrix wv;          // [n_kv_heads * head_dim, d_model]
  Matrix bq, bk, bv;  // [1, out] each, float, qwen2 only (empty otherwise)
  Matrix wo;          // [d_model, n_heads * head_dim]
  Matrix ffn_norm;    // [1, d_model] float
  Matrix w_gate;      // [d_ff, d_model]
  Matrix w_up;        // [d_ff, d_model]
  Matrix w_down;      // [d_model, d_ff]
};

struct ModelWeights {
  Matrix tok_embd;    // [vocab, d_model]
  Matrix out_norm;    // [1, d_model] float
  Matrix lm_head;     // [vocab, d_model]; empty when config.tied_embeddings (use tok_embd)
  Matrix rope_freqs;  // [1, rope_dim / 2] float divisors of RoPE frequencies (llama3.x), or empty
  std::vector<LayerWeights> layers;

  const Matrix& output() const { return lm_head.empty() ? tok_embd : lm_head; }
  // Bytes the weights hold in their stored formats.
  int64_t ByteSize() const;
};

// Checks every tensor's shape against the config (norms and biases must be float); names the
// first mismatch.
absl::Status ValidateWeights(const ModelConfig& config, const ModelWeights& weights);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_WEIGHTS_H_
