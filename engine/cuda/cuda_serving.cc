#include "engine/cuda/cuda_serving.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"

namespace semshare::engine::cuda {
namespace {

constexpr int64_t kDefaultRefTierMb = 1024;

int64_t RefTierBudget() {
  const char* e = std::getenv("SEMSHARE_CUDA_REF_TIER_MB");
  int64_t mb = kDefaultRefTierMb;
  if (e != nullptr && *e != '\0' && (!absl::SimpleAtoi(e, &mb) || mb < 0)) {
    std::fprintf(stderr, "semshare: ignoring SEMSHARE_CUDA_REF_TIER_MB='%s' (want MiB >= 0)\n", e);
    mb = kDefaultRefTierMb;
  }
  return mb << 20;
}

// FNV-1a over the KV's shape and, per layer, its row count, 32 evenly spaced values of K and of
// V and the first and last positions: a different KV under the same token ids (a store entry
// replaced) changes it.
uint64_t Fingerprint(const KvCache& kv) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t x) {
    for (int i = 0; i < 8; ++i) {
      h ^= (x >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(static_cast<uint64_t>(kv.n_layers()));
  mix(static_cast<uint64_t>(kv.kv_dim()));
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    const LayerKv& layer = kv.layer(l);
    mix(static_cast<uint64_t>(layer.rows()));
    for (const std::vector<float>* v : {&layer.k, &layer.v}) {
      const int64_t n = static_cast<int64_t>(v->size());
      for (int64_t i = 0; i < 32 && n > 0; ++i) {
        mix(std::bit_cast<uint32_t>((*v)[(n - 1) * i / 31]));
      }
    }
    if (!layer.pos.empty()) {
      mix(static_cast<uint32_t>(layer.pos.front()));
      mix(static_cast<uint32_t>(layer.pos.back()));
    }
  }
  return h;
}

}  // namespace

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
      matcher_(std::move(matcher)),
      tier_budget_(RefTierBudget()) {}

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
  // The hit's plan (engine/reuse/reuse_plan.h), as the CPU path builds and executes it.
  absl::StatusOr<PrefillStats> st =
      PrefillPlan(ids, ref_ids, ref_kv, PlanReuse(ids, ref_ids, match, reuse_), logits);
  if (!st.ok()) return st;
  if (st->hit) st->ref_index = match.ref_index;
  st->similarity = match.similarity;
  return st;
}

absl::StatusOr<PrefillStats> CudaServingSession::PrefillPlan(std::span<const int32_t> ids,
                                                             std::span<const int32_t> ref_ids,
                                                             const KvCache& ref_kv,
                                                             const ReusePlan& plan, float* logits) {
  const int64_t n = static_cast<int64_t>(ids.size());
  SEMSHARE_STATUS_RETURN(CheckPlan(plan, n, static_cast<int64_t>(ref_ids.size())));
  SEMSHARE_STATUS_RETURN(
      CheckReference(ref_ids, ref_kv, config_.n_layers, config_.n_kv_heads * config_.head_dim));
  // The session's device current for the pinning (cudaHostAlloc / cudaFreeHost would otherwise
  // run on, and may initialise or synchronise, whatever device this worker thread has current).
  const ScopedDevice on = ctx_->Activate();
  absl::StatusOr<DeviceKvCache*> ref = DeviceReference(ref_ids, ref_kv);
  if (!ref.ok()) {
    (void)cudaStreamSynchronize(ctx_->copy_stream());  // a failed upload may still read pinned_
    return ref.status();
  }
  if (plan.kind == ReuseKind::kCopyPrefix) {
    // Its prefix rows as they are, copied on the device into the request's cache, the rest
    // computed after them, no retention. (A kHybridSelective plan copies its prefix rows in
    // SelectivePrefill and runs the selective path on the remainder, as the CPU path.)
    const int64_t exact = plan.copy_rows;
    std::vector<int32_t> pos(n - exact);
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(exact));
    absl::Status s = cache_.CopyPrefixFrom(**ref, exact);
    if (s.ok()) s = fwd_.Forward(ids.subspan(exact), pos, cache_, logits);
    // Also on success: with exact == 0 (a repeat of at most `window` tokens) CopyPrefixFrom
    // waits for no layer, so the compute stream never ordered itself after the upload, and the
    // next miss of the tier would refill pinned_ while the copy stream still reads it.
    const cudaError_t drained = cudaStreamSynchronize(ctx_->copy_stream());
    if (!s.ok()) return s;
    SEMSHARE_CUDA_RETURN(drained);
    PrefillStats st;
    st.mode = PrefillMode::kSemShare;
    st.plan = plan.kind;
    st.hit = true;
    st.similarity = 1.0f;
    st.prompt_tokens = n;
    SetPrefixCopyStats(n, exact, config_.n_layers, &st);
    st.kv_bytes = cache_.ByteSize();
    st.kv_bytes_peak = st.kv_bytes;
    return st;
  }
  PrefillStats st;
  const absl::Status s = fwd_.SelectivePrefill(ids, plan, *ref, cache_, logits, &st);
  if (!s.ok()) {
    // The copy stream may still read pinned_: wait for it before anything reuses the buffer.
    (void)cudaStreamSynchronize(ctx_->copy_stream());
    return s;
  }
  st.similarity = plan.remainder_similarity;
  return st;
}

absl::StatusOr<DeviceKvCache*> CudaServingSession::DeviceReference(std::span<const int32_t> ref_ids,
                                                                   const KvCache& ref_kv) {
  const uint64_t fp = Fingerprint(ref_kv);
  for (ResidentRef& r : tier_) {
    if (r.fingerprint == fp &&
        std::equal(r.ids.begin(), r.ids.end(), ref_ids.begin(), ref_ids.end())) {
      r.last_use = ++tier_clock_;
      ++tier_hits_;
      return r.kv.get();
    }
  }
  ++tier_misses_;
  // The previous hit's upload finished before its prefill returned (or its error path waited
  // for it), so the pinned buffer is free to refill.
  SEMSHARE_STATUS_RETURN(pinned_.From(ref_kv));
  const int64_t bytes = pinned_.ByteSize() + pinned_.n_layers() * pinned_.rows() * 4;
  if (bytes > 0 && bytes <= tier_budget_) {
    while (tier_bytes_ + bytes > tier_budget_ && !tier_.empty()) {
      // Evict the least recently used. Its buffers go back to the pool; no work of this session
      // is in flight between requests (each ends synchronised), and its destructor waits for
      // the copy stream.
      auto lru = std::min_element(
          tier_.begin(), tier_.end(),
          [](const ResidentRef& a, const ResidentRef& b) { return a.last_use < b.last_use; });
      tier_bytes_ -= lru->bytes;
      tier_.erase(lru);
    }
    auto kv = std::make_unique<DeviceKvCache>(*ctx_, config_.n_layers,
                                              config_.n_kv_heads * config_.head_dim);
    const absl::Status s = kv->StartUpload(pinned_);
    if (s.ok()) {
      ResidentRef r;
      r.ids.assign(ref_ids.begin(), ref_ids.end());
      r.fingerprint = fp;
      r.kv = std::move(kv);
      r.bytes = bytes;
      r.last_use = ++tier_clock_;
      tier_bytes_ += bytes;
      tier_.push_back(std::move(r));
      return tier_.back().kv.get();
    }
    kv.reset();  // waits for the copies it queued before its buffers return to the pool
    if (!absl::IsResourceExhausted(s)) return s;
    // Short of device memory: the tier gives its memory back and the upload goes to ref_.
    tier_.clear();
    tier_bytes_ = 0;
    ctx_->pool().ReleaseCache();
  }
  SEMSHARE_STATUS_RETURN(ref_.StartUpload(pinned_));
  return &ref_;
}

CudaServingSession::RefTierStats CudaServingSession::ref_tier_stats() const {
  RefTierStats t;
  t.hits = tier_hits_;
  t.misses = tier_misses_;
  t.entries = static_cast<int64_t>(tier_.size());
  t.bytes = tier_bytes_;
  t.budget = tier_budget_;
  return t;
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
