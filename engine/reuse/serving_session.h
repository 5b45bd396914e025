// ServingSession: one server worker's prefill and decode on one backend. The server
// (server/inference.cc) looks up references, judges hit or miss and publishes; the session runs
// the chosen prefill and the decode steps where its backend computes and keeps the request's KV
// there: host memory for the CPU (CpuServingSession, below, on ReusePrefiller and LlamaForward),
// device memory for CUDA (engine/cuda/cuda_serving.h, on CudaForward). References going in and
// the KV handed back for publishing are host KvCaches, the store's format.
//
// One request at a time: Begin, one prefill, Steps, then TakeKv or the next Begin (which drops
// the KV). Not thread-safe.
#ifndef SEMSHARE_ENGINE_REUSE_SERVING_SESSION_H_
#define SEMSHARE_ENGINE_REUSE_SERVING_SESSION_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::engine {

class ServingSession {
 public:
  virtual ~ServingSession() = default;
  virtual std::string_view backend() const = 0;

  // Token matching for a lookup, with TokenMatcher's semantics: the target prompt once, then
  // each candidate reference against it. The CPU session keeps the target's host sketch (its
  // codes go into a published record); a device session sketches and matches on the GPU.
  virtual absl::Status SetTarget(std::span<const int32_t> ids) = 0;
  virtual absl::StatusOr<TokenMatch> MatchReference(std::span<const int32_t> ref_ids) = 0;
  // The target's host sketch when the session made one (empty otherwise), moved out.
  virtual TokenSketch TakeTargetSketch() = 0;

  // A stop check for the request in flight (LlamaForward::set_interrupt): consulted between
  // prefill chunks and layers; true makes the prefill return CANCELLED. Null clears it.
  virtual void SetInterrupt(std::function<bool()> interrupt) = 0;

  // Starts a request: drops the previous request's KV and makes room for `rows` rows.
  virtual absl::Status Begin(int64_t rows) = 0;
  // Full prefill of ids at positions 0..n-1; the last token's logits to logits[vocab] when
  // logits is non-null.
  virtual absl::Status PrefillFull(std::span<const int32_t> ids, float* logits) = 0;
  // A semshare hit, as ReusePrefiller::PrefillHit: against the reference (ref_ids and ref_kv,
  // positions 0..m-1 in every layer, read in place) with `match`, exact reuse when it applies,
  // else selective prefill and retention.
  virtual absl::StatusOr<PrefillStats> PrefillHit(std::span<const int32_t> ids,
                                                  std::span<const int32_t> ref_ids,
                                                  const KvCache& ref_kv, const TokenMatch& match,
                                                  float* logits) = 0;
  // A hit whose plan the caller made (ReusePrefiller::PrefillPlan: the serving pipeline makes
  // it once per hit): `plan` executed against the reference.
  virtual absl::StatusOr<PrefillStats> PrefillPlan(std::span<const int32_t> ids,
                                                   std::span<const int32_t> ref_ids,
                                                   const KvCache& ref_kv, const ReusePlan& plan,
                                                   float* logits) = 0;
  // One decode step: token `id` at the next position; its logits to logits[vocab].
  virtual absl::Status Step(int32_t id, float* logits) = 0;
  // Bytes of K and V the request holds (on the device for a device session).
  virtual int64_t KvBytes() const = 0;
  // The request's KV as a host cache (moved out on the host, copied from a device), every row
  // the prefill and the steps produced; the session is empty after it.
  virtual absl::StatusOr<KvCache> TakeKv() = 0;
};

// The CPU session: ReusePrefiller's forward pass and selective prefill on a host KvCache.
// Borrows `prefiller` (the worker's), which must outlive it.
class CpuServingSession final : public ServingSession {
 public:
  explicit CpuServingSession(ReusePrefiller& prefiller);
  std::string_view backend() const override;
  absl::Status SetTarget(std::span<const int32_t> ids) override;
  absl::StatusOr<TokenMatch> MatchReference(std::span<const int32_t> ref_ids) override;
  TokenSketch TakeTargetSketch() override { return std::move(target_); }
  void SetInterrupt(std::function<bool()> interrupt) override {
    prefiller_.forward().set_interrupt(std::move(interrupt));
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

 private:
  ReusePrefiller& prefiller_;
  KvCache cache_;
  TokenSketch target_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_SERVING_SESSION_H_
