// ReusePlan: what a prefill against a reference does with each row, decided once per hit
// (DESIGN.md 3.3 and 4) and executed by every path: the CPU selective prefill
// (ReusePrefiller, reuse_prefill.h), the CUDA one (CudaForward::SelectivePrefill through
// CudaServingSession::PrefillHit) and the engine loop's exact-prefix copy (serving/engine_loop.h:
// BatchRunner::CopyPrefix, then the rest in chunks). Nothing else decides which rows are copied,
// rearranged, recomputed or kept: the executors read this plan and call its schedule.
//
// Kinds (rows are prompt positions 0..n-1; the reference's rows are its positions 0..m-1):
//   kNone             no reference: every token at every layer (a miss; snapkv), retention per
//                     the config when the executor is the selective one.
//   kCopyPrefix       rows [0, copy_rows) are the reference's as they are (causality makes them
//                     what a full prefill computes); rows [copy_rows, n) computed at every
//                     layer; nothing evicted. Exact reuse of a repeat (ExactReuseRows) and the
//                     hit rule's exact / hybrid prefix (serving::HitRule) alike.
//   kSelective        SemShareKV: every row rearranged from the reference (src, delta), layer 0
//                     computes every token, deeper layers a shrinking set chosen by deviation
//                     (Keep / NextSet), retention trims each layer (Budget, Protected).
//   kHybridSelective  rows [0, copy_rows) copied as kCopyPrefix's and never recomputed nor
//                     evicted; rows [copy_rows, n) as kSelective's, restricted to them (the
//                     schedule counts only those n - copy_rows tokens) and attending over the
//                     copied rows. Chosen when the prompt shares an exact prefix with the
//                     reference and its remainder is at least ReuseConfig::hybrid_selective_
//                     min_tokens long and matches the reference (mean matched cosine over the
//                     remainder >= hit_threshold).
// The fallback guard (FallsBack) applies to the rearranged rows only: on a fallback the
// rearranged rows are computed in full from layer 0 on (kSelective becomes a full prefill,
// kHybridSelective a kCopyPrefix of the same rows); PrefillStats::fallback says so.
#ifndef SEMSHARE_ENGINE_REUSE_REUSE_PLAN_H_
#define SEMSHARE_ENGINE_REUSE_REUSE_PLAN_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/reuse/reuse_config.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::engine {

enum class ReuseKind { kNone, kCopyPrefix, kSelective, kHybridSelective };
const char* ReuseKindName(ReuseKind k);

struct ReusePlan {
  ReuseKind kind = ReuseKind::kNone;
  int64_t n = 0;          // prompt tokens
  int64_t copy_rows = 0;  // rows [0, copy_rows) copied from the reference (< n)
  // Rearranging kinds, for the target rows [copy_rows, n) (index i - copy_rows): the reference
  // row each is gathered from (0 when unmatched) and the RoPE delta that re-rotates its key,
  // target position - reference position (0 when unmatched).
  std::vector<int32_t> src;    // [n - copy_rows]
  std::vector<int32_t> delta;  // [n - copy_rows]
  // By position: rows never evicted and, while in the recompute set, never dropped from it:
  // the first `sink` and last `window` tokens, unmatched tokens, the copied rows and, among
  // the rearranged rows, the first ReuseConfig::run_start_tokens of every run. A run is a
  // maximal stretch of matched rows [copy_rows, n) gathered from consecutive reference rows
  // (ref_index[i] == ref_index[i - 1] + 1); one starts at copy_rows, after an unmatched token
  // and wherever that breaks.
  std::vector<uint8_t> forced;        // [n]
  float remainder_similarity = 0.0f;  // rearranging kinds: mean matched cosine of [copy_rows, n)
  ReuseConfig config;                 // the schedule's knobs

  bool rearranges() const {
    return kind == ReuseKind::kSelective || kind == ReuseKind::kHybridSelective;
  }
  // Tokens computed at layer 0: every row not copied.
  int64_t computed() const { return n - copy_rows; }
  // The first recompute set: positions copy_rows..n-1, ascending.
  std::vector<int32_t> FirstSet() const;
  // The schedule: tokens layer + 1 recomputes when `layer` computed s (RecomputeKeep over the
  // computed() tokens).
  int64_t Keep(int64_t s, int64_t layer) const;
  // The next recompute set: every forced token of `set` plus the highest-deviation others
  // (dev[i] belongs to set[i]), Keep(|set|, layer) in all (never fewer than the forced ones),
  // ascending.
  std::vector<int32_t> NextSet(std::span<const int32_t> set, std::span<const float> dev,
                               int64_t layer) const;
  // The guard on layer 0's deviations of the computed rows (GuardFallsBack).
  bool FallsBack(std::span<const float> dev, float* mean) const;
  // Whether retention trims the layers (rearranging kinds and kNone, when the config has a
  // schedule and a window to score with).
  bool Retains() const;
  // Rows layer `layer` may keep (RetentionBudget over all n rows).
  int64_t Budget(int64_t layer, int64_t n_layers) const;
  // By position: the rows retention must keep at a layer that recomputed `set`: forced rows,
  // plus the set's when the layer reused rearranged rows.
  std::vector<uint8_t> Protected(std::span<const int32_t> set, bool reusing) const;
};

// The common token prefix of a and b, at most `limit` tokens.
int64_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b, int64_t limit);

// The exact-reuse rule (ReuseConfig::exact_reuse): the number of leading reference rows a hit
// copies unchanged, or -1 when the prompt differs from the reference before its last `window`
// tokens. At least the last max(window, 1) tokens are left to compute (their logits, and the
// same batched kernels a full prefill runs on them).
int64_t ExactReuseRows(std::span<const int32_t> ids, std::span<const int32_t> ref_ids,
                       int64_t window);

// The selective schedule (ReusePlan::Keep): how many tokens layer l + 1 recomputes when layer l
// computed s of the n tokens the plan computes. After layer 0, ceil(recompute_ratio * n); after
// a deeper layer, ceil(alpha * s); never fewer than min(n, recompute_min_tokens) nor more than
// s. (Forced tokens are kept beyond it.)
int64_t RecomputeKeep(const ReuseConfig& config, int64_t n, int64_t s, int64_t layer);

// The fallback guard on a selective hit's layer-0 deviations (dev, one per computed token):
// their mean in *mean; true when the guard is on (fallback_deviation > 0) and the mean exceeds
// it (ReuseConfig::fallback_deviation).
bool GuardFallsBack(const ReuseConfig& config, std::span<const float> dev, float* mean);

// The plan of a hit on a reference (ids[n] against ref_ids[m] with `match`, which must cover
// the n tokens and name rows below m: CheckMatch): kCopyPrefix when exact reuse applies, else
// kHybridSelective when its rule above holds, else kSelective; a rearranging plan gathers from
// the match re-aligned by AlignExactRuns (config.exact_run_tokens), not from `match` as it is.
ReusePlan PlanReuse(std::span<const int32_t> ids, std::span<const int32_t> ref_ids,
                    const TokenMatch& match, const ReuseConfig& config);
// The selective plan of `match` (its n = match.ref_index.size() tokens) with rows
// [0, copy_rows) copied (clamped to [0, n - 1]): kSelective when none, else kHybridSelective.
// What PlanReuse picks from; executors of a given schedule (benchmarks, parity tests) use it.
ReusePlan PlanSelective(const TokenMatch& match, const ReuseConfig& config, int64_t copy_rows);
// The plan without a reference (kNone) for n tokens.
ReusePlan PlanNoReuse(int64_t n, const ReuseConfig& config);
// The plan of an exact prefix of `prefix_tokens` (the store's exact-prefix index; the hit rule's
// exact and hybrid kinds): kCopyPrefix of min(prefix_tokens, n - 1) rows (the last token is
// always computed, for its logits), kNone when that is 0.
ReusePlan PlanPrefixCopy(int64_t n, int64_t prefix_tokens, const ReuseConfig& config);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_REUSE_PLAN_H_
