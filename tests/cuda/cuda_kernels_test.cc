// Each kernel family against a float64 CPU reference: fresh random inputs every run (seed
// printed), odd and unaligned shapes, outputs poisoned with NaN before the launch. Bounds:
// float paths 1e-5..1e-4 (float rounding over sums of at most a few thousand terms); paths
// that round to bf16 (8 significant bits, relative rounding <= 2^-9 ~ 2e-3 per element) 8e-3,
// and 1e-2 for attention, whose probabilities are also rounded to bf16 before P V.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "kernels/attention.cuh"
#include "kernels/deviation.cuh"
#include "kernels/embed.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/retention.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/sampling.cuh"
#include "kernels/simhash.cuh"
#include "kernels/swiglu.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace semshare::testing {
namespace {

namespace k = ::semshare::kernels;
using engine::cuda::DeviceBuffer;

class KernelsTest : public CudaTest {};

TEST_F(KernelsTest, RmsNormFloatToBf16OddShape) {
  const int64_t n = 7, d = 333;
  const auto x = Uniform(n * d, seed_, -3, 3), g = Uniform(d, seed_ + 1, 0.5, 1.5);
  auto xd = Up(x), gd = Up(g);
  auto yd = Poisoned<bf16>(n * d);
  ASSERT_EQ((k::RmsNorm<float, bf16>(xd.as<float>(), d, gd.as<float>(), n, d, 1e-5f, yd.as<bf16>(),
                                     stream())),
            cudaSuccess);
  std::vector<double> ref(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += double(x[i * d + c]) * x[i * d + c];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t c = 0; c < d; ++c) ref[i * d + c] = x[i * d + c] * inv * g[c];
  }
  EXPECT_LT(RelErr(DownBf16(yd, n * d), ref), 8e-3);  // bf16 output rounding
}

// Double-precision RoPE of one row (both pairings), the reference for Rope and GatherRerotate.
void RefRope(std::vector<double>& row, int64_t heads, int64_t hd, int64_t rd, bool adjacent,
             const std::vector<float>& inv, int64_t pos) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t kk = 0; kk < rd / 2; ++kk) {
      const double a = double(pos) * double(inv[kk]);
      const int64_t i0 = h * hd + (adjacent ? 2 * kk : kk), i1 = i0 + (adjacent ? 1 : rd / 2);
      const double u = row[i0], v = row[i1];
      row[i0] = u * std::cos(a) - v * std::sin(a);
      row[i1] = u * std::sin(a) + v * std::cos(a);
    }
  }
}

TEST_F(KernelsTest, RopeBothStylesArbitraryPositionsAndTail) {
  const int64_t n = 6, heads = 3, hd = 24, rd = 16;
  std::vector<float> inv(rd / 2);
  for (int64_t i = 0; i < rd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / rd);
  const std::vector<int32_t> pos = {-7, 0, 13, 4000, 123456, 5};
  for (bool adjacent : {true, false}) {
    const auto x = Uniform(n * heads * hd, seed_ + adjacent);
    auto xd = Up(x), pd = Up(pos), fd = Up(inv);
    auto yd = Poisoned<float>(n * heads * hd);
    k::RopeArgs a;
    a.kind = adjacent ? k::RopeKind::kAdjacent : k::RopeKind::kHalfSplit;
    a.heads = heads;
    a.head_dim = hd;
    a.rope_dim = rd;
    a.inv_freq = fd.as<float>();
    ASSERT_EQ((k::Rope<float, float>(xd.as<float>(), heads * hd, pd.as<int32_t>(), n, a,
                                     yd.as<float>(), heads * hd, nullptr, stream())),
              cudaSuccess);
    std::vector<double> ref(x.begin(), x.end());
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> row(ref.begin() + i * heads * hd, ref.begin() + (i + 1) * heads * hd);
      RefRope(row, heads, hd, rd, adjacent, inv, pos[i]);
      std::copy(row.begin(), row.end(), ref.begin() + i * heads * hd);
    }
    EXPECT_LT(RelErr(Down<float>(yd, x.size()), ref), 1e-5) << "adjacent " << adjacent;
  }
}

TEST_F(KernelsTest, EmbedGatherExactAndOutOfRangeZero) {
  const int64_t vocab = 101, d = 37;
  const auto table = Bf16Values(Uniform(vocab * d, seed_));
  std::mt19937 rng(seed_);
  std::vector<int32_t> ids(19);
  for (auto& i : ids) i = rng() % vocab;
  ids[3] = -1;
  ids[7] = static_cast<int32_t>(vocab);
  auto td = Up(ToBf16(table)), idd = Up(ids);
  auto od = Poisoned<float>(ids.size() * d);
  ASSERT_EQ(k::EmbedGather<float>(td.data(), vocab, d, idd.as<int32_t>(), ids.size(),
                                  od.as<float>(), stream()),
            cudaSuccess);
  const auto out = Down<float>(od, ids.size() * d);
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < d; ++c) {
      const bool ok = ids[i] >= 0 && ids[i] < vocab;
      ASSERT_EQ(out[i * d + c], ok ? table[ids[i] * d + c] : 0.0f) << i << "," << c;
    }
  }
}

TEST_F(KernelsTest, SwiGluPackedBf16) {
  const int64_t n = 5, f = 91;
  const auto gu = Bf16Values(Uniform(n * 2 * f, seed_, -4, 4));
  auto gd = Up(ToBf16(gu));
  auto od = Poisoned<bf16>(n * f);
  ASSERT_EQ((k::SwiGluPacked<bf16, bf16>(gd.as<bf16>(), n, f, od.as<bf16>(), stream())),
            cudaSuccess);
  std::vector<double> ref(n * f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < f; ++c) {
      const double g = gu[i * 2 * f + c], u = gu[i * 2 * f + f + c];
      ref[i * f + c] = g / (1 + std::exp(-g)) * u;
    }
  }
  EXPECT_LT(RelErr(DownBf16(od, n * f), ref), 8e-3);  // bf16 output
}

// Double reference of the attention contract (engine/backend.h).
std::vector<double> RefAttention(const std::vector<float>& q, const std::vector<int32_t>& qp,
                                 const std::vector<float>& kk, const std::vector<float>& v,
                                 const std::vector<int32_t>& kp, const k::AttnShape& s) {
  std::vector<double> out(s.n * s.n_heads * s.head_dim, 0.0);
  const int64_t group = s.n_heads / s.n_kv_heads, D = s.head_dim;
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t g = h / group;
      std::vector<double> sc(s.m, -INFINITY);
      double mx = -INFINITY;
      for (int64_t j = 0; j < s.m; ++j) {
        if (kp[j] > qp[i] || (s.window > 0 && qp[i] - kp[j] >= s.window)) continue;
        double dot = 0;
        for (int64_t c = 0; c < D; ++c) {
          dot += double(q[i * s.q_stride + h * D + c]) * kk[j * s.kv_stride + g * D + c];
        }
        sc[j] = dot * s.scale;
        mx = std::max(mx, sc[j]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0;
      for (int64_t j = 0; j < s.m; ++j) sum += sc[j] == -INFINITY ? 0 : std::exp(sc[j] - mx);
      for (int64_t j = 0; j < s.m; ++j) {
        if (sc[j] == -INFINITY) continue;
        const double p = std::exp(sc[j] - mx) / sum;
        for (int64_t c = 0; c < D; ++c) {
          out[(i * s.n_heads + h) * D + c] += p * v[j * s.kv_stride + g * D + c];
        }
      }
    }
  }
  return out;
}

k::AttnShape MakeShape(int64_t n, int64_t m, int64_t heads, int64_t kvh, int64_t d,
                       int64_t window) {
  k::AttnShape s;
  s.n = n;
  s.m = m;
  s.n_heads = heads;
  s.n_kv_heads = kvh;
  s.head_dim = d;
  s.q_stride = heads * d;
  s.kv_stride = kvh * d;
  s.out_stride = heads * d;
  s.scale = 1.0f / std::sqrt(static_cast<float>(d));
  s.window = window;
  return s;
}

TEST_F(KernelsTest, FlashPrefillSelectedQueriesGqaWindow) {
  for (int64_t D : {64, 128}) {
    for (int64_t window : {0, 37}) {
      const int64_t m = 133, heads = 8, kvh = 2;
      // k positions 5..137; queries: a random ascending subset plus one that sees nothing (2).
      std::vector<int32_t> kp(m);
      std::iota(kp.begin(), kp.end(), 5);
      std::mt19937 rng(seed_ + D + window);
      std::vector<int32_t> qp = {2};
      for (int32_t p = 5; p < 5 + m; ++p) {
        if (rng() % 5 < 3 || p == 4 + m) qp.push_back(p);
      }
      const int64_t n = qp.size();
      const auto s = MakeShape(n, m, heads, kvh, D, window);
      const auto q = Bf16Values(Uniform(n * heads * D, seed_ + 1, -2, 2));
      const auto kk = Bf16Values(Uniform(m * kvh * D, seed_ + 2, -2, 2));
      const auto v = Bf16Values(Uniform(m * kvh * D, seed_ + 3));
      auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), vd = Up(ToBf16(v)), qpd = Up(qp), kpd = Up(kp);
      ASSERT_TRUE(k::FlashPrefillSupported(s, qd.data(), kd.data(), vd.data()));
      auto od = Poisoned<float>(n * heads * D);
      ASSERT_EQ(k::FlashPrefill<float>(qd.data(), qpd.as<int32_t>(), kd.data(), vd.data(),
                                       kpd.as<int32_t>(), s, od.as<float>(), stream()),
                cudaSuccess);
      const auto out = Down<float>(od, n * heads * D);
      EXPECT_LT(RelErr(out, RefAttention(q, qp, kk, v, kp, s)), 1e-2)
          << "D " << D << " window " << window;
      for (int64_t c = 0; c < heads * D; ++c) ASSERT_EQ(out[c], 0.0f);  // query at position 2
    }
  }
}

TEST_F(KernelsTest, GenericAttentionDecodeSplitsFloatAndBf16) {
  const int64_t m = 1000, heads = 6, kvh = 3, D = 72;  // head_dim not a multiple of 32
  std::vector<int32_t> kp(m);
  std::iota(kp.begin(), kp.end(), 0);
  const std::vector<int32_t> qp = {999, 500};
  const auto s = MakeShape(2, m, heads, kvh, D, 0);
  const auto q = Bf16Values(Uniform(2 * heads * D, seed_, -2, 2));
  const auto kk = Bf16Values(Uniform(m * kvh * D, seed_ + 1, -2, 2));
  const auto v = Bf16Values(Uniform(m * kvh * D, seed_ + 2));
  const auto ref = RefAttention(q, qp, kk, v, kp, s);
  auto qpd = Up(qp), kpd = Up(kp);
  const int64_t ws_bytes = k::GenericAttentionWorkspace(s);
  EXPECT_GT(ws_bytes, 0);  // this shape splits the kv rows
  auto ws = Poisoned<char>(ws_bytes);
  {
    auto qd = Up(q), kd = Up(kk), vd = Up(v);
    auto od = Poisoned<float>(2 * heads * D);
    ASSERT_EQ((k::GenericAttention<float, float>(qd.as<float>(), qpd.as<int32_t>(), kd.as<float>(),
                                                 vd.as<float>(), kpd.as<int32_t>(), s,
                                                 od.as<float>(), ws.data(), ws_bytes, stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(Down<float>(od, 2 * heads * D), ref), 1e-4);  // float throughout
  }
  {
    auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), vd = Up(ToBf16(v));
    auto od = Poisoned<bf16>(2 * heads * D);
    ASSERT_EQ((k::GenericAttention<bf16, bf16>(qd.as<bf16>(), qpd.as<int32_t>(), kd.as<bf16>(),
                                               vd.as<bf16>(), kpd.as<int32_t>(), s, od.as<bf16>(),
                                               ws.data(), ws_bytes, stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(DownBf16(od, 2 * heads * D), ref), 8e-3);  // bf16 output
  }
}

TEST_F(KernelsTest, GatherRerotateComposesRotations) {
  const int64_t rows = 23, n = 17, kvh = 2, hd = 32;
  std::vector<float> inv(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i) inv[i] = std::pow(500000.0f, -2.0f * i / hd);
  const auto src = Bf16Values(Uniform(rows * kvh * hd, seed_));
  std::mt19937 rng(seed_);
  std::vector<int32_t> idx(n), delta(n);
  for (int64_t i = 0; i < n; ++i) {
    idx[i] = rng() % rows;
    delta[i] = static_cast<int32_t>(rng() % 3001) - 1500;
  }
  auto sd = Up(ToBf16(src)), id = Up(idx), dd = Up(delta), fd = Up(inv);
  auto od = Poisoned<bf16>(n * kvh * hd);
  k::RopeArgs a;
  a.kind = k::RopeKind::kHalfSplit;
  a.heads = kvh;
  a.head_dim = hd;
  a.rope_dim = hd;
  a.inv_freq = fd.as<float>();
  ASSERT_EQ(k::GatherRerotate<bf16>(sd.as<bf16>(), id.as<int32_t>(), dd.as<int32_t>(), n, a,
                                    od.as<bf16>(), stream()),
            cudaSuccess);
  std::vector<double> ref;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> row(src.begin() + idx[i] * kvh * hd, src.begin() + (idx[i] + 1) * kvh * hd);
    RefRope(row, kvh, hd, hd, false, inv, delta[i]);
    ref.insert(ref.end(), row.begin(), row.end());
  }
  EXPECT_LT(RelErr(DownBf16(od, n * kvh * hd), ref), 8e-3);  // bf16 output
}

TEST_F(KernelsTest, RowDistanceAndSelectTopK) {
  const int64_t n = 3001, dim = 45;  // n spans several 1024-thread chunks
  const auto a = Uniform(n * dim, seed_), b = Uniform(n * dim, seed_ + 1);
  auto ad = Up(a), bd = Up(b);
  auto dev = Poisoned<float>(n);
  ASSERT_EQ((k::RowDistance<float, float>(ad.as<float>(), dim, bd.as<float>(), dim, n, dim, false,
                                          dev.as<float>(), stream())),
            cudaSuccess);
  const auto got = Down<float>(dev, n);
  std::vector<double> ref(n);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += std::pow(double(a[i * dim + c]) - b[i * dim + c], 2);
    ref[i] = std::sqrt(ss);
  }
  EXPECT_LT(RelErr(got, ref), 1e-5);

  std::mt19937 rng(seed_);
  std::vector<uint8_t> forced(n);
  for (auto& f : forced) f = rng() % 10 == 0;
  auto fd = Up(forced);
  for (int64_t kk : {int64_t{0}, int64_t{137}, int64_t{2500}, n}) {
    auto idx = Poisoned<int32_t>(n);
    auto cnt = Poisoned<int64_t>(1);
    ASSERT_EQ(k::SelectTopK(dev.as<float>(), fd.as<uint8_t>(), n, kk, true, idx.as<int32_t>(),
                            nullptr, cnt.as<int64_t>(), stream()),
              cudaSuccess);
    // Expected: every forced index plus the kk largest others (distinct random scores).
    std::vector<int32_t> others;
    std::set<int32_t> want;
    for (int32_t i = 0; i < n; ++i) (forced[i] ? want.insert(i), void() : others.push_back(i));
    std::sort(others.begin(), others.end(), [&](int32_t x, int32_t y) { return got[x] > got[y]; });
    for (int64_t i = 0; i < std::min<int64_t>(kk, others.size()); ++i) want.insert(others[i]);
    const int64_t count = Down<int64_t>(cnt, 1)[0];
    ASSERT_EQ(count, static_cast<int64_t>(want.size())) << "k " << kk;
    const auto out = Down<int32_t>(idx, count);
    EXPECT_TRUE(std::is_sorted(out.begin(), out.end()));
    EXPECT_EQ(std::set<int32_t>(out.begin(), out.end()), want) << "k " << kk;
  }
  // Ties: all scores equal; prefer_low keeps the lowest indices, otherwise the highest.
  auto flat = Up(std::vector<float>(n, 0.5f));
  for (bool low : {true, false}) {
    auto idx = Poisoned<int32_t>(n);
    auto cnt = Poisoned<int64_t>(1);
    ASSERT_EQ(k::SelectTopK(flat.as<float>(), nullptr, n, 10, low, idx.as<int32_t>(), nullptr,
                            cnt.as<int64_t>(), stream()),
              cudaSuccess);
    ASSERT_EQ(Down<int64_t>(cnt, 1)[0], 10);
    const auto out = Down<int32_t>(idx, 10);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(out[i], low ? i : n - 10 + i);
  }
}

TEST_F(KernelsTest, AttentionMassAndCompaction) {
  const int64_t w = 5, m = 211, heads = 4, kvh = 2, D = 40;
  std::vector<int32_t> kp(m), qp(w);
  std::iota(kp.begin(), kp.end(), 0);
  for (int64_t i = 0; i < w; ++i) qp[i] = static_cast<int32_t>(m - w + i);
  const auto s = MakeShape(w, m, heads, kvh, D, 0);
  const auto q = Uniform(w * heads * D, seed_, -2, 2), kk = Uniform(m * kvh * D, seed_ + 1, -2, 2);
  auto qd = Up(q), kd = Up(kk), qpd = Up(qp), kpd = Up(kp);
  auto mass = Poisoned<float>(m);
  auto ws = Poisoned<float>(k::AttentionMassWorkspace(s));
  ASSERT_EQ(
      k::AttentionMass<float>(qd.as<float>(), qpd.as<int32_t>(), kd.as<float>(), kpd.as<int32_t>(),
                              s, mass.as<float>(), ws.as<float>(), stream()),
      cudaSuccess);
  // Reference: sum over queries and heads of softmax probabilities (v = one-hot trick avoided:
  // computed directly).
  std::vector<double> ref(m, 0.0);
  for (int64_t i = 0; i < w; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kvh);
      std::vector<double> sc(m, -INFINITY);
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < m; ++j) {
        if (kp[j] > qp[i]) continue;
        double dot = 0;
        for (int64_t c = 0; c < D; ++c)
          dot += double(q[(i * heads + h) * D + c]) * kk[(j * kvh + g) * D + c];
        sc[j] = dot * s.scale;
        mx = std::max(mx, sc[j]);
      }
      for (int64_t j = 0; j < m; ++j) sum += sc[j] == -INFINITY ? 0 : std::exp(sc[j] - mx);
      for (int64_t j = 0; j < m; ++j) ref[j] += sc[j] == -INFINITY ? 0 : std::exp(sc[j] - mx) / sum;
    }
  }
  EXPECT_LT(RelErr(Down<float>(mass, m), ref), 1e-4);  // float

  // Compaction of the rows named by an ascending index list.
  const std::vector<int32_t> keep = {0, 3, 4, 100, 210};
  auto kdb = Up(ToBf16(kk)), vdb = Up(ToBf16(kk)), keepd = Up(keep);
  auto ko = Poisoned<bf16>(keep.size() * kvh * D), vo = Poisoned<bf16>(keep.size() * kvh * D);
  auto po = Poisoned<int32_t>(keep.size());
  ASSERT_EQ(k::CompactRows<bf16>(kdb.as<bf16>(), vdb.as<bf16>(), kpd.as<int32_t>(), kvh * D,
                                 keepd.as<int32_t>(), keep.size(), ko.as<bf16>(), vo.as<bf16>(),
                                 po.as<int32_t>(), stream()),
            cudaSuccess);
  const auto kc = DownBf16(ko, keep.size() * kvh * D);
  const auto pc = Down<int32_t>(po, keep.size());
  for (size_t r = 0; r < keep.size(); ++r) {
    EXPECT_EQ(pc[r], keep[r]);
    for (int64_t c = 0; c < kvh * D; ++c) {
      ASSERT_EQ(kc[r * kvh * D + c], RoundBf16(kk[keep[r] * kvh * D + c]));
    }
  }
}

TEST_F(KernelsTest, SimHashBitsMatchClearlySignedProjections) {
  const int64_t n = 9, dim = 77;
  const int bands = 4, bits = 13;
  const auto e = Uniform(n * dim, seed_), planes = Uniform(bands * bits * dim, seed_ + 1);
  auto ed = Up(e), pd = Up(planes);
  auto cd = Poisoned<uint32_t>(n * bands);
  ASSERT_EQ(k::SimHashCodes(ed.as<float>(), pd.as<float>(), n, dim, bands, bits, cd.as<uint32_t>(),
                            stream()),
            cudaSuccess);
  const auto codes = Down<uint32_t>(cd, n * bands);
  int checked = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int b = 0; b < bands; ++b) {
      EXPECT_EQ(codes[i * bands + b] >> bits, 0u);  // no stray high bits
      for (int j = 0; j < bits; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < dim; ++c)
          dot += double(e[i * dim + c]) * planes[(b * bits + j) * dim + c];
        if (std::abs(dot) < 1e-3) continue;  // float summation order may flip a near-zero sign
        ++checked;
        EXPECT_EQ((codes[i * bands + b] >> j) & 1u, dot > 0 ? 1u : 0u);
      }
    }
  }
  EXPECT_GT(checked, n * bands * bits / 2);
}

// The CPU Sampler's arithmetic (engine/sampling.cc) with a given uniform u instead of its rng.
int32_t RefSample(const std::vector<float>& logits, float t, int top_k, float top_p, double u) {
  std::vector<std::pair<float, int32_t>> c;
  for (int32_t i = 0; i < static_cast<int32_t>(logits.size()); ++i) c.push_back({logits[i], i});
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  c.resize(top_k);
  const double mx = c[0].first;
  std::vector<double> w;
  double sum = 0;
  for (auto& x : c) sum += w.emplace_back(std::exp((x.first - mx) / t));
  size_t keep = c.size();
  if (top_p < 1.0f) {
    double cum = 0;
    keep = 0;
    while (keep < c.size()) {
      cum += w[keep++] / sum;
      if (cum >= top_p) break;
    }
    sum = 0;
    for (size_t i = 0; i < keep; ++i) sum += w[i];
  }
  double r = u * sum;
  for (size_t i = 0; i < keep; ++i) {
    r -= w[i];
    if (r < 0) return c[i].second;
  }
  return c[keep - 1].second;
}

TEST_F(KernelsTest, ArgmaxAndTopKTopPSampling) {
  const int64_t vocab = 50257;
  auto logits = Uniform(vocab, seed_, -10, 10);
  logits[777] = 20.0f;
  logits[31337] = 20.0f;  // tie: the lower index wins
  auto ld = Up(logits);
  auto out = Poisoned<int32_t>(1);
  ASSERT_EQ(k::Argmax(ld.as<float>(), vocab, out.as<int32_t>(), stream()), cudaSuccess);
  EXPECT_EQ(Down<int32_t>(out, 1)[0], 777);

  const auto small = Uniform(3001, seed_ + 1, -3, 3);
  auto sd = Up(small);
  for (int top_k : {1, 50, 1024}) {
    for (float top_p : {1.0f, 0.9f, 0.3f}) {
      for (float u : {0.0f, 0.31f, 0.77f, 0.999f}) {
        auto o = Poisoned<int32_t>(1);
        ASSERT_EQ(k::SampleTopKTopP(sd.as<float>(), small.size(), 0.8f, top_k, top_p, u,
                                    o.as<int32_t>(), stream()),
                  cudaSuccess);
        EXPECT_EQ(Down<int32_t>(o, 1)[0], RefSample(small, 0.8f, top_k, top_p, u))
            << "k " << top_k << " p " << top_p << " u " << u;
      }
    }
  }
}

}  // namespace
}  // namespace semshare::testing
