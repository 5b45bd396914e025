#include "engine/cuda/cuda_forward.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "engine/cuda/cuda_status.h"
#include "engine/reuse/retention.h"
#include "kernels/attention.cuh"
#include "kernels/deviation.cuh"
#include "kernels/embed.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/retention.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/sampling.cuh"
#include "kernels/swiglu.cuh"

namespace semshare::engine::cuda {
namespace {

using bf16 = __nv_bfloat16;
namespace k = ::semshare::kernels;

template <typename T>
T* At(const DeviceBuffer& b, int64_t offset) {
  return b.as<T>() + offset;
}

}  // namespace

CudaForward::CudaForward(CudaContext& ctx, const DeviceModel& model, int64_t max_chunk)
    : ctx_(ctx), model_(model), max_chunk_(std::max<int64_t>(max_chunk, 1)) {
  const ModelConfig& c = model.config;
  d_ = c.d_model;
  qd_ = c.n_heads * c.head_dim;
  kvd_ = c.n_kv_heads * c.head_dim;
  qkvd_ = qd_ + 2 * kvd_;
  ff_ = c.d_ff;
}

CudaForward::~CudaForward() {
  if (stage_ == nullptr) return;
  const ScopedDevice on = ctx_.Activate();
  cudaStreamSynchronize(ctx_.stream());  // no copy may still read or write it
  cudaFreeHost(stage_);
}

absl::Status CudaForward::EnsureStage(int64_t bytes) {
  if (stage_bytes_ >= bytes) return absl::OkStatus();
  if (stage_ != nullptr) {
    SEMSHARE_STATUS_RETURN(ctx_.Sync());  // an earlier (failed) call's copies may still use it
    cudaFreeHost(stage_);
    stage_ = nullptr;
    stage_bytes_ = 0;
  }
  const int64_t want = std::max<int64_t>(bytes, 64 << 10);
  const cudaError_t e = cudaHostAlloc(&stage_, static_cast<size_t>(want), cudaHostAllocPortable);
  if (e != cudaSuccess) {
    stage_ = nullptr;
    (void)cudaGetLastError();  // returned as a status, not left for the next Check
    return CudaStatus(e, "cudaHostAlloc (selective prefill staging)");
  }
  stage_bytes_ = want;
  return absl::OkStatus();
}

DeviceKvCache CudaForward::NewCache() const {
  return DeviceKvCache(ctx_, model_.config.n_layers, kvd_);
}

absl::Status CudaForward::Reserve(int64_t s) {
  if (s <= reserved_) return absl::OkStatus();
  // Nothing is reserved until every buffer below holds s rows: a failure part way leaves some
  // smaller than before, or empty (DevicePool::EnsureSize), and a later call with fewer rows
  // than the old reserved_ must size them again, not launch on them.
  reserved_ = 0;
  DevicePool& p = ctx_.pool();
  SEMSHARE_STATUS_RETURN(p.EnsureSize(x_, s * d_ * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(h_, s * d_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(qkv_, s * qkvd_ * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(q_, s * qd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(kcur_, s * kvd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(vcur_, s * kvd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(att_, s * qd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(gu_, s * 2 * ff_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(act_, s * ff_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(ids_, s * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(pos_, s * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(logits_, model_.config.vocab_size * 4));
  reserved_ = s;
  return absl::OkStatus();
}

absl::Status CudaForward::Qkv(int64_t l, const float* x, const int32_t* pos_d, int64_t s) {
  const DeviceLayer& lw = model_.layers[l];
  cudaStream_t st = ctx_.stream();
  SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(x, d_, lw.attn_norm.as<float>(), s, d_,
                                                model_.config.rms_eps, h_.as<bf16>(), st)));
  SEMSHARE_STATUS_RETURN(
      ctx_.Gemm(h_.data(), d_, s, lw.wqkv.data(), qkvd_, d_, qkv_.data(), qkvd_, false, 1, 0));
  if (!lw.bqkv.empty()) {
    SEMSHARE_CUDA_RETURN(k::AddBias(qkv_.as<float>(), lw.bqkv.as<float>(), s, qkvd_, st));
  }
  SEMSHARE_CUDA_RETURN((k::Rope<float, bf16>(qkv_.as<float>(), qkvd_, pos_d, s,
                                             RopeArgsFor(model_, model_.config.n_heads, true),
                                             q_.as<bf16>(), qd_, nullptr, st)));
  return absl::OkStatus();
}

absl::Status CudaForward::StoreKv(const int32_t* pos_d, int64_t s, DeviceLayerKv* kv,
                                  int64_t row0) {
  cudaStream_t st = ctx_.stream();
  bf16* kd = kv != nullptr ? At<bf16>(kv->k, row0 * kvd_) : kcur_.as<bf16>();
  bf16* vd = kv != nullptr ? At<bf16>(kv->v, row0 * kvd_) : vcur_.as<bf16>();
  const int64_t kvh = model_.config.n_kv_heads;
  SEMSHARE_CUDA_RETURN(
      (k::Rope<float, bf16>(At<float>(qkv_, qd_), qkvd_, pos_d, s, RopeArgsFor(model_, kvh, true),
                            kd, kvd_, nullptr, st)));
  SEMSHARE_CUDA_RETURN(
      (k::Rope<float, bf16>(At<float>(qkv_, qd_ + kvd_), qkvd_, pos_d, s,
                            RopeArgsFor(model_, kvh, false), vd, kvd_, nullptr, st)));
  if (kv != nullptr) {
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(At<int32_t>(kv->pos, row0), pos_d, s * 4, cudaMemcpyDeviceToDevice, st));
  }
  return absl::OkStatus();
}

kernels::AttnShape CudaForward::Shape(int64_t n, int64_t m) const {
  const ModelConfig& c = model_.config;
  k::AttnShape sh;
  sh.n = n;
  sh.m = m;
  sh.n_heads = c.n_heads;
  sh.n_kv_heads = c.n_kv_heads;
  sh.head_dim = c.head_dim;
  sh.q_stride = qd_;
  sh.kv_stride = kvd_;
  sh.out_stride = qd_;
  sh.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  sh.window = c.sliding_window;
  return sh;
}

absl::Status CudaForward::Attend(int64_t l, float* x, const int32_t* pos_d, int64_t s,
                                 const DeviceLayerKv& kv) {
  const k::AttnShape sh = Shape(s, kv.rows);
  const int64_t ws = k::GenericAttentionWorkspace(sh);
  SEMSHARE_STATUS_RETURN(ctx_.pool().EnsureSize(ws_, ws));
  SEMSHARE_CUDA_RETURN(k::Attention<bf16>(q_.data(), pos_d, kv.k.data(), kv.v.data(),
                                          kv.pos.as<int32_t>(), sh, att_.as<bf16>(), ws_.data(),
                                          ws_.bytes(), ctx_.stream()));
  return ctx_.Gemm(att_.data(), qd_, s, model_.layers[l].wo.data(), d_, qd_, x, d_, false, 1, 1);
}

absl::Status CudaForward::Mlp(int64_t l, float* x, int64_t s) {
  const DeviceLayer& lw = model_.layers[l];
  cudaStream_t st = ctx_.stream();
  SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(x, d_, lw.ffn_norm.as<float>(), s, d_,
                                                model_.config.rms_eps, h_.as<bf16>(), st)));
  SEMSHARE_STATUS_RETURN(
      ctx_.Gemm(h_.data(), d_, s, lw.w_gu.data(), 2 * ff_, d_, gu_.data(), 2 * ff_, true, 1, 0));
  SEMSHARE_CUDA_RETURN((k::SwiGluPacked<bf16, bf16>(gu_.as<bf16>(), s, ff_, act_.as<bf16>(), st)));
  return ctx_.Gemm(act_.data(), ff_, s, lw.w_down.data(), d_, ff_, x, d_, false, 1, 1);
}

absl::Status CudaForward::Logits(const float* x_row, float* logits_host) {
  const ModelConfig& c = model_.config;
  SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(x_row, d_, model_.out_norm.as<float>(), 1, d_,
                                                c.rms_eps, h_.as<bf16>(), ctx_.stream())));
  SEMSHARE_STATUS_RETURN(ctx_.Gemm(h_.data(), d_, 1, model_.output(), c.vocab_size, d_,
                                   logits_.data(), c.vocab_size, false, 1, 0));
  if (logits_host == nullptr) return absl::OkStatus();
  SEMSHARE_STATUS_RETURN(ctx_.Download(logits_host, logits_.data(), c.vocab_size * 4));
  return ctx_.Sync();
}

absl::Status CudaForward::Forward(std::span<const int32_t> ids, std::span<const int32_t> pos,
                                  DeviceKvCache& cache, float* logits) {
  const ModelConfig& c = model_.config;
  SEMSHARE_STATUS_RETURN(
      CheckForwardArgs(c, ids, pos, cache.n_layers(), cache.kv_dim(), cache.next_position()));
  const ScopedDevice on = ctx_.Activate();
  const int64_t n = static_cast<int64_t>(ids.size());
  SEMSHARE_STATUS_RETURN(Reserve(std::min(n, max_chunk_)));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    SEMSHARE_STATUS_RETURN(cache.Reserve(l, cache.layer(l).rows + n));
  }
  int64_t last = 0;
  for (int64_t i0 = 0; i0 < n; i0 += max_chunk_) {
    if (interrupted()) return absl::CancelledError("forward: interrupted (request cancelled)");
    const int64_t s = std::min(max_chunk_, n - i0);
    last = s;
    SEMSHARE_STATUS_RETURN(ctx_.Upload(ids_.data(), ids.data() + i0, s * 4));
    SEMSHARE_STATUS_RETURN(ctx_.Upload(pos_.data(), pos.data() + i0, s * 4));
    SEMSHARE_CUDA_RETURN(k::EmbedGather<float>(model_.tok_embd.data(), c.vocab_size, d_,
                                               ids_.as<int32_t>(), s, x_.as<float>(),
                                               ctx_.stream()));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      DeviceLayerKv& kv = cache.layer(l);
      SEMSHARE_STATUS_RETURN(Qkv(l, x_.as<float>(), pos_.as<int32_t>(), s));
      SEMSHARE_STATUS_RETURN(StoreKv(pos_.as<int32_t>(), s, &kv, kv.rows));
      kv.rows += s;
      kv.host_pos.insert(kv.host_pos.end(), pos.begin() + i0, pos.begin() + i0 + s);
      SEMSHARE_STATUS_RETURN(Attend(l, x_.as<float>(), pos_.as<int32_t>(), s, kv));
      SEMSHARE_STATUS_RETURN(Mlp(l, x_.as<float>(), s));
    }
    // The uploads above read host memory the caller may change after return: order them.
    SEMSHARE_STATUS_RETURN(ctx_.Sync());
  }
  last_rows_ = last;
  if (logits != nullptr) return Logits(At<float>(x_, (last - 1) * d_), logits);
  return ctx_.Check("forward");
}

absl::StatusOr<int32_t> CudaForward::ForwardSample(std::span<const int32_t> ids,
                                                   std::span<const int32_t> pos,
                                                   DeviceKvCache& cache, float temperature,
                                                   int top_k, float top_p, float u) {
  const ScopedDevice on = ctx_.Activate();
  SEMSHARE_STATUS_RETURN(Forward(ids, pos, cache, nullptr));
  SEMSHARE_STATUS_RETURN(Logits(At<float>(x_, (last_rows_ - 1) * d_), nullptr));
  const int64_t vocab = model_.config.vocab_size;
  // The token goes to the first int32 of ids_ (free after Forward).
  int32_t* tok_d = ids_.as<int32_t>();
  if (temperature <= 0.0f) {
    SEMSHARE_CUDA_RETURN(k::Argmax(logits_.as<float>(), vocab, tok_d, ctx_.stream()));
  } else {
    SEMSHARE_CUDA_RETURN(k::SampleTopKTopP(logits_.as<float>(), vocab, temperature, top_k, top_p, u,
                                           tok_d, ctx_.stream()));
  }
  int32_t tok = 0;
  SEMSHARE_STATUS_RETURN(ctx_.Download(&tok, tok_d, 4));
  SEMSHARE_STATUS_RETURN(ctx_.Sync());
  return tok;
}

absl::Status CudaForward::Retain(const void* q_window, const int32_t* qpos_d, int64_t w,
                                 int64_t budget, const std::vector<uint8_t>& protect,
                                 DeviceLayerKv& kv, uint8_t* prot_h, int32_t* idx_h,
                                 int64_t* kept) {
  const int64_t m = kv.rows;
  if (m <= budget) return absl::OkStatus();
  cudaStream_t st = ctx_.stream();
  const k::AttnShape sh = Shape(w, m);
  DevicePool& p = ctx_.pool();
  SEMSHARE_STATUS_RETURN(p.EnsureSize(mass_, m * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(mass_ws_, k::AttentionMassWorkspace(sh) * 4));
  SEMSHARE_CUDA_RETURN(k::AttentionMass<bf16>(static_cast<const bf16*>(q_window), qpos_d,
                                              kv.k.as<bf16>(), kv.pos.as<int32_t>(), sh,
                                              mass_.as<float>(), mass_ws_.as<float>(), st));
  int64_t cand = 0;  // prot_h is this layer's own region: no earlier copy reads it
  for (int64_t j = 0; j < m; ++j) {
    const int32_t pp = kv.host_pos[j];
    prot_h[j] = pp >= 0 && pp < static_cast<int32_t>(protect.size()) && protect[pp] ? 1 : 0;
    cand += prot_h[j] == 0;
  }
  const int64_t evict = std::min(m - budget, cand);
  if (evict <= 0) return absl::OkStatus();
  const int64_t keep_k = cand - evict, count = (m - cand) + keep_k;
  SEMSHARE_STATUS_RETURN(p.EnsureSize(flags_, m));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(sel_idx_, m * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(sel_count_, 8));
  SEMSHARE_STATUS_RETURN(ctx_.Upload(flags_.data(), prot_h, m));
  // Keep the highest-mass candidates; among equal masses the later rows (the CPU evicts the
  // lowest mass, earlier rows first).
  SEMSHARE_CUDA_RETURN(k::SelectTopK(mass_.as<float>(), flags_.as<uint8_t>(), m, keep_k, false,
                                     sel_idx_.as<int32_t>(), nullptr, sel_count_.as<int64_t>(),
                                     st));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(kv_spare_k_, count * kvd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(kv_spare_v_, count * kvd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(kv_spare_pos_, count * 4));
  SEMSHARE_CUDA_RETURN(k::CompactRows<bf16>(
      kv.k.as<bf16>(), kv.v.as<bf16>(), kv.pos.as<int32_t>(), kvd_, sel_idx_.as<int32_t>(), count,
      kv_spare_k_.as<bf16>(), kv_spare_v_.as<bf16>(), kv_spare_pos_.as<int32_t>(), st));
  // The kept rows' indices come back without waiting: the caller maps kv.host_pos through them
  // after its final synchronisation (nothing reads this layer's host positions before that).
  SEMSHARE_STATUS_RETURN(ctx_.Download(idx_h, sel_idx_.data(), count * 4));
  std::swap(kv.k, kv_spare_k_);
  std::swap(kv.v, kv_spare_v_);
  std::swap(kv.pos, kv_spare_pos_);
  kv.capacity =
      std::min({kv.k.bytes() / (kvd_ * 2), kv.v.bytes() / (kvd_ * 2), kv.pos.bytes() / 4});
  kv.rows = count;
  *kept = count;
  return absl::OkStatus();
}

absl::Status CudaForward::SelectivePrefill(std::span<const int32_t> ids, const ReusePlan& plan,
                                           DeviceKvCache* reference, DeviceKvCache& cache,
                                           float* logits, PrefillStats* st) {
  const ModelConfig& c = model_.config;
  const ReuseConfig& config = plan.config;
  const int64_t n = static_cast<int64_t>(ids.size());
  const ScopedDevice on = ctx_.Activate();
  // On every return, errors included, the reference's copies are over: the caller may have
  // started its upload (StartUpload), an error return would leave later layers in flight on
  // the copy stream, and the caller may free or refill the pinned source at once. (After a
  // successful hit the compute stream waited for every layer and synchronised: no cost.)
  // Likewise the compute stream, whose queued copies read and write the pinned staging
  // (stage_) that the next call rewrites (on success it is idle already: no cost).
  struct CopyDrain {
    cudaStream_t stream;
    cudaStream_t compute;
    bool armed;
    ~CopyDrain() {
      if (armed) cudaStreamSynchronize(stream);
      cudaStreamSynchronize(compute);
    }
  } drain{ctx_.copy_stream(), ctx_.stream(), reference != nullptr};
  if (n == 0) return absl::InvalidArgumentError("prefill: the prompt has no tokens");
  if (cache.rows() != 0 || cache.n_layers() != c.n_layers || cache.kv_dim() != kvd_) {
    return absl::InvalidArgumentError("prefill: the cache must be empty and shaped for the model");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefill: token id ", id, " outside vocabulary of ", c.vocab_size));
    }
  }
  SEMSHARE_STATUS_RETURN(config.Validate());
  if (plan.n != n || static_cast<int64_t>(plan.forced.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefill: the plan covers ", plan.n, " tokens, the prompt ", n));
  }
  if (plan.kind == ReuseKind::kCopyPrefix) {
    // The session copies exact prefixes itself (CudaServingSession::PrefillPlan).
    return absl::UnimplementedError(
        "CUDA selective prefill: a copy_prefix plan is the session's (CopyPrefixFrom + Forward)");
  }
  const bool hit = reference != nullptr && plan.rearranges();
  // Rows [0, c0) are the reference's, copied and never computed nor evicted (kHybridSelective);
  // rows [c0, n) are computed at layer 0, as the CPU path's SelectivePrefill.
  const int64_t c0 = plan.copy_rows;
  const int64_t r = n - c0;
  if (c0 < 0 || c0 >= n || (c0 > 0 && !hit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill: the plan copies ", c0, " rows of a ", n,
        "-token prompt (fewer than the prompt, and only from a reference it rearranges)"));
  }
  bool reuse = hit;  // false from layer 0 on when the fallback guard judges the match poor
  if (hit) {
    if (reference->n_layers() != c.n_layers || reference->kv_dim() != kvd_) {
      return absl::InvalidArgumentError("prefill: reference KV shape does not match the model");
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      if (reference->layer(l).rows != reference->rows()) {
        return absl::InvalidArgumentError("prefill: reference layers differ in rows (trimmed?)");
      }
    }
    if (c0 > reference->rows()) {
      return absl::InvalidArgumentError(absl::StrCat("prefill: the plan copies ", c0, " rows of a ",
                                                     reference->rows(), "-row reference"));
    }
    if (static_cast<int64_t>(plan.src.size()) != r ||
        static_cast<int64_t>(plan.delta.size()) != r ||
        std::any_of(plan.src.begin(), plan.src.end(),
                    [&](int32_t r) { return r < 0 || r >= reference->rows(); })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prefill: the plan names reference rows past its ", reference->rows(), " rows"));
    }
  }
  const int64_t window = std::min<int64_t>({config.window, n, r});
  const int64_t row_bytes = 2 * kvd_ * 2;
  cudaStream_t sm = ctx_.stream();
  DevicePool& p = ctx_.pool();

  // Pinned staging, one 256-byte aligned region each: ids, iota, src, delta (uploaded once),
  // set (uploaded per selecting layer), sel (downloaded per selecting layer), layer 0's
  // deviations, selection flags (uploaded per selecting layer); then per layer retention's flags
  // and kept indices. A shared region is rewritten only after the stream synchronisation that
  // follows its last copy (the selection's, once per selecting layer).
  const int64_t r4 = (n * 4 + 255) / 256 * 256, r1 = (n + 255) / 256 * 256;
  const int64_t layers = c.n_layers;
  SEMSHARE_STATUS_RETURN(EnsureStage(7 * r4 + r1 + layers * (r1 + r4)));
  char* const hb = static_cast<char*>(stage_);
  int32_t* const ids_h = reinterpret_cast<int32_t*>(hb);
  int32_t* const iota_h = reinterpret_cast<int32_t*>(hb + r4);
  int32_t* const src_h = reinterpret_cast<int32_t*>(hb + 2 * r4);
  int32_t* const delta_h = reinterpret_cast<int32_t*>(hb + 3 * r4);
  int32_t* const set_h = reinterpret_cast<int32_t*>(hb + 4 * r4);
  int32_t* const sel_h = reinterpret_cast<int32_t*>(hb + 5 * r4);
  float* const dev0_h = reinterpret_cast<float*>(hb + 6 * r4);
  uint8_t* const flags_h = reinterpret_cast<uint8_t*>(hb + 7 * r4);
  // Retention's per-layer regions (no synchronisation between layers orders their reuse):
  // layer l's flags at prot_at(l), its kept row indices at idx_at(l).
  char* const per_layer = hb + 7 * r4 + r1;
  auto prot_at = [&](int64_t l) { return reinterpret_cast<uint8_t*>(per_layer + l * r1); };
  auto idx_at = [&](int64_t l) {
    return reinterpret_cast<int32_t*>(per_layer + layers * r1 + l * r4);
  };
  std::vector<int64_t> retained(layers, -1);  // rows kept by retention, per layer
  // On an error return the cache is left empty: a retained layer's host positions are mapped
  // only after the final synchronisation, so they would not match its rows.
  struct ClearOnError {
    DeviceKvCache& cache;
    bool armed = true;
    ~ClearOnError() {
      if (armed) cache.Clear();
    }
  } clear_on_error{cache};

  // The plan's rows: src/delta for the r computed rows [c0, n), the ids of those rows, the
  // positions 0..n-1 of every row (the rearranged layers' pos), the first set (c0..n-1).
  const std::vector<uint8_t>& forced = plan.forced;
  if (hit) {
    std::copy(plan.src.begin(), plan.src.end(), src_h);
    std::copy(plan.delta.begin(), plan.delta.end(), delta_h);
  }
  std::vector<int32_t> set = plan.FirstSet();
  std::copy(ids.begin() + c0, ids.end(), ids_h);
  std::iota(iota_h, iota_h + n, 0);
  std::copy(set.begin(), set.end(), set_h);

  SEMSHARE_STATUS_RETURN(Reserve(n));
  // The copied rows first (every layer, after the reference's upload of it), then room for n.
  if (c0 > 0) SEMSHARE_STATUS_RETURN(cache.CopyPrefixFrom(*reference, c0));
  SEMSHARE_STATUS_RETURN(cache.ReserveAll(n));
  // xs_ and x_ swap below, so both must hold Reserve()'s reserved_ rows (which may exceed n):
  // a later Forward trusts reserved_ and writes that many rows into x_.
  SEMSHARE_STATUS_RETURN(p.EnsureSize(xs_, x_.bytes()));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(set_, n * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(iota_, n * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(dev_, n * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(tmp_rows_, n * kvd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(flags_, n));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(sel_idx_, n * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(sel_count_, 8));
  if (hit) {
    SEMSHARE_STATUS_RETURN(p.EnsureSize(src_, n * 4));
    SEMSHARE_STATUS_RETURN(p.EnsureSize(delta_, n * 4));
  }
  SEMSHARE_STATUS_RETURN(ctx_.Upload(ids_.data(), ids_h, r * 4));
  SEMSHARE_STATUS_RETURN(ctx_.Upload(iota_.data(), iota_h, n * 4));
  SEMSHARE_STATUS_RETURN(ctx_.Upload(set_.data(), set_h, r * 4));
  if (hit) {
    SEMSHARE_STATUS_RETURN(ctx_.Upload(src_.data(), src_h, r * 4));
    SEMSHARE_STATUS_RETURN(ctx_.Upload(delta_.data(), delta_h, r * 4));
  }
  SEMSHARE_CUDA_RETURN(k::EmbedGather<float>(model_.tok_embd.data(), c.vocab_size, d_,
                                             ids_.as<int32_t>(), r, x_.as<float>(), sm));

  int64_t held_rows = 0;
  st->mode = config.mode;
  st->layer_computed.assign(c.n_layers, 0);
  st->layer_rows.assign(c.n_layers, 0);
  std::vector<int32_t> next;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (interrupted()) return absl::CancelledError("prefill: interrupted (request cancelled)");
    const int64_t s = static_cast<int64_t>(set.size());
    DeviceLayerKv& kv = cache.layer(l);
    st->layer_computed[l] = s;
    const int32_t* set_d = set_.as<int32_t>();
    SEMSHARE_STATUS_RETURN(Qkv(l, x_.as<float>(), set_d, s));
    if (reuse) {
      // Rearranged reference rows after the copied ones: K~[i] = Rot(i - pi(i)) K_R[pi(i)],
      // V~[i] = V_R[pi(i)] for i in [c0, n).
      SEMSHARE_STATUS_RETURN(reference->WaitLayer(l));
      const DeviceLayerKv& ref = reference->layer(l);
      SEMSHARE_CUDA_RETURN(k::GatherRerotate<bf16>(
          ref.k.as<bf16>(), src_.as<int32_t>(), delta_.as<int32_t>(), r,
          RopeArgsFor(model_, c.n_kv_heads, true), At<bf16>(kv.k, c0 * kvd_), sm));
      SEMSHARE_CUDA_RETURN(k::GatherRows<bf16>(ref.v.as<bf16>(), kvd_, src_.as<int32_t>(), r,
                                               At<bf16>(kv.v, c0 * kvd_), sm));
      SEMSHARE_CUDA_RETURN(
          cudaMemcpyAsync(kv.pos.data(), iota_.data(), n * 4, cudaMemcpyDeviceToDevice, sm));
      kv.rows = n;
      kv.host_pos.resize(n);
      std::iota(kv.host_pos.begin(), kv.host_pos.end(), 0);
      // Fresh K/V of the set, their deviation from the rearranged rows, then overwrite.
      SEMSHARE_STATUS_RETURN(StoreKv(set_d, s, nullptr, 0));
      SEMSHARE_CUDA_RETURN(
          k::GatherRows<bf16>(kv.k.as<bf16>(), kvd_, set_d, s, tmp_rows_.as<bf16>(), sm));
      SEMSHARE_CUDA_RETURN(
          (k::RowDistance<bf16, bf16>(kcur_.as<bf16>(), kvd_, tmp_rows_.as<bf16>(), kvd_, s, kvd_,
                                      false, dev_.as<float>(), sm)));
      SEMSHARE_CUDA_RETURN(
          k::GatherRows<bf16>(kv.v.as<bf16>(), kvd_, set_d, s, tmp_rows_.as<bf16>(), sm));
      SEMSHARE_CUDA_RETURN((k::RowDistance<bf16, bf16>(vcur_.as<bf16>(), kvd_, tmp_rows_.as<bf16>(),
                                                       kvd_, s, kvd_, true, dev_.as<float>(), sm)));
      if (l == 0) {  // read from dev0_h after a later synchronisation
        SEMSHARE_STATUS_RETURN(ctx_.Download(dev0_h, dev_.data(), s * 4));  // s == r
        if (config.fallback_deviation > 0.0f) {
          // The fallback guard (GuardFallsBack, as the CPU path): it needs them now. On a
          // fallback the fresh rows scattered below replace every rearranged one and every
          // later layer computes every token without retention: a full prefill.
          SEMSHARE_STATUS_RETURN(ctx_.Sync());
          if (plan.FallsBack({dev0_h, static_cast<size_t>(r)}, &st->guard_deviation)) {
            reuse = false;
            st->fallback = true;
          }
        }
      }
      SEMSHARE_CUDA_RETURN(
          k::ScatterRows<bf16>(kcur_.as<bf16>(), kvd_, set_d, s, kv.k.as<bf16>(), sm));
      SEMSHARE_CUDA_RETURN(
          k::ScatterRows<bf16>(vcur_.as<bf16>(), kvd_, set_d, s, kv.v.as<bf16>(), sm));
    } else {
      // set == every computed token, after the copied rows (c0 of them when this layer's were
      // copied from the reference: a hybrid's layers after a fallback).
      SEMSHARE_STATUS_RETURN(StoreKv(set_d, s, &kv, c0));
      kv.rows = c0 + s;
      kv.host_pos.resize(c0);
      kv.host_pos.insert(kv.host_pos.end(), set.begin(), set.end());
    }
    // This layer's n rows, the finished layers' retained ones and the copied rows of the
    // layers still to come (as the CPU path counts them).
    st->kv_bytes_peak =
        std::max(st->kv_bytes_peak, (held_rows + n + c0 * (layers - 1 - l)) * row_bytes);
    SEMSHARE_STATUS_RETURN(Attend(l, x_.as<float>(), set_d, s, kv));
    if (plan.Retains() && !st->fallback) {
      SEMSHARE_STATUS_RETURN(Retain(At<bf16>(q_, (s - window) * qd_), set_d + (s - window), window,
                                    plan.Budget(l, c.n_layers), plan.Protected(set, reuse), kv,
                                    prot_at(l), idx_at(l), &retained[l]));
    }
    held_rows += kv.rows;
    st->layer_rows[l] = kv.rows;
    SEMSHARE_STATUS_RETURN(Mlp(l, x_.as<float>(), s));

    if (reuse && l + 1 < c.n_layers) {
      const int64_t keep = plan.Keep(s, l);  // the plan's schedule, as the CPU path's
      // flags_h: its previous upload finished at the previous selecting layer's sync.
      int64_t nf = 0;
      for (int64_t i = 0; i < s; ++i) nf += flags_h[i] = forced[set[i]];
      const int64_t room = std::max<int64_t>(0, keep - nf);
      const int64_t count = nf + std::min(room, s - nf);
      if (count == s) continue;
      SEMSHARE_STATUS_RETURN(ctx_.Upload(flags_.data(), flags_h, s));
      SEMSHARE_CUDA_RETURN(k::SelectTopK(dev_.as<float>(), flags_.as<uint8_t>(), s, room, true,
                                         sel_idx_.as<int32_t>(), nullptr, sel_count_.as<int64_t>(),
                                         sm));
      SEMSHARE_STATUS_RETURN(ctx_.Download(sel_h, sel_idx_.data(), count * 4));
      // Compact the residual stream to the next set's rows.
      SEMSHARE_CUDA_RETURN(k::GatherRows<float>(x_.as<float>(), d_, sel_idx_.as<int32_t>(), count,
                                                xs_.as<float>(), sm));
      // The layer's one synchronisation: the host needs the chosen rows to size the next
      // launches. After it, every earlier copy from the staging is done.
      SEMSHARE_STATUS_RETURN(ctx_.Sync());
      std::swap(x_, xs_);
      next.resize(count);
      for (int64_t i = 0; i < count; ++i) next[i] = set[sel_h[i]];
      set.swap(next);
      std::copy(set.begin(), set.end(), set_h);
      SEMSHARE_STATUS_RETURN(ctx_.Upload(set_.data(), set_h, count * 4));  // queued, no wait
    }
  }
  st->copied_rows = hit ? c0 : 0;
  if (reuse) {
    st->hit = true;
    st->recomputed_tokens = st->layer_computed.size() > 1 ? st->layer_computed[1] : r;
    st->reused_tokens = n - st->recomputed_tokens;
  } else {
    // A miss, or a fallback: a hybrid keeps its copied rows (still a hit), a selective hit
    // became a full prefill.
    st->recomputed_tokens = n - st->copied_rows;
    st->reused_tokens = st->copied_rows;
    st->hit = st->copied_rows > 0;
  }
  st->prompt_tokens = n;
  st->plan = plan.kind;
  st->kv_bytes = cache.ByteSize();
  st->kv_bytes_peak = std::max(st->kv_bytes_peak, st->kv_bytes);
  // Logits synchronises after its download; without logits, synchronise here.
  SEMSHARE_STATUS_RETURN(
      logits != nullptr ? Logits(At<float>(x_, (static_cast<int64_t>(set.size()) - 1) * d_), logits)
                        : ctx_.Sync());
  if (hit) {  // layer 0 computed all r rows after the copied ones
    st->layer0_deviation.assign(dev0_h, dev0_h + r);
    plan.FallsBack(st->layer0_deviation, &st->guard_deviation);  // the mean, as the CPU's
  }
  std::vector<int32_t> kept_pos;
  for (int64_t l = 0; l < layers; ++l) {
    if (retained[l] < 0) continue;
    DeviceLayerKv& kv = cache.layer(l);
    const int32_t* idx = idx_at(l);
    kept_pos.resize(retained[l]);
    for (int64_t r = 0; r < retained[l]; ++r) kept_pos[r] = kv.host_pos[idx[r]];
    kv.host_pos.swap(kept_pos);
  }
  clear_on_error.armed = false;
  return absl::OkStatus();
}

}  // namespace semshare::engine::cuda
