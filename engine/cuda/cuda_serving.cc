#include "engine/cuda/cuda_serving.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"

namespace semshare::engine::cuda {

CudaServingSession::CudaServingSession(CudaServingRuntime& runtime,
                                       std::unique_ptr<CudaContext> ctx, const DeviceModel& model,
                                       const ReuseConfig& reuse,
                                       std::unique_ptr<DeviceMatcher> matcher)
    : runtime_(runtime),
      ctx_(std::move(ctx)),
      config_(model.config),
      reuse_(reuse),
      fwd_(*ctx_, model),
      cache_(fwd_.NewCache()),
      ref_(fwd_.NewCache()),
      matcher_(std::move(matcher)) {}

CudaServingSession::~CudaServingSession() { runtime_.Unregister(this); }

absl::Status CudaServingSession::SetTarget(std::span<const int32_t> ids) {
  absl::StatusOr<DeviceSketch> s = matcher_->Sketch(ids);
  if (!s.ok()) return s.status();
  target_ = *std::move(s);
  return absl::OkStatus();
}

absl::StatusOr<TokenMatch> CudaServingSession::MatchReference(std::span<const int32_t> ref_ids) {
  absl::StatusOr<DeviceSketch> ref = matcher_->Sketch(ref_ids);
  if (!ref.ok()) return ref.status();
  return matcher_->Match(target_, *ref);
}

absl::Status CudaServingSession::Begin(int64_t rows) {
  cache_.Clear();  // capacity stays: the next request's rows reuse it
  ref_.Clear();
  return cache_.ReserveAll(rows);
}

absl::Status CudaServingSession::PrefillFull(std::span<const int32_t> ids, float* logits) {
  std::vector<int32_t> pos(ids.size());
  std::iota(pos.begin(), pos.end(), 0);
  return fwd_.Forward(ids, pos, cache_, logits);
}

absl::StatusOr<PrefillStats> CudaServingSession::PrefillHit(std::span<const int32_t> ids,
                                                            std::span<const int32_t> ref_ids,
                                                            const KvCache& ref_kv,
                                                            const TokenMatch& match,
                                                            float* logits) {
  const int64_t n = static_cast<int64_t>(ids.size());
  SEMSHARE_STATUS_RETURN(CheckMatch(match, n, static_cast<int64_t>(ref_ids.size())));
  SEMSHARE_STATUS_RETURN(
      CheckReference(ref_ids, ref_kv, config_.n_layers, config_.n_kv_heads * config_.head_dim));
  // The session's device current for the pinning (cudaHostAlloc / cudaFreeHost would otherwise
  // run on, and may initialise or synchronise, whatever device this worker thread has current).
  const ScopedDevice on = ctx_->Activate();
  if (const int64_t exact = reuse_.exact_reuse ? ExactReuseRows(ids, ref_ids, reuse_.window) : -1;
      exact >= 0) {
    // A repeat (or a short extension) of the reference: its prefix rows as they are, straight
    // into the request's cache through the pinned buffers, the rest computed after them, no
    // retention (ReuseConfig::exact_reuse).
    SEMSHARE_STATUS_RETURN(pinned_.From(ref_kv, exact));
    std::vector<int32_t> pos(n - exact);
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(exact));
    absl::Status s = cache_.StartUpload(pinned_);
    for (int64_t l = 0; s.ok() && l < config_.n_layers; ++l) s = cache_.WaitLayer(l);
    if (s.ok()) s = fwd_.Forward(ids.subspan(exact), pos, cache_, logits);
    if (!s.ok()) {
      (void)cudaStreamSynchronize(ctx_->copy_stream());  // pinned_ may still be read
      return s;
    }
    PrefillStats st;
    st.mode = PrefillMode::kSemShare;
    st.hit = true;
    st.similarity = match.similarity;
    st.prompt_tokens = n;
    st.ref_index = match.ref_index;
    SetPrefixCopyStats(n, exact, config_.n_layers, &st);
    st.kv_bytes = cache_.ByteSize();
    st.kv_bytes_peak = st.kv_bytes;
    return st;
  }
  // The previous hit's upload finished before its prefill returned (or its error path below
  // waited for it), so the pinned buffer is free to refill.
  SEMSHARE_STATUS_RETURN(pinned_.From(ref_kv));
  PrefillStats st;
  absl::Status s = ref_.StartUpload(pinned_);
  if (s.ok()) s = fwd_.SelectivePrefill(ids, &ref_, &match, reuse_, cache_, logits, &st);
  if (!s.ok()) {
    // The copy stream may still read pinned_: wait for it before anything reuses the buffer.
    (void)cudaStreamSynchronize(ctx_->copy_stream());
    return s;
  }
  st.similarity = match.similarity;
  return st;
}

absl::Status CudaServingSession::Step(int32_t id, float* logits) {
  const int32_t p = cache_.next_position();
  return fwd_.Forward({&id, 1}, {&p, 1}, cache_, logits);
}

absl::StatusOr<KvCache> CudaServingSession::TakeKv() {
  KvCache out;
  SEMSHARE_STATUS_RETURN(cache_.ToHost(&out));
  cache_.Clear();
  return out;
}

absl::StatusOr<std::unique_ptr<CudaServingRuntime>> CudaServingRuntime::Create(
    const Model& model, const ReuseConfig& reuse, int device) {
  absl::StatusOr<std::unique_ptr<CudaContext>> ctx = CudaContext::Create(device);
  if (!ctx.ok()) return ctx.status();
  absl::StatusOr<std::unique_ptr<DeviceModel>> dm = DeviceModel::Upload(**ctx, model);
  if (!dm.ok()) return dm.status();
  SEMSHARE_STATUS_RETURN((*ctx)->Sync());
  return std::unique_ptr<CudaServingRuntime>(
      new CudaServingRuntime(*std::move(ctx), *std::move(dm), reuse));
}

absl::StatusOr<std::unique_ptr<ServingSession>> CudaServingRuntime::NewSession() {
  absl::StatusOr<std::unique_ptr<CudaContext>> ctx = CudaContext::Create(ctx_->device());
  if (!ctx.ok()) return ctx.status();
  const ModelConfig& c = model_->config;
  absl::StatusOr<std::unique_ptr<DeviceMatcher>> matcher =
      DeviceMatcher::Create(**ctx, model_->tok_embd.data(), c.vocab_size, c.d_model, reuse_);
  if (!matcher.ok()) return matcher.status();
  auto session = std::make_unique<CudaServingSession>(*this, *std::move(ctx), *model_, reuse_,
                                                      *std::move(matcher));
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.push_back(session.get());
  return std::unique_ptr<ServingSession>(std::move(session));
}

void CudaServingRuntime::Unregister(CudaServingSession* s) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase(std::remove(sessions_.begin(), sessions_.end(), s), sessions_.end());
}

BackendMemory CudaServingRuntime::Memory() const {
  BackendMemory m;
  m.device = true;
  const PoolStats w = ctx_->pool().Stats();
  m.used = w.used;
  m.peak = w.peak;
  m.total = w.total;
  std::lock_guard<std::mutex> lock(mu_);
  for (CudaServingSession* s : sessions_) {
    const PoolStats p = s->context().pool().Stats();
    m.used += p.used;
    m.peak += p.peak;
  }
  return m;
}

}  // namespace semshare::engine::cuda
