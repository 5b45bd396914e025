#include "engine/reuse/reuse_prefill.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/reuse/retention.h"

namespace semshare::engine {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int32_t> Iota(int64_t n, int32_t start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

}  // namespace

absl::Status CheckMatch(const TokenMatch& match, int64_t n, int64_t m) {
  if (static_cast<int64_t>(match.ref_index.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill: the match covers ", match.ref_index.size(), " tokens, the prompt ", n));
  }
  for (int32_t r : match.ref_index) {
    if (r >= m) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefill: the match names reference row ", r, ", past its ", m, " rows"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPlan(const ReusePlan& plan, int64_t n, int64_t m) {
  if (plan.n != n || static_cast<int64_t>(plan.forced.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefill: the plan covers ", plan.n, " tokens, the prompt ", n));
  }
  if (plan.kind == ReuseKind::kNone) {
    return absl::InvalidArgumentError("prefill: a hit's plan must reuse its reference (kind none)");
  }
  if (plan.copy_rows < 0 || plan.copy_rows >= n || plan.copy_rows > m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill: the plan copies ", plan.copy_rows, " rows of a ", m, "-row reference into a ", n,
        "-token prompt (at most both, and the last token is always computed)"));
  }
  if (plan.kind == ReuseKind::kCopyPrefix) return plan.config.Validate();
  const int64_t r = n - plan.copy_rows;
  if (static_cast<int64_t>(plan.src.size()) != r || static_cast<int64_t>(plan.delta.size()) != r) {
    return absl::InvalidArgumentError(absl::StrCat("prefill: the plan rearranges ", plan.src.size(),
                                                   " rows; its prompt leaves ", r));
  }
  for (int32_t src : plan.src) {
    if (src < 0 || src >= m) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefill: the plan names reference row ", src, " of ", m));
    }
  }
  return plan.config.Validate();
}

absl::Status CheckReference(std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                            int64_t n_layers, int64_t kv_dim) {
  if (ref_kv.n_layers() != n_layers || ref_kv.kv_dim() != kv_dim) {
    return absl::InvalidArgumentError("prefill: the reference's KV is not shaped for the model");
  }
  const int64_t m = static_cast<int64_t>(ref_ids.size());
  for (int64_t l = 0; l < n_layers; ++l) {
    if (ref_kv.layer(l).rows() != m) {
      return absl::InvalidArgumentError(absl::StrCat("prefill: the reference has ", m,
                                                     " tokens but ", ref_kv.layer(l).rows(),
                                                     " KV rows in layer ", l));
    }
  }
  return absl::OkStatus();
}

void SetPrefixCopyStats(int64_t n, int64_t rows, int64_t n_layers, PrefillStats* st) {
  st->reused_tokens = rows;
  st->recomputed_tokens = n - rows;
  st->layer_computed.assign(n_layers, n - rows);
  st->layer_rows.assign(n_layers, n);
  st->copied_rows = rows;
}

ReusePrefiller::ReusePrefiller(const Model& model, Backend& backend, const ReuseConfig& config)
    : model_(model),
      backend_(backend),
      config_(config),
      matcher_(model.weights.tok_embd, config),
      forward_(model, backend) {}

absl::StatusOr<Reference> ReusePrefiller::MakeReference(std::span<const int32_t> ids) {
  Reference ref;
  ref.ids.assign(ids.begin(), ids.end());
  ref.kv = forward_.NewCache();
  const std::vector<int32_t> pos = Iota(static_cast<int64_t>(ids.size()));
  if (auto s = forward_.Forward(ids, pos, ref.kv, nullptr); !s.ok()) return s;
  ref.sketch = matcher_.Sketch(ids);
  return ref;
}

absl::StatusOr<PrefillStats> ReusePrefiller::Prefill(std::span<const int32_t> ids,
                                                     const Reference* reference, KvCache* cache,
                                                     float* logits) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(ids.size());
  if (auto s = CheckPrefillArgs(ids, *cache); !s.ok()) return s;
  if (auto s = config_.Validate(); !s.ok()) return s;

  PrefillStats st;
  st.mode = config_.mode;
  st.prompt_tokens = n;
  if (reference != nullptr && config_.mode != PrefillMode::kFull) {
    if (auto s = CheckReference(reference->ids, reference->kv, c.n_layers, cache->kv_dim());
        !s.ok()) {
      return s;
    }
  }
  const std::vector<int32_t> pos = Iota(n);
  if (config_.mode == PrefillMode::kFull ||
      (config_.mode == PrefillMode::kPrefix && reference == nullptr)) {
    if (auto s = forward_.Forward(ids, pos, *cache, logits); !s.ok()) return s;
    st.recomputed_tokens = n;
    st.layer_computed.assign(c.n_layers, n);
  } else if (config_.mode == PrefillMode::kPrefix) {
    // Longest common token prefix; at least the last token is computed for its logits.
    const ReusePlan plan = PlanPrefixCopy(n, CommonPrefix(ids, reference->ids, n), config_);
    const int64_t lcp = plan.copy_rows;
    if (auto s = PrefixPrefill(ids, reference->kv, lcp, cache, logits, &st); !s.ok()) return s;
    st.plan = plan.kind;
    st.hit = lcp > 0;
    st.similarity = static_cast<float>(lcp) / static_cast<float>(n);
  } else {
    // snapkv, or semshare (hit or miss): the selective path, then retention per layer.
    TokenMatch match;
    if (config_.mode == PrefillMode::kSemShare && reference != nullptr &&
        n >= config_.min_reuse_tokens) {
      const auto tm = std::chrono::steady_clock::now();
      match = matcher_.Match(matcher_.Sketch(ids), reference->sketch);
      st.match_ms = MsSince(tm);
      st.similarity = match.similarity;
      st.hit = match.similarity >= config_.hit_threshold;
      if (st.hit) st.ref_index = match.ref_index;
    }
    absl::Status s =
        st.hit ? RunPlan(ids, PlanReuse(ids, reference->ids, match, config_), reference->kv, cache,
                         logits, &st)
               : SelectivePrefill(ids, PlanNoReuse(n, config_), nullptr, cache, logits, &st);
    if (!s.ok()) return s;
  }
  FinishStats(*cache, &st);
  st.prefill_ms = MsSince(t0);
  return st;
}

absl::StatusOr<PrefillStats> ReusePrefiller::PrefillHit(std::span<const int32_t> ids,
                                                        std::span<const int32_t> ref_ids,
                                                        const KvCache& ref_kv,
                                                        const TokenMatch& match, KvCache* cache,
                                                        float* logits) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (auto s = config_.Validate(); !s.ok()) return s;
  if (auto s = CheckMatch(match, n, static_cast<int64_t>(ref_ids.size())); !s.ok()) return s;
  absl::StatusOr<PrefillStats> st =
      PrefillPlan(ids, ref_ids, ref_kv, PlanReuse(ids, ref_ids, match, config_), cache, logits);
  if (!st.ok()) return st;
  st->similarity = match.similarity;
  if (st->hit) st->ref_index = match.ref_index;  // (a fallback guard's prefill reused nothing)
  return st;
}

absl::StatusOr<PrefillStats> ReusePrefiller::PrefillPlan(std::span<const int32_t> ids,
                                                         std::span<const int32_t> ref_ids,
                                                         const KvCache& ref_kv,
                                                         const ReusePlan& plan, KvCache* cache,
                                                         float* logits) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(ids.size());
  if (auto s = CheckPrefillArgs(ids, *cache); !s.ok()) return s;
  if (auto s = CheckPlan(plan, n, static_cast<int64_t>(ref_ids.size())); !s.ok()) return s;
  if (auto s = CheckReference(ref_ids, ref_kv, model_.config.n_layers, cache->kv_dim()); !s.ok()) {
    return s;
  }
  PrefillStats st;
  st.mode = PrefillMode::kSemShare;
  st.prompt_tokens = n;
  st.similarity = plan.rearranges() ? plan.remainder_similarity : 1.0f;
  st.hit = true;
  if (auto s = RunPlan(ids, plan, ref_kv, cache, logits, &st); !s.ok()) return s;
  FinishStats(*cache, &st);
  st.prefill_ms = MsSince(t0);
  return st;
}

absl::Status ReusePrefiller::RunPlan(std::span<const int32_t> ids, const ReusePlan& plan,
                                     const KvCache& ref_kv, KvCache* cache, float* logits,
                                     PrefillStats* st) {
  st->plan = plan.kind;
  if (plan.kind == ReuseKind::kCopyPrefix) {
    return PrefixPrefill(ids, ref_kv, plan.copy_rows, cache, logits, st);
  }
  return SelectivePrefill(ids, plan, &ref_kv, cache, logits, st);
}

absl::Status ReusePrefiller::CheckPrefillArgs(std::span<const int32_t> ids,
                                              const KvCache& cache) const {
  const ModelConfig& c = model_.config;
  if (ids.empty()) return absl::InvalidArgumentError("prefill: the prompt has no tokens");
  if (cache.rows() != 0 || cache.n_layers() != c.n_layers ||
      cache.kv_dim() != c.n_kv_heads * c.head_dim) {
    return absl::InvalidArgumentError("prefill: the cache must be empty and shaped for the model");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefill: token id ", id, " outside vocabulary of ", c.vocab_size));
    }
  }
  return absl::OkStatus();
}

void ReusePrefiller::FinishStats(const KvCache& cache, PrefillStats* st) const {
  if (st->layer_rows.empty()) {
    for (int64_t l = 0; l < model_.config.n_layers; ++l) {
      st->layer_rows.push_back(cache.layer(l).rows());
    }
  }
  st->kv_bytes = cache.ByteSize();
  st->kv_bytes_peak = std::max(st->kv_bytes_peak, st->kv_bytes);
}

absl::Status ReusePrefiller::PrefixPrefill(std::span<const int32_t> ids, const KvCache& ref_kv,
                                           int64_t rows, KvCache* cache, float* logits,
                                           PrefillStats* st) {
  const int64_t n = static_cast<int64_t>(ids.size());
  cache->AssignPrefix(ref_kv, rows);
  const std::vector<int32_t> pos = Iota(n - rows, static_cast<int32_t>(rows));
  if (auto s = forward_.Forward(ids.subspan(rows), pos, *cache, logits); !s.ok()) return s;
  SetPrefixCopyStats(n, rows, model_.config.n_layers, st);
  return absl::OkStatus();
}

absl::Status ReusePrefiller::SelectivePrefill(std::span<const int32_t> ids, const ReusePlan& plan,
                                              const KvCache* ref_kv, KvCache* cache, float* logits,
                                              PrefillStats* st) {
  const ModelConfig& c = model_.config;
  const int64_t n = plan.n, d = c.d_model, kvd = cache->kv_dim();
  const int64_t qd = c.n_heads * c.head_dim;
  const int64_t row_bytes = 2 * kvd * static_cast<int64_t>(sizeof(float));
  const int64_t c0 = plan.copy_rows;  // rows [0, c0): the reference's, never computed
  const int64_t r = plan.computed();  // rows [c0, n): computed at layer 0
  const bool hit = ref_kv != nullptr && plan.rearranges();
  bool reuse = hit;  // false from the layer where the guard falls back (then stays so)
  // Retention scores come from the queries of the last w tokens, which are forced: the last w
  // rows of every recompute set.
  const int64_t w = std::min<int64_t>({plan.config.window, n, r});
  if (hit && c0 > 0) cache->AssignPrefix(*ref_kv, c0);  // every layer's copied rows

  std::vector<int32_t> set = plan.FirstSet();  // S_l, ascending positions (== row indices)
  std::vector<float> x(r * d), xs;             // residual stream of the tokens in `set`
  forward_.Embed(ids.data() + c0, r, x.data());
  std::vector<float> dev, dev_v, ref_rows;  // scratch reused across layers
  int64_t held_rows = 0;                    // KV rows of finished layers (after retention)
  st->layer_computed.assign(c.n_layers, 0);
  st->layer_rows.assign(c.n_layers, 0);

  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (forward_.interrupted()) {
      return absl::CancelledError("prefill: interrupted (request cancelled)");
    }
    const int64_t s = static_cast<int64_t>(set.size());
    LayerKv& kv = cache->layer(l);
    st->layer_computed[l] = s;
    forward_.Qkv(l, x.data(), set.data(), s);
    if (reuse) {
      // This layer's rearranged reference KV, built only now so that at most one layer of it
      // is held beyond the retained rows: K~[i] = Rot(i - pi(i)) K_R[pi(i)], V~[i] = V_R[pi(i)]
      // for the rows [c0, n) after the copied ones.
      const LayerKv& ref = ref_kv->layer(l);
      kv.k.resize(n * kvd);
      kv.v.resize(n * kvd);
      kv.pos = Iota(n);
      backend_.GatherRows(ref.k.data(), kvd, plan.src.data(), r, kv.k.data() + c0 * kvd);
      backend_.GatherRows(ref.v.data(), kvd, plan.src.data(), r, kv.v.data() + c0 * kvd);
      backend_.Rope(kv.k.data() + c0 * kvd, plan.delta.data(), r, c.n_kv_heads, c.head_dim,
                    forward_.rope());
      // Deviation of the fresh K/V of the computed tokens from the rearranged rows.
      ref_rows.resize(s * kvd);
      dev.resize(s);
      dev_v.resize(s);
      backend_.GatherRows(kv.k.data(), kvd, set.data(), s, ref_rows.data());
      backend_.RowDistance(forward_.k(), ref_rows.data(), s, kvd, dev.data());
      backend_.GatherRows(kv.v.data(), kvd, set.data(), s, ref_rows.data());
      backend_.RowDistance(forward_.v(), ref_rows.data(), s, kvd, dev_v.data());
      for (int64_t i = 0; i < s; ++i) dev[i] += dev_v[i];
      if (l == 0) {
        st->layer0_deviation = dev;
        // Layer 0 computed every token of the plan: on a fallback its fresh rows below
        // overwrite all the rearranged ones and every later layer computes them all, as a full
        // prefill (after the copied rows) does.
        if (plan.FallsBack(dev, &st->guard_deviation)) {
          reuse = false;
          st->fallback = true;
        }
      }
      forward_.StoreKv(kv, set.data(), set.data(), s);
    } else {
      forward_.StoreKv(kv, nullptr, set.data(), s);  // set == every computed token
    }
    // This layer's n rows, the finished layers' retained ones and the copied rows of the
    // layers still to come.
    st->kv_bytes_peak =
        std::max(st->kv_bytes_peak, (held_rows + n + c0 * (c.n_layers - 1 - l)) * row_bytes);
    std::vector<float> q_window;
    if (plan.Retains() && w > 0 && !st->fallback) {
      q_window.assign(forward_.q() + (s - w) * qd, forward_.q() + s * qd);
    }
    forward_.Attend(l, x.data(), set.data(), s, kv);
    if (!q_window.empty()) {
      RetainRows(backend_, forward_, q_window.data(), set.data() + (s - w), w,
                 plan.Budget(l, c.n_layers), plan.Protected(set, reuse), kv);
    }
    held_rows += kv.rows();
    st->layer_rows[l] = kv.rows();
    forward_.Mlp(l, x.data(), s);

    if (reuse && l + 1 < c.n_layers) {
      std::vector<int32_t> next = plan.NextSet(set, dev, l);
      if (next.size() != set.size()) {
        // Compact the residual stream to the rows of the next set (both ascending).
        xs.resize(next.size() * d);
        for (size_t i = 0, j = 0; i < next.size(); ++i) {
          while (set[j] != next[i]) ++j;
          std::copy_n(x.data() + j * d, d, xs.data() + i * d);
        }
        x.swap(xs);
        set.swap(next);
      }
    }
  }
  st->copied_rows = hit ? c0 : 0;
  if (reuse) {
    st->recomputed_tokens = st->layer_computed.size() > 1 ? st->layer_computed[1] : r;
    st->reused_tokens = n - st->recomputed_tokens;
  } else {
    st->recomputed_tokens = n - st->copied_rows;
    st->reused_tokens = st->copied_rows;
  }
  if (st->fallback) {
    // A hybrid keeps its copied rows (still a hit); a selective hit became a full prefill.
    st->hit = st->copied_rows > 0;
    st->ref_index.clear();
  }
  if (logits != nullptr) forward_.Logits(x.data() + (set.size() - 1) * d, logits);
  return absl::OkStatus();
}

}  // namespace semshare::engine
