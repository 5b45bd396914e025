#include "cache_store/prompt_features.h"

#include <algorithm>

namespace semshare::store {

std::vector<uint64_t> PromptFeatures(std::span<const int32_t> ids) {
  std::vector<uint64_t> out;
  out.reserve(ids.size());
  for (int32_t t : ids) {
    if (t >= 0) out.push_back(static_cast<uint64_t>(t));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace semshare::store
