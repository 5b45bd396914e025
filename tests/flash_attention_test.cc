// The fused AVX-512 attention kernel against a naive double-precision softmax attention written
// out here (the same reference as cpu_backend_test's), on sizes that are not multiples of the
// kernel's 16-key and 24-row tiles, with GQA groups 1/3/4, head_dim 16..128, sliding windows,
// positions with gaps, queries that see nothing, decode (n = 1) and scores large enough that the
// online softmax has to rescale its running sums many times.
// Tolerance: 1e-4 of the largest output, as in cpu_backend_test: float32 dot products over at
// most 128 terms and sums over a few hundred keys, plus FastExp's ~1 ulp, err by ~1e-6; a wrong
// mask, a missed rescale or a wrong normaliser errs by O(1e-2) or more.
#include "engine/cpu/flash_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "engine/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

using semshare::testing::RandomVector;

struct Case {
  int64_t nh, nkv, hd, n, m, window;
  int32_t k_step;   // k_pos[j] = j * k_step (gaps when > 1)
  int32_t q_first;  // q_pos[i] = q_first + i * k_step
  float q_scale;    // query magnitude: large values make the running max jump often
};

std::vector<double> Reference(const std::vector<float>& q, const std::vector<int32_t>& qpos,
                              const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<int32_t>& kpos, const AttentionParams& p) {
  const int64_t n = static_cast<int64_t>(qpos.size()), m = static_cast<int64_t>(kpos.size());
  const int64_t nh = p.n_heads, nkv = p.n_kv_heads, hd = p.head_dim;
  std::vector<double> want(n * nh * hd, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / (nh / nkv);
      std::vector<double> s(m, 0.0);
      std::vector<bool> vis(m, false);
      double mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) {
        if (kpos[j] > qpos[i] || (p.window > 0 && qpos[i] - kpos[j] >= p.window)) continue;
        double acc = 0;
        for (int64_t e = 0; e < hd; ++e) {
          acc += double{q[(i * nh + h) * hd + e]} * k[(j * nkv + g) * hd + e];
        }
        s[j] = acc * p.scale;
        vis[j] = true;
        mx = std::max(mx, s[j]);
      }
      if (mx == -INFINITY) continue;  // nothing visible: zeros
      double sum = 0;
      for (int64_t j = 0; j < m; ++j) sum += (s[j] = vis[j] ? std::exp(s[j] - mx) : 0.0);
      for (int64_t e = 0; e < hd; ++e) {
        double acc = 0;
        for (int64_t j = 0; j < m; ++j) acc += s[j] / sum * v[(j * nkv + g) * hd + e];
        want[(i * nh + h) * hd + e] = acc;
      }
    }
  }
  return want;
}

double WorstRelativeError(const std::vector<float>& got, const std::vector<double>& want) {
  double scale = 1e-6, worst = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(got[i] - want[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst / scale;
}

TEST(FlashAttentionTest, MatchesNaiveReference) {
  if (!FlashAttentionAvailable()) GTEST_SKIP() << "engine built without AVX-512";
  const Case cases[] = {
      {2, 2, 64, 37, 37, 0, 1, 0, 1.0f},       // group 1, plain causal prefill
      {9, 3, 64, 53, 181, 0, 1, 128, 1.0f},    // group 3, chunk after a 128-token prefix
      {9, 3, 64, 53, 181, 50, 1, 128, 1.0f},   // ... with a sliding window
      {8, 2, 128, 29, 203, 33, 2, 300, 1.0f},  // group 4, gaps, window, hd 128
      {8, 2, 128, 45, 203, 0, 2, -20, 4.0f},   // early queries see nothing; big scores
      {9, 3, 64, 1, 77, 0, 1, 76, 1.0f},       // decode
      {12, 4, 48, 19, 100, 17, 3, 100, 3.0f},  // hd 48: 3-vector PV blocks
      {4, 1, 80, 70, 70, 0, 1, 0, 2.0f},       // group 4 single kv head, hd 80
      {6, 6, 16, 33, 250, 0, 1, 217, 1.0f},    // hd 16
      {9, 3, 64, 300, 300, 64, 1, 0, 8.0f},    // many tiles, window, large scores
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "nh=" << c.nh << " nkv=" << c.nkv << " hd=" << c.hd
                                      << " n=" << c.n << " m=" << c.m << " window=" << c.window);
    std::vector<int32_t> kpos(c.m), qpos(c.n);
    for (int64_t j = 0; j < c.m; ++j) kpos[j] = static_cast<int32_t>(j * c.k_step);
    for (int64_t i = 0; i < c.n; ++i) qpos[i] = static_cast<int32_t>(c.q_first + i * c.k_step);
    const std::vector<float> q = RandomVector(c.n * c.nh * c.hd, seed++, c.q_scale),
                             k = RandomVector(c.m * c.nkv * c.hd, seed++),
                             v = RandomVector(c.m * c.nkv * c.hd, seed++);
    const AttentionParams p{c.nh, c.nkv, c.hd, 1.0f / std::sqrt(static_cast<float>(c.hd)),
                            c.window};
    std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
    FlashAttentionScratch scratch;
    ASSERT_TRUE(FlashAttention(q.data(), qpos.data(), c.n, k.data(), v.data(), kpos.data(), c.m, p,
                               out.data(), &scratch));
    const std::vector<double> want = Reference(q, qpos, k, v, kpos, p);
    EXPECT_LE(WorstRelativeError(out, want), 1e-4);
    // The backend (whichever path it takes) agrees too.
    std::vector<float> be_out(q.size(), std::numeric_limits<float>::quiet_NaN());
    CpuBackend be;
    be.Attention(q.data(), qpos.data(), c.n, k.data(), v.data(), kpos.data(), c.m, p,
                 be_out.data());
    EXPECT_LE(WorstRelativeError(be_out, want), 1e-4);
  }
}

// Rows whose queries see no key get exact zeros, also next to rows that see some.
TEST(FlashAttentionTest, InvisibleQueriesGetZeros) {
  if (!FlashAttentionAvailable()) GTEST_SKIP() << "engine built without AVX-512";
  const int64_t nh = 3, nkv = 1, hd = 32, m = 40, n = 5;
  std::vector<int32_t> kpos(m), qpos = {-5, 10, 120, 200, 500};
  std::iota(kpos.begin(), kpos.end(), 100);
  const std::vector<float> q = RandomVector(n * nh * hd, 1), k = RandomVector(m * nkv * hd, 2),
                           v = RandomVector(m * nkv * hd, 3);
  const AttentionParams p{nh, nkv, hd, 0.2f, 50};  // 200 and 500 fall outside the window
  std::vector<float> out(n * nh * hd, std::numeric_limits<float>::quiet_NaN());
  FlashAttentionScratch scratch;
  ASSERT_TRUE(FlashAttention(q.data(), qpos.data(), n, k.data(), v.data(), kpos.data(), m, p,
                             out.data(), &scratch));
  // Keys sit at 100..139: queries at -5 and 10 precede them all, 200 and 500 see only keys
  // past 150 and 450 (window 50); 120 sees 100..120.
  for (int64_t i : {0, 1, 3, 4}) {
    for (int64_t e = 0; e < nh * hd; ++e) ASSERT_EQ(out[i * nh * hd + e], 0.0f) << i;
  }
  const std::vector<double> want = Reference(q, qpos, k, v, kpos, p);
  EXPECT_LE(WorstRelativeError(out, want), 1e-4);
}

TEST(FlashAttentionTest, DeclinesUnsupportedShapes) {
  FlashAttentionScratch scratch;
  std::vector<float> buf(4096, 1.0f), out(4096, -7.0f);
  std::vector<int32_t> pos(8, 0);
  for (int64_t hd : {8, 24, 272}) {
    const AttentionParams p{2, 1, hd, 1.0f, 0};
    EXPECT_FALSE(FlashAttention(buf.data(), pos.data(), 1, buf.data(), buf.data(), pos.data(), 1, p,
                                out.data(), &scratch))
        << hd;
  }
  const AttentionParams uneven{3, 2, 16, 1.0f, 0};  // 3 heads over 2 kv heads
  EXPECT_FALSE(FlashAttention(buf.data(), pos.data(), 1, buf.data(), buf.data(), pos.data(), 1,
                              uneven, out.data(), &scratch));
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float x) { return x == -7.0f; }));
}

}  // namespace
}  // namespace semshare::engine
