// The attention kernels (flash prefill, generic / split-KV decode) and the retention kernels
// built on attention scores (attention mass, compaction), against float64 CPU references:
// fresh random inputs every run (seed printed; SEMSHARE_TEST_SEED replays one), odd and
// unaligned shapes, ~4k-token prompts at head_dim 128, fully masked rows,
// outputs poisoned with NaN before the launch. Bounds: 1e-2 where q/k/v and the
// probabilities are rounded to bf16 before P V (8 significant bits, 2^-9 per element, over
// sums that partly cancel), 8e-3 where only the output is bf16, 1e-4 for float paths. The
// other kernel families are in cuda_kernels_test.cc.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "kernels/attention.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/paged_attention.cuh"
#include "kernels/retention.cuh"
#include "kernels/rope.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace semshare::testing {
namespace {

namespace k = ::semshare::kernels;
using engine::cuda::DeviceBuffer;

class KernelsTest : public CudaTest {};

// Double reference of the attention probabilities of query row i, head h over the m keys
// (engine/backend.h's contract: causal by position, sliding window); zeros where masked, all
// zeros for a query that sees no key.
std::vector<double> RefProbs(const std::vector<float>& q, const std::vector<int32_t>& qp,
                             const std::vector<float>& kk, const std::vector<int32_t>& kp,
                             const k::AttnShape& s, int64_t i, int64_t h) {
  const int64_t g = h / (s.n_heads / s.n_kv_heads), D = s.head_dim;
  std::vector<double> p(s.m, 0.0);
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
  if (mx == -INFINITY) return p;
  double sum = 0;
  for (int64_t j = 0; j < s.m; ++j) sum += sc[j] == -INFINITY ? 0 : std::exp(sc[j] - mx);
  for (int64_t j = 0; j < s.m; ++j) p[j] = sc[j] == -INFINITY ? 0 : std::exp(sc[j] - mx) / sum;
  return p;
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
      const std::vector<double> p = RefProbs(q, qp, kk, kp, s, i, h);
      for (int64_t j = 0; j < s.m; ++j) {
        if (p[j] == 0) continue;
        for (int64_t c = 0; c < D; ++c) {
          out[(i * s.n_heads + h) * D + c] += p[j] * v[j * s.kv_stride + g * D + c];
        }
      }
    }
  }
  return out;
}

// Double reference of the retention score: per key, the attention probability it receives
// summed over the n queries and every head.
std::vector<double> RefAttentionMass(const std::vector<float>& q, const std::vector<int32_t>& qp,
                                     const std::vector<float>& kk, const std::vector<int32_t>& kp,
                                     const k::AttnShape& s) {
  std::vector<double> mass(s.m, 0.0);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const std::vector<double> p = RefProbs(q, qp, kk, kp, s, i, h);
      for (int64_t j = 0; j < s.m; ++j) mass[j] += p[j];
    }
  }
  return mass;
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

// Self-attention prefill straight out of a fused [n, (heads + 2 kvh) * D] QKV buffer (the
// forward pass's layout: strided rows, K and V at offsets), several 64-query blocks with a
// partial last one, positions with gaps (a compacted cache), GQA 4:1, bf16 output into rows
// with padding, through the dispatcher (n >= 16 takes the flash kernel).
TEST_F(KernelsTest, FlashPrefillFusedQkvManyBlocksBf16Out) {
  for (int64_t D : {64, 128}) {
    for (int64_t window : {0, 50}) {
      const int64_t n = 200, heads = 4, kvh = 1, stride = (heads + 2 * kvh) * D;
      std::vector<int32_t> pos(n);
      for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(3 * i + (i % 2));
      const auto qkv = Bf16Values(Uniform(n * stride, seed_ + D + window, -2, 2));
      k::AttnShape s = MakeShape(n, n, heads, kvh, D, window);
      s.q_stride = stride;
      s.kv_stride = stride;
      s.out_stride = heads * D + 8;  // padded output rows: the pad must stay untouched
      auto qkvd = Up(ToBf16(qkv)), pd = Up(pos);
      const bf16* base = qkvd.as<bf16>();
      const void *qp = base, *kp = base + heads * D, *vp = base + (heads + kvh) * D;
      ASSERT_TRUE(k::FlashPrefillSupported(s, qp, kp, vp));
      auto od = Poisoned<bf16>(n * s.out_stride);
      ASSERT_EQ(k::Attention<bf16>(qp, pd.as<int32_t>(), kp, vp, pd.as<int32_t>(), s, od.as<bf16>(),
                                   nullptr, 0, stream()),
                cudaSuccess);
      const auto got = DownBf16(od, n * s.out_stride);
      std::vector<float> out, pad;
      for (int64_t i = 0; i < n; ++i) {
        out.insert(out.end(), got.begin() + i * s.out_stride,
                   got.begin() + i * s.out_stride + heads * D);
        pad.insert(pad.end(), got.begin() + i * s.out_stride + heads * D,
                   got.begin() + (i + 1) * s.out_stride);
      }
      const std::vector<float> kk(qkv.begin() + heads * D, qkv.end());
      const std::vector<float> vv(qkv.begin() + (heads + kvh) * D, qkv.end());
      // Probabilities rounded to bf16 before P V, then the bf16 output: 1e-2.
      EXPECT_LT(RelErr(out, RefAttention(qkv, pos, kk, vv, pos, s)), 1e-2)
          << "D " << D << " window " << window;
      EXPECT_TRUE(AllNan(pad)) << "wrote past head rows";
    }
  }
}

// ~4k-token causal self-attention at head_dim 128 (the 8B shape), GQA 4:1, 4000 queries (63
// blocks, the last partial) over 4000 keys (63 tiles), with and without a sliding window,
// through FlashPrefill with float and bf16 output. The float64 reference is computed for 48
// query rows only (the first and last rows, block edges, the window's edge and random ones).
TEST_F(KernelsTest, FlashPrefillLong4kHeadDim128) {
  const int64_t n = 4000, heads = 8, kvh = 2, D = 128;
  std::vector<int32_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  const auto q = Bf16Values(Uniform(n * heads * D, seed_, -2, 2));
  const auto kk = Bf16Values(Uniform(n * kvh * D, seed_ + 1, -2, 2));
  const auto v = Bf16Values(Uniform(n * kvh * D, seed_ + 2));
  auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), vd = Up(ToBf16(v)), pd = Up(pos);
  std::set<int64_t> picked = {0,    1,    15,   63,   64,   65,    127,  1023,
                              1024, 1025, 2047, 3967, 3968, n - 2, n - 1};
  std::mt19937_64 rng(seed_ + 3);
  while (picked.size() < 48) picked.insert(static_cast<int64_t>(rng() % n));
  const std::vector<int64_t> rows(picked.begin(), picked.end());
  for (int64_t window : {0, 1000}) {
    const auto s = MakeShape(n, n, heads, kvh, D, window);
    ASSERT_TRUE(k::FlashPrefillSupported(s, qd.data(), kd.data(), vd.data()));
    // The reference for the picked rows: one query at a time (RefProbs reads row i of q).
    std::vector<double> ref;
    for (int64_t i : rows) {
      for (int64_t h = 0; h < heads; ++h) {
        const std::vector<double> p = RefProbs(q, pos, kk, pos, s, i, h);
        const int64_t g = h / (heads / kvh);
        for (int64_t c = 0; c < D; ++c) {
          double o = 0;
          for (int64_t j = 0; j <= i; ++j) {
            if (p[j] != 0) o += p[j] * v[j * s.kv_stride + g * D + c];
          }
          ref.push_back(o);
        }
      }
    }
    auto pick = [&](const std::vector<float>& all) {
      std::vector<float> o;
      for (int64_t i : rows) {
        o.insert(o.end(), all.begin() + i * heads * D, all.begin() + (i + 1) * heads * D);
      }
      return o;
    };
    {
      auto od = Poisoned<float>(n * heads * D);
      ASSERT_EQ(k::FlashPrefill<float>(qd.data(), pd.as<int32_t>(), kd.data(), vd.data(),
                                       pd.as<int32_t>(), s, od.as<float>(), stream()),
                cudaSuccess);
      const auto all = Down<float>(od, n * heads * D);
      for (float x : all) ASSERT_TRUE(std::isfinite(x)) << "a row left unwritten";
      // Probabilities rounded to bf16 before P V: 1e-2.
      EXPECT_LT(RelErr(pick(all), ref), 1e-2) << "float out, window " << window;
    }
    {
      auto od = Poisoned<bf16>(n * heads * D);
      ASSERT_EQ(k::Attention<bf16>(qd.data(), pd.as<int32_t>(), kd.data(), vd.data(),
                                   pd.as<int32_t>(), s, od.as<bf16>(), nullptr, 0, stream()),
                cudaSuccess);
      const auto all = DownBf16(od, n * heads * D);
      for (float x : all) ASSERT_TRUE(std::isfinite(x)) << "a row left unwritten";
      EXPECT_LT(RelErr(pick(all), ref), 1e-2) << "bf16 out, window " << window;
    }
  }
}

// Shapes the flash kernel declines (head_dim 80, an odd row stride, a pointer off 16-byte
// alignment) are reported unsupported, FlashPrefill refuses them, and the dispatcher still
// computes them (generic kernel) for a prefill-sized query count.
TEST_F(KernelsTest, FlashDeclinesUnalignedAndDispatcherFallsBack) {
  const int64_t n = 40, heads = 2, kvh = 1, D = 64;
  const int64_t stride = (heads + 2 * kvh) * D + 1;  // odd: rows 2 bytes off alignment
  std::vector<int32_t> pos(n);
  std::iota(pos.begin(), pos.end(), 100);
  const auto qkv = Bf16Values(Uniform(n * stride + 1, seed_, -2, 2));
  k::AttnShape s = MakeShape(n, n, heads, kvh, D, 0);
  s.q_stride = stride;
  s.kv_stride = stride;
  auto qkvd = Up(ToBf16(qkv)), pd = Up(pos);
  const bf16* base = qkvd.as<bf16>();
  const void *qp = base, *kp = base + heads * D, *vp = base + (heads + kvh) * D;
  EXPECT_FALSE(k::FlashPrefillSupported(s, qp, kp, vp));  // odd stride
  k::AttnShape even = s;
  even.q_stride = even.kv_stride = stride - 1;
  EXPECT_TRUE(k::FlashPrefillSupported(even, qp, kp, vp));
  EXPECT_FALSE(k::FlashPrefillSupported(even, base + 1, kp, vp));  // misaligned pointer
  k::AttnShape d80 = MakeShape(n, n, heads, kvh, 80, 0);
  EXPECT_FALSE(k::FlashPrefillSupported(d80, qp, kp, vp));
  auto od = Poisoned<float>(n * heads * D);
  EXPECT_EQ(k::FlashPrefill<float>(qp, pd.as<int32_t>(), kp, vp, pd.as<int32_t>(), s,
                                   od.as<float>(), stream()),
            cudaErrorInvalidValue);
  ASSERT_EQ(k::Attention<float>(qp, pd.as<int32_t>(), kp, vp, pd.as<int32_t>(), s, od.as<float>(),
                                nullptr, 0, stream()),
            cudaSuccess);
  const std::vector<float> kk(qkv.begin() + heads * D, qkv.end());
  const std::vector<float> vv(qkv.begin() + (heads + kvh) * D, qkv.end());
  // Float accumulation of bf16-exact inputs, float output: 1e-4.
  EXPECT_LT(RelErr(Down<float>(od, n * heads * D), RefAttention(qkv, pos, kk, vv, pos, s)), 1e-4);
}

// The generic kernel as the prefill fallback: head_dim 80 (not a flash size) with 37 queries,
// and head_dim 128 with 5 queries (n < 16), positions in random order, some queries before
// every key (fully masked: zeros, not NaN), a sliding window; float output.
TEST_F(KernelsTest, AttentionGenericPrefillOddHeadDimMaskedRows) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 80}, {5, 128}};  // (n, head_dim)
  for (const auto& [n, D] : shapes) {
    const int64_t m = 90, heads = 6, kvh = 2, window = 17;
    std::vector<int32_t> kp(m), qp(n);
    for (int64_t j = 0; j < m; ++j) kp[j] = static_cast<int32_t>(2 * j + 10);
    std::mt19937 rng(seed_ + n);
    for (auto& p : qp) p = static_cast<int32_t>(rng() % 200) - 10;
    qp[0] = 3;  // before every key
    qp[n - 1] = -10;
    const auto s = MakeShape(n, m, heads, kvh, D, window);
    const auto q = Bf16Values(Uniform(n * heads * D, seed_ + 1, -2, 2));
    const auto kk = Bf16Values(Uniform(m * kvh * D, seed_ + 2, -2, 2));
    const auto v = Bf16Values(Uniform(m * kvh * D, seed_ + 3));
    auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), vd = Up(ToBf16(v)), qpd = Up(qp), kpd = Up(kp);
    const int64_t ws_bytes = k::GenericAttentionWorkspace(s);
    auto ws = Poisoned<char>(ws_bytes);
    auto od = Poisoned<float>(n * heads * D);
    ASSERT_EQ(
        k::Attention<float>(qd.data(), qpd.as<int32_t>(), kd.data(), vd.data(), kpd.as<int32_t>(),
                            s, od.as<float>(), ws.data(), ws_bytes, stream()),
        cudaSuccess);
    const auto out = Down<float>(od, n * heads * D);
    // Float accumulation of bf16-exact inputs, float output: 1e-4.
    EXPECT_LT(RelErr(out, RefAttention(q, qp, kk, v, kp, s)), 1e-4) << "D " << D;
    for (int64_t c = 0; c < heads * D; ++c) {
      ASSERT_EQ(out[c], 0.0f);
      ASSERT_EQ(out[(n - 1) * heads * D + c], 0.0f);
    }
  }
}

// Decode: a few queries over 5000 kv rows (Llama-8B heads), so the kv rows split across blocks
// and the combine kernel merges them; one query sees nothing, one is windowed. The same call
// without a workspace falls back to one split and must agree.
TEST_F(KernelsTest, DecodeSplitKvManyRowsAndFallback) {
  const int64_t m = 5000, heads = 32, kvh = 8, D = 128;
  for (int64_t window : {0, 1500}) {
    std::vector<int32_t> kp(m);
    std::iota(kp.begin(), kp.end(), 0);
    const std::vector<int32_t> qp = {4999, 2000, -1};
    const auto s = MakeShape(3, m, heads, kvh, D, window);
    const auto q = Bf16Values(Uniform(3 * heads * D, seed_, -2, 2));
    const auto kk = Bf16Values(Uniform(m * kvh * D, seed_ + 1, -2, 2));
    const auto v = Bf16Values(Uniform(m * kvh * D, seed_ + 2));
    const auto ref = RefAttention(q, qp, kk, v, kp, s);
    auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), vd = Up(ToBf16(v)), qpd = Up(qp), kpd = Up(kp);
    const int64_t ws_bytes = k::GenericAttentionWorkspace(s);
    ASSERT_GT(ws_bytes, 0);  // this shape splits
    auto ws = Poisoned<char>(ws_bytes);
    for (bool with_ws : {true, false}) {
      auto od = Poisoned<bf16>(3 * heads * D);
      ASSERT_EQ(k::Attention<bf16>(qd.data(), qpd.as<int32_t>(), kd.data(), vd.data(),
                                   kpd.as<int32_t>(), s, od.as<bf16>(),
                                   with_ws ? ws.data() : nullptr, with_ws ? ws_bytes : 0, stream()),
                cudaSuccess);
      const auto out = DownBf16(od, 3 * heads * D);
      EXPECT_LT(RelErr(out, ref), 8e-3) << "window " << window << " ws " << with_ws;  // bf16 out
      for (int64_t c = 0; c < heads * D; ++c) ASSERT_EQ(out[2 * heads * D + c], 0.0f);
    }
  }
}

// No kv rows at all: every query gets zeros (both entry points).
TEST_F(KernelsTest, AttentionNoKvRowsGivesZeros) {
  const int64_t n = 20, heads = 2, D = 64;
  const auto s = MakeShape(n, 0, heads, 1, D, 0);
  const std::vector<int32_t> qp(n, 7);
  auto qd = Up(ToBf16(Uniform(n * heads * D, seed_))), qpd = Up(qp);
  auto kd = Up(std::vector<bf16>(D)), vd = Up(std::vector<bf16>(D));
  auto kpd = Up(std::vector<int32_t>(1, 0));
  for (bool flash : {true, false}) {
    auto od = Poisoned<float>(n * heads * D);
    const cudaError_t e =
        flash ? k::FlashPrefill<float>(qd.data(), qpd.as<int32_t>(), kd.data(), vd.data(),
                                       kpd.as<int32_t>(), s, od.as<float>(), stream())
              : k::GenericAttention<bf16, float>(qd.as<bf16>(), qpd.as<int32_t>(), kd.as<bf16>(),
                                                 vd.as<bf16>(), kpd.as<int32_t>(), s,
                                                 od.as<float>(), nullptr, 0, stream());
    ASSERT_EQ(e, cudaSuccess);
    for (float x : Down<float>(od, n * heads * D)) ASSERT_EQ(x, 0.0f) << "flash " << flash;
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
  EXPECT_LT(RelErr(Down<float>(mass, m), RefAttentionMass(q, qp, kk, kp, s)), 1e-4);  // float

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

// Attention mass on bf16 inputs with head_dim 128 (the score pass's shared memory exceeds the
// 48 KB default), more (query, head) pairs per kv group than one block takes, a sliding
// window, and a query that sees nothing (it contributes no mass).
TEST_F(KernelsTest, AttentionMassBf16WindowMaskedQuery) {
  const int64_t w = 10, m = 300, heads = 8, kvh = 2, D = 128, window = 120;
  std::vector<int32_t> kp(m), qp(w);
  std::iota(kp.begin(), kp.end(), 0);
  for (int64_t i = 0; i < w; ++i) qp[i] = static_cast<int32_t>(m - w + i);
  qp[3] = -5;  // before every key
  const auto s = MakeShape(w, m, heads, kvh, D, window);
  const auto q = Bf16Values(Uniform(w * heads * D, seed_, -1, 1));
  const auto kk = Bf16Values(Uniform(m * kvh * D, seed_ + 1, -1, 1));
  auto qd = Up(ToBf16(q)), kd = Up(ToBf16(kk)), qpd = Up(qp), kpd = Up(kp);
  auto mass = Poisoned<float>(m);
  auto ws = Poisoned<float>(k::AttentionMassWorkspace(s));
  ASSERT_EQ(
      k::AttentionMass<bf16>(qd.as<bf16>(), qpd.as<int32_t>(), kd.as<bf16>(), kpd.as<int32_t>(), s,
                             mass.as<float>(), ws.as<float>(), stream()),
      cudaSuccess);
  const auto got = Down<float>(mass, m);
  // float accumulation of bf16-exact inputs
  EXPECT_LT(RelErr(got, RefAttentionMass(q, qp, kk, kp, s)), 1e-4);
  for (int64_t j = 0; j < m - w - window + 1; ++j) ASSERT_EQ(got[j], 0.0f) << j;  // out of window
}

// Empty batches through the attention entry points: zero query rows launch nothing (a grid of
// 0 blocks is cudaErrorInvalidConfiguration) and write nothing; attention mass over zero
// queries is zeros, over zero kv rows a no-op.
TEST_F(KernelsTest, AttentionEmptyBatchesLaunchNothing) {
  const int64_t heads = 4, kvh = 2, D = 64;
  auto qd = Up(ToBf16(Uniform(heads * D, seed_))), kd = Up(ToBf16(Uniform(8 * kvh * D, seed_)));
  auto pd = Up(std::vector<int32_t>(8, 0));
  auto od = Poisoned<float>(heads * D);
  auto ws = Poisoned<char>(1024);
  cudaStream_t st = stream();
  (void)cudaGetLastError();  // start clean: only an error left by the calls below counts
  const auto s = MakeShape(0, 8, heads, kvh, D, 0);
  ASSERT_TRUE(k::FlashPrefillSupported(s, qd.data(), kd.data(), kd.data()));
  EXPECT_EQ(k::FlashPrefill<float>(qd.data(), pd.as<int32_t>(), kd.data(), kd.data(),
                                   pd.as<int32_t>(), s, od.as<float>(), st),
            cudaSuccess);
  EXPECT_EQ(k::Attention<float>(qd.data(), pd.as<int32_t>(), kd.data(), kd.data(), pd.as<int32_t>(),
                                s, od.as<float>(), ws.data(), 1024, st),
            cudaSuccess);
  EXPECT_EQ((k::GenericAttention<bf16, float>(qd.as<bf16>(), pd.as<int32_t>(), kd.as<bf16>(),
                                              kd.as<bf16>(), pd.as<int32_t>(), s, od.as<float>(),
                                              ws.data(), 1024, st)),
            cudaSuccess);
  k::PagedAttnShape ps;
  ps.n = 0;
  ps.n_seqs = 1;
  ps.max_rows = 8;
  ps.n_heads = heads;
  ps.n_kv_heads = kvh;
  ps.head_dim = D;
  ps.block_size = 16;
  ps.q_stride = ps.out_stride = heads * D;
  ps.kv_stride = kvh * D;
  EXPECT_EQ(
      k::PagedAttention<float>(qd.data(), pd.as<int32_t>(), pd.as<int32_t>(), kd.data(), kd.data(),
                               pd.as<int32_t>(), pd.as<int32_t>(), pd.as<int32_t>(),
                               pd.as<int32_t>(), ps, od.as<float>(), ws.data(), 1024, st),
      cudaSuccess);
  EXPECT_EQ(k::ScatterInt32(pd.as<int32_t>(), pd.as<int32_t>(), 0, pd.as<int32_t>(), st),
            cudaSuccess);
  auto mass = Poisoned<float>(8);
  EXPECT_EQ(k::AttentionMass<bf16>(qd.as<bf16>(), pd.as<int32_t>(), kd.as<bf16>(), pd.as<int32_t>(),
                                   MakeShape(1, 0, heads, kvh, D, 0), mass.as<float>(),
                                   ws.as<float>(), st),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(st), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_TRUE(AllNan(Down<float>(od, heads * D)));
  EXPECT_TRUE(AllNan(Down<float>(mass, 8)));  // no kv rows: nothing to write
  EXPECT_EQ(k::AttentionMass<bf16>(qd.as<bf16>(), pd.as<int32_t>(), kd.as<bf16>(), pd.as<int32_t>(),
                                   MakeShape(0, 8, heads, kvh, D, 0), mass.as<float>(),
                                   ws.as<float>(), st),
            cudaSuccess);
  for (float x : Down<float>(mass, 8)) EXPECT_EQ(x, 0.0f);  // no queries: no mass
}

// A paged KV pool past 2^31 elements per layer array (the 8B shape's kv_stride 1024 and 131,136
// pages of 16 rows: 2.15e9 bf16 elements, 4.3 GB each for K and V; a pool sized from ~100 GB of
// free memory spans about as many per layer), one sequence's pages all beyond element 2^31 and
// shuffled, one in the first pages. The batched forward's writes (K by ScatterRows, V by the
// RoPE kernel's row scatter with rope_dim 0, positions by ScatterInt32), PagedAttention with
// split KV over the 600-row sequence, and GatherRows back out (BatchForward::ToHost) all form
// slot * kv_stride in 64 bits; a 32-bit product would wrap to a negative offset (an illegal
// address) or another row. Float output against float64 on the bf16 values: 1e-4 (as
// cuda_batch_test's paged kernel bound); the copies are exact. Named *Long* (long offsets) so
// that scripts/gpu-check's compute-sanitizer runs, which leave out *Long*, skip its 8.6 GB.
TEST_F(KernelsTest, PagedPoolLongOffsetsPast2GiElements) {
  constexpr int64_t kB = 16, heads = 32, kvh = 8, D = 128, kv_stride = kvh * D;
  const int64_t low_pages = int64_t{1} << 31 >> 4 >> 10;  // pages below element 2^31: 131072
  const int64_t pages = low_pages + 64;
  const int64_t half_bytes = pages * kB * kv_stride * 2;
  size_t free_b = 0, total_b = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
  if (static_cast<int64_t>(free_b) < 2 * half_bytes + (int64_t{2} << 30)) {
    GTEST_SKIP() << "needs ~11 GB of free device memory, " << free_b << " bytes free";
  }
  auto k_pool = ctx_->pool().Allocate(half_bytes);
  ASSERT_TRUE(k_pool.ok()) << k_pool.status();
  auto v_pool = ctx_->pool().Allocate(half_bytes);
  ASSERT_TRUE(v_pool.ok()) << v_pool.status();
  auto p_pool = ctx_->pool().Allocate(pages * kB * 4);
  ASSERT_TRUE(p_pool.ok()) << p_pool.status();

  // Sequence 0: 600 rows on 38 of the top 64 pages (shuffled); sequence 1: 40 rows on pages
  // 2, 0, 1.
  const std::vector<int64_t> rows = {600, 40};
  std::mt19937_64 rng(seed_);
  std::vector<int32_t> top(64);
  std::iota(top.begin(), top.end(), static_cast<int32_t>(low_pages));
  std::shuffle(top.begin(), top.end(), rng);
  std::vector<int32_t> tables(top.begin(), top.begin() + 38);
  const std::vector<int32_t> toff = {0, 38};
  for (int32_t b : {2, 0, 1}) tables.push_back(b);
  std::vector<int32_t> slots, kpos;  // per written row (sequence 0's rows, then sequence 1's)
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t j = 0; j < rows[s]; ++j) {
      slots.push_back(tables[toff[s] + j / kB] * static_cast<int32_t>(kB) +
                      static_cast<int32_t>(j % kB));
      kpos.push_back(static_cast<int32_t>(j));
    }
  }
  ASSERT_GE(static_cast<int64_t>(slots[0]) * kv_stride, int64_t{1} << 31);
  const int64_t R = static_cast<int64_t>(slots.size());
  const std::vector<float> kf = Bf16Values(Uniform(R * kv_stride, rng(), -2, 2));
  const std::vector<float> vf = Bf16Values(Uniform(R * kv_stride, rng()));
  std::vector<float> inv(D / 2, 1.0f);  // unused: rope_dim 0 copies
  auto kin = Up(ToBf16(kf)), vin = Up(ToBf16(vf)), sd = Up(slots), pd = Up(kpos), fd = Up(inv);
  cudaStream_t st = stream();
  bf16* kp = k_pool->as<bf16>();
  bf16* vp = v_pool->as<bf16>();
  int32_t* pp = p_pool->as<int32_t>();
  ASSERT_EQ(k::ScatterRows<bf16>(kin.as<bf16>(), kv_stride, sd.as<int32_t>(), R, kp, st),
            cudaSuccess);
  k::RopeArgs copy;
  copy.heads = kvh;
  copy.head_dim = D;
  copy.rope_dim = 0;
  copy.inv_freq = fd.as<float>();
  ASSERT_EQ((k::Rope<bf16, bf16>(vin.as<bf16>(), kv_stride, pd.as<int32_t>(), R, copy, vp,
                                 kv_stride, sd.as<int32_t>(), st)),
            cudaSuccess);
  ASSERT_EQ(k::ScatterInt32(pd.as<int32_t>(), sd.as<int32_t>(), R, pp, st), cudaSuccess);

  // Queries: sequence 0's last 4 rows (a chunk) and sequence 1's last row (a decode step).
  std::vector<int32_t> q_seq = {0, 0, 0, 0, 1}, q_pos = {596, 597, 598, 599, 39};
  const int64_t n = static_cast<int64_t>(q_seq.size());
  const std::vector<float> qf = Bf16Values(Uniform(n * heads * D, rng(), -2, 2));
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<double> ref(n * heads * D, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = q_seq[i], r0 = s == 0 ? 0 : rows[0];
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kvh);
      std::vector<double> sc;
      for (int64_t j = 0; j <= q_pos[i]; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) {
          dot += double(qf[(i * heads + h) * D + d]) * kf[(r0 + j) * kv_stride + g * D + d];
        }
        sc.push_back(dot * scale);
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (double& x : sc) sum += x = std::exp(x - mx);
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (size_t j = 0; j < sc.size(); ++j) o += sc[j] * vf[(r0 + j) * kv_stride + g * D + d];
        ref[(i * heads + h) * D + d] = o / sum;
      }
    }
  }
  k::PagedAttnShape sh;
  sh.n = n;
  sh.n_seqs = 2;
  sh.max_rows = rows[0];
  sh.n_heads = heads;
  sh.n_kv_heads = kvh;
  sh.head_dim = D;
  sh.block_size = kB;
  sh.q_stride = sh.out_stride = heads * D;
  sh.kv_stride = kv_stride;
  sh.scale = scale;
  const int64_t ws_bytes = k::PagedAttentionWorkspace(sh);
  EXPECT_GT(ws_bytes, 0) << "the 600-row sequence should split the KV";
  auto ws = Poisoned<char>(std::max<int64_t>(ws_bytes, 1));
  auto qd = Up(ToBf16(qf)), qsd = Up(q_seq), qpd = Up(q_pos), td = Up(tables), od = Up(toff);
  auto srd = Up(std::vector<int32_t>{static_cast<int32_t>(rows[0]), static_cast<int32_t>(rows[1])});
  auto out = Poisoned<float>(n * heads * D);
  ASSERT_EQ(k::PagedAttention<float>(qd.data(), qpd.as<int32_t>(), qsd.as<int32_t>(), kp, vp, pp,
                                     td.as<int32_t>(), od.as<int32_t>(), srd.as<int32_t>(), sh,
                                     out.as<float>(), ws.data(), ws_bytes, st),
            cudaSuccess);
  EXPECT_LT(RelErr(Down<float>(out, n * heads * D), ref), 1e-4);

  // Every written row read back exactly, K and V.
  auto kback = Poisoned<bf16>(R * kv_stride), vback = Poisoned<bf16>(R * kv_stride);
  ASSERT_EQ(k::GatherRows<bf16>(kp, kv_stride, sd.as<int32_t>(), R, kback.as<bf16>(), st),
            cudaSuccess);
  ASSERT_EQ(k::GatherRows<bf16>(vp, kv_stride, sd.as<int32_t>(), R, vback.as<bf16>(), st),
            cudaSuccess);
  EXPECT_TRUE(DownBf16(kback, R * kv_stride) == kf);
  EXPECT_TRUE(DownBf16(vback, R * kv_stride) == vf);
}

// A window <= 0 is "no window" (engine/backend.h: the window applies when window > 0) in every
// attention kernel: the paged kernel once treated only 0 so, and a negative window (a model
// config the GGUF loader does not reject) hid every row from every query. The same inputs with
// window -3 and 0 must give the same bits (flash, generic and paged), and not zeros.
TEST_F(KernelsTest, NegativeWindowMeansUnlimited) {
  constexpr int64_t kB = 16;
  const int64_t rows = 40, n = 20, heads = 4, kvh = 2, D = 64;
  const std::vector<int32_t> table = {1, 2, 0};
  std::vector<int32_t> kpos(rows), pos_pages(table.size() * kB, -1), slot(rows);
  for (int64_t j = 0; j < rows; ++j) {
    kpos[j] = static_cast<int32_t>(j);
    slot[j] = table[j / kB] * static_cast<int32_t>(kB) + static_cast<int32_t>(j % kB);
    pos_pages[slot[j]] = kpos[j];
  }
  const auto kf = Bf16Values(Uniform(table.size() * kB * kvh * D, seed_, -2, 2));
  const auto vf = Bf16Values(Uniform(table.size() * kB * kvh * D, seed_ + 1));
  // The same rows contiguous in row order, for the flash and generic kernels.
  std::vector<float> kc(rows * kvh * D), vc(rows * kvh * D);
  for (int64_t j = 0; j < rows; ++j) {
    std::copy_n(kf.begin() + slot[j] * kvh * D, kvh * D, kc.begin() + j * kvh * D);
    std::copy_n(vf.begin() + slot[j] * kvh * D, kvh * D, vc.begin() + j * kvh * D);
  }
  const std::vector<int32_t> qp(kpos.end() - n, kpos.end()), q_seq(n, 0);
  const auto qf = Bf16Values(Uniform(n * heads * D, seed_ + 2, -2, 2));
  auto qd = Up(ToBf16(qf)), qpd = Up(qp), qsd = Up(q_seq);
  auto kpd = Up(ToBf16(kf)), vpd = Up(ToBf16(vf)), ppd = Up(pos_pages), td = Up(table);
  auto toff = Up(std::vector<int32_t>{0}), srows = Up(std::vector<int32_t>{int32_t{rows}});
  auto kcd = Up(ToBf16(kc)), vcd = Up(ToBf16(vc)), kposd = Up(kpos);
  // kernel 0: flash, 1: generic, 2: paged.
  auto run = [&](int kernel, int64_t window) {
    auto od = Poisoned<float>(n * heads * D);
    cudaError_t e;
    if (kernel < 2) {
      const auto s = MakeShape(n, rows, heads, kvh, D, window);
      e = kernel == 0 ? k::FlashPrefill<float>(qd.data(), qpd.as<int32_t>(), kcd.data(), vcd.data(),
                                               kposd.as<int32_t>(), s, od.as<float>(), stream())
                      : k::GenericAttention<bf16, float>(
                            qd.as<bf16>(), qpd.as<int32_t>(), kcd.as<bf16>(), vcd.as<bf16>(),
                            kposd.as<int32_t>(), s, od.as<float>(), nullptr, 0, stream());
    } else {
      k::PagedAttnShape sh;
      sh.n = n;
      sh.n_seqs = 1;
      sh.max_rows = rows;
      sh.n_heads = heads;
      sh.n_kv_heads = kvh;
      sh.head_dim = D;
      sh.block_size = kB;
      sh.q_stride = sh.out_stride = heads * D;
      sh.kv_stride = kvh * D;
      sh.scale = 1.0f / std::sqrt(static_cast<float>(D));
      sh.window = window;
      e = k::PagedAttention<float>(qd.data(), qpd.as<int32_t>(), qsd.as<int32_t>(), kpd.data(),
                                   vpd.data(), ppd.as<int32_t>(), td.as<int32_t>(),
                                   toff.as<int32_t>(), srows.as<int32_t>(), sh, od.as<float>(),
                                   nullptr, 0, stream());
    }
    EXPECT_EQ(e, cudaSuccess) << "kernel " << kernel << " window " << window;
    return Down<float>(od, n * heads * D);
  };
  const auto ref = RefAttention(qf, qp, kc, vc, kpos, MakeShape(n, rows, heads, kvh, D, 0));
  for (int kernel : {0, 1, 2}) {
    const auto full = run(kernel, 0);
    EXPECT_LT(RelErr(full, ref), 1e-2) << "kernel " << kernel;  // flash: P in bf16
    EXPECT_TRUE(run(kernel, -3) == full) << "kernel " << kernel << ": window -3 is not unlimited";
  }
}

}  // namespace
}  // namespace semshare::testing
