#include "cache_store/prompt_features.h"

#include <algorithm>

namespace semshare::store {

std::unique_ptr<engine::TokenMatcher> MakeFeatureMatcher(const engine::Matrix& embeddings,
                                                         engine::ReuseConfig config) {
  config.ecache_rope = false;
  return std::make_unique<engine::TokenMatcher>(embeddings, config);
}

std::vector<uint64_t> PromptFeatures(std::span<const int32_t> ids,
                                     const engine::TokenMatcher& matcher) {
  std::vector<uint64_t> out;
  if (ids.empty()) return out;
  const engine::TokenSketch sketch = matcher.Sketch(ids);
  const size_t n = ids.size();
  const size_t bands = sketch.codes.size() / n;
  out.reserve(n * (bands + 1));
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] < 0) continue;  // not a token; the matcher left its row zero too
    out.push_back(static_cast<uint64_t>(ids[i]));
    for (size_t b = 0; b < bands; ++b) {
      out.push_back(kBucketFeatureTag | (static_cast<uint64_t>(b) << 32) |
                    sketch.codes[i * bands + b]);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace semshare::store
