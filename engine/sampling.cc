#include "engine/sampling.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace semshare::engine {

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0f) return Argmax(logits);
  const int32_t vocab = static_cast<int32_t>(logits.size());
  candidates_.resize(vocab);
  for (int32_t i = 0; i < vocab; ++i) candidates_[i] = {logits[i], i};
  int32_t keep = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  // Sorting is needed for top-p anyway; partial sort when top-k bounds it.
  std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  candidates_.resize(keep);
  const float inv_t = 1.0f / params_.temperature;
  const float mx = candidates_[0].first;
  double sum = 0;
  for (auto& c : candidates_) {
    c.first = static_cast<float>(std::exp((c.first - mx) * inv_t));
    sum += c.first;
  }
  if (params_.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < candidates_.size()) {
      cum += candidates_[n++].first / sum;
      if (cum >= params_.top_p) break;
    }
    candidates_.resize(n);
    sum = 0;
    for (const auto& c : candidates_) sum += c.first;
  }
  std::uniform_real_distribution<double> uni(0.0, sum);
  double r = uni(rng_);
  for (const auto& c : candidates_) {
    r -= c.first;
    if (r < 0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace semshare::engine
