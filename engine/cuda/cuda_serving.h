// The server's device-resident path (engine/reuse/serving_session.h, engine/backend_factory.h):
// CudaServingRuntime uploads the model once (BF16 weights, DeviceModel) and hands each worker a
// CudaServingSession with its own context (compute and copy streams, cuBLAS handle, pool), a
// CudaForward and its KV on the device. Per request:
//   miss:  CudaForward::Forward of the prompt (chunks of 8k tokens) into the device KV;
//   lookup: the prompt's and each candidate's token sketches and the token match on the device
//          (DeviceMatcher: TokenMatcher's semantics, a few ms where the CPU takes hundreds);
//   hit:   the reference's host KV -> pinned BF16 (PinnedKv) -> device layer by layer on the
//          copy stream, overlapped with layer 0, then CudaForward::SelectivePrefill with the
//          server's plan (semshare recompute schedule and retention of the ReuseConfig);
//   decode: one CudaForward::Forward per token; its logits come back to the host, where the
//          Generator samples (the CPU sampler's exact semantics: seeds, top-k/p, stop strings);
//   publish: TakeKv downloads the KV (BF16 -> float) into the host cache the store keeps.
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_SERVING_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_SERVING_H_

#include <cstdint>
#include <memory>
#include <mutex>
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
  absl::Status Step(int32_t id, float* logits) override;
  int64_t KvBytes() const override { return cache_.ByteSize(); }
  absl::StatusOr<KvCache> TakeKv() override;

  CudaContext& context() { return *ctx_; }

 private:
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
};

class CudaServingRuntime final : public ServingRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<CudaServingRuntime>> Create(const Model& model,
                                                                    const ReuseConfig& reuse,
                                                                    int device);
  absl::StatusOr<std::unique_ptr<ServingSession>> NewSession() override;
  BackendMemory Memory() const override;

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
