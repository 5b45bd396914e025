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

// The next recompute set: every forced token of `set` plus the highest-deviation others, up to
// max(keep, |forced|) tokens, returned in ascending order (dev is indexed like `set`).
std::vector<int32_t> ShrinkSet(const std::vector<int32_t>& set, const std::vector<float>& dev,
                               const std::vector<uint8_t>& forced, int64_t keep) {
  std::vector<int32_t> next, others;
  for (size_t i = 0; i < set.size(); ++i) {
    (forced[set[i]] ? next : others).push_back(static_cast<int32_t>(i));
  }
  for (int32_t& i : next) i = set[i];
  const int64_t room = std::max<int64_t>(0, keep - static_cast<int64_t>(next.size()));
  if (room < static_cast<int64_t>(others.size())) {
    std::nth_element(others.begin(), others.begin() + room, others.end(),
                     [&](int32_t a, int32_t b) { return dev[a] > dev[b]; });
    others.resize(room);
  }
  for (int32_t i : others) next.push_back(set[i]);
  std::sort(next.begin(), next.end());
  return next;
}

int64_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b, int64_t limit) {
  limit = std::min({limit, static_cast<int64_t>(a.size()), static_cast<int64_t>(b.size())});
  int64_t i = 0;
  while (i < limit && a[i] == b[i]) ++i;
  return i;
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

int64_t ExactReuseRows(std::span<const int32_t> ids, std::span<const int32_t> ref_ids,
                       int64_t window) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t lcp = CommonPrefix(ids, ref_ids, n);
  if (n - lcp > window) return -1;
  return std::max<int64_t>(0, std::min(lcp, n - std::max<int64_t>(window, 1)));
}

int64_t RecomputeKeep(const ReuseConfig& config, int64_t n, int64_t s, int64_t layer) {
  const double ratio = layer == 0 ? config.recompute_ratio : config.alpha;
  const int64_t base = layer == 0 ? n : s;
  const int64_t keep = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(base)));
  return std::min(s, std::max<int64_t>(keep, std::min<int64_t>(n, config.recompute_min_tokens)));
}

bool GuardFallsBack(const ReuseConfig& config, std::span<const float> dev, float* mean) {
  double sum = 0;
  for (float v : dev) sum += v;
  *mean = dev.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(dev.size()));
  return config.fallback_deviation > 0.0f && *mean > config.fallback_deviation;
}

void SetPrefixCopyStats(int64_t n, int64_t rows, int64_t n_layers, PrefillStats* st) {
  st->reused_tokens = rows;
  st->recomputed_tokens = n - rows;
  st->layer_computed.assign(n_layers, n - rows);
  st->layer_rows.assign(n_layers, n);
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
    const int64_t lcp = CommonPrefix(ids, reference->ids, n - 1);
    if (auto s = PrefixPrefill(ids, reference->kv, lcp, cache, logits, &st); !s.ok()) return s;
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
    absl::Status s = st.hit
                         ? HitPrefill(ids, reference->ids, reference->kv, match, cache, logits, &st)
                         : SelectivePrefill(ids, nullptr, match, cache, logits, &st);
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
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(ids.size());
  if (auto s = CheckPrefillArgs(ids, *cache); !s.ok()) return s;
  if (auto s = config_.Validate(); !s.ok()) return s;
  if (auto s = CheckMatch(match, n, static_cast<int64_t>(ref_ids.size())); !s.ok()) return s;
  if (auto s = CheckReference(ref_ids, ref_kv, model_.config.n_layers, cache->kv_dim()); !s.ok()) {
    return s;
  }
  PrefillStats st;
  st.mode = PrefillMode::kSemShare;
  st.prompt_tokens = n;
  st.similarity = match.similarity;
  st.hit = true;
  st.ref_index = match.ref_index;
  if (auto s = HitPrefill(ids, ref_ids, ref_kv, match, cache, logits, &st); !s.ok()) return s;
  FinishStats(*cache, &st);
  st.prefill_ms = MsSince(t0);
  return st;
}

absl::Status ReusePrefiller::HitPrefill(std::span<const int32_t> ids,
                                        std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                                        const TokenMatch& match, KvCache* cache, float* logits,
                                        PrefillStats* st) {
  const int64_t exact = config_.exact_reuse ? ExactReuseRows(ids, ref_ids, config_.window) : -1;
  return exact >= 0 ? PrefixPrefill(ids, ref_kv, exact, cache, logits, st)
                    : SelectivePrefill(ids, &ref_kv, match, cache, logits, st);
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

absl::Status ReusePrefiller::SelectivePrefill(std::span<const int32_t> ids, const KvCache* ref_kv,
                                              const TokenMatch& match, KvCache* cache,
                                              float* logits, PrefillStats* st) {
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(ids.size()), d = c.d_model, kvd = cache->kv_dim();
  const int64_t qd = c.n_heads * c.head_dim;
  const int64_t row_bytes = 2 * kvd * static_cast<int64_t>(sizeof(float));
  const bool hit = ref_kv != nullptr;
  bool reuse = hit;  // false from the layer where the guard falls back (then stays so)
  const int64_t window = std::min<int64_t>(config_.window, n);
  const int64_t sink = std::min<int64_t>(config_.sink, n);

  // Forced tokens: recomputed at every layer and never evicted.
  std::vector<uint8_t> forced(n, 0);
  for (int64_t i = 0; i < sink; ++i) forced[i] = 1;
  for (int64_t i = n - window; i < n; ++i) forced[i] = 1;
  std::vector<int32_t> delta;  // [n] target position - reference position of matched rows
  std::vector<int32_t> src;    // [n] reference row of each target row (0 for unmatched)
  if (hit) {
    delta.resize(n);
    src.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t r = match.ref_index[i];
      if (r < 0) forced[i] = 1;
      src[i] = std::max(r, 0);
      delta[i] = static_cast<int32_t>(i) - (r < 0 ? static_cast<int32_t>(i) : r);
    }
  }

  std::vector<int32_t> set = Iota(n);  // S_l, ascending; positions == indices
  std::vector<float> x(n * d), xs;     // residual stream of the tokens in `set`
  forward_.Embed(ids.data(), n, x.data());
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
      // is held beyond the retained rows: K~[i] = Rot(i - pi(i)) K_R[pi(i)], V~[i] = V_R[pi(i)].
      const LayerKv& ref = ref_kv->layer(l);
      kv.k.resize(n * kvd);
      kv.v.resize(n * kvd);
      kv.pos = Iota(n);
      backend_.GatherRows(ref.k.data(), kvd, src.data(), n, kv.k.data());
      backend_.GatherRows(ref.v.data(), kvd, src.data(), n, kv.v.data());
      backend_.Rope(kv.k.data(), delta.data(), n, c.n_kv_heads, c.head_dim, forward_.rope());
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
        // Layer 0 computed every token: on a fallback its fresh rows below overwrite all the
        // rearranged ones and every later layer computes every token, as a full prefill does.
        if (GuardFallsBack(config_, dev, &st->guard_deviation)) {
          reuse = false;
          st->fallback = true;
        }
      }
      forward_.StoreKv(kv, set.data(), set.data(), s);
    } else {
      forward_.StoreKv(kv, nullptr, set.data(), s);  // set == all tokens
    }
    st->kv_bytes_peak = std::max(st->kv_bytes_peak, (held_rows + n) * row_bytes);
    // Retention scores come from the last-window queries, which are the last rows of `set`.
    std::vector<float> q_window;
    if (config_.retention != RetentionSchedule::kNone && window > 0 && !st->fallback) {
      q_window.assign(forward_.q() + (s - window) * qd, forward_.q() + s * qd);
    }
    forward_.Attend(l, x.data(), set.data(), s, kv);
    if (!q_window.empty()) {
      const int64_t budget = RetentionBudget(config_, n, l, c.n_layers);
      std::vector<uint8_t> protect = forced;
      if (reuse) {
        for (int32_t i : set) protect[i] = 1;  // rows recomputed at this layer
      }
      RetainRows(backend_, forward_, q_window.data(), set.data() + (s - window), window, budget,
                 protect, kv);
    }
    held_rows += kv.rows();
    st->layer_rows[l] = kv.rows();
    forward_.Mlp(l, x.data(), s);

    if (reuse && l + 1 < c.n_layers) {
      const int64_t keep = RecomputeKeep(config_, n, s, l);
      std::vector<int32_t> next = ShrinkSet(set, dev, forced, keep);
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
  if (reuse) {
    st->recomputed_tokens = st->layer_computed.size() > 1 ? st->layer_computed[1] : n;
    st->reused_tokens = n - st->recomputed_tokens;
  } else {
    st->recomputed_tokens = n;
    st->reused_tokens = 0;
  }
  if (st->fallback) {
    st->hit = false;
    st->ref_index.clear();
  }
  if (logits != nullptr) forward_.Logits(x.data() + (set.size() - 1) * d, logits);
  return absl::OkStatus();
}

}  // namespace semshare::engine
