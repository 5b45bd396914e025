#include "serving/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache_store/prompt_features.h"

namespace semshare::serving {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The CPU's default KV budget: a quarter of the host's memory, at most 4 GiB.
int64_t HostKvBudget() {
  const int64_t pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const int64_t quarter = pages > 0 && page > 0 ? pages / 4 * page : int64_t{1} << 30;
  return std::min<int64_t>(quarter, int64_t{4} << 30);
}

}  // namespace

bool HitRule::LooksUpExact(CachePolicy policy, bool have_store, int64_t prompt_tokens) {
  return have_store && policy != CachePolicy::kBypass && prompt_tokens >= store::kPrefixBlockTokens;
}

const char* CacheResultName(CacheResult r) {
  switch (r) {
    case CacheResult::kHit:
      return "hit";
    case CacheResult::kMiss:
      return "miss";
    case CacheResult::kBypass:
      return "bypass";
  }
  return "bypass";
}

// ---- FrontWorker ----

FrontWorker::FrontWorker(Pipeline& pipeline, std::unique_ptr<engine::Backend> backend,
                         std::unique_ptr<engine::ServingSession> session)
    : pipeline_(pipeline),
      backend_(std::move(backend)),
      prefiller_(*pipeline.model_, *backend_, pipeline.options_.serving.reuse),
      generator_(*pipeline.model_, *backend_),
      session_(session != nullptr ? std::move(session)
                                  : std::make_unique<engine::CpuServingSession>(prefiller_)) {}

absl::StatusOr<std::vector<int32_t>> FrontWorker::Tokenize(const PromptInput& input) const {
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
  const int64_t max_prompt = pipeline_.options_.serving.max_prompt_tokens;
  if (n > max_prompt) {
    return absl::OutOfRangeError(absl::StrCat("the prompt has ", n,
                                              " tokens; this server accepts at most ", max_prompt,
                                              " (shorten it)"));
  }
  return ids;
}

BestCandidate FrontWorker::FindBest(const store::Namespace& ns, std::span<const int32_t> ids,
                                    std::span<const uint64_t> features) {
  store::ReferenceStore* store = pipeline_.store_;
  if (store == nullptr) return BestCandidate{};
  absl::StatusOr<BestCandidate> best =
      FindBestCandidate(*store, ns, *session_, ids, features,
                        pipeline_.options_.serving.lookup_candidates, pipeline_.model_->config);
  // A device error (SetTarget) or a store error (counted by the store): a miss.
  return best.ok() ? *std::move(best) : BestCandidate{};
}

engine::TokenSketch FrontWorker::TargetSketch(std::span<const int32_t> ids) {
  engine::TokenSketch s = session_->TakeTargetSketch();
  if (s.n != static_cast<int64_t>(ids.size())) s = engine::TokenSketch{};  // no CPU sketch made
  return s;
}

void FrontWorker::Generate(std::shared_ptr<ServeRequest> request,
                           std::function<void(absl::StatusOr<ServeResult>)> done) {
  const auto t0 = Clock::now();
  auto cancelled = [&] { return request->cancelled && request->cancelled(); };
  absl::StatusOr<std::vector<int32_t>> tokenized = Tokenize(request->input);
  if (!tokenized.ok()) return done(tokenized.status());
  std::vector<int32_t> ids = *std::move(tokenized);
  const int64_t n = static_cast<int64_t>(ids.size());
  if (auto s = generator_.CheckOptions(n, request->options); !s.ok()) {
    // Only the context can still fail here (the adapters validated the rest).
    return done(absl::OutOfRangeError(std::string(s.message())));
  }
  if (cancelled()) return done(absl::CancelledError("cancelled before prefill"));

  auto res = std::make_shared<ServeResult>();
  const ServingOptions& opt = pipeline_.options_.serving;
  store::ReferenceStore* store = pipeline_.store_;
  const auto tl = Clock::now();
  // Exact first: the longest exact prefix among stored turns, at any length.
  store::PrefixMatch prefix;
  if (HitRule::LooksUpExact(request->policy, store != nullptr, n)) {
    res->looked_up = true;
    prefix = LookupExactPrefix(*store, request->ns, ids, pipeline_.model_->config);
  }
  // Then the semantic path, for long prompts the exact prefix covers too little of.
  const bool semantic = !HitRule::ExactCoversMost(prefix.tokens, n) &&
                        HitRule::LooksUpSemantic(opt.reuse, request->policy, store != nullptr, n);
  BestCandidate best;
  if (semantic) {
    res->looked_up = true;
    best = FindBest(request->ns, ids, store::PromptFeatures(ids));
    res->candidates = best.candidates;
    if (best.record != nullptr) {
      res->similarity = best.match.similarity;
      res->reference_id = best.record->id;
    }
  }
  if (res->looked_up) res->lookup_ms = MsBetween(tl, Clock::now());
  if (cancelled()) return done(absl::CancelledError("cancelled before prefill"));
  HitDecision hit = HitRule::Decide(
      n, prefix.record != nullptr ? prefix.tokens : 0,
      best.record != nullptr && HitRule::Hits(best.match.similarity, request->threshold));
  // The plan, once (a hybrid's long remainder is matched against the stored turn here).
  const auto tr = Clock::now();
  engine::ReusePlan plan =
      PlanHit(&hit, *session_, opt.reuse, ids,
              hit.kind == HitKind::kSemantic ? best.record.get() : prefix.record.get(), best.match);
  if (hit.selective_remainder) res->lookup_ms += MsBetween(tr, Clock::now());
  res->cache_result = hit.kind != HitKind::kMiss ? CacheResult::kHit
                      : res->looked_up           ? CacheResult::kMiss
                                                 : CacheResult::kBypass;
  // Every turn with its full KV (a miss or an exact prefix: nothing was evicted) is published
  // with its answer, so that the next turn of a conversation extends it.
  const bool publish =
      store != nullptr && request->policy == CachePolicy::kAuto && !plan.rearranges();

  auto lr = std::make_unique<LoopRequest>();
  lr->ids = ids;
  lr->options = request->options;
  lr->keep_kv = publish;
  if (plan.kind != engine::ReuseKind::kNone) {
    // "exact": rows copied, the rest computed (a semantic candidate that repeats the prompt
    // but for its last tokens, too); "hybrid": an exact prefix and the selective path after it.
    res->hit_kind = plan.kind == engine::ReuseKind::kCopyPrefix ? "exact"
                    : hit.kind == HitKind::kSemantic            ? "semantic"
                                                                : "hybrid";
    if (hit.kind == HitKind::kSemantic) {
      lr->reference = std::move(best.record);
    } else {
      res->reference_id = prefix.id;
      lr->reference = std::move(prefix.record);
    }
    if (hit.selective_remainder) res->similarity = plan.remainder_similarity;
  }
  lr->plan = std::move(plan);
  best = BestCandidate{};
  prefix = store::PrefixMatch{};
  lr->cancelled = request->cancelled;
  lr->on_text = request->on_text;
  engine::TokenSketch sketch = semantic ? TargetSketch(ids) : engine::TokenSketch{};
  const auto submitted = Clock::now();
  const double before_loop_ms = MsBetween(t0, submitted);
  Pipeline* pipeline = &pipeline_;
  lr->done = [pipeline, res, done, publish, before_loop_ms, ns = request->ns, ids = std::move(ids),
              sketch = std::move(sketch)](absl::StatusOr<LoopResult> lres) mutable {
    if (!lres.ok()) return done(lres.status());
    ServeResult& r = *res;
    r.gen = std::move(lres->gen);
    const int64_t n = static_cast<int64_t>(ids.size());
    if (lres->prefill.hit) {
      r.exact_tokens = lres->prefill.copied_rows;
      r.reused_tokens = lres->prefill.reused_tokens;
      r.recomputed_tokens = lres->prefill.recomputed_tokens;
    } else {
      r.exact_tokens = lres->copied_rows;
      r.reused_tokens = lres->copied_rows;
      r.recomputed_tokens = n - lres->copied_rows;
      if (lres->copied_rows == 0 && r.cache_result == CacheResult::kHit) {
        // The backend could not copy the prefix, or the reuse guard judged a semantic match
        // poor (PrefillStats::fallback): it prefilled everything. Counted as a miss.
        r.cache_result = CacheResult::kMiss;
        r.hit_kind = lres->prefill.fallback ? "fallback" : "";
      }
    }
    r.kv_bytes = lres->kv_bytes;
    r.preemptions = lres->preemptions;
    r.loop_queue_ms = lres->queue_ms;
    r.prefill_ms = lres->prefill_ms;
    r.first_token_ms = before_loop_ms + lres->ttft_ms;
    r.total_ms = before_loop_ms + lres->total_ms;
    if (publish && lres->kv.n_layers() > 0) {
      // The turn's rows: the prompt and the generated tokens that were fed back (the last one
      // sampled never is).
      const int64_t rows = lres->kv.rows();
      const std::vector<int32_t>& gen = r.gen.tokens;
      if (rows >= n && rows - n <= static_cast<int64_t>(gen.size()) &&
          rows >= store::kPrefixBlockTokens) {
        ids.insert(ids.end(), gen.begin(), gen.begin() + (rows - n));
        if (sketch.n != rows) sketch = engine::TokenSketch{};  // codes cover the prompt only
        std::vector<uint64_t> features = store::PromptFeatures(ids);
        r.published = pipeline->Publish(ns, std::move(ids), std::move(lres->kv), std::move(sketch),
                                        std::move(features));
      }
    }
    done(std::move(r));
  };
  if (absl::Status s = pipeline_.loop_->Submit(std::move(lr)); !s.ok()) done(s);
}

absl::StatusOr<store::RecordHandle> FrontWorker::AddReference(const PromptInput& input,
                                                              const store::Namespace& ns) {
  store::ReferenceStore* store = pipeline_.store_;
  if (store == nullptr) return absl::FailedPreconditionError("this server has no store");
  absl::StatusOr<std::vector<int32_t>> ids = Tokenize(input);
  if (!ids.ok()) return ids.status();
  // A full prefill through the engine loop (it shares the KV budget); its KV and the prompt's
  // sketch make the record.
  auto lr = std::make_unique<LoopRequest>();
  lr->ids = *ids;
  lr->prefill_only = true;
  lr->keep_kv = true;
  std::promise<absl::StatusOr<LoopResult>> promise;
  std::future<absl::StatusOr<LoopResult>> result = promise.get_future();
  lr->done = [&promise](absl::StatusOr<LoopResult> r) { promise.set_value(std::move(r)); };
  if (absl::Status s = pipeline_.loop_->Submit(std::move(lr)); !s.ok()) return s;
  absl::StatusOr<LoopResult> r = result.get();
  if (!r.ok()) return r.status();
  engine::Reference ref;
  ref.kv = std::move(r->kv);
  ref.sketch = prefiller_.Sketch(*ids);
  ref.ids = *std::move(ids);
  std::vector<uint64_t> features = store::PromptFeatures(ref.ids);
  absl::StatusOr<store::Record> rec = store::RecordFromReference(
      ns, std::move(ref), pipeline_.options_.serving.reuse, std::move(features));
  if (!rec.ok()) return rec.status();
  auto handle = std::make_shared<const store::Record>(*std::move(rec));
  if (!store->Publish(handle)) {
    return absl::ResourceExhaustedError("the publish queue is full; retry later");
  }
  store->Flush();
  return handle;
}

absl::StatusOr<LookupResult> FrontWorker::Lookup(const PromptInput& input,
                                                 const store::Namespace& ns, float threshold) {
  const auto t0 = Clock::now();
  absl::StatusOr<std::vector<int32_t>> ids = Tokenize(input);
  if (!ids.ok()) return ids.status();
  LookupResult out;
  out.prompt_tokens = static_cast<int64_t>(ids->size());
  const BestCandidate best = FindBest(ns, *ids, store::PromptFeatures(*ids));
  out.candidates = best.candidates;
  if (best.record != nullptr) {
    out.reference_id = best.record->id;
    out.similarity = best.match.similarity;
    out.hit = HitRule::Hits(best.match.similarity, threshold);
  }
  out.lookup_ms = MsBetween(t0, Clock::now());
  return out;
}

// ---- Pipeline ----

Pipeline::Pipeline(std::shared_ptr<const engine::Model> model, const PipelineOptions& options,
                   store::ReferenceStore* store, PipelineObserver* observer)
    : model_(std::move(model)), options_(options), store_(store), observer_(observer) {}

Pipeline::~Pipeline() {
  // Front jobs first (they submit to the loop), then the loop (its requests finish), then the
  // front workers' and the loop's device sessions before the runtime that made them.
  front_.reset();
  loop_.reset();
  workers_.clear();
}

absl::StatusOr<std::unique_ptr<Pipeline>> Pipeline::Create(
    std::shared_ptr<const engine::Model> model, const PipelineOptions& options,
    store::ReferenceStore* store, PipelineObserver* observer) {
  std::unique_ptr<Pipeline> p(new Pipeline(std::move(model), options, store, observer));
  const engine::Model& m = *p->model_;
  absl::StatusOr<std::unique_ptr<engine::ServingRuntime>> runtime =
      engine::MakeServingRuntime(options.backend, m, options.serving.reuse, {});
  if (!runtime.ok()) return runtime.status();
  p->runtime_ = *std::move(runtime);

  std::unique_ptr<BatchRunner> runner;
  LoopOptions lo = options.loop;
  if (p->runtime_ != nullptr) {
    // The batched device runner; its KV budget defaults to 90% of the device memory free after
    // the weights, less an iteration's scratch (serving/batch_runner.h).
    absl::StatusOr<std::unique_ptr<BatchRunner>> r = NewCudaBatchRunner(
        m, *p->runtime_, &lo.kv_cache_bytes, lo.max_batch_tokens, lo.max_num_seqs);
    if (!r.ok()) return r.status();
    runner = *std::move(r);
  } else {
    absl::StatusOr<std::unique_ptr<engine::Backend>> backend = engine::MakeBackend("cpu");
    if (!backend.ok()) return backend.status();
    runner = NewCpuBatchRunner(m, *std::move(backend), options.serving.reuse);
    if (lo.kv_cache_bytes <= 0) lo.kv_cache_bytes = HostKvBudget();
  }
  p->options_.loop = lo;
  p->loop_ = std::make_unique<EngineLoop>(std::move(runner), lo, observer);

  for (int32_t i = 0; i < std::max(1, options.front_workers); ++i) {
    std::unique_ptr<engine::ServingSession> session;
    if (p->runtime_ != nullptr) {
      absl::StatusOr<std::unique_ptr<engine::ServingSession>> s = p->runtime_->NewSession();
      if (!s.ok()) return s.status();
      session = *std::move(s);
    }
    absl::StatusOr<std::unique_ptr<engine::Backend>> backend = engine::MakeBackend("cpu");
    if (!backend.ok()) return backend.status();
    p->workers_.push_back(
        std::make_unique<FrontWorker>(*p, *std::move(backend), std::move(session)));
  }
  Scheduler::Observer front_observer;
  if (observer != nullptr) {
    front_observer = [observer](int64_t r, int64_t w) { observer->OnFrontQueues(r, w); };
  }
  p->front_ = std::make_unique<Scheduler>(static_cast<int32_t>(p->workers_.size()),
                                          options.max_queue, std::move(front_observer));
  return p;
}

absl::Status Pipeline::Generate(std::shared_ptr<ServeRequest> request,
                                std::function<void(absl::StatusOr<ServeResult>)> done) {
  const auto accepted = Clock::now();
  return front_->Submit(
      [this, accepted, request = std::move(request), done = std::move(done)](int32_t i) {
        FrontWorker& w = *workers_[i];
        if (request->cancelled && request->cancelled()) {
          return done(absl::CancelledError("cancelled while queued"));
        }
        const double front_ms = MsBetween(accepted, Clock::now());
        w.Generate(request, [front_ms, done](absl::StatusOr<ServeResult> r) {
          if (r.ok()) r->front_queue_ms = front_ms;
          done(std::move(r));
        });
      });
}

absl::Status Pipeline::RunFront(std::function<void(FrontWorker&)> job) {
  return front_->Submit([this, job = std::move(job)](int32_t i) { job(*workers_[i]); });
}

void Pipeline::Close() { front_->Close(); }

bool Pipeline::WaitIdle(int64_t timeout_ms) {
  const auto t0 = Clock::now();
  if (!front_->WaitIdle(timeout_ms)) return false;
  const int64_t left = timeout_ms - static_cast<int64_t>(MsBetween(t0, Clock::now()));
  return loop_->WaitIdle(std::max<int64_t>(left, 0));
}

int64_t Pipeline::running() const { return loop_->Stats().running; }

int64_t Pipeline::waiting() const {
  return front_->running() + front_->waiting() + loop_->Stats().waiting;
}

engine::BackendMemory Pipeline::Memory() const {
  return runtime_ != nullptr ? runtime_->Memory() : engine::BackendMemory{};
}

bool Pipeline::Publish(const store::Namespace& ns, std::vector<int32_t> ids, engine::KvCache kv,
                       engine::TokenSketch sketch, std::vector<uint64_t> features) {
  engine::Reference ref;
  ref.ids = std::move(ids);
  ref.kv = std::move(kv);
  ref.sketch = std::move(sketch);
  absl::StatusOr<store::Record> rec =
      store::RecordFromReference(ns, std::move(ref), options_.serving.reuse, std::move(features));
  if (!rec.ok()) return false;
  return store_->Publish(std::make_shared<const store::Record>(*std::move(rec)));
}

engine::ReusePlan PlanHit(HitDecision* hit, engine::ServingSession& session,
                          const engine::ReuseConfig& reuse, std::span<const int32_t> ids,
                          const store::Record* record, const engine::TokenMatch& match) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (hit->kind == HitKind::kMiss || record == nullptr) return engine::PlanNoReuse(n, reuse);
  if (hit->kind == HitKind::kSemantic) return engine::PlanReuse(ids, record->ids, match, reuse);
  if (hit->kind == HitKind::kHybrid) {
    std::optional<engine::ReusePlan> p =
        PlanHybridRemainder(session, reuse, ids, *record, hit->exact_rows);
    hit->selective_remainder = p.has_value();
    if (p.has_value()) return *std::move(p);
  }
  return engine::PlanPrefixCopy(n, hit->exact_rows, reuse);
}

}  // namespace semshare::serving
