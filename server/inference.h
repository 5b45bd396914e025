// One worker's inference pipeline (DESIGN.md section 3, steps 2-7): tokenize, look up a
// reference in the store, prefill (selective on a hit, full otherwise), decode with sampling,
// then publish the prompt's untrimmed KV as a new reference on a miss. The engine never sees
// the store: this file is where they meet.
//
// Threading: an InferenceWorker is used by one scheduler thread at a time (it owns a backend
// and the forward passes' scratch). What it shares — the model, the feature matcher, the store
// and the metrics — is immutable or thread-safe.
//
// Cost notes: a lookup computes the prompt's token sketch and its position-free features (the
// sorted distinct token ids) once, asks the store for lookup_candidates ids, and scores each
// candidate's token sketch (one embedding gather + GEMM per candidate; on the device with
// --backend cuda, engine/reuse/serving_session.h). A hit reads the reference's KV in place
// (the record stays shared and pinned meanwhile; on the CPU each layer's rows are gathered into
// the request's cache, on the GPU the record goes through pinned memory to the device); a miss
// keeps its cache and, after decoding, trims the generated rows and moves the prompt's KV into
// the published record without a copy.
#ifndef SEMSHARE_SERVER_INFERENCE_H_
#define SEMSHARE_SERVER_INFERENCE_H_

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
#include "engine/generator.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/serving_session.h"
#include "engine/reuse/token_matcher.h"
#include "engine/text/chat_template.h"
#include "server/metrics.h"

namespace semshare::server {

enum class CachePolicy { kAuto, kBypass, kNoPublish };

// The input of a request: a plain prompt or a conversation.
struct PromptInput {
  bool is_chat = false;
  std::string prompt;
  std::vector<engine::ChatMessage> messages;
};

struct InferenceRequest {
  PromptInput input;
  engine::GenerateOptions options;  // max_tokens resolved (>= 1)
  CachePolicy policy = CachePolicy::kAuto;
  float threshold = 0.8f;  // hit threshold for this request
  store::Namespace ns;
  // True once the client cancelled or its deadline passed; checked between steps.
  std::function<bool()> cancelled;
  // Streaming: text pieces as they become final; false stops generation.
  engine::TextCallback on_text;
};

struct InferenceResult {
  engine::GenerateResult gen;
  CacheResult cache_result = CacheResult::kBypass;
  bool looked_up = false;
  uint64_t reference_id = 0;
  float similarity = -1;  // best candidate's; < 0 when none was scored
  int32_t candidates = 0;
  int64_t kv_bytes = 0;
  bool published = false;
  int64_t reused_tokens = 0, recomputed_tokens = 0;
  double lookup_ms = 0, prefill_ms = 0;
  double first_token_ms = 0;  // worker start to first token
  double total_ms = 0;        // worker start to the end
};

struct LookupResult {
  bool hit = false;
  uint64_t reference_id = 0;
  float similarity = -1;
  int32_t candidates = 0;
  int64_t prompt_tokens = 0;
  double lookup_ms = 0;
};

struct ServingOptions {
  engine::ReuseConfig reuse;      // mode semshare; hit_threshold / min_reuse_tokens from flags
  int32_t lookup_candidates = 4;  // store candidates scored per lookup
  int64_t max_prompt_tokens = 0;  // resolved (> 0)
};

// Shared by every worker: the model (immutable).
struct SharedModel {
  std::shared_ptr<const engine::Model> model;
};

class InferenceWorker {
 public:
  // Borrows shared, store (may be null: no reuse) and metrics; owns backend (the host ops:
  // token sketches, and the prefill and decode unless `session` is given) and session (a
  // device session, engine/backend_factory.h's ServingRuntime::NewSession; null: prefill and
  // decode on `backend`, CpuServingSession).
  InferenceWorker(const SharedModel& shared, std::unique_ptr<engine::Backend> backend,
                  const ServingOptions& options, store::ReferenceStore* store, Metrics* metrics,
                  std::unique_ptr<engine::ServingSession> session = nullptr);

  // Token ids of the input (chat template applied for conversations). InvalidArgument for a
  // conversation the template cannot render; OUT_OF_RANGE over max_prompt_tokens.
  absl::StatusOr<std::vector<int32_t>> Tokenize(const PromptInput& input) const;

  // The whole pipeline. CANCELLED / DEADLINE_EXCEEDED when request.cancelled() turns true
  // (the caller maps which); the KV is freed on every path.
  absl::StatusOr<InferenceResult> Run(const InferenceRequest& request);

  // Full prefill of the input into the store (synchronously queued and flushed) in `ns`.
  absl::StatusOr<store::RecordHandle> AddReference(const PromptInput& input,
                                                   const store::Namespace& ns);
  // The lookup a Run would do, without prefilling.
  absl::StatusOr<LookupResult> Lookup(const PromptInput& input, const store::Namespace& ns,
                                      float threshold);

 private:
  struct Best {
    store::RecordHandle record;
    engine::TokenMatch match;
  };
  // Scores the store's candidates for a prompt (its features given) with the session's token
  // matcher; best by similarity.
  Best FindBest(const store::Namespace& ns, std::span<const int32_t> ids,
                const std::vector<uint64_t>& features, int32_t* candidates);
  // The lookup's target sketch when the session kept a host one (its codes go into the
  // published record; records without codes are valid), else empty.
  engine::TokenSketch TargetSketch(std::span<const int32_t> ids);
  absl::Status Publish(const store::Namespace& ns, std::vector<int32_t> ids, engine::KvCache kv,
                       engine::TokenSketch sketch, std::vector<uint64_t> features);

  const SharedModel& shared_;
  const engine::Model& model_;
  std::unique_ptr<engine::Backend> backend_;
  const ServingOptions options_;
  store::ReferenceStore* store_;
  Metrics* metrics_;
  engine::ReusePrefiller prefiller_;
  engine::Generator generator_;
  std::unique_ptr<engine::ServingSession> session_;  // the request's prefill, decode and KV
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_INFERENCE_H_
