// The served path of `semshare bench --suite reuse` (issue 15): for a (reference, target) pair,
// the hit the server would decide and the prefill its engine loop would run, so the bench
// measures what is served rather than a mode picked by hand.
//
//   ServedPath::Hold publishes the reference into a real in-memory store::ReferenceStore (as a
//   finished turn is published: prompt + answer, KV of every row);
//   ServedPath::Decide looks the target up as serving::FrontWorker::Generate does, through the
//   same functions (serving/hit_lookup.h): the exact-prefix lookup (LookupExactPrefix) first,
//   then the semantic candidates (FindBestCandidate: the prompt-level index, ranked by the
//   token matcher on a CpuServingSession) when serving::HitRule asks for them, and
//   HitRule::Decide turns that into exact / hybrid / semantic / miss, and serving::PlanHit into
//   the engine::ReusePlan the server's engine loop would carry;
//   ServedPath::Prefill runs that plan through a serving::CpuBatchRunner as the engine loop
//   does for a request alone: a kCopyPrefix plan's rows are copied (BatchRunner::CopyPrefix) and
//   the rest prefilled in chunks of the loop's default batch budget
//   (LoopOptions::max_batch_tokens), a rearranging plan (a semantic hit's selective path, or a
//   hybrid whose long remainder matches: HitDecision::selective_remainder) goes through
//   BatchRunner::PrefillHit, a miss is prefilled in chunks.
//
// Not thread-safe (one bench thread). Borrows the model.
#ifndef SEMSHARE_TOOLS_BENCH_REUSE_HITS_H_
#define SEMSHARE_TOOLS_BENCH_REUSE_HITS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "cache_store/reference_store.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/serving_session.h"
#include "serving/batch_runner.h"
#include "serving/engine_loop.h"
#include "serving/pipeline.h"

namespace semshare::tools {

struct ServedOptions {
  // reuse: the matcher's knobs, hit_threshold and min_reuse_tokens (the semantic gate);
  // lookup_candidates: store candidates scored per semantic lookup.
  serving::ServingOptions serving;
  // Prompt tokens per prefill chunk: the engine loop's default per-iteration budget, which a
  // request alone gets whole.
  int64_t chunk = serving::LoopOptions{}.max_batch_tokens;
};

// What the server's lookup decided for one prompt.
struct ServedDecision {
  serving::HitDecision hit;
  int64_t prompt_tokens = 0;
  int64_t prefix_tokens = 0;     // exact common prefix with the stored turn (0: none)
  bool semantic_lookup = false;  // the rule consulted the semantic index
  int32_t candidates = 0;        // semantic candidates scored
  float similarity = -1;         // the best semantic candidate's (< 0: none scored)
  double lookup_ms = 0;          // exact + semantic lookup, matching included
  store::RecordHandle record;    // what the chosen path reads (null on a miss)
  engine::ReusePlan plan;        // serving::PlanHit's: what the prefill executes
};

struct ServedPrefill {
  double prefill_ms = 0;       // prefix copy + chunked forward, or the selective path
  engine::PrefillStats stats;  // rows copied / computed per layer, KV bytes
  engine::KvCache kv;          // the sequence's KV afterwards (for decoding)
};

class ServedPath {
 public:
  // A memory-only store (default StoreOptions, memory tier only) and a CPU batch runner.
  static absl::StatusOr<std::unique_ptr<ServedPath>> Create(const engine::Model& model,
                                                            const ServedOptions& options);
  ~ServedPath();

  // Replaces everything stored with `ref` (published and flushed). `ref.kv` must hold one
  // row per id in every layer; its sketch must come from options.serving.reuse's matcher.
  absl::Status Hold(engine::Reference ref);
  // The lookup and hit rule of FrontWorker::Generate (policy auto, the configured threshold).
  absl::StatusOr<ServedDecision> Decide(std::span<const int32_t> ids);
  // The decided prefill of ids into a fresh sequence; the last token's logits to
  // logits[vocab].
  absl::StatusOr<ServedPrefill> Prefill(const ServedDecision& decision,
                                        std::span<const int32_t> ids, float* logits);

  store::ReferenceStore& store() { return *store_; }

 private:
  ServedPath(const engine::Model& model, const ServedOptions& options,
             std::unique_ptr<store::ReferenceStore> store);

  const engine::Model& model_;
  const ServedOptions options_;
  const store::Namespace ns_;
  std::unique_ptr<store::ReferenceStore> store_;
  std::unique_ptr<engine::Backend> backend_;  // the front's host ops (sketches)
  engine::ReusePrefiller prefiller_;          // the front's matcher, on backend_
  engine::CpuServingSession session_;         // target sketch and candidate matching
  std::unique_ptr<serving::BatchRunner> runner_;
};

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_BENCH_REUSE_HITS_H_
