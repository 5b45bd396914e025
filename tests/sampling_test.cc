// Sampling: greedy is argmax; a seed makes sampling reproducible; top-k 1 and a tiny top-p
// reduce to greedy; the empirical distribution at temperature 1 follows softmax; bad
// parameters are rejected.
#include "engine/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

namespace semshare::engine {
namespace {

TEST(SamplingTest, GreedyIsArgmaxWithLowestIndexOnTies) {
  std::vector<float> l = {0.1f, 3.0f, -2.0f, 3.0f};
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(l), 1);
  EXPECT_EQ(Argmax(l), 1);
}

TEST(SamplingTest, SeedReproducesAndTopKTopPNarrow) {
  std::vector<float> l(50);
  for (int i = 0; i < 50; ++i) l[i] = std::sin(i * 1.3f);
  SamplingParams p{1.0f, 0, 1.0f, 42};
  Sampler a(p), b(p);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 100; ++i) {
    sa.push_back(a.Sample(l));
    sb.push_back(b.Sample(l));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_GT(std::set<int32_t>(sa.begin(), sa.end()).size(), 5u);  // it does sample
  Sampler k1(SamplingParams{1.0f, 1, 1.0f, 7}), p0(SamplingParams{1.0f, 0, 1e-6f, 7});
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(k1.Sample(l), Argmax(l));
    EXPECT_EQ(p0.Sample(l), Argmax(l));
  }
  Sampler k3(SamplingParams{2.0f, 3, 1.0f, 9});
  std::vector<std::pair<float, int>> sorted;
  for (int i = 0; i < 50; ++i) sorted.push_back({l[i], i});
  std::sort(sorted.rbegin(), sorted.rend());
  for (int i = 0; i < 200; ++i) {
    const int32_t t = k3.Sample(l);
    EXPECT_TRUE(t == sorted[0].second || t == sorted[1].second || t == sorted[2].second);
  }
}

// 40,000 draws from softmax([0, 1, 2]): each frequency within 0.01 of its probability
// (the standard error is at most 0.0025, so this is a 4-sigma bound).
TEST(SamplingTest, FrequenciesFollowSoftmax) {
  std::vector<float> l = {0.0f, 1.0f, 2.0f};
  Sampler s(SamplingParams{1.0f, 0, 1.0f, 3});
  std::map<int32_t, int> count;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++count[s.Sample(l)];
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(count[t] / double{n}, std::exp(double(t)) / z, 0.01);
}

TEST(SamplingTest, ValidateRejectsBadParameters) {
  EXPECT_FALSE((SamplingParams{-0.1f, 0, 1.0f, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{NAN, 0, 1.0f, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{1.0f, -1, 1.0f, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{1.0f, 0, 0.0f, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{1.0f, 0, 1.5f, 0}).Validate().ok());
  EXPECT_TRUE((SamplingParams{0.7f, 40, 0.9f, 0}).Validate().ok());
}

}  // namespace
}  // namespace semshare::engine
