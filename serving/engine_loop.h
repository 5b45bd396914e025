// EngineLoop: one thread per model instance that runs every admitted request at once
// (continuous batching with iteration-level scheduling, as Orca, vLLM, SGLang and llama.cpp's
// server do). Each iteration:
//   1. drops requests that were cancelled or whose deadline passed (their KV is freed now);
//   2. admits waiting requests, oldest first (preempted ones before new ones), while fewer than
//      max_num_seqs run and their prompt's KV fits the budget;
//   3. runs at most one semantic hit's prefill (SemShareKV's selective prefill: not chunked,
//      it is a fraction of a full prefill); an exact-prefix hit copies its rows at admission
//      and prefills the rest in chunks like a miss;
//   4. builds one batch: a decode row for every decoding request, then prefill chunks of
//      admitted requests until max_batch_tokens rows (chunked prefill: a long prompt never
//      stalls the decodes for more than one chunk);
//   5. grows the KV: when the decode rows do not fit the budget, the newest running request is
//      preempted (its KV dropped; it waits again at the front and recomputes prompt +
//      generated tokens when readmitted; the text already streamed is kept, sampling goes on
//      where it stopped);
//   6. runs the batch through the BatchRunner and samples each request with its own
//      parameters (engine::TokenStream); finished requests get their result.
// When the runner's own memory runs out first (RESOURCE_EXHAUSTED from NewSeq, CopyPrefix,
// PrefillHit or Forward: the CUDA page pool), the loop does as in 5: Forward's failure
// preempts the newest running request and the iteration is retried without it; an admission
// or hit that does not fit waits at the queue's front with its plan. Nothing new is admitted
// until a request finishes. A request that does not fit even alone fails with
// RESOURCE_EXHAUSTED.
// Lookups, token matching and publishing stay off this thread (serving/pipeline.h).
//
// Thread-safety: Submit, Close, WaitIdle and Stats are thread-safe. A request's callbacks
// (on_text, done) run on the loop's thread and must be quick (queue a gRPC write, post a job).
#ifndef SEMSHARE_SERVING_ENGINE_LOOP_H_
#define SEMSHARE_SERVING_ENGINE_LOOP_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "cache_store/record.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"
#include "serving/batch_runner.h"

namespace semshare::serving {

struct LoopOptions {
  int64_t max_batch_tokens = 256;  // rows per iteration (decode rows + prefill chunks)
  int32_t max_num_seqs = 64;       // requests running at once
  int64_t kv_cache_bytes = 0;      // KV budget over all running requests; > 0
  int32_t max_waiting = 64;        // requests beyond max_num_seqs; more get RESOURCE_EXHAUSTED
};

// What the loop reports as it runs (the server's metrics). Called on the loop's thread.
class LoopObserver {
 public:
  virtual ~LoopObserver() = default;
  virtual void OnQueues(int64_t running, int64_t waiting) = 0;
  // After each iteration: its batch's rows (0: no batch ran, e.g. only cancellations), the KV
  // held by running requests afterwards and their share of the budget (reservations included).
  virtual void OnIteration(int64_t rows, int64_t kv_bytes, double kv_utilization) = 0;
  // A request finished or was preempted: the KV bytes it held at the last OnIteration are
  // free now (before its client hears of it), ahead of the next OnIteration's figures.
  virtual void OnRelease(int64_t kv_bytes) = 0;
  virtual void OnPreemption() = 0;
  virtual void OnInterToken(double seconds) = 0;
};

// One request as the loop runs it. The pipeline fills it; the loop owns it after Submit.
struct LoopRequest {
  std::vector<int32_t> ids;  // the prompt
  engine::GenerateOptions options;
  // Prefill only (AddReference): no token is sampled; the result carries the KV.
  bool prefill_only = false;
  // Hand the request's KV back in the result (to publish it).
  bool keep_kv = false;
  // A reuse hit: the reference (pinned until the prefill is done) and the engine::ReusePlan the
  // pipeline made once for it (serving::PlanHit; kNone without a reference). kCopyPrefix: rows
  // [0, plan.copy_rows) of the reference's KV are copied at admission (BatchRunner::CopyPrefix)
  // and the rest of the prompt is prefilled in chunks like a miss. A rearranging kind
  // (SemShareKV's selective prefill, or the hybrid: an exact prefix and the selective path on
  // the remainder) is the request's whole prefill, BatchRunner::PrefillHit executing the plan.
  store::RecordHandle reference;
  engine::ReusePlan plan;
  // True once the client cancelled or its deadline passed; checked every iteration.
  std::function<bool()> cancelled;
  engine::TextCallback on_text;
  // Called exactly once, on the loop's thread (or in Submit's caller when refused later than
  // Submit's return: never; Submit's own errors are returned, not called back).
  std::function<void(absl::StatusOr<struct LoopResult>)> done;
};

struct LoopResult {
  engine::GenerateResult gen;    // prefill_only: empty
  bool hit = false;              // the reference was used
  int64_t copied_rows = 0;       // an exact prefix's rows copied (0 when it fell back)
  engine::PrefillStats prefill;  // a semantic hit's figures (reused, recomputed tokens)
  engine::KvCache kv;            // keep_kv: every row the request computed
  int64_t kv_bytes = 0;          // KV held after the prefill
  int32_t preemptions = 0;
  double queue_ms = 0;    // Submit to the first admission
  double prefill_ms = 0;  // first admission to the end of the prompt's prefill
  double ttft_ms = 0;     // Submit to the first token sampled
  double total_ms = 0;    // Submit to the end
};

struct LoopStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_bytes = 0, kv_budget = 0;
  int64_t iterations = 0, preemptions = 0;
};

class EngineLoop {
 public:
  // Starts the thread. Borrows observer (may be null; outlives the loop).
  EngineLoop(std::unique_ptr<BatchRunner> runner, const LoopOptions& options,
             LoopObserver* observer);
  ~EngineLoop();  // Close, then finish every request (cancelled ones fail), then join
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request. RESOURCE_EXHAUSTED when max_num_seqs + max_waiting requests are already
  // running or waiting, or when the request
  // alone needs more KV than the budget (prompt + max_tokens rows); UNAVAILABLE after Close.
  absl::Status Submit(std::unique_ptr<LoopRequest> request);
  // Stops accepting; admitted and waiting requests still run.
  void Close();
  // Blocks until nothing waits or runs, or timeout_ms passed; true when idle.
  bool WaitIdle(int64_t timeout_ms);
  LoopStats Stats() const;
  const BatchRunner& runner() const { return *runner_; }

 private:
  using Clock = std::chrono::steady_clock;
  enum class Phase { kWaiting, kPrefill, kDecode };
  struct Seq;

  void Run();
  void Iterate(std::vector<std::unique_ptr<Seq>>& running);
  // After a request's logits came out (its prefill's last chunk, a hit, a decode step):
  // samples its next token. True when the request is done.
  bool AfterLogits(Seq& s);
  void Finish(std::unique_ptr<Seq> seq, absl::Status status);
  void Admit(std::vector<std::unique_ptr<Seq>>& running);
  void Preempt(std::vector<std::unique_ptr<Seq>>& running, size_t index);
  // A request whose admission or hit ran out of the runner's memory goes back to the queue's
  // front, its plan kept (not a preemption: it has produced nothing yet).
  void Unadmit(std::unique_ptr<Seq> seq);
  int64_t HeldRows(const std::vector<std::unique_ptr<Seq>>& running) const;
  // Stats and observer after an iteration of `rows` rows; mu_ not held.
  void Publish(const std::vector<std::unique_ptr<Seq>>& running, int64_t rows);
  // Tells the observer that a request's KV is free (see LoopObserver::OnRelease).
  void Release(Seq& seq);

  const std::unique_ptr<BatchRunner> runner_;
  const LoopOptions options_;
  LoopObserver* const observer_;
  const int64_t budget_rows_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<std::unique_ptr<Seq>> waiting_;  // guarded by mu_
  bool closed_ = false, stop_ = false;        // guarded by mu_
  bool idle_ = true;  // nothing waits or runs, figures published (guarded by mu_)
  LoopStats stats_;   // guarded by mu_
  std::vector<BatchRunner::Item> items_;  // the loop thread's batch scratch
  std::vector<Seq*> item_seqs_;           // [items_.size()] whose item each is
  uint64_t next_order_ = 0;               // admission counter (loop thread)
  // The runner ran out of its own memory (RESOURCE_EXHAUSTED: the CUDA page pool) with
  // requests running: nothing new is admitted until one finishes (loop thread).
  bool runner_full_ = false;
  std::thread thread_;
};

}  // namespace semshare::serving

#endif  // SEMSHARE_SERVING_ENGINE_LOOP_H_
