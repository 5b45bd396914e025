// Each kernel family against a float64 CPU reference: fresh random inputs every run (seed
// printed), odd and unaligned shapes, outputs poisoned with NaN before the launch. Bounds:
// float paths 1e-5..1e-4 (float rounding over sums of at most a few thousand terms); paths
// that round to bf16 (8 significant bits, relative rounding <= 2^-9 ~ 2e-3 per element) 8e-3.
// The attention and retention kernels are in cuda_attention_test.cc.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <span>

#include "engine/sampling.h"
#include "kernels/deviation.cuh"
#include "kernels/embed.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/match.cuh"
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

// Double reference of GatherRerotate: row i of the result is src row idx[i] rotated by
// delta[i] (rows of heads * hd values).
std::vector<double> RefGatherRerotate(const std::vector<float>& src,
                                      const std::vector<int32_t>& idx,
                                      const std::vector<int32_t>& delta, int64_t heads, int64_t hd,
                                      int64_t rd, bool adjacent, const std::vector<float>& inv) {
  const int64_t row_len = heads * hd;
  std::vector<double> ref;
  for (size_t i = 0; i < idx.size(); ++i) {
    std::vector<double> row(src.begin() + idx[i] * row_len, src.begin() + (idx[i] + 1) * row_len);
    RefRope(row, heads, hd, rd, adjacent, inv, delta[i]);
    ref.insert(ref.end(), row.begin(), row.end());
  }
  return ref;
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
  EXPECT_LT(RelErr(DownBf16(od, n * kvh * hd),
                   RefGatherRerotate(src, idx, delta, kvh, hd, hd, /*adjacent=*/false, inv)),
            8e-3);  // bf16 output
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
    // Expected: every forced index plus the kk largest others. Random float distances can
    // collide (a few pairs among 3001); equal scores go to the lower index (prefer_low).
    std::vector<int32_t> others;
    std::set<int32_t> want;
    for (int32_t i = 0; i < n; ++i) (forced[i] ? want.insert(i), void() : others.push_back(i));
    std::sort(others.begin(), others.end(),
              [&](int32_t x, int32_t y) { return got[x] > got[y] || (got[x] == got[y] && x < y); });
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

// The CPU Sampler's arithmetic (engine/sampling.cc: float weights exp((l - max) * (1 / T)),
// double sums) with a given uniform u instead of its rng. top_k 0 = the whole vocabulary.
int32_t RefSample(const std::vector<float>& logits, float t, int top_k, float top_p, double u) {
  std::vector<std::pair<float, int32_t>> c;
  for (int32_t i = 0; i < static_cast<int32_t>(logits.size()); ++i) c.push_back({logits[i], i});
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  if (top_k > 0 && top_k < static_cast<int>(c.size())) c.resize(top_k);
  const float mx = c[0].first, inv_t = 1.0f / t;
  std::vector<double> w;
  double sum = 0;
  for (auto& x : c) sum += w.emplace_back(static_cast<float>(std::exp((x.first - mx) * inv_t)));
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

// RMSNorm on a strided input (a slice of wider rows), d > 1024 (the 512-thread path) and odd,
// float -> float, bf16 -> bf16, and in place.
TEST_F(KernelsTest, RmsNormStridedWideAndInPlace) {
  const int64_t n = 3, d = 4099, stride = 4200;
  const auto x = Bf16Values(Uniform(n * stride, seed_, -3, 3));
  const auto g = Uniform(d, seed_ + 1, 0.5, 1.5);
  std::vector<double> ref(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += double(x[i * stride + c]) * x[i * stride + c];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t c = 0; c < d; ++c) ref[i * d + c] = x[i * stride + c] * inv * g[c];
  }
  auto gd = Up(g);
  {
    auto xd = Up(x);
    auto yd = Poisoned<float>(n * d);
    ASSERT_EQ((k::RmsNorm<float, float>(xd.as<float>(), stride, gd.as<float>(), n, d, 1e-5f,
                                        yd.as<float>(), stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(Down<float>(yd, n * d), ref), 1e-5);  // float
  }
  {
    auto xd = Up(ToBf16(x));
    auto yd = Poisoned<bf16>(n * d);
    ASSERT_EQ((k::RmsNorm<bf16, bf16>(xd.as<bf16>(), stride, gd.as<float>(), n, d, 1e-5f,
                                      yd.as<bf16>(), stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(DownBf16(yd, n * d), ref), 8e-3);  // bf16 output
  }
  {
    std::vector<float> packed(n * d);
    for (int64_t i = 0; i < n; ++i) {
      std::copy(x.begin() + i * stride, x.begin() + i * stride + d, packed.begin() + i * d);
    }
    auto xd = Up(packed);
    ASSERT_EQ((k::RmsNorm<float, float>(xd.as<float>(), d, gd.as<float>(), n, d, 1e-5f,
                                        xd.as<float>(), stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(Down<float>(xd, n * d), ref), 1e-5);  // float, y aliases x
  }
}

// RoPE into scattered cache rows: strided input (the K slice of a fused row), a row map,
// rope_dim < head_dim (tail copied), both pairings, bf16 and float inputs to bf16.
TEST_F(KernelsTest, RopeScatterRowsStridedBf16) {
  const int64_t n = 9, heads = 3, hd = 10, rd = 6, x_stride = 41, y_rows = 15;
  const int64_t y_stride = heads * hd;
  std::vector<float> inv(rd / 2);
  for (int64_t i = 0; i < rd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / rd);
  std::vector<int32_t> pos(n), rows(n);
  std::mt19937 rng(seed_);
  std::vector<int32_t> perm(y_rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < n; ++i) {
    pos[i] = static_cast<int32_t>(rng() % 20000) - 5000;
    rows[i] = perm[i];
  }
  auto pd = Up(pos), rdv = Up(rows), fd = Up(inv);
  for (bool adjacent : {true, false}) {
    for (bool bf16_in : {true, false}) {
      const auto x = Bf16Values(Uniform(n * x_stride, seed_ + adjacent + 2 * bf16_in));
      k::RopeArgs a;
      a.kind = adjacent ? k::RopeKind::kAdjacent : k::RopeKind::kHalfSplit;
      a.heads = heads;
      a.head_dim = hd;
      a.rope_dim = rd;
      a.inv_freq = fd.as<float>();
      auto yd = Poisoned<bf16>(y_rows * y_stride);
      auto xf = Up(x), xb = Up(ToBf16(x));
      const cudaError_t e =
          bf16_in ? k::Rope<bf16, bf16>(xb.as<bf16>(), x_stride, pd.as<int32_t>(), n, a,
                                        yd.as<bf16>(), y_stride, rdv.as<int32_t>(), stream())
                  : k::Rope<float, bf16>(xf.as<float>(), x_stride, pd.as<int32_t>(), n, a,
                                         yd.as<bf16>(), y_stride, rdv.as<int32_t>(), stream());
      ASSERT_EQ(e, cudaSuccess);
      const auto y = DownBf16(yd, y_rows * y_stride);
      std::vector<double> ref;
      std::vector<float> got;
      std::vector<bool> written(y_rows, false);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> row(x.begin() + i * x_stride, x.begin() + i * x_stride + y_stride);
        RefRope(row, heads, hd, rd, adjacent, inv, pos[i]);
        ref.insert(ref.end(), row.begin(), row.end());
        got.insert(got.end(), y.begin() + rows[i] * y_stride, y.begin() + (rows[i] + 1) * y_stride);
        written[rows[i]] = true;
      }
      EXPECT_LT(RelErr(got, ref), 8e-3) << "adjacent " << adjacent << " bf16 " << bf16_in;
      for (int64_t r = 0; r < y_rows; ++r) {
        if (written[r]) continue;
        EXPECT_TRUE(
            AllNan(std::vector<float>(y.begin() + r * y_stride, y.begin() + (r + 1) * y_stride)))
            << "row " << r << " not in the map was written";
      }
    }
  }
}

// SwiGLU (separate, in place over gate; bf16 output; packed from float), add, bias add,
// conversions, fill and the seeded random fill, on odd counts.
TEST_F(KernelsTest, ElementwiseFamily) {
  const int64_t n = 7, f = 333, count = n * f;
  const auto g = Uniform(count, seed_, -6, 6), u = Uniform(count, seed_ + 1, -2, 2);
  std::vector<double> ref(count);
  for (int64_t i = 0; i < count; ++i) ref[i] = g[i] / (1 + std::exp(-double(g[i]))) * u[i];
  {
    auto gd = Up(g), ud = Up(u);
    ASSERT_EQ(
        (k::SwiGlu<float, float>(gd.as<float>(), ud.as<float>(), count, gd.as<float>(), stream())),
        cudaSuccess);
    EXPECT_LT(RelErr(Down<float>(gd, count), ref), 1e-5);  // float, out aliases gate
    auto gd2 = Up(g);
    auto od = Poisoned<bf16>(count);
    ASSERT_EQ(
        (k::SwiGlu<float, bf16>(gd2.as<float>(), ud.as<float>(), count, od.as<bf16>(), stream())),
        cudaSuccess);
    EXPECT_LT(RelErr(DownBf16(od, count), ref), 8e-3);  // bf16 output
  }
  {
    std::vector<float> gu(n * 2 * f);
    for (int64_t i = 0; i < n; ++i) {
      std::copy(g.begin() + i * f, g.begin() + (i + 1) * f, gu.begin() + i * 2 * f);
      std::copy(u.begin() + i * f, u.begin() + (i + 1) * f, gu.begin() + i * 2 * f + f);
    }
    auto gud = Up(gu);
    auto od = Poisoned<bf16>(count);
    ASSERT_EQ((k::SwiGluPacked<float, bf16>(gud.as<float>(), n, f, od.as<bf16>(), stream())),
              cudaSuccess);
    EXPECT_LT(RelErr(DownBf16(od, count), ref), 8e-3);  // bf16 output
  }
  {
    const auto b = Uniform(f, seed_ + 2);
    auto xd = Up(g), yd = Up(u), bd = Up(b);
    ASSERT_EQ(k::AddInPlace(xd.as<float>(), yd.as<float>(), count, stream()), cudaSuccess);
    ASSERT_EQ(k::AddBias(xd.as<float>(), bd.as<float>(), n, f, stream()), cudaSuccess);
    const auto x = Down<float>(xd, count);
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(x[i], (g[i] + u[i]) + b[i % f]) << i;  // exact
  }
  {
    auto xd = Up(g);
    auto bd = Poisoned<bf16>(count);
    auto fd = Poisoned<float>(count);
    ASSERT_EQ((k::Convert<float, bf16>(xd.as<float>(), count, bd.as<bf16>(), stream())),
              cudaSuccess);
    ASSERT_EQ((k::Convert<bf16, float>(bd.as<bf16>(), count, fd.as<float>(), stream())),
              cudaSuccess);
    const auto back = Down<float>(fd, count);
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(back[i], RoundBf16(g[i])) << i;  // exact RN
  }
  {
    auto fd = Poisoned<float>(count);
    auto bd = Poisoned<bf16>(count);
    ASSERT_EQ(k::Fill<float>(fd.as<float>(), count, -2.5f, stream()), cudaSuccess);
    ASSERT_EQ(k::Fill<bf16>(bd.as<bf16>(), count, 0.75f, stream()), cudaSuccess);
    for (float x : Down<float>(fd, count)) ASSERT_EQ(x, -2.5f);
    for (float x : DownBf16(bd, count)) ASSERT_EQ(x, 0.75f);
  }
  {
    // Counter-based: the same seed gives the same values; values in offset +- scale, mean near
    // the offset (|mean - offset| < 0.05: ~8 sigma of the mean of 2331 uniforms; the seed is
    // fixed, so the outcome does not vary between runs).
    auto a = Poisoned<float>(count), b = Poisoned<float>(count);
    ASSERT_EQ(k::FillRandom<float>(a.as<float>(), count, 42, 0.5f, 1.0f, stream()), cudaSuccess);
    ASSERT_EQ(k::FillRandom<float>(b.as<float>(), count, 42, 0.5f, 1.0f, stream()), cudaSuccess);
    const auto va = Down<float>(a, count), vb = Down<float>(b, count);
    EXPECT_EQ(va, vb);
    double mean = 0;
    for (float x : va) {
      ASSERT_GE(x, 0.5f);
      ASSERT_LE(x, 1.5f);
      mean += x / count;
    }
    EXPECT_LT(std::abs(mean - 1.0), 0.05);
  }
}

// Row gather and scatter (exact copies), and the float re-rotation with a partial rope_dim
// and adjacent pairs.
TEST_F(KernelsTest, GatherScatterRowsAndFloatRerotate) {
  const int64_t rows = 31, row_len = 77, n = 12;
  const auto src = Uniform(rows * row_len, seed_);
  std::mt19937 rng(seed_);
  std::vector<int32_t> perm(rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const std::vector<int32_t> idx(perm.begin(), perm.begin() + n);
  auto sd = Up(src), id = Up(idx);
  {
    auto od = Poisoned<float>(n * row_len);
    ASSERT_EQ(k::GatherRows<float>(sd.as<float>(), row_len, id.as<int32_t>(), n, od.as<float>(),
                                   stream()),
              cudaSuccess);
    const auto out = Down<float>(od, n * row_len);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < row_len; ++c)
        ASSERT_EQ(out[i * row_len + c], src[idx[i] * row_len + c]);
    }
  }
  {
    auto sb = Up(ToBf16(src));
    auto od = Poisoned<bf16>(rows * row_len);
    ASSERT_EQ(
        k::ScatterRows<bf16>(sb.as<bf16>(), row_len, id.as<int32_t>(), n, od.as<bf16>(), stream()),
        cudaSuccess);
    const auto out = DownBf16(od, rows * row_len);
    std::vector<bool> hit(rows, false);
    for (int64_t i = 0; i < n; ++i) {
      hit[idx[i]] = true;
      for (int64_t c = 0; c < row_len; ++c) {
        ASSERT_EQ(out[idx[i] * row_len + c], RoundBf16(src[i * row_len + c]));
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (!hit[r]) {
        EXPECT_TRUE(
            AllNan(std::vector<float>(out.begin() + r * row_len, out.begin() + (r + 1) * row_len)));
      }
    }
  }
  {
    const int64_t kvh = 3, hd = 20, rd = 12;
    std::vector<float> inv(rd / 2);
    for (int64_t i = 0; i < rd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / rd);
    const auto ks = Uniform(rows * kvh * hd, seed_ + 5);
    std::vector<int32_t> delta(n);
    for (auto& d : delta) d = static_cast<int32_t>(rng() % 20001) - 10000;
    auto kd = Up(ks), dd = Up(delta), fd = Up(inv);
    auto od = Poisoned<float>(n * kvh * hd);
    k::RopeArgs a;
    a.kind = k::RopeKind::kAdjacent;
    a.heads = kvh;
    a.head_dim = hd;
    a.rope_dim = rd;
    a.inv_freq = fd.as<float>();
    ASSERT_EQ(k::GatherRerotate<float>(kd.as<float>(), id.as<int32_t>(), dd.as<int32_t>(), n, a,
                                       od.as<float>(), stream()),
              cudaSuccess);
    EXPECT_LT(RelErr(Down<float>(od, n * kvh * hd),
                     RefGatherRerotate(ks, idx, delta, kvh, hd, rd, /*adjacent=*/true, inv)),
              1e-5);  // float rotation
  }
}

TEST_F(KernelsTest, EmbedBf16Output) {
  const int64_t vocab = 1000, d = 129;
  const auto table = Bf16Values(Uniform(vocab * d, seed_));
  std::mt19937 rng(seed_);
  std::vector<int32_t> ids(33);
  for (auto& i : ids) i = rng() % vocab;
  ids[0] = static_cast<int32_t>(vocab - 1);
  auto td = Up(ToBf16(table)), idd = Up(ids);
  auto od = Poisoned<bf16>(ids.size() * d);
  ASSERT_EQ(k::EmbedGather<bf16>(td.data(), vocab, d, idd.as<int32_t>(), ids.size(), od.as<bf16>(),
                                 stream()),
            cudaSuccess);
  const auto out = DownBf16(od, ids.size() * d);
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < d; ++c) ASSERT_EQ(out[i * d + c], table[ids[i] * d + c]);  // exact
  }
}

// Selection over many elements with heavy ties (8 distinct scores): the threshold value's
// elements are taken from the low (prefer_low) or high indices, forced elements always kept,
// mask and indices consistent.
TEST_F(KernelsTest, SelectTopKHeavyTiesLargeN) {
  const int64_t n = 200003;
  std::mt19937 rng(seed_);
  std::vector<float> sc(n);
  std::vector<uint8_t> forced(n);
  for (int64_t i = 0; i < n; ++i) {
    sc[i] = static_cast<float>(rng() % 8) * 0.25f;
    forced[i] = rng() % 7 == 0;
  }
  auto sd = Up(sc), fd = Up(forced);
  for (bool low : {true, false}) {
    for (int64_t kk : {int64_t{1}, int64_t{12345}, int64_t{100000}}) {
      auto idx = Poisoned<int32_t>(n);
      auto mask = Poisoned<uint8_t>(n);
      auto cnt = Poisoned<int64_t>(1);
      ASSERT_EQ(k::SelectTopK(sd.as<float>(), fd.as<uint8_t>(), n, kk, low, idx.as<int32_t>(),
                              mask.as<uint8_t>(), cnt.as<int64_t>(), stream()),
                cudaSuccess);
      std::vector<int32_t> others;
      std::vector<uint8_t> want(n, 0);
      for (int32_t i = 0; i < n; ++i) {
        if (forced[i]) {
          want[i] = 1;
        } else {
          others.push_back(i);
        }
      }
      std::stable_sort(others.begin(), others.end(), [&](int32_t a, int32_t b) {
        return sc[a] > sc[b] || (sc[a] == sc[b] && (low ? a < b : a > b));
      });
      for (int64_t i = 0; i < std::min<int64_t>(kk, others.size()); ++i) want[others[i]] = 1;
      const int64_t count = Down<int64_t>(cnt, 1)[0];
      ASSERT_EQ(count, std::accumulate(want.begin(), want.end(), int64_t{0})) << kk;
      const auto m = Down<uint8_t>(mask, n);
      ASSERT_TRUE(m == want) << "mask differs, k " << kk << " low " << low;
      const auto out = Down<int32_t>(idx, count);
      std::vector<int32_t> want_idx;
      for (int32_t i = 0; i < n; ++i) {
        if (want[i]) want_idx.push_back(i);
      }
      ASSERT_TRUE(out == want_idx) << "indices differ, k " << kk << " low " << low;
    }
  }
}

// Argmax over a Llama-3 vocabulary (128256), the maximum at the last index, then tied with a
// lower index; -0.0 and +0.0 tie in sampling (the lower index first, as the CPU's float compare).
TEST_F(KernelsTest, ArgmaxLargeVocabAndSamplingTies) {
  const int64_t vocab = 128256;
  auto logits = Uniform(vocab, seed_, -10, 10);
  logits[vocab - 1] = 25.0f;
  {
    auto ld = Up(logits);
    auto out = Poisoned<int32_t>(1);
    ASSERT_EQ(k::Argmax(ld.as<float>(), vocab, out.as<int32_t>(), stream()), cudaSuccess);
    EXPECT_EQ(Down<int32_t>(out, 1)[0], vocab - 1);
  }
  logits[1000] = 25.0f;
  {
    auto ld = Up(logits);
    auto out = Poisoned<int32_t>(1);
    ASSERT_EQ(k::Argmax(ld.as<float>(), vocab, out.as<int32_t>(), stream()), cudaSuccess);
    EXPECT_EQ(Down<int32_t>(out, 1)[0], 1000);
  }
  // A small vocabulary (every token a candidate: top_k 0 and top_k >= vocab) with many tied
  // logits, some of them -0.0 / +0.0, so top-k cuts run through tie groups.
  const int64_t small = 300;
  std::mt19937 rng(seed_ + 3);
  std::vector<float> l(small);
  for (auto& x : l) x = static_cast<float>(static_cast<int>(rng() % 13) - 6) * 0.5f;
  for (int64_t i = 0; i < small; i += 7) l[i] = (i % 2) ? -0.0f : 0.0f;
  auto ld = Up(l);
  for (int top_k : {0, 1, 7, 40, 500}) {
    for (float top_p : {1.0f, 0.5f}) {
      for (float u : {0.0f, 0.4f, 0.95f}) {
        auto o = Poisoned<int32_t>(1);
        ASSERT_EQ(k::SampleTopKTopP(ld.as<float>(), small, 1.3f, top_k, top_p, u, o.as<int32_t>(),
                                    stream()),
                  cudaSuccess);
        EXPECT_EQ(Down<int32_t>(o, 1)[0], RefSample(l, 1.3f, top_k, top_p, u))
            << "k " << top_k << " p " << top_p << " u " << u;
      }
    }
  }
}

// Batched greedy (ArgmaxRows, BatchForward::ForwardGreedy's kernel) over several rows of a
// Llama-3 vocabulary against the CPU's engine::Argmax row by row: the tie rule (lowest index)
// must pick the same token as the host sampler. Rows: random; the maximum tied at three indices
// spread over the row (different threads and warps hold them); every logit equal; every logit
// -inf; -0.0 tied with +0.0 as the maximum; the maximum at the last index; a NaN past index 0
// (the CPU's max_element skips it, the kernel never lets NaN win). A row's offset is
// row * vocab, so a mistake in it shows as another row's answer.
TEST_F(KernelsTest, ArgmaxRowsBatchedMatchesCpuArgmax) {
  const int64_t vocab = 128256, n = 7;
  std::vector<float> l = Uniform(n * vocab, seed_, -10, 10);
  auto row = [&](int64_t i) { return l.begin() + i * vocab; };
  row(1)[77777] = 30.0f;
  row(1)[4242] = 30.0f;
  row(1)[vocab - 2] = 30.0f;
  std::fill(row(2), row(2) + vocab, 1.5f);
  std::fill(row(3), row(3) + vocab, -std::numeric_limits<float>::infinity());
  std::fill(row(4), row(4) + vocab, -1.0f);
  row(4)[9001] = -0.0f;
  row(4)[5000] = 0.0f;
  row(4)[70000] = -0.0f;
  row(5)[vocab - 1] = 40.0f;
  row(6)[3] = std::numeric_limits<float>::quiet_NaN();
  row(6)[100000] = 35.0f;
  auto ld = Up(l);
  auto out = Poisoned<int32_t>(n + 1);  // one slot past the rows: must stay unwritten
  ASSERT_EQ(k::ArgmaxRows(ld.as<float>(), n, vocab, out.as<int32_t>(), stream()), cudaSuccess);
  const auto got = Down<int32_t>(out, n + 1);
  // The expected index where the row fixes it (-1: the random row 0, CPU only).
  const std::vector<int32_t> want_fixed = {-1,    4242, 0, 0, 5000, static_cast<int32_t>(vocab - 1),
                                           100000};
  for (int64_t i = 0; i < n; ++i) {
    const int32_t cpu = engine::Argmax(std::span<const float>(&*row(i), vocab));
    EXPECT_EQ(got[i], cpu) << "row " << i;
    if (want_fixed[i] >= 0) {
      EXPECT_EQ(got[i], want_fixed[i]) << "row " << i;
    }
  }
  EXPECT_EQ(got[n], -1) << "wrote past the last row";  // 0xFFFFFFFF poison
}

// Empty batches: every launcher given zero rows (zero elements) returns success without
// launching (a grid of 0 blocks is cudaErrorInvalidConfiguration, which would also stay in the
// thread's last error and be blamed on the next launch) and writes nothing. An engine
// iteration, a decode step or a retention pass can hand a kernel an empty set.
TEST_F(KernelsTest, EmptyBatchesLaunchNothing) {
  auto out = Poisoned<float>(64);
  auto outb = Poisoned<bf16>(64);
  auto in = Up(Uniform(64, seed_));
  auto inb = Up(ToBf16(Uniform(64, seed_ + 1)));
  auto idx = Up(std::vector<int32_t>(8, 0));
  auto idx_out = Poisoned<int32_t>(8);
  auto cnt = Poisoned<int64_t>(1);
  auto codes = Poisoned<uint32_t>(8);
  float* o = out.as<float>();
  bf16* ob = outb.as<bf16>();
  const float* x = in.as<float>();
  const bf16* xb = inb.as<bf16>();
  const int32_t* ix = idx.as<int32_t>();
  k::RopeArgs ra;
  ra.heads = 2;
  ra.head_dim = 8;
  ra.rope_dim = 8;
  ra.inv_freq = x;
  cudaStream_t st = stream();
  (void)cudaGetLastError();  // start clean: only an error left by the calls below counts
  EXPECT_EQ((k::RmsNorm<float, bf16>(x, 16, x, 0, 16, 1e-5f, ob, st)), cudaSuccess);
  EXPECT_EQ((k::Rope<float, float>(x, 16, ix, 0, ra, o, 16, nullptr, st)), cudaSuccess);
  EXPECT_EQ(k::EmbedGather<float>(xb, 4, 16, ix, 0, o, st), cudaSuccess);
  EXPECT_EQ((k::SwiGlu<float, float>(x, x, 0, o, st)), cudaSuccess);
  EXPECT_EQ((k::SwiGluPacked<bf16, bf16>(xb, 0, 16, ob, st)), cudaSuccess);
  EXPECT_EQ(k::AddInPlace(o, x, 0, st), cudaSuccess);
  EXPECT_EQ(k::AddBias(o, x, 0, 16, st), cudaSuccess);
  EXPECT_EQ((k::Convert<float, bf16>(x, 0, ob, st)), cudaSuccess);
  EXPECT_EQ(k::Fill<float>(o, 0, 1.0f, st), cudaSuccess);
  EXPECT_EQ(k::FillRandom<float>(o, 0, 1, 1.0f, 0.0f, st), cudaSuccess);
  EXPECT_EQ(k::GatherRows<float>(x, 16, ix, 0, o, st), cudaSuccess);
  EXPECT_EQ(k::ScatterRows<bf16>(xb, 16, ix, 0, ob, st), cudaSuccess);
  EXPECT_EQ(k::GatherRerotate<bf16>(xb, ix, ix, 0, ra, ob, st), cudaSuccess);
  EXPECT_EQ((k::RowDistance<float, float>(x, 16, x, 16, 0, 16, false, o, st)), cudaSuccess);
  EXPECT_EQ(k::ArgmaxRows(x, 0, 16, idx_out.as<int32_t>(), st), cudaSuccess);
  EXPECT_EQ(k::SimHashCodes(x, x, 0, 16, 2, 4, codes.as<uint32_t>(), st), cudaSuccess);
  EXPECT_EQ(k::CompactRows<bf16>(xb, xb, ix, 16, ix, 0, ob, ob, idx_out.as<int32_t>(), st),
            cudaSuccess);
  EXPECT_EQ(k::EcacheRows(xb, 4, 16, ix, 0, nullptr, o, st), cudaSuccess);
  EXPECT_EQ(k::PackCodes(x, 0, 2, 4, codes.as<uint32_t>(), st), cudaSuccess);
  EXPECT_EQ(k::MatchCandidates(codes.as<uint32_t>(), codes.as<uint32_t>(), x, 8, 0, 8, 2, 0,
                               idx_out.as<int32_t>(), o, st),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(st), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_TRUE(AllNan(Down<float>(out, 64)));
  EXPECT_TRUE(AllNan(DownBf16(outb, 64)));
  for (int32_t v : Down<int32_t>(idx_out, 8)) EXPECT_EQ(v, -1);
  for (uint32_t v : Down<uint32_t>(codes, 8)) EXPECT_EQ(v, 0xFFFFFFFFu);
  // Selection over nothing: one block runs (the count is an output) and reports 0.
  ASSERT_EQ(
      k::SelectTopK(x, nullptr, 0, 5, true, idx_out.as<int32_t>(), nullptr, cnt.as<int64_t>(), st),
      cudaSuccess);
  EXPECT_EQ(Down<int64_t>(cnt, 1)[0], 0);
  for (int32_t v : Down<int32_t>(idx_out, 8)) EXPECT_EQ(v, -1);
}

}  // namespace
}  // namespace semshare::testing
