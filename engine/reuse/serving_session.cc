#include "engine/reuse/serving_session.h"

#include <numeric>
#include <utility>
#include <vector>

namespace semshare::engine {

CpuServingSession::CpuServingSession(ReusePrefiller& prefiller)
    : prefiller_(prefiller), cache_(prefiller.forward().NewCache()) {}

std::string_view CpuServingSession::backend() const {
  return prefiller_.forward().backend().name();
}

absl::Status CpuServingSession::SetTarget(std::span<const int32_t> ids) {
  target_ = prefiller_.Sketch(ids);
  return absl::OkStatus();
}

absl::StatusOr<TokenMatch> CpuServingSession::MatchReference(std::span<const int32_t> ref_ids) {
  return prefiller_.Match(target_, prefiller_.Sketch(ref_ids));
}

absl::Status CpuServingSession::Begin(int64_t rows) {
  cache_ = prefiller_.forward().NewCache();
  cache_.Reserve(rows);
  return absl::OkStatus();
}

absl::Status CpuServingSession::PrefillFull(std::span<const int32_t> ids, float* logits) {
  std::vector<int32_t> pos(ids.size());
  std::iota(pos.begin(), pos.end(), 0);
  return prefiller_.forward().Forward(ids, pos, cache_, logits);
}

absl::StatusOr<PrefillStats> CpuServingSession::PrefillHit(std::span<const int32_t> ids,
                                                           std::span<const int32_t> ref_ids,
                                                           const KvCache& ref_kv,
                                                           const TokenMatch& match, float* logits) {
  return prefiller_.PrefillHit(ids, ref_ids, ref_kv, match, &cache_, logits);
}

absl::StatusOr<PrefillStats> CpuServingSession::PrefillPlan(std::span<const int32_t> ids,
                                                            std::span<const int32_t> ref_ids,
                                                            const KvCache& ref_kv,
                                                            const ReusePlan& plan, float* logits) {
  return prefiller_.PrefillPlan(ids, ref_ids, ref_kv, plan, &cache_, logits);
}

absl::Status CpuServingSession::Step(int32_t id, float* logits) {
  const int32_t p = cache_.next_position();
  return prefiller_.forward().Forward({&id, 1}, {&p, 1}, cache_, logits);
}

absl::StatusOr<KvCache> CpuServingSession::TakeKv() {
  KvCache out = std::move(cache_);
  cache_ = prefiller_.forward().NewCache();
  return out;
}

}  // namespace semshare::engine
