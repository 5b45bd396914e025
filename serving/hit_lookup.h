// The lookups behind the hit rule (HitRule in serving/pipeline.h), one copy for the server's
// front workers (FrontWorker::Generate, FrontWorker::Lookup) and `semshare bench --suite reuse`
// (tools/bench_reuse_hits.h, ServedPath::Decide), so that the bench measures what the server
// serves:
//   LookupExactPrefix: the stored turn with the longest exact common prefix (usable KV only);
//   FindBestCandidate: the semantic index's candidates scored by the token matcher, the best
//     kept;
//   PlanHybridRemainder: whether a hybrid's long remainder takes the selective path.
// Thread safety: the store is thread-safe; a ServingSession is used by one thread at a time.
#ifndef SEMSHARE_SERVING_HIT_LOOKUP_H_
#define SEMSHARE_SERVING_HIT_LOOKUP_H_

#include <cstdint>
#include <optional>
#include <span>

#include "absl/status/statusor.h"
#include "cache_store/reference_store.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/serving_session.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::serving {

// Whether a record's KV fits the model and holds one row per token in every layer (the
// namespace pins the model fingerprint; shapes are checked anyway so a record can never index
// past what the forward pass expects).
bool UsableRecord(const store::Record& r, const engine::ModelConfig& c);

// The longest exact prefix of `ids` among the stored turns of `ns` whose KV is usable; an empty
// PrefixMatch (record null, tokens 0) when none, or when the store failed (the store counts
// that; it is a miss to the request, never an error).
store::PrefixMatch LookupExactPrefix(store::ReferenceStore& store, const store::Namespace& ns,
                                     std::span<const int32_t> ids, const engine::ModelConfig& c);

struct BestCandidate {
  store::RecordHandle record;  // null: no candidate could be scored
  engine::TokenMatch match;    // the target's match against `record`
  int32_t candidates = 0;      // candidates the store returned
};

// Sets `ids` as the session's target (its sketch first, whatever the store answers: a miss
// publishes its codes with the record), asks the store for up to `max_candidates` candidates
// by `features` (store::PromptFeatures(ids)), and scores each usable one with the token
// matcher; the highest similarity wins (the first on a tie). A candidate evicted meanwhile,
// damaged, of another shape or that the matcher cannot score is skipped. Errors: the session's
// SetTarget (a device error) and the store's Lookup; the server treats both as a miss.
absl::StatusOr<BestCandidate> FindBestCandidate(
    store::ReferenceStore& store, const store::Namespace& ns, engine::ServingSession& session,
    std::span<const int32_t> ids, std::span<const uint64_t> features, int32_t max_candidates,
    const engine::ModelConfig& c);

// The hybrid's remainder on the selective path (engine::ReusePlan kHybridSelective, issue 15):
// for a prompt whose first `exact_rows` rows are an exact prefix of `record` (the hit rule's
// hybrid) and whose remainder is at least reuse.hybrid_selective_min_tokens long, matches ids
// against the record on `session` (SetTarget, MatchReference) and returns the plan when
// engine::PlanReuse makes a kHybridSelective one of that match (rows [0, lcp) copied, the
// remainder rearranged and selectively recomputed). nullopt when the knob is off, the remainder
// short, the match poor or the session failed: the remainder is then computed in full after the
// copied rows.
std::optional<engine::ReusePlan> PlanHybridRemainder(engine::ServingSession& session,
                                                     const engine::ReuseConfig& reuse,
                                                     std::span<const int32_t> ids,
                                                     const store::Record& record,
                                                     int64_t exact_rows);

}  // namespace semshare::serving

#endif  // SEMSHARE_SERVING_HIT_LOOKUP_H_
