// Names, parsing and validation of the reuse knobs (reuse_config.h). Range checks are written
// as !(lo <= x && x <= hi) so that NaN is rejected too.
#include "engine/reuse/reuse_config.h"

#include <array>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace semshare::engine {
namespace {

constexpr std::array<std::pair<PrefillMode, const char*>, 4> kModes = {{
    {PrefillMode::kFull, "full"},
    {PrefillMode::kPrefix, "prefix"},
    {PrefillMode::kSnapKv, "snapkv"},
    {PrefillMode::kSemShare, "semshare"},
}};

constexpr std::array<std::pair<RetentionSchedule, const char*>, 4> kSchedules = {{
    {RetentionSchedule::kNone, "none"},
    {RetentionSchedule::kExponential, "exponential"},
    {RetentionSchedule::kConstant, "constant"},
    {RetentionSchedule::kIncreasing, "increasing"},
}};

// Looks `name` up in a (value, name) table; InvalidArgument listing the valid names otherwise.
template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(const std::array<std::pair<Enum, const char*>, N>& table,
                               const std::string& name, const char* what) {
  for (const auto& [value, text] : table) {
    if (name == text) return value;
  }
  std::array<const char*, N> names;
  for (size_t i = 0; i < N; ++i) names[i] = table[i].second;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name, "'; valid: ", absl::StrJoin(names, ", ")));
}

template <typename Enum, size_t N>
const char* NameOf(const std::array<std::pair<Enum, const char*>, N>& table, Enum value) {
  for (const auto& [v, text] : table) {
    if (v == value) return text;
  }
  return "unknown";
}

template <typename Enum, size_t N>
bool IsKnown(const std::array<std::pair<Enum, const char*>, N>& table, Enum value) {
  for (const auto& entry : table) {
    if (entry.first == value) return true;
  }
  return false;
}

absl::Status OutOfRange(const char* knob, double value, const char* range) {
  return absl::InvalidArgumentError(
      absl::StrCat("reuse config: ", knob, " = ", value, " is out of range; must be ", range));
}

}  // namespace

const char* PrefillModeName(PrefillMode m) { return NameOf(kModes, m); }

absl::StatusOr<PrefillMode> ParsePrefillMode(const std::string& name) {
  return ParseName(kModes, name, "prefill mode");
}

const char* RetentionScheduleName(RetentionSchedule s) { return NameOf(kSchedules, s); }

absl::StatusOr<RetentionSchedule> ParseRetentionSchedule(const std::string& name) {
  return ParseName(kSchedules, name, "retention schedule");
}

absl::Status ReuseConfig::Validate() const {
  if (!IsKnown(kModes, mode)) {
    return OutOfRange("mode", static_cast<int>(mode), "one of full, prefix, snapkv, semshare");
  }
  // base <= 1 makes every frequency >= 1 (or undefined): no slowly rotating dimensions, so the
  // E-cache would lose its "nearby positions look alike" property.
  if (!(ecache_rope_base > 1.0f && std::isfinite(ecache_rope_base))) {
    return OutOfRange("ecache_rope_base", ecache_rope_base, "finite and > 1");
  }
  if (!(lsh_bands >= 1 && lsh_bands <= 64)) {
    return OutOfRange("lsh_bands", lsh_bands, "in [1, 64]");
  }
  // A band's bits are packed into one uint32 key.
  if (!(lsh_bits_per_band >= 1 && lsh_bits_per_band <= 32)) {
    return OutOfRange("lsh_bits_per_band", lsh_bits_per_band, "in [1, 32]");
  }
  if (max_candidates < 0) {
    return OutOfRange("max_candidates", max_candidates, ">= 0 (0 = every bucket member)");
  }
  if (!(hit_threshold >= 0.0f && hit_threshold <= 1.0f)) {
    return OutOfRange("hit_threshold", hit_threshold, "in [0, 1]");
  }
  if (min_reuse_tokens < 0) return OutOfRange("min_reuse_tokens", min_reuse_tokens, ">= 0");
  if (hybrid_selective_min_tokens < 0) {
    return OutOfRange("hybrid_selective_min_tokens", hybrid_selective_min_tokens,
                      ">= 0 (0 = never)");
  }
  if (!(recompute_ratio >= 0.0f && recompute_ratio <= 1.0f)) {
    return OutOfRange("recompute_ratio", recompute_ratio, "in [0, 1]");
  }
  // alpha = 0 would empty the recompute set after layer 1 except forced tokens; allowed is
  // (0, 1] so that the set shrinks geometrically but never grows.
  if (!(alpha > 0.0f && alpha <= 1.0f)) return OutOfRange("alpha", alpha, "in (0, 1]");
  if (exact_run_tokens < 0) {
    return OutOfRange("exact_run_tokens", exact_run_tokens, ">= 0 (0 = the LSH's match as it is)");
  }
  if (recompute_min_tokens < 0) {
    return OutOfRange("recompute_min_tokens", recompute_min_tokens, ">= 0 (0 = no floor)");
  }
  if (run_start_tokens < 0) {
    return OutOfRange("run_start_tokens", run_start_tokens, ">= 0 (0 = none)");
  }
  if (!(fallback_deviation >= 0.0f && std::isfinite(fallback_deviation))) {
    return OutOfRange("fallback_deviation", fallback_deviation,
                      "finite and >= 0 (0 = never fall back)");
  }
  if (window < 0) return OutOfRange("window", window, ">= 0");
  if (sink < 0) return OutOfRange("sink", sink, ">= 0");
  if (!IsKnown(kSchedules, retention)) {
    return OutOfRange("retention", static_cast<int>(retention),
                      "one of none, exponential, constant, increasing");
  }
  if (!(retention_rho > 0.0f && retention_rho <= 1.0f)) {
    return OutOfRange("retention_rho", retention_rho, "in (0, 1]");
  }
  if (!(retention_gamma > 0.0f && retention_gamma <= 1.0f)) {
    return OutOfRange("retention_gamma", retention_gamma, "in (0, 1]");
  }
  if (retention_min_rows < 0) return OutOfRange("retention_min_rows", retention_min_rows, ">= 0");
  return absl::OkStatus();
}

}  // namespace semshare::engine
