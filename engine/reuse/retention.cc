#include "engine/reuse/retention.h"

#include <algorithm>
#include <cmath>

namespace semshare::engine {

int64_t RetentionBudget(const ReuseConfig& config, int64_t n, int64_t layer, int64_t n_layers) {
  double frac = config.retention_rho;
  switch (config.retention) {
    case RetentionSchedule::kNone:
      return n;
    case RetentionSchedule::kConstant:
      break;
    case RetentionSchedule::kExponential:
      frac *= std::pow(config.retention_gamma, layer);
      break;
    case RetentionSchedule::kIncreasing:
      frac *= std::pow(config.retention_gamma, n_layers - 1 - layer);
      break;
  }
  const int64_t b = static_cast<int64_t>(std::ceil(static_cast<double>(n) * frac));
  return std::min<int64_t>(n, std::max<int64_t>(config.retention_min_rows, b));
}

int64_t RetainRows(Backend& backend, const LlamaForward& forward, const float* q_window,
                   const int32_t* q_pos, int64_t w, int64_t budget,
                   const std::vector<uint8_t>& protect, LayerKv& kv) {
  const int64_t m = kv.rows();
  if (m <= budget) return 0;
  std::vector<float> mass(m);
  backend.AttentionMass(q_window, q_pos, w, kv.k.data(), kv.pos.data(), m, forward.attention(),
                        mass.data());
  std::vector<int32_t> candidates;
  for (int64_t j = 0; j < m; ++j) {
    const int32_t p = kv.pos[j];
    if (p < 0 || p >= static_cast<int32_t>(protect.size()) || !protect[p]) {
      candidates.push_back(static_cast<int32_t>(j));
    }
  }
  const int64_t evict = std::min<int64_t>(m - budget, static_cast<int64_t>(candidates.size()));
  if (evict <= 0) return 0;
  // Lowest mass first; ties by position so the result is deterministic.
  std::nth_element(
      candidates.begin(), candidates.begin() + evict, candidates.end(),
      [&](int32_t a, int32_t b) { return mass[a] < mass[b] || (mass[a] == mass[b] && a < b); });
  std::vector<uint8_t> drop(m, 0);
  for (int64_t i = 0; i < evict; ++i) drop[candidates[i]] = 1;
  const int64_t kvd = static_cast<int64_t>(kv.k.size()) / m;
  int64_t out = 0;
  for (int64_t j = 0; j < m; ++j) {
    if (drop[j]) continue;
    if (out != j) {
      std::copy_n(kv.k.data() + j * kvd, kvd, kv.k.data() + out * kvd);
      std::copy_n(kv.v.data() + j * kvd, kvd, kv.v.data() + out * kvd);
      kv.pos[out] = kv.pos[j];
    }
    ++out;
  }
  kv.k.resize(out * kvd);
  kv.v.resize(out * kvd);
  kv.pos.resize(out);
  return evict;
}

}  // namespace semshare::engine
