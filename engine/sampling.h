// Token sampling: greedy (temperature 0), or temperature + top-k + top-p (nucleus) with a
// seeded generator so a request with a seed is reproducible.
#ifndef SEMSHARE_ENGINE_SAMPLING_H_
#define SEMSHARE_ENGINE_SAMPLING_H_

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace semshare::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax); otherwise logits are divided by it
  int32_t top_k = 0;         // keep the k most likely tokens; 0 = all
  float top_p = 1.0f;        // keep the smallest set whose probability reaches top_p; (0, 1]
  uint64_t seed = 0;         // generator seed

  // InvalidArgument for a negative or non-finite temperature, negative top_k, top_p outside
  // (0, 1].
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // A token id drawn from logits[vocab]. Not thread-safe (owns the generator state).
  int32_t Sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // scratch
};

// Index of the largest logit (lowest index on ties).
int32_t Argmax(std::span<const float> logits);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_SAMPLING_H_
