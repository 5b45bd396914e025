// The server's device-resident path (engine/reuse/serving_session.h, engine/backend_factory.h):
// CudaServingRuntime uploads the model once (BF16 weights, DeviceModel) and hands each worker a
// CudaServingSession with its own context (compute and copy streams, cuBLAS handle, pool), a
// CudaForward and its KV on the device. Per request:
//   miss:  CudaForward::Forward of the prompt (chunks of 8k tokens) into the device KV;
//   lookup: the prompt's and each candidate's token sketches and the token match on the device
//          (DeviceMatcher: TokenMatcher's semantics, a few ms where the CPU takes hundreds);
//   hit:   the reference's KV on the device: from the session's resident tier when it holds
//          it (no conversion, no transfer), else host KV -> pinned BF16 (PinnedKv) -> device layer
//          by layer on the copy stream, overlapped with layer 0, and kept in the tier; then
//          CudaForward::SelectivePrefill with the server's plan (semshare recompute schedule and
//          retention of the ReuseConfig), or for a repeat (exact reuse) its prefix rows copied
//          device to device and the rest computed;
//   decode: one CudaForward::Forward per token; its logits come back to the host, where the
//          Generator samples (the CPU sampler's exact semantics: seeds, top-k/p, stop strings);
//   publish: TakeKv downloads the KV (BF16 -> float) into the host cache the store keeps.
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_SERVING_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_SERVING_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "engine/backend_factory.h"
#include "engine/cuda/cuda_context.h"
#include "engine/cuda/cuda_forward.h"
#include "engine/cuda/device_kv.h"
#include "engine/cuda/device_matcher.h"
#include "engine/cuda/device_model.h"

namespace semshare::engine::cuda {

class CudaServingRuntime;

class CudaServingSession final : public ServingSession {
 public:
  CudaServingSession(CudaServingRuntime& runtime, std::unique_ptr<CudaContext> ctx,
                     const DeviceModel& model, const ReuseConfig& reuse,
                     std::unique_ptr<DeviceMatcher> matcher);
  ~CudaServingSession() override;

  std::string_view backend() const override { return "cuda"; }
  absl::Status SetTarget(std::span<const int32_t> ids) override;
  absl::StatusOr<TokenMatch> MatchReference(std::span<const int32_t> ref_ids) override;
  TokenSketch TakeTargetSketch() override { return {}; }
  void SetInterrupt(std::function<bool()> interrupt) override {
    fwd_.set_interrupt(std::move(interrupt));
  }
  absl::Status Begin(int64_t rows) override;
  absl::Status PrefillFull(std::span<const int32_t> ids, float* logits) override;
  absl::StatusOr<PrefillStats> PrefillHit(std::span<const int32_t> ids,
                                          std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                                          const TokenMatch& match, float* logits) override;
  absl::StatusOr<PrefillStats> PrefillPlan(std::span<const int32_t> ids,
                                           std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                                           const ReusePlan& plan, float* logits) override;
  absl::Status Step(int32_t id, float* logits) override;
  int64_t KvBytes() const override { return cache_.ByteSize(); }
  absl::StatusOr<KvCache> TakeKv() override;

  CudaContext& context() { return *ctx_; }
  // The request's device KV (after PrefillHit: the hit's rows; the batched runner adopts them
  // into its paged pool, engine/cuda/batch_forward.h).
  const DeviceKvCache& cache() const { return cache_; }

  // The resident reference tier: hot references kept on the device in BF16, so that a repeated
  // hit against one skips the host conversion (PinnedKv::From, ~0.3 s for a 5k-token reference
  // of an 8B model) and the transfer. Keyed by the reference's token ids and a fingerprint of
  // its KV (sampled values of every layer: a store entry replaced under the same ids is not
  // served stale); least recently used evicted first, within a byte budget per session:
  // SEMSHARE_CUDA_REF_TIER_MB (default 1024; 0 disables). Its bytes are the session pool's, so
  // the memory gauges count them.
  struct RefTierStats {
    int64_t hits = 0, misses = 0, entries = 0, bytes = 0, budget = 0;
  };
  RefTierStats ref_tier_stats() const;

 private:
  struct ResidentRef {
    std::vector<int32_t> ids;
    uint64_t fingerprint = 0;
    std::unique_ptr<DeviceKvCache> kv;
    int64_t bytes = 0;
    uint64_t last_use = 0;
  };
  // The reference on the device, uploaded if it is not resident (into the tier, or into ref_
  // when it does not fit or the tier is off).
  absl::StatusOr<DeviceKvCache*> DeviceReference(std::span<const int32_t> ref_ids,
                                                 const KvCache& ref_kv);

  CudaServingRuntime& runtime_;
  std::unique_ptr<CudaContext> ctx_;
  const ModelConfig& config_;
  ReuseConfig reuse_;
  CudaForward fwd_;
  DeviceKvCache cache_;  // the request's KV
  DeviceKvCache ref_;    // the reference's KV during a hit
  PinnedKv pinned_;      // the reference in pinned host memory (the upload's source)
  std::unique_ptr<DeviceMatcher> matcher_;  // on ctx_, over the model's BF16 embeddings
  DeviceSketch target_;                     // the lookup's target prompt
  std::vector<ResidentRef> tier_;           // the resident reference tier
  int64_t tier_budget_ = 0, tier_bytes_ = 0, tier_hits_ = 0, tier_misses_ = 0;
  uint64_t tier_clock_ = 0;
};

class CudaServingRuntime final : public ServingRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<CudaServingRuntime>> Create(const Model& model,
                                                                    const ReuseConfig& reuse,
                                                                    int device);
  absl::StatusOr<std::unique_ptr<ServingSession>> NewSession() override;
  BackendMemory Memory() const override;
  // The weights' context and the weights (the batched runner, serving/batch_runner.h, reads
  // them from its own context on the same device).
  CudaContext& context() const { return *ctx_; }
  const DeviceModel& model() const { return *model_; }

 private:
  friend class CudaServingSession;
  CudaServingRuntime(std::unique_ptr<CudaContext> ctx, std::unique_ptr<DeviceModel> model,
                     const ReuseConfig& reuse)
      : ctx_(std::move(ctx)), model_(std::move(model)), reuse_(reuse) {}
  void Unregister(CudaServingSession* s);

  std::unique_ptr<CudaContext> ctx_;  // owns the weights' memory
  std::unique_ptr<DeviceModel> model_;
  const ReuseConfig reuse_;
  mutable std::mutex mu_;
  std::vector<CudaServingSession*> sessions_;  // live ones, guarded by mu_
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_CUDA_SERVING_H_
