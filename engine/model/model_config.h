// Hyper-parameters of a Llama-family decoder, from GGUF metadata or a Hugging Face config.json.
#ifndef SEMSHARE_ENGINE_MODEL_MODEL_CONFIG_H_
#define SEMSHARE_ENGINE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace semshare::engine {

enum class Arch { kLlama, kQwen2, kMistral };
const char* ArchName(Arch arch);

// Which dimensions RoPE rotates together. The convention depends on the file, not only the
// architecture: GGUF `llama` files carry Q/K rows permuted so that pairs are adjacent
// (2k, 2k+1) (ggml's "normal" rope); Hugging Face checkpoints and GGUF `qwen2` pair the halves
// (k, k + d/2) ("neox" rope). The loader sets it from the source format.
enum class RopeStyle { kAdjacent, kHalfSplit };

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.0f;              // linear and llama3
  float low_freq_factor = 1.0f;     // llama3
  float high_freq_factor = 4.0f;    // llama3
  int64_t original_context = 8192;  // llama3: original_max_position_embeddings
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string name;  // human-readable, from metadata
  int64_t n_layers = 0;
  int64_t d_model = 0;     // hidden size
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // key/value heads (GQA when < n_heads)
  int64_t head_dim = 0;    // usually d_model / n_heads
  int64_t d_ff = 0;        // MLP intermediate size
  int64_t vocab_size = 0;
  int64_t max_context = 0;  // trained context length
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  int64_t rope_dim = 0;  // rotated dims per head (== head_dim for these archs)
  RopeStyle rope_style = RopeStyle::kAdjacent;
  RopeScaling rope_scaling;
  bool qkv_bias = false;         // qwen2: biases on Q, K, V projections
  bool tied_embeddings = false;  // lm_head shares the token embedding matrix
  int64_t sliding_window = 0;    // mistral; 0 = full attention

  // Checks internal consistency (positive sizes, head_dim * n_heads layout, GQA divisibility).
  absl::Status Validate() const;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_MODEL_CONFIG_H_
