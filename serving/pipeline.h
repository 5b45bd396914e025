// The request pipeline (DESIGN.md section 3): the one path every protocol adapter (gRPC today,
// HTTP beside it) hands its requests to.
//
//   Generate: a front worker tokenizes (chat template for conversations), checks limits,
//     looks the prompt up in the store (the exact-prefix index, then the prompt-level index
//     for candidates and the token matcher to rank them: serving/hit_lookup.h) and applies the
//     hit rule (HitRule::Decide below); both are shared with `semshare bench`; the request then
//     goes to the EngineLoop (serving/engine_loop.h), which prefills it (the hit's plan or a full,
//     chunked prefill) and decodes it in the batch with every other running request. When it ends,
//     its prompt's KV is published to the store (a miss under CachePolicy::kAuto), off the loop:
//     the record is queued to the store's writer.
//   Tokenize, LookupReference, AddReference: front-worker jobs (AddReference prefills through
//     the engine loop too, so it shares the KV budget).
//
// Threads: `front_workers` threads (each with a host backend for token sketches and, with
// --backend cuda, a device session for matching on the GPU) and the engine loop's one thread.
// The store, the model and the observer are shared and thread-safe or immutable.
#ifndef SEMSHARE_SERVING_PIPELINE_H_
#define SEMSHARE_SERVING_PIPELINE_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cache_store/reference_store.h"
#include "engine/backend.h"
#include "engine/backend_factory.h"
#include "engine/generator.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/serving_session.h"
#include "engine/reuse/token_matcher.h"
#include "engine/text/chat_template.h"
#include "serving/engine_loop.h"
#include "serving/hit_lookup.h"
#include "serving/scheduler.h"

namespace semshare::serving {

enum class CachePolicy { kAuto, kBypass, kNoPublish };

// cache_result of a request (metrics label, response field).
enum class CacheResult { kHit, kMiss, kBypass };
const char* CacheResultName(CacheResult r);

// The input of a request: a plain prompt or a conversation.
struct PromptInput {
  bool is_chat = false;
  std::string prompt;
  std::vector<engine::ChatMessage> messages;
};

struct ServeRequest {
  PromptInput input;
  engine::GenerateOptions options;  // max_tokens resolved (>= 1)
  CachePolicy policy = CachePolicy::kAuto;
  float threshold = 0.8f;  // hit threshold for this request
  store::Namespace ns;
  // True once the client cancelled, disconnected or its deadline passed; checked between
  // engine iterations (a running prefill checks it between chunks and layers).
  std::function<bool()> cancelled;
  // Streaming: text pieces as they become final (on the engine loop's thread; must be quick);
  // false stops generation.
  engine::TextCallback on_text;
};

struct ServeResult {
  engine::GenerateResult gen;
  CacheResult cache_result = CacheResult::kBypass;
  bool looked_up = false;
  uint64_t reference_id = 0;
  float similarity = -1;  // best candidate's (a selective hybrid: its match); < 0 when none
  int32_t candidates = 0;
  int64_t kv_bytes = 0;
  bool published = false;
  int64_t reused_tokens = 0, recomputed_tokens = 0;
  // A hit's kind: "exact" (an exact prefix of a stored turn, copied), "hybrid" (an exact
  // prefix copied and the rest on the selective path: HitDecision::selective_remainder; lossy,
  // so counted with the semantic hits in the metrics) or "semantic"; a miss's "fallback" when a
  // semantic hit's match was judged poor and prefilled in full; "" else.
  const char* hit_kind = "";
  int64_t exact_tokens = 0;  // prompt tokens whose KV was copied exactly
  int32_t preemptions = 0;
  double front_queue_ms = 0;  // accepted to a front worker's start
  double lookup_ms = 0;
  double loop_queue_ms = 0;  // handed to the engine loop to its admission
  double prefill_ms = 0;
  double first_token_ms = 0;  // front worker's start to the first token
  double total_ms = 0;        // front worker's start to the end
};

struct LookupResult {
  bool hit = false;
  uint64_t reference_id = 0;
  float similarity = -1;
  int32_t candidates = 0;
  int64_t prompt_tokens = 0;
  double lookup_ms = 0;
};

// What a lookup decided: kExact copies every prompt row but the last (a repeated prompt, or one
// a stored turn extends); kHybrid copies an exact prefix and computes the rest (the next turn of
// a conversation); kSemantic runs the selective path on the best candidate; kMiss prefills.
enum class HitKind { kMiss, kExact, kHybrid, kSemantic };
inline const char* HitKindName(HitKind k) {
  switch (k) {
    case HitKind::kExact:
      return "exact";
    case HitKind::kHybrid:
      return "hybrid";
    case HitKind::kSemantic:
      return "semantic";
    case HitKind::kMiss:
      return "miss";
  }
  return "miss";
}
struct HitDecision {
  HitKind kind = HitKind::kMiss;
  int64_t exact_rows = 0;  // kExact, kHybrid: prompt rows copied from the stored turn
  // kHybrid whose long remainder matches the stored turn (PlanHybridRemainder): the engine
  // runs the engine::ReusePlan kHybridSelective (rows [0, exact_rows) copied, the remainder on
  // the selective path) through BatchRunner::PrefillHit instead of computing it in full.
  bool selective_remainder = false;
};

// The hit rule, one place for the server and `semshare bench`, exact first (DESIGN.md 3.3):
//  - with a store and a policy other than bypass, every prompt of at least one block
//    (store::kPrefixBlockTokens) looks up its longest exact prefix among stored turns (prompt +
//    answer): copying those rows is exact (causality), so it applies at any length;
//  - the lossy semantic path (SemShareKV) only looks up prompts of at least min_reuse_tokens,
//    and only when the exact prefix covers less than half of the prompt; its best candidate is
//    a hit at or above the request's threshold;
//  - a semantic hit wins over a shorter exact prefix; otherwise any exact prefix is used.
struct HitRule {
  static bool LooksUpExact(CachePolicy policy, bool have_store, int64_t prompt_tokens);
  static bool ExactCoversMost(int64_t prefix_tokens, int64_t prompt_tokens) {
    return 2 * prefix_tokens >= prompt_tokens;
  }
  static bool LooksUpSemantic(const engine::ReuseConfig& reuse, CachePolicy policy, bool have_store,
                              int64_t prompt_tokens) {
    return have_store && policy != CachePolicy::kBypass && prompt_tokens >= reuse.min_reuse_tokens;
  }
  static bool Hits(float similarity, float threshold) { return similarity >= threshold; }
  // Rows an exact prefix of `prefix_tokens` copies into a prompt of n tokens: the last token is
  // always computed (its logits).
  static int64_t ExactRows(int64_t prefix_tokens, int64_t n) {
    return engine::PlanPrefixCopy(n, prefix_tokens, engine::ReuseConfig{}).copy_rows;
  }
  // The path a prompt of n tokens takes, given its exact prefix (0: none found) and whether
  // its best semantic candidate hits: the semantic hit, else any exact prefix, else a miss.
  static HitDecision Decide(int64_t n, int64_t prefix_tokens, bool semantic_hit) {
    HitDecision d;
    if (semantic_hit) {
      d.kind = HitKind::kSemantic;
    } else if (prefix_tokens > 0) {
      d.exact_rows = ExactRows(prefix_tokens, n);
      d.kind = d.exact_rows == n - 1 ? HitKind::kExact : HitKind::kHybrid;
    }
    return d;
  }
};

// The engine::ReusePlan of a decided hit, made once per request and carried to its executor
// (LoopRequest::plan; `semshare bench --suite reuse` alike): kSemantic: engine::PlanReuse of
// `match` against `record`; kExact and kHybrid: the exact prefix's kCopyPrefix
// (engine::PlanPrefixCopy of hit->exact_rows), or, for a kHybrid whose long remainder matches the
// record, the kHybridSelective plan of PlanHybridRemainder (matched on `session`; sets
// hit->selective_remainder); kMiss: kNone. `record` must be non-null unless hit->kind is kMiss.
engine::ReusePlan PlanHit(HitDecision* hit, engine::ServingSession& session,
                          const engine::ReuseConfig& reuse, std::span<const int32_t> ids,
                          const store::Record* record, const engine::TokenMatch& match);

struct ServingOptions {
  engine::ReuseConfig reuse;      // mode semshare; hit_threshold / min_reuse_tokens from flags
  int32_t lookup_candidates = 4;  // store candidates scored per lookup
  int64_t max_prompt_tokens = 0;  // resolved (> 0)
};

// What the pipeline reports (the server's metrics implement it); thread-safe.
class PipelineObserver : public LoopObserver {
 public:
  // Front workers: jobs queued and running (tokenize, lookup).
  virtual void OnFrontQueues(int64_t running, int64_t waiting) = 0;
};

class Pipeline;

// One front thread's tools: tokenizer, lookups (sketch and match on its session), records.
class FrontWorker {
 public:
  // Borrows pipeline; owns backend (host ops for sketches) and session (matching; null: a
  // CpuServingSession on backend).
  FrontWorker(Pipeline& pipeline, std::unique_ptr<engine::Backend> backend,
              std::unique_ptr<engine::ServingSession> session);

  // Token ids of the input (chat template applied for conversations). InvalidArgument for a
  // conversation the template cannot render; OUT_OF_RANGE over max_prompt_tokens.
  absl::StatusOr<std::vector<int32_t>> Tokenize(const PromptInput& input) const;
  // Tokenize, lookup, the hit rule, then the engine loop; `done` is called exactly once (on
  // this thread for errors before the loop, else on the loop's thread).
  void Generate(std::shared_ptr<ServeRequest> request,
                std::function<void(absl::StatusOr<ServeResult>)> done);
  // Full prefill of the input through the engine loop, published into `ns` and flushed
  // (blocks this front worker until then).
  absl::StatusOr<store::RecordHandle> AddReference(const PromptInput& input,
                                                   const store::Namespace& ns);
  // The lookup a Generate would do, without prefilling.
  absl::StatusOr<LookupResult> Lookup(const PromptInput& input, const store::Namespace& ns,
                                      float threshold);

 private:
  // The semantic candidates scored on session_ (serving/hit_lookup.h); a failed lookup is a
  // miss: no record, no candidates.
  BestCandidate FindBest(const store::Namespace& ns, std::span<const int32_t> ids,
                         std::span<const uint64_t> features);
  // The lookup's target sketch when the session kept a host one (its codes go into the
  // published record; records without codes are valid), else empty.
  engine::TokenSketch TargetSketch(std::span<const int32_t> ids);

  Pipeline& pipeline_;
  std::unique_ptr<engine::Backend> backend_;
  engine::ReusePrefiller prefiller_;  // sketches (CPU session) on backend_
  engine::Generator generator_;       // tokenizer and option checks
  std::unique_ptr<engine::ServingSession> session_;
};

struct PipelineOptions {
  std::string backend = "cpu";  // cpu | cuda
  ServingOptions serving;
  LoopOptions loop;  // kv_cache_bytes 0: the backend's default (see Create)
  int32_t front_workers = 1;
  int32_t max_queue = 64;  // front jobs waiting beyond the front workers
};

class Pipeline {
 public:
  // Builds the backend (the one place that chooses it), the front workers and the engine
  // loop. A KV budget of 0 becomes a quarter of the host's memory (at most 4 GiB) on the CPU,
  // and on CUDA the pages that fit in 90% of the device memory free after the weights, less an
  // iteration's scratch (NewCudaBatchRunner). Errors: the backend's (engine/backend_factory.h).
  static absl::StatusOr<std::unique_ptr<Pipeline>> Create(
      std::shared_ptr<const engine::Model> model, const PipelineOptions& options,
      store::ReferenceStore* store, PipelineObserver* observer);
  ~Pipeline();

  // Queues a Generate; RESOURCE_EXHAUSTED at once when the front queue is full (then `done`
  // is not called), UNAVAILABLE after Close. `done` is called exactly once otherwise.
  absl::Status Generate(std::shared_ptr<ServeRequest> request,
                        std::function<void(absl::StatusOr<ServeResult>)> done);
  // Runs a job on a front worker (Tokenize, Lookup, AddReference); errors as Generate's.
  absl::Status RunFront(std::function<void(FrontWorker&)> job);

  // Stops accepting; queued work still runs.
  void Close();
  // Until nothing is queued or running anywhere, or timeout_ms; true when idle.
  bool WaitIdle(int64_t timeout_ms);
  int64_t running() const;  // requests in the engine loop
  int64_t waiting() const;  // front jobs queued or running + requests awaiting admission
  LoopStats loop_stats() const { return loop_->Stats(); }
  // The device memory of a device backend (BackendMemory::device false on the CPU).
  engine::BackendMemory Memory() const;

  const engine::Model& model() const { return *model_; }
  const ServingOptions& serving() const { return options_.serving; }
  const PipelineOptions& options() const { return options_; }
  store::ReferenceStore* store() const { return store_; }
  EngineLoop& loop() { return *loop_; }

 private:
  friend class FrontWorker;
  Pipeline(std::shared_ptr<const engine::Model> model, const PipelineOptions& options,
           store::ReferenceStore* store, PipelineObserver* observer);
  // Queues the record of a finished request's KV for the store (cheap: moves and a queue).
  bool Publish(const store::Namespace& ns, std::vector<int32_t> ids, engine::KvCache kv,
               engine::TokenSketch sketch, std::vector<uint64_t> features);

  const std::shared_ptr<const engine::Model> model_;
  PipelineOptions options_;
  store::ReferenceStore* const store_;
  PipelineObserver* const observer_;
  std::unique_ptr<engine::ServingRuntime> runtime_;  // device weights; null on the CPU
  std::unique_ptr<EngineLoop> loop_;
  std::vector<std::unique_ptr<FrontWorker>> workers_;  // one per front thread
  std::unique_ptr<Scheduler> front_;  // after loop_ and workers_: its jobs use both
};

}  // namespace semshare::serving

#endif  // SEMSHARE_SERVING_PIPELINE_H_
