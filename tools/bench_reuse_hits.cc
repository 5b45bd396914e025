#include "tools/bench_reuse_hits.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache_store/prompt_features.h"
#include "cache_store/record.h"
#include "engine/cpu/cpu_backend.h"
#include "serving/hit_lookup.h"

namespace semshare::tools {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServedPath>> ServedPath::Create(const engine::Model& model,
                                                               const ServedOptions& options) {
  if (auto s = options.serving.reuse.Validate(); !s.ok()) return s;
  if (options.chunk < 1) return absl::InvalidArgumentError("the prefill chunk must be >= 1");
  absl::StatusOr<std::unique_ptr<store::ReferenceStore>> st =
      store::ReferenceStore::Open(store::StoreOptions{});
  if (!st.ok()) return st.status();
  return std::unique_ptr<ServedPath>(new ServedPath(model, options, *std::move(st)));
}

ServedPath::ServedPath(const engine::Model& model, const ServedOptions& options,
                       std::unique_ptr<store::ReferenceStore> store)
    : model_(model),
      options_(options),
      ns_{"bench", model.fingerprint},
      store_(std::move(store)),
      backend_(std::make_unique<engine::CpuBackend>()),
      prefiller_(model, *backend_, options.serving.reuse),
      session_(prefiller_),
      runner_(serving::NewCpuBatchRunner(model, std::make_unique<engine::CpuBackend>(),
                                         options.serving.reuse)) {}

ServedPath::~ServedPath() = default;

absl::Status ServedPath::Hold(engine::Reference ref) {
  if (auto s = store_->Clear(); !s.ok()) return s;
  std::vector<uint64_t> features = store::PromptFeatures(ref.ids);
  absl::StatusOr<store::Record> rec =
      store::RecordFromReference(ns_, std::move(ref), options_.serving.reuse, std::move(features));
  if (!rec.ok()) return rec.status();
  if (!store_->Publish(std::make_shared<const store::Record>(*std::move(rec)))) {
    return absl::ResourceExhaustedError("the store's publish queue refused the reference");
  }
  store_->Flush();
  if (store_->List(&ns_).empty()) {
    return absl::InternalError("the store did not keep the reference (over its byte budget?)");
  }
  return absl::OkStatus();
}

absl::StatusOr<ServedDecision> ServedPath::Decide(std::span<const int32_t> ids) {
  using serving::CachePolicy;
  using serving::HitRule;
  ServedDecision d;
  const int64_t n = static_cast<int64_t>(ids.size());
  d.prompt_tokens = n;
  const auto t0 = Clock::now();
  // Exact first (FrontWorker::Generate): the longest exact prefix among stored turns.
  store::PrefixMatch prefix;
  if (HitRule::LooksUpExact(CachePolicy::kAuto, /*have_store=*/true, n)) {
    prefix = serving::LookupExactPrefix(*store_, ns_, ids, model_.config);
  }
  d.prefix_tokens = prefix.record != nullptr ? prefix.tokens : 0;
  // Then the semantic candidates, for long prompts the exact prefix covers too little of.
  d.semantic_lookup = !HitRule::ExactCoversMost(d.prefix_tokens, n) &&
                      HitRule::LooksUpSemantic(options_.serving.reuse, CachePolicy::kAuto,
                                               /*have_store=*/true, n);
  serving::BestCandidate best;
  if (d.semantic_lookup) {
    absl::StatusOr<serving::BestCandidate> found =
        serving::FindBestCandidate(*store_, ns_, session_, ids, store::PromptFeatures(ids),
                                   options_.serving.lookup_candidates, model_.config);
    if (!found.ok()) return found.status();
    best = *std::move(found);
    d.candidates = best.candidates;
    if (best.record != nullptr) d.similarity = best.match.similarity;
  }
  const bool semantic_hit =
      best.record != nullptr &&
      HitRule::Hits(best.match.similarity, options_.serving.reuse.hit_threshold);
  d.hit = HitRule::Decide(n, d.prefix_tokens, semantic_hit);
  // The plan as the server makes it (a hybrid's long remainder matched against the stored turn).
  d.record = d.hit.kind == serving::HitKind::kSemantic ? std::move(best.record)
             : d.hit.kind != serving::HitKind::kMiss   ? std::move(prefix.record)
                                                       : nullptr;
  d.plan =
      serving::PlanHit(&d.hit, session_, options_.serving.reuse, ids, d.record.get(), best.match);
  d.lookup_ms = MsSince(t0);
  return d;
}

absl::StatusOr<ServedPrefill> ServedPath::Prefill(const ServedDecision& d,
                                                  std::span<const int32_t> ids, float* logits) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 1) return absl::InvalidArgumentError("the prompt has no tokens");
  if (d.hit.kind != serving::HitKind::kMiss && d.record == nullptr) {
    return absl::InvalidArgumentError("a hit without its record");
  }
  absl::StatusOr<std::unique_ptr<serving::SeqKv>> seq = runner_->NewSeq(n);
  if (!seq.ok()) return seq.status();
  ServedPrefill out;
  const int64_t n_layers = model_.config.n_layers;
  const auto t0 = Clock::now();
  const bool selective = d.plan.rearranges();
  if (selective) {
    absl::StatusOr<engine::PrefillStats> st =
        runner_->PrefillHit(**seq, ids, d.record->ids, d.record->kv, d.plan, logits, nullptr);
    if (!st.ok()) return st.status();
    out.stats = *std::move(st);
  } else {
    // The engine loop's admission: copy the exact prefix, then prefill the rest in chunks.
    const int64_t copied = d.plan.kind == engine::ReuseKind::kCopyPrefix ? d.plan.copy_rows : 0;
    if (copied > 0) {
      if (auto s = runner_->CopyPrefix(**seq, d.record->kv, copied); !s.ok()) return s;
    }
    int64_t done = copied;
    std::vector<int32_t> pos(n);
    std::iota(pos.begin(), pos.end(), 0);
    while (done < n) {
      const int64_t chunk = std::min(options_.chunk, n - done);
      const bool last = done + chunk == n;
      const serving::BatchRunner::Item item{seq->get(), ids.subspan(done, chunk),
                                            std::span<const int32_t>(pos).subspan(done, chunk),
                                            last ? logits : nullptr};
      if (auto s = runner_->Forward({&item, 1}); !s.ok()) return s;
      done += chunk;
    }
    out.stats.mode = engine::PrefillMode::kFull;
    out.stats.hit = copied > 0;
    out.stats.prompt_tokens = n;
    out.stats.plan = d.plan.kind;
    engine::SetPrefixCopyStats(n, copied, n_layers, &out.stats);
  }
  out.prefill_ms = MsSince(t0);
  absl::StatusOr<engine::KvCache> kv = runner_->TakeKv(**seq);
  if (!kv.ok()) return kv.status();
  out.kv = *std::move(kv);
  out.stats.kv_bytes = out.kv.ByteSize();
  if (!selective) out.stats.kv_bytes_peak = out.stats.kv_bytes;
  return out;
}

}  // namespace semshare::tools
