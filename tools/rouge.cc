#include "tools/rouge.h"

#include <algorithm>
#include <vector>

namespace semshare::tools {

int64_t LcsLength(std::span<const int32_t> a, std::span<const int32_t> b) {
  if (a.size() < b.size()) std::swap(a, b);  // the row runs over the shorter sequence
  std::vector<int64_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

RougeL RougeLScore(std::span<const int32_t> candidate, std::span<const int32_t> reference) {
  RougeL r;
  if (candidate.empty() && reference.empty()) {
    r.precision = r.recall = r.f1 = 1.0;  // identical (both empty)
    return r;
  }
  r.lcs = LcsLength(candidate, reference);
  if (!candidate.empty()) r.precision = static_cast<double>(r.lcs) / candidate.size();
  if (!reference.empty()) r.recall = static_cast<double>(r.lcs) / reference.size();
  if (r.lcs > 0) r.f1 = 2 * r.precision * r.recall / (r.precision + r.recall);
  return r;
}

}  // namespace semshare::tools
