#include "serving/hit_lookup.h"

#include <utility>

#include "engine/reuse/reuse_plan.h"

namespace semshare::serving {

bool UsableRecord(const store::Record& r, const engine::ModelConfig& c) {
  if (r.ids.empty() || r.kv.n_layers() != c.n_layers ||
      r.kv.kv_dim() != c.n_kv_heads * c.head_dim) {
    return false;
  }
  for (int64_t l = 0; l < r.kv.n_layers(); ++l) {
    if (r.kv.layer(l).rows() != static_cast<int64_t>(r.ids.size())) return false;
  }
  return true;
}

store::PrefixMatch LookupExactPrefix(store::ReferenceStore& store, const store::Namespace& ns,
                                     std::span<const int32_t> ids, const engine::ModelConfig& c) {
  absl::StatusOr<store::PrefixMatch> pm = store.LookupPrefix(ns, ids);
  if (!pm.ok() || pm->record == nullptr || !UsableRecord(*pm->record, c)) {
    return store::PrefixMatch{};
  }
  return *std::move(pm);
}

absl::StatusOr<BestCandidate> FindBestCandidate(
    store::ReferenceStore& store, const store::Namespace& ns, engine::ServingSession& session,
    std::span<const int32_t> ids, std::span<const uint64_t> features, int32_t max_candidates,
    const engine::ModelConfig& c) {
  if (absl::Status s = session.SetTarget(ids); !s.ok()) return s;
  absl::StatusOr<std::vector<store::Candidate>> cands = store.Lookup(ns, features, max_candidates);
  if (!cands.ok()) return cands.status();
  BestCandidate best;
  best.candidates = static_cast<int32_t>(cands->size());
  for (const store::Candidate& cand : *cands) {
    absl::StatusOr<store::RecordHandle> rec = store.Get(ns, cand.id);
    if (!rec.ok()) continue;  // evicted meanwhile, or damaged (dropped and counted)
    if (!UsableRecord(**rec, c)) continue;
    absl::StatusOr<engine::TokenMatch> scored = session.MatchReference((*rec)->ids);
    if (!scored.ok()) continue;
    if (best.record == nullptr || scored->similarity > best.match.similarity) {
      best.record = *std::move(rec);
      best.match = *std::move(scored);
    }
  }
  return best;
}

std::optional<engine::ReusePlan> PlanHybridRemainder(engine::ServingSession& session,
                                                     const engine::ReuseConfig& reuse,
                                                     std::span<const int32_t> ids,
                                                     const store::Record& record,
                                                     int64_t exact_rows) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (reuse.hybrid_selective_min_tokens <= 0 || exact_rows <= 0 ||
      n - exact_rows < reuse.hybrid_selective_min_tokens) {
    return std::nullopt;
  }
  if (!session.SetTarget(ids).ok()) return std::nullopt;
  absl::StatusOr<engine::TokenMatch> match = session.MatchReference(record.ids);
  if (!match.ok()) return std::nullopt;
  engine::ReusePlan plan = engine::PlanReuse(ids, record.ids, *match, reuse);
  if (plan.kind != engine::ReuseKind::kHybridSelective) return std::nullopt;
  return plan;
}

}  // namespace semshare::serving
