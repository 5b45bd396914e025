// RoPE frequencies: inv_freq[k] = base^(-2k/rope_dim), adjusted by the model's scaling
// (linear; llama3 as in Hugging Face's _compute_llama3_parameters; or the per-pair divisors
// GGUF llama3.x files store as `rope_freqs.weight`).
#ifndef SEMSHARE_ENGINE_ROPE_H_
#define SEMSHARE_ENGINE_ROPE_H_

#include <vector>

#include "engine/model/model_config.h"
#include "engine/model/weights.h"

namespace semshare::engine {

// [rope_dim / 2] angle per unit position of each rotated pair.
std::vector<float> RopeInvFreq(const ModelConfig& config, const Matrix& freq_factors);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_ROPE_H_
