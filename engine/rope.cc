#include "engine/rope.h"

#include <cmath>
#include <numbers>

namespace semshare::engine {

std::vector<float> RopeInvFreq(const ModelConfig& c, const Matrix& freq_factors) {
  const int64_t half = c.rope_dim / 2;
  std::vector<float> inv(half);
  const RopeScaling& rs = c.rope_scaling;
  for (int64_t k = 0; k < half; ++k) {
    double f = std::pow(static_cast<double>(c.rope_base),
                        -2.0 * static_cast<double>(k) / static_cast<double>(c.rope_dim));
    if (!freq_factors.empty() && k < static_cast<int64_t>(freq_factors.data.size())) {
      f /= freq_factors.data[k];
    } else if (rs.type == RopeScaling::Type::kLinear) {
      f /= rs.factor;
    } else if (rs.type == RopeScaling::Type::kLlama3) {
      const double old_ctx = static_cast<double>(rs.original_context);
      const double low_wavelen = old_ctx / rs.low_freq_factor;
      const double high_wavelen = old_ctx / rs.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv[k] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace semshare::engine
