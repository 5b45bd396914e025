// CpuBackend ops against naive double-precision references written out in the test.
// Tolerances: float32 results of sums over at most a few hundred terms of O(1) values; the
// bound 1e-4 relative (about 1000 float32 ulps) covers reordered summation, not a wrong
// formula (which errs by O(1)).
#include "engine/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "engine/rope.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

using semshare::testing::RandomMatrix;
using semshare::testing::RandomVector;

// Worst relative error, reported with its index on failure.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 1e-6;
  for (double w : want) scale = std::max(scale, std::abs(w));
  size_t worst = 0;
  double worst_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(got[i] - want[i]);
    if (e > worst_err) {
      worst_err = e;
      worst = i;
    }
  }
  EXPECT_LE(worst_err / scale, tol)
      << "worst at " << worst << ": got " << got[worst] << " want " << want[worst];
}

TEST(CpuBackendTest, MatMulWithBiasMatchesNaive) {
  CpuBackend be;
  for (int64_t n : {1, 3, 17}) {
    Matrix w = RandomMatrix(13, 29, 1, 1.0f);
    Matrix b = RandomMatrix(1, 13, 2, 1.0f);
    std::vector<float> x = RandomVector(n * 29, 3), y(n * 13);
    be.MatMul(x.data(), n, w, b, y.data());
    std::vector<double> want(n * 13);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < 13; ++o) {
        double acc = b.data[o];
        for (int64_t k = 0; k < 29; ++k) acc += double{x[i * 29 + k]} * w.data[o * 29 + k];
        want[i * 13 + o] = acc;
      }
    }
    ExpectClose(y, want, 1e-5);
  }
}

TEST(CpuBackendTest, RmsNormMatchesNaive) {
  CpuBackend be;
  const int64_t n = 5, d = 37;
  std::vector<float> x = RandomVector(n * d, 4), g = RandomVector(d, 5), y(n * d);
  be.RmsNorm(x.data(), g.data(), n, d, 1e-5f, y.data());
  std::vector<double> want(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += double{x[i * d + j]} * x[i * d + j];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t j = 0; j < d; ++j) want[i * d + j] = x[i * d + j] * inv * g[j];
  }
  ExpectClose(y, want, 1e-5);
}

// RoPE rotates pairs; the two styles pair differently, and a rotation by position p followed
// by nothing equals the closed form.
TEST(CpuBackendTest, RopeBothPairingsMatchClosedForm) {
  CpuBackend be;
  const int64_t n = 4, heads = 3, hd = 8;
  ModelConfig c;
  c.rope_dim = hd;
  c.rope_base = 10000.0f;
  std::vector<float> inv = RopeInvFreq(c, Matrix{});
  std::vector<int32_t> pos = {0, 5, 1000, 4097};
  for (RopeStyle style : {RopeStyle::kAdjacent, RopeStyle::kHalfSplit}) {
    std::vector<float> x = RandomVector(n * heads * hd, 6), y = x;
    be.Rope(y.data(), pos.data(), n, heads, hd, RopeParams{style, hd, inv.data()});
    std::vector<double> want(x.size());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* v = x.data() + (i * heads + h) * hd;
        double* o = want.data() + (i * heads + h) * hd;
        for (int64_t k = 0; k < hd / 2; ++k) {
          const double th = pos[i] * std::pow(10000.0, -2.0 * k / hd);
          const int64_t a = style == RopeStyle::kAdjacent ? 2 * k : k;
          const int64_t b = style == RopeStyle::kAdjacent ? 2 * k + 1 : k + hd / 2;
          o[a] = v[a] * std::cos(th) - v[b] * std::sin(th);
          o[b] = v[a] * std::sin(th) + v[b] * std::cos(th);
        }
      }
    }
    ExpectClose(y, want, 1e-5);
  }
}

// Attention with GQA, positions with gaps, a sliding window, and a query that sees nothing; all
// seven queries at once (the GEMM path) and three at a time (the direct path of decode steps).
TEST(CpuBackendTest, AttentionMasksByPositionAndWindow) {
  CpuBackend be;
  const int64_t nh = 6, nkv = 2, hd = 8, m = 300, n = 7;
  std::vector<int32_t> kpos(m), qpos = {0, 3, 150, 299, 598, 600, -1};
  for (int64_t j = 0; j < m; ++j) kpos[j] = static_cast<int32_t>(2 * j);  // even positions
  std::vector<float> q = RandomVector(n * nh * hd, 7), k = RandomVector(m * nkv * hd, 8),
                     v = RandomVector(m * nkv * hd, 9);
  std::sort(qpos.begin(), qpos.end());
  for (int64_t window : {int64_t{0}, int64_t{40}}) {
    AttentionParams p{nh, nkv, hd, 0.3f, window};
    std::vector<double> want(n * nh * hd, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / (nh / nkv);
        std::vector<double> s(m, -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < m; ++j) {
          if (kpos[j] > qpos[i] || (window > 0 && qpos[i] - kpos[j] >= window)) continue;
          double acc = 0;
          for (int64_t e = 0; e < hd; ++e) {
            acc += double{q[(i * nh + h) * hd + e]} * k[(j * nkv + g) * hd + e];
          }
          s[j] = acc * 0.3;
          mx = std::max(mx, s[j]);
        }
        if (mx == -INFINITY) continue;  // nothing visible: zeros
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < hd; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < m; ++j) acc += s[j] / sum * v[(j * nkv + g) * hd + e];
          want[(i * nh + h) * hd + e] = acc;
        }
      }
    }
    for (auto [first, count] : {std::pair<int64_t, int64_t>{0, n}, {0, 3}, {4, 3}}) {
      SCOPED_TRACE(::testing::Message()
                   << "window " << window << ", queries " << first << ".." << first + count - 1);
      const int64_t row = nh * hd;
      std::vector<float> out(count * row, std::numeric_limits<float>::quiet_NaN());
      be.Attention(q.data() + first * row, qpos.data() + first, count, k.data(), v.data(),
                   kpos.data(), m, p, out.data());
      ExpectClose(
          out,
          std::vector<double>(want.begin() + first * row, want.begin() + (first + count) * row),
          1e-4);
    }
  }
}

TEST(CpuBackendTest, SwiGluEmbedGatherAdd) {
  CpuBackend be;
  std::vector<float> g = {-3.0f, 0.0f, 2.0f}, u = {2.0f, 5.0f, -1.0f}, o(3);
  be.SwiGlu(g.data(), u.data(), 3, o.data());
  EXPECT_NEAR(o[0], -3.0 / (1 + std::exp(3.0)) * 2.0, 1e-6);
  EXPECT_EQ(o[1], 0.0f);
  EXPECT_NEAR(o[2], 2.0 / (1 + std::exp(-2.0)) * -1.0, 1e-6);

  Matrix table{4, 2, {0, 1, 10, 11, 20, 21, 30, 31}};
  std::vector<int32_t> ids = {3, 0, 3};
  std::vector<float> e(6);
  be.Embed(table, ids.data(), 3, e.data());
  EXPECT_EQ(e, (std::vector<float>{30, 31, 0, 1, 30, 31}));
  std::vector<float> gathered(4);
  std::vector<int32_t> idx = {2, 1};
  be.GatherRows(table.data.data(), 2, idx.data(), 2, gathered.data());
  EXPECT_EQ(gathered, (std::vector<float>{20, 21, 10, 11}));
  be.Add(gathered.data(), e.data(), 4);
  EXPECT_EQ(gathered, (std::vector<float>{50, 52, 10, 12}));
}

}  // namespace
}  // namespace semshare::engine
