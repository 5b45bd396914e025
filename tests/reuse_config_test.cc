// ReuseConfig (engine/reuse/reuse_config.h): mode and schedule names round-trip, unknown names
// are rejected with a message listing the valid ones, the defaults validate, and Validate
// rejects every knob out of range (NaN included) with a message naming that knob.
#include "engine/reuse/reuse_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace semshare::engine {
namespace {

using ::testing::HasSubstr;

TEST(ReuseConfigTest, PrefillModeNamesRoundTrip) {
  const std::vector<std::pair<PrefillMode, std::string>> all = {
      {PrefillMode::kFull, "full"},
      {PrefillMode::kPrefix, "prefix"},
      {PrefillMode::kSnapKv, "snapkv"},
      {PrefillMode::kSemShare, "semshare"}};
  for (const auto& [mode, name] : all) {
    EXPECT_EQ(PrefillModeName(mode), name);
    auto parsed = ParsePrefillMode(name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, mode);
  }
}

TEST(ReuseConfigTest, RetentionScheduleNamesRoundTrip) {
  const std::vector<std::pair<RetentionSchedule, std::string>> all = {
      {RetentionSchedule::kNone, "none"},
      {RetentionSchedule::kExponential, "exponential"},
      {RetentionSchedule::kConstant, "constant"},
      {RetentionSchedule::kIncreasing, "increasing"}};
  for (const auto& [schedule, name] : all) {
    EXPECT_EQ(RetentionScheduleName(schedule), name);
    auto parsed = ParseRetentionSchedule(name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, schedule);
  }
}

TEST(ReuseConfigTest, UnknownNamesListTheValidOnes) {
  for (const std::string bad : {"", "Full", "semshare ", "snap-kv", "lsh"}) {
    auto m = ParsePrefillMode(bad);
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(m.status().message(), HasSubstr("'" + bad + "'"));
    EXPECT_THAT(m.status().message(), HasSubstr("full, prefix, snapkv, semshare"));
  }
  for (const std::string bad : {"", "exp", "Constant", "decreasing"}) {
    auto s = ParseRetentionSchedule(bad);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("none, exponential, constant, increasing"));
  }
  EXPECT_STREQ(PrefillModeName(static_cast<PrefillMode>(99)), "unknown");
  EXPECT_STREQ(RetentionScheduleName(static_cast<RetentionSchedule>(-1)), "unknown");
}

TEST(ReuseConfigTest, DefaultsAndBoundaryValuesAreValid) {
  EXPECT_TRUE(ReuseConfig{}.Validate().ok()) << ReuseConfig{}.Validate();
  // The edges of every closed range are accepted.
  const std::vector<std::function<void(ReuseConfig&)>> edges = {
      [](ReuseConfig& c) { c.ecache_rope = false; },
      [](ReuseConfig& c) { c.lsh_bands = 1; },
      [](ReuseConfig& c) { c.lsh_bands = 64; },
      [](ReuseConfig& c) { c.lsh_bits_per_band = 1; },
      [](ReuseConfig& c) { c.lsh_bits_per_band = 32; },
      [](ReuseConfig& c) { c.max_candidates = 0; },
      [](ReuseConfig& c) { c.hit_threshold = 0.0f; },
      [](ReuseConfig& c) { c.hit_threshold = 1.0f; },
      [](ReuseConfig& c) { c.min_reuse_tokens = 0; },
      [](ReuseConfig& c) { c.recompute_ratio = 0.0f; },
      [](ReuseConfig& c) { c.recompute_ratio = 1.0f; },
      [](ReuseConfig& c) { c.alpha = 1.0f; },
      [](ReuseConfig& c) { c.window = 0; },
      [](ReuseConfig& c) { c.sink = 0; },
      [](ReuseConfig& c) { c.retention = RetentionSchedule::kNone; },
      [](ReuseConfig& c) { c.retention_rho = 1.0f; },
      [](ReuseConfig& c) { c.retention_gamma = 1.0f; },
      [](ReuseConfig& c) { c.retention_min_rows = 0; },
      [](ReuseConfig& c) { c.recompute_min_tokens = 0; },
      [](ReuseConfig& c) { c.run_start_tokens = 0; },
      [](ReuseConfig& c) { c.run_start_tokens = 8; },
      [](ReuseConfig& c) { c.fallback_deviation = 0.0f; },
      [](ReuseConfig& c) { c.fallback_deviation = 1e6f; },
      [](ReuseConfig& c) { c.mode = PrefillMode::kFull; },
  };
  for (size_t i = 0; i < edges.size(); ++i) {
    ReuseConfig c;
    edges[i](c);
    EXPECT_TRUE(c.Validate().ok()) << "edge " << i << ": " << c.Validate();
  }
}

TEST(ReuseConfigTest, ValidateRejectsEachKnobOutOfRange) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Bad {
    std::string knob;
    std::function<void(ReuseConfig&)> set;
  };
  const std::vector<Bad> bad = {
      {"mode", [](ReuseConfig& c) { c.mode = static_cast<PrefillMode>(7); }},
      {"ecache_rope_base", [](ReuseConfig& c) { c.ecache_rope_base = 1.0f; }},
      {"ecache_rope_base", [](ReuseConfig& c) { c.ecache_rope_base = -5.0f; }},
      {"ecache_rope_base", [=](ReuseConfig& c) { c.ecache_rope_base = nan; }},
      {"ecache_rope_base", [=](ReuseConfig& c) { c.ecache_rope_base = inf; }},
      {"lsh_bands", [](ReuseConfig& c) { c.lsh_bands = 0; }},
      {"lsh_bands", [](ReuseConfig& c) { c.lsh_bands = 65; }},
      {"lsh_bits_per_band", [](ReuseConfig& c) { c.lsh_bits_per_band = 0; }},
      {"lsh_bits_per_band", [](ReuseConfig& c) { c.lsh_bits_per_band = 33; }},
      {"max_candidates", [](ReuseConfig& c) { c.max_candidates = -1; }},
      {"hit_threshold", [](ReuseConfig& c) { c.hit_threshold = -0.01f; }},
      {"hit_threshold", [](ReuseConfig& c) { c.hit_threshold = 1.01f; }},
      {"hit_threshold", [=](ReuseConfig& c) { c.hit_threshold = nan; }},
      {"min_reuse_tokens", [](ReuseConfig& c) { c.min_reuse_tokens = -1; }},
      {"recompute_ratio", [](ReuseConfig& c) { c.recompute_ratio = -0.1f; }},
      {"recompute_ratio", [](ReuseConfig& c) { c.recompute_ratio = 1.5f; }},
      {"recompute_ratio", [=](ReuseConfig& c) { c.recompute_ratio = nan; }},
      {"alpha", [](ReuseConfig& c) { c.alpha = 0.0f; }},
      {"alpha", [](ReuseConfig& c) { c.alpha = 1.2f; }},
      {"alpha", [=](ReuseConfig& c) { c.alpha = nan; }},
      {"window", [](ReuseConfig& c) { c.window = -1; }},
      {"sink", [](ReuseConfig& c) { c.sink = -1; }},
      {"retention", [](ReuseConfig& c) { c.retention = static_cast<RetentionSchedule>(9); }},
      {"retention_rho", [](ReuseConfig& c) { c.retention_rho = 0.0f; }},
      {"retention_rho", [](ReuseConfig& c) { c.retention_rho = 1.1f; }},
      {"retention_rho", [=](ReuseConfig& c) { c.retention_rho = nan; }},
      {"retention_gamma", [](ReuseConfig& c) { c.retention_gamma = 0.0f; }},
      {"retention_gamma", [](ReuseConfig& c) { c.retention_gamma = 1.5f; }},
      {"retention_gamma", [=](ReuseConfig& c) { c.retention_gamma = nan; }},
      {"retention_min_rows", [](ReuseConfig& c) { c.retention_min_rows = -1; }},
      {"recompute_min_tokens", [](ReuseConfig& c) { c.recompute_min_tokens = -1; }},
      {"run_start_tokens", [](ReuseConfig& c) { c.run_start_tokens = -1; }},
      {"fallback_deviation", [](ReuseConfig& c) { c.fallback_deviation = -0.5f; }},
      {"fallback_deviation", [=](ReuseConfig& c) { c.fallback_deviation = nan; }},
      {"fallback_deviation", [=](ReuseConfig& c) { c.fallback_deviation = inf; }},
  };
  for (const Bad& b : bad) {
    ReuseConfig c;
    b.set(c);
    const absl::Status s = c.Validate();
    ASSERT_FALSE(s.ok()) << b.knob;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.knob;
    // The message names the offending knob ("alpha" must not be satisfied by "retention_...":
    // every knob name is followed by " = " in the message).
    EXPECT_THAT(s.message(), HasSubstr(" " + b.knob + " = ")) << s;
  }
}

}  // namespace
}  // namespace semshare::engine
