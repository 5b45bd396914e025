#include "engine/reuse/reuse_plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/reuse/retention.h"

namespace semshare::engine {
namespace {

// Sinks and window forced; copied rows protected; unmatched rearranged rows forced, and the
// first run_start_tokens of every run of rearranged rows (IsRunStart).
void MarkForced(ReusePlan& p, const TokenMatch* match) {
  const int64_t n = p.n;
  const int64_t window = std::min<int64_t>(p.config.window, n);
  const int64_t sink = std::min<int64_t>(p.config.sink, n);
  p.forced.assign(n, 0);
  for (int64_t i = 0; i < std::max(sink, p.copy_rows); ++i) p.forced[i] = 1;
  for (int64_t i = n - window; i < n; ++i) p.forced[i] = 1;
  if (match == nullptr) return;
  const int64_t k = p.config.run_start_tokens;
  int64_t run_pos = 0;  // position of row i within its run (0 = its start)
  for (int64_t i = p.copy_rows; i < n; ++i) {
    const int32_t ref = match->ref_index[i];
    if (ref < 0) {
      p.forced[i] = 1;
      continue;
    }
    run_pos = i > p.copy_rows && match->ref_index[i - 1] >= 0 && ref == match->ref_index[i - 1] + 1
                  ? run_pos + 1
                  : 0;
    if (run_pos < k) p.forced[i] = 1;
  }
}

}  // namespace

const char* ReuseKindName(ReuseKind k) {
  switch (k) {
    case ReuseKind::kNone:
      return "none";
    case ReuseKind::kCopyPrefix:
      return "copy-prefix";
    case ReuseKind::kSelective:
      return "selective";
    case ReuseKind::kHybridSelective:
      return "hybrid-selective";
  }
  return "none";
}

int64_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b, int64_t limit) {
  limit = std::min({limit, static_cast<int64_t>(a.size()), static_cast<int64_t>(b.size())});
  int64_t i = 0;
  while (i < limit && a[i] == b[i]) ++i;
  return i;
}

int64_t ExactReuseRows(std::span<const int32_t> ids, std::span<const int32_t> ref_ids,
                       int64_t window) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t lcp = CommonPrefix(ids, ref_ids, n);
  if (n - lcp > window) return -1;
  return std::max<int64_t>(0, std::min(lcp, n - std::max<int64_t>(window, 1)));
}

int64_t RecomputeKeep(const ReuseConfig& config, int64_t n, int64_t s, int64_t layer) {
  const double ratio = layer == 0 ? config.recompute_ratio : config.alpha;
  const int64_t base = layer == 0 ? n : s;
  const int64_t keep = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(base)));
  return std::min(s, std::max<int64_t>(keep, std::min<int64_t>(n, config.recompute_min_tokens)));
}

bool GuardFallsBack(const ReuseConfig& config, std::span<const float> dev, float* mean) {
  double sum = 0;
  for (float v : dev) sum += v;
  *mean = dev.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(dev.size()));
  return config.fallback_deviation > 0.0f && *mean > config.fallback_deviation;
}

std::vector<int32_t> ReusePlan::FirstSet() const {
  std::vector<int32_t> set(computed());
  std::iota(set.begin(), set.end(), static_cast<int32_t>(copy_rows));
  return set;
}

int64_t ReusePlan::Keep(int64_t s, int64_t layer) const {
  return RecomputeKeep(config, computed(), s, layer);
}

std::vector<int32_t> ReusePlan::NextSet(std::span<const int32_t> set, std::span<const float> dev,
                                        int64_t layer) const {
  const int64_t keep = Keep(static_cast<int64_t>(set.size()), layer);
  std::vector<int32_t> next, others;
  for (size_t i = 0; i < set.size(); ++i) {
    if (forced[set[i]]) {
      next.push_back(set[i]);
    } else {
      others.push_back(static_cast<int32_t>(i));
    }
  }
  const int64_t room = std::max<int64_t>(0, keep - static_cast<int64_t>(next.size()));
  if (room < static_cast<int64_t>(others.size())) {
    std::nth_element(others.begin(), others.begin() + room, others.end(),
                     [&](int32_t a, int32_t b) { return dev[a] > dev[b]; });
    others.resize(room);
  }
  for (int32_t i : others) next.push_back(set[i]);
  std::sort(next.begin(), next.end());
  return next;
}

bool ReusePlan::FallsBack(std::span<const float> dev, float* mean) const {
  return GuardFallsBack(config, dev, mean);
}

bool ReusePlan::Retains() const {
  return kind != ReuseKind::kCopyPrefix && config.retention != RetentionSchedule::kNone &&
         std::min<int64_t>(config.window, n) > 0;
}

int64_t ReusePlan::Budget(int64_t layer, int64_t n_layers) const {
  return RetentionBudget(config, n, layer, n_layers);
}

std::vector<uint8_t> ReusePlan::Protected(std::span<const int32_t> set, bool reusing) const {
  std::vector<uint8_t> protect = forced;
  if (reusing) {
    for (int32_t i : set) protect[i] = 1;  // rows recomputed at this layer
  }
  return protect;
}

ReusePlan PlanNoReuse(int64_t n, const ReuseConfig& config) {
  ReusePlan p;
  p.n = n;
  p.config = config;
  MarkForced(p, nullptr);
  return p;
}

ReusePlan PlanPrefixCopy(int64_t n, int64_t prefix_tokens, const ReuseConfig& config) {
  ReusePlan p = PlanNoReuse(n, config);
  p.copy_rows = std::max<int64_t>(0, std::min(prefix_tokens, n - 1));
  if (p.copy_rows > 0) {
    p.kind = ReuseKind::kCopyPrefix;
    MarkForced(p, nullptr);
  }
  return p;
}

ReusePlan PlanReuse(std::span<const int32_t> ids, std::span<const int32_t> ref_ids,
                    const TokenMatch& match, const ReuseConfig& config) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (const int64_t exact = config.exact_reuse ? ExactReuseRows(ids, ref_ids, config.window) : -1;
      exact >= 0) {
    ReusePlan p = PlanPrefixCopy(n, exact, config);
    p.kind = ReuseKind::kCopyPrefix;  // even with 0 rows copied: computed as a repeat, no retention
    return p;
  }
  // Exact runs first: shared verbatim stretches onto one occurrence each (AlignExactRuns).
  TokenMatch aligned = match;
  AlignExactRuns(ids, ref_ids, config.exact_run_tokens, &aligned);
  // The hybrid: an exact prefix, then a long remainder that matches the reference.
  const int64_t lcp = CommonPrefix(ids, ref_ids, n - 1);
  if (config.hybrid_selective_min_tokens > 0 && lcp > 0 &&
      n - lcp >= config.hybrid_selective_min_tokens) {
    ReusePlan p = PlanSelective(aligned, config, lcp);
    if (p.remainder_similarity >= config.hit_threshold) return p;
  }
  return PlanSelective(aligned, config, 0);
}

ReusePlan PlanSelective(const TokenMatch& match, const ReuseConfig& config, int64_t copy_rows) {
  ReusePlan p;
  p.n = static_cast<int64_t>(match.ref_index.size());
  p.config = config;
  p.copy_rows = std::clamp<int64_t>(copy_rows, 0, std::max<int64_t>(p.n - 1, 0));
  p.kind = p.copy_rows > 0 ? ReuseKind::kHybridSelective : ReuseKind::kSelective;
  const int64_t r = p.n - p.copy_rows;
  p.src.resize(r);
  p.delta.resize(r);
  double sum = 0;
  for (int64_t i = p.copy_rows; i < p.n; ++i) {
    const int32_t ref = match.ref_index[i];
    p.src[i - p.copy_rows] = std::max(ref, 0);
    p.delta[i - p.copy_rows] = static_cast<int32_t>(i) - (ref < 0 ? static_cast<int32_t>(i) : ref);
    if (i < static_cast<int64_t>(match.cosine.size())) sum += match.cosine[i];
  }
  p.remainder_similarity = r > 0 ? static_cast<float>(sum / static_cast<double>(r)) : 0.0f;
  MarkForced(p, &match);
  return p;
}

}  // namespace semshare::engine
