#include "server/inference.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache_store/prompt_features.h"

namespace semshare::server {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Drops the rows of generated tokens (positions >= n) so only the prompt's KV remains. Rows
// are in ascending position order in every layer.
void TrimToPrompt(engine::KvCache& kv, int64_t n) {
  const int64_t kvd = kv.kv_dim();
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    engine::LayerKv& layer = kv.layer(l);
    int64_t keep = layer.rows();
    while (keep > 0 && layer.pos[keep - 1] >= n) --keep;
    layer.pos.resize(keep);
    layer.k.resize(keep * kvd);
    layer.v.resize(keep * kvd);
  }
}

// Holds `bytes` in the kv_cache_bytes gauge for the lifetime of a request's cache.
class KvBytesHold {
 public:
  explicit KvBytesHold(Metrics* m) : m_(m) {}
  ~KvBytesHold() { Set(0); }
  void Set(int64_t bytes) {
    if (m_ != nullptr && bytes != bytes_) m_->AddKvBytes(bytes - bytes_);
    bytes_ = bytes;
  }

 private:
  Metrics* m_;
  int64_t bytes_ = 0;
};

}  // namespace

InferenceWorker::InferenceWorker(const SharedModel& shared,
                                 std::unique_ptr<engine::Backend> backend,
                                 const ServingOptions& options, store::ReferenceStore* store,
                                 Metrics* metrics, std::unique_ptr<engine::ServingSession> session)
    : shared_(shared),
      model_(*shared.model),
      backend_(std::move(backend)),
      options_(options),
      store_(store),
      metrics_(metrics),
      prefiller_(model_, *backend_, options.reuse),
      generator_(model_, *backend_),
      session_(session != nullptr ? std::move(session)
                                  : std::make_unique<engine::CpuServingSession>(prefiller_)) {}

absl::StatusOr<std::vector<int32_t>> InferenceWorker::Tokenize(const PromptInput& input) const {
  std::vector<int32_t> ids;
  if (input.is_chat) {
    absl::StatusOr<std::vector<int32_t>> chat = generator_.TokenizeChat(input.messages);
    if (!chat.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages: ", std::string(chat.status().message())));
    }
    ids = *std::move(chat);
  } else {
    ids = generator_.TokenizePrompt(input.prompt);
  }
  if (ids.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n > options_.max_prompt_tokens) {
    return absl::OutOfRangeError(absl::StrCat("the prompt has ", n,
                                              " tokens; this server accepts at most ",
                                              options_.max_prompt_tokens, " (shorten it)"));
  }
  return ids;
}

InferenceWorker::Best InferenceWorker::FindBest(const store::Namespace& ns,
                                                std::span<const int32_t> ids,
                                                const std::vector<uint64_t>& features,
                                                int32_t* candidates) {
  Best best;
  *candidates = 0;
  if (store_ == nullptr) return best;
  // The target's sketch first, whatever the store answers: a miss publishes its codes with
  // the record (and no earlier request's sketch can stand in for it).
  if (!session_->SetTarget(ids).ok()) return best;  // a device error: a miss
  absl::StatusOr<std::vector<store::Candidate>> cands =
      store_->Lookup(ns, features, options_.lookup_candidates);
  if (!cands.ok()) return best;  // counted by the store; a miss
  *candidates = static_cast<int32_t>(cands->size());
  const engine::ModelConfig& c = model_.config;
  for (const store::Candidate& cand : *cands) {
    absl::StatusOr<store::RecordHandle> rec = store_->Get(ns, cand.id);
    if (!rec.ok()) continue;  // evicted meanwhile, or damaged (dropped and counted)
    const store::Record& r = **rec;
    // The namespace pins the model fingerprint; shapes are checked anyway so a record can
    // never index past what the forward pass expects.
    if (r.ids.empty() || r.kv.n_layers() != c.n_layers ||
        r.kv.kv_dim() != c.n_kv_heads * c.head_dim ||
        r.kv.rows() != static_cast<int64_t>(r.ids.size())) {
      continue;
    }
    absl::StatusOr<engine::TokenMatch> scored = session_->MatchReference(r.ids);
    if (!scored.ok()) continue;
    engine::TokenMatch match = *std::move(scored);
    if (best.record == nullptr || match.similarity > best.match.similarity) {
      best.record = *std::move(rec);
      best.match = std::move(match);
    }
  }
  return best;
}

absl::StatusOr<InferenceResult> InferenceWorker::Run(const InferenceRequest& request) {
  const auto t0 = Clock::now();
  auto cancelled = [&] { return request.cancelled && request.cancelled(); };
  absl::StatusOr<std::vector<int32_t>> tokenized = Tokenize(request.input);
  if (!tokenized.ok()) return tokenized.status();
  const std::vector<int32_t>& ids = *tokenized;
  const int64_t n = static_cast<int64_t>(ids.size());
  const engine::GenerateOptions& opt = request.options;
  if (auto s = generator_.CheckOptions(n, opt); !s.ok()) {
    // Only the context can still fail here (the service validated the rest).
    return absl::OutOfRangeError(std::string(s.message()));
  }
  if (cancelled()) return absl::CancelledError("cancelled before prefill");

  // Cancellation and deadlines also stop a running prefill (between chunks and layers); the
  // check captures `request`, so it is cleared on every return.
  session_->SetInterrupt(cancelled);
  struct ClearInterrupt {
    engine::ServingSession& s;
    ~ClearInterrupt() { s.SetInterrupt(nullptr); }
  } clear_interrupt{*session_};

  InferenceResult res;
  const bool lookup = store_ != nullptr && request.policy != CachePolicy::kBypass &&
                      n >= options_.reuse.min_reuse_tokens;
  std::vector<uint64_t> features;
  Best best;
  if (lookup) {
    const auto tl = Clock::now();
    features = store::PromptFeatures(ids);
    best = FindBest(request.ns, ids, features, &res.candidates);
    res.looked_up = true;
    if (best.record != nullptr) {
      res.similarity = best.match.similarity;
      res.reference_id = best.record->id;
    }
    res.lookup_ms = MsBetween(tl, Clock::now());
  }
  if (cancelled()) return absl::CancelledError("cancelled before prefill");

  if (auto s = session_->Begin(n + opt.max_tokens); !s.ok()) return s;
  std::vector<float> logits(model_.config.vocab_size);
  KvBytesHold kv_hold(metrics_);
  const auto tp = Clock::now();
  const bool hit = best.record != nullptr && best.match.similarity >= request.threshold;
  if (hit) {
    kv_hold.Set(best.record->kv.ByteSize());  // the reference's KV is read while prefilling
    absl::StatusOr<engine::PrefillStats> st =
        session_->PrefillHit(ids, best.record->ids, best.record->kv, best.match, logits.data());
    if (!st.ok()) return st.status();
    res.cache_result = CacheResult::kHit;
    res.reused_tokens = st->reused_tokens;
    res.recomputed_tokens = st->recomputed_tokens;
  } else {
    if (auto s = session_->PrefillFull(ids, logits.data()); !s.ok()) return s;
    res.cache_result = lookup ? CacheResult::kMiss : CacheResult::kBypass;
    res.recomputed_tokens = n;
  }
  best = Best{};  // unpin the candidates
  const auto td = Clock::now();
  res.prefill_ms = MsBetween(tp, td);
  res.kv_bytes = session_->KvBytes();
  kv_hold.Set(res.kv_bytes);

  engine::GenerateOptions decode_opt = opt;
  auto last_token = Clock::now();
  int64_t steps = 0;
  decode_opt.should_stop = [&]() {
    const auto now = Clock::now();
    if (steps++ > 0 && metrics_ != nullptr) {
      metrics_->RecordInterTokenLatency(std::chrono::duration<double>(now - last_token).count());
    }
    last_token = now;
    return cancelled();
  };
  const engine::Generator::DecodeStep step = [this](int32_t id, float* out) {
    return session_->Step(id, out);
  };
  absl::StatusOr<engine::GenerateResult> gen =
      generator_.DecodeWith(n, step, logits, decode_opt, request.on_text);
  if (!gen.ok()) return gen.status();
  if (gen->finish == engine::FinishReason::kCancelled) {
    return absl::CancelledError("cancelled during decoding");
  }
  res.first_token_ms = MsBetween(t0, td) + gen->timings.ttft_ms;
  res.gen = *std::move(gen);

  if (lookup && !hit && request.policy == CachePolicy::kAuto) {
    absl::StatusOr<engine::KvCache> kv = session_->TakeKv();
    if (kv.ok()) {
      TrimToPrompt(*kv, n);
      res.published =
          Publish(request.ns, ids, *std::move(kv), TargetSketch(ids), std::move(features)).ok();
    }
  }
  res.total_ms = MsBetween(t0, Clock::now());
  return res;
}

engine::TokenSketch InferenceWorker::TargetSketch(std::span<const int32_t> ids) {
  engine::TokenSketch s = session_->TakeTargetSketch();
  if (s.n != static_cast<int64_t>(ids.size())) s = engine::TokenSketch{};  // no CPU sketch made
  return s;
}

absl::Status InferenceWorker::Publish(const store::Namespace& ns, std::vector<int32_t> ids,
                                      engine::KvCache kv, engine::TokenSketch sketch,
                                      std::vector<uint64_t> features) {
  engine::Reference ref;
  ref.ids = std::move(ids);
  ref.kv = std::move(kv);
  ref.sketch = std::move(sketch);
  absl::StatusOr<store::Record> rec =
      store::RecordFromReference(ns, std::move(ref), options_.reuse, std::move(features));
  if (!rec.ok()) return rec.status();
  if (!store_->Publish(std::make_shared<const store::Record>(*std::move(rec)))) {
    return absl::ResourceExhaustedError("the publish queue is full");
  }
  return absl::OkStatus();
}

absl::StatusOr<store::RecordHandle> InferenceWorker::AddReference(const PromptInput& input,
                                                                  const store::Namespace& ns) {
  if (store_ == nullptr) return absl::FailedPreconditionError("this server has no store");
  absl::StatusOr<std::vector<int32_t>> ids = Tokenize(input);
  if (!ids.ok()) return ids.status();
  // A full prefill on the session's backend; its KV and the prompt's sketch make the record.
  const int64_t n = static_cast<int64_t>(ids->size());
  if (auto s = session_->Begin(n); !s.ok()) return s;
  if (auto s = session_->PrefillFull(*ids, nullptr); !s.ok()) return s;
  absl::StatusOr<engine::KvCache> kv = session_->TakeKv();
  if (!kv.ok()) return kv.status();
  engine::Reference ref;
  ref.kv = *std::move(kv);
  ref.sketch = prefiller_.Sketch(*ids);
  ref.ids = *std::move(ids);
  std::vector<uint64_t> features = store::PromptFeatures(ref.ids);
  absl::StatusOr<store::Record> rec =
      store::RecordFromReference(ns, std::move(ref), options_.reuse, std::move(features));
  if (!rec.ok()) return rec.status();
  auto handle = std::make_shared<const store::Record>(*std::move(rec));
  if (!store_->Publish(handle)) {
    return absl::ResourceExhaustedError("the publish queue is full; retry later");
  }
  store_->Flush();
  return handle;
}

absl::StatusOr<LookupResult> InferenceWorker::Lookup(const PromptInput& input,
                                                     const store::Namespace& ns, float threshold) {
  const auto t0 = Clock::now();
  absl::StatusOr<std::vector<int32_t>> ids = Tokenize(input);
  if (!ids.ok()) return ids.status();
  LookupResult out;
  out.prompt_tokens = static_cast<int64_t>(ids->size());
  const std::vector<uint64_t> features = store::PromptFeatures(*ids);
  Best best = FindBest(ns, *ids, features, &out.candidates);
  if (best.record != nullptr) {
    out.reference_id = best.record->id;
    out.similarity = best.match.similarity;
    out.hit = best.match.similarity >= threshold;
  }
  out.lookup_ms = MsBetween(t0, Clock::now());
  return out;
}

}  // namespace semshare::server
