// The device token matcher (kernels/match.cuh, engine/cuda/device_matcher.h) against the CPU
// TokenMatcher's rules. Fresh random inputs every run (seed printed), outputs poisoned first.
// Bounds: E-cache rows 1e-5 relative to a float64 reference (float rotation output and float
// sum of squares: a few float ulps, ~1e-7); code packing and the candidate/best kernel exact
// (integer keys; the cosine is copied, not computed). End to end, the device sums the GEMMs in
// another order than OpenBLAS (cosines differ by ~1e-7), so a projection within rounding of 0
// may flip a code bit and near-equal cosines may swap: ref_index must agree on >= 99% of tokens,
// cosines to 1e-4 where it agrees, similarity to 1e-3, matched counts to 1%.
#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>

#include "engine/cuda/device_matcher.h"
#include "engine/reuse/token_matcher.h"
#include "kernels/match.cuh"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"

namespace semshare::testing {
namespace {

namespace k = ::semshare::kernels;
using engine::cuda::DeviceMatcher;
using engine::cuda::DeviceSketch;

class MatcherTest : public CudaTest {};

// TokenMatcher's E-cache frequencies: base^(-2k/dim) in double, rounded to float.
std::vector<float> InvFreq(int64_t dim, double base) {
  std::vector<float> f(static_cast<size_t>(dim / 2));
  for (int64_t k = 0; k < dim / 2; ++k) {
    f[k] = static_cast<float>(std::pow(base, -2.0 * k / static_cast<double>(dim)));
  }
  return f;
}

TEST_F(MatcherTest, EcacheRowsMatchFloat64Reference) {
  const int64_t vocab = 300, n = 1100;  // positions up to 1099: angles of ~1000 rad
  for (const int64_t dim : {int64_t{577}, int64_t{4096}}) {
    const auto table = Bf16Values(Uniform(vocab * dim, seed_ + dim, -1.0f, 1.0f));
    auto table_d = Up(ToBf16(table));
    auto ids = RandomIds(n, vocab, seed_ + 1);
    ids[3] = -1;  // out of range: zero rows
    ids[10] = static_cast<int32_t>(vocab);
    ids[n - 1] = INT_MAX;
    auto ids_d = Up(ids);
    for (const double base : {0.0, 1e4, 1e16}) {  // 0: rope off
      const bool rope = base > 0.0;
      const auto inv_freq = rope ? InvFreq(dim, base) : std::vector<float>();
      auto if_d = Up(inv_freq);
      auto out_d = Poisoned<float>(n * dim);
      ASSERT_EQ(k::EcacheRows(table_d.data(), vocab, dim, ids_d.as<int32_t>(), n,
                              rope ? if_d.as<float>() : nullptr, out_d.as<float>(), stream()),
                cudaSuccess);
      const auto out = Down<float>(out_d, n * dim);
      double worst = 0;
      int64_t worst_row = -1;
      for (int64_t i = 0; i < n; ++i) {
        const float* o = out.data() + i * dim;
        if (ids[i] < 0 || ids[i] >= vocab) {
          for (int64_t c = 0; c < dim; ++c) ASSERT_EQ(o[c], 0.0f) << "row " << i << " col " << c;
          continue;
        }
        std::vector<double> ref(table.begin() + ids[i] * dim, table.begin() + (ids[i] + 1) * dim);
        if (rope) {
          for (int64_t q = 0; q < dim / 2; ++q) {
            const double a = static_cast<double>(i) * static_cast<double>(inv_freq[q]);
            const double x0 = ref[2 * q], x1 = ref[2 * q + 1];
            ref[2 * q] = x0 * std::cos(a) - x1 * std::sin(a);
            ref[2 * q + 1] = x0 * std::sin(a) + x1 * std::cos(a);
          }
        }
        double norm = 0;
        for (double x : ref) norm += x * x;
        norm = std::sqrt(norm);
        double num = 0;
        for (int64_t c = 0; c < dim; ++c) {
          const double d = static_cast<double>(o[c]) - ref[c] / norm;
          num += std::isfinite(o[c]) ? d * d : std::numeric_limits<double>::infinity();
        }
        const double err = std::sqrt(num);  // the reference row has norm 1
        if (!(err <= worst)) {
          worst = err;
          worst_row = i;
        }
      }
      EXPECT_LT(worst, 1e-5) << "dim " << dim << " base " << base << " worst row " << worst_row;
    }
  }
}

TEST_F(MatcherTest, PackCodesExact) {
  const int64_t n = 333;
  const int bands = 7;
  for (const int bits : {0, 1, 13, 32}) {
    // Magnitudes in [0.25, 1] with random signs: no value near 0.
    auto proj = Uniform(std::max<int64_t>(n * bands * bits, 1), seed_ + bits, 0.25f, 1.0f);
    std::mt19937_64 rng(seed_ + 100 + bits);
    for (float& x : proj) x = rng() % 2 ? -x : x;
    auto proj_d = Up(proj);
    auto codes_d = Poisoned<uint32_t>(n * bands);
    ASSERT_EQ(k::PackCodes(bits > 0 ? proj_d.as<float>() : nullptr, n, bands, bits,
                           codes_d.as<uint32_t>(), stream()),
              cudaSuccess);
    const auto codes = Down<uint32_t>(codes_d, n * bands);
    int64_t ones = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int b = 0; b < bands; ++b) {
        uint32_t key = 0;
        for (int j = 0; j < bits; ++j) {
          key |= static_cast<uint32_t>(proj[(i * bands + b) * bits + j] > 0.0f) << j;
        }
        ASSERT_EQ(codes[i * bands + b], key) << "bits " << bits << " row " << i << " band " << b;
        ones += __builtin_popcount(key);
      }
    }
    if (bits > 0) {
      EXPECT_GT(ones, n * bands * bits / 4);  // both signs present
    }
  }
}

struct RefStats {
  int64_t capped = 0;       // rows whose candidate count exceeded the cap
  int64_t unmatched = 0;    // rows with ref_index -1
  int64_t cosine_ties = 0;  // rows whose best cosine occurs more than once among the kept
};

// TokenMatcher::Match's candidate rule, written as the CPU writes it.
void RefMatch(const std::vector<uint32_t>& tc, const std::vector<uint32_t>& rc,
              const std::vector<float>& cos, int64_t ld, int64_t n, int64_t m, int bands,
              int64_t max_candidates, std::vector<int32_t>& ref, std::vector<float>& cs,
              RefStats& stats) {
  ref.assign(n, -1);
  cs.assign(n, 0.0f);
  std::vector<int> hits(m);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> cand;
    for (int64_t r = 0; r < m; ++r) {
      hits[r] = 0;
      for (int b = 0; b < bands; ++b) hits[r] += tc[i * bands + b] == rc[r * bands + b];
      if (hits[r] > 0) cand.push_back(static_cast<int32_t>(r));
    }
    std::shuffle(cand.begin(), cand.end(), std::mt19937_64(i));  // the CPU's order is by bucket
    const size_t cap = max_candidates > 0 ? static_cast<size_t>(max_candidates) : cand.size();
    if (cand.size() > cap) {
      std::nth_element(cand.begin(), cand.begin() + cap, cand.end(), [&](int32_t a, int32_t b) {
        return hits[a] != hits[b] ? hits[a] > hits[b] : a < b;
      });
      cand.resize(cap);
      ++stats.capped;
    }
    float best = 0.0f;
    int32_t best_r = -1;
    for (int32_t r : cand) {
      const float c = cos[i * ld + r];
      if (c > best || (c == best && best_r >= 0 && r < best_r)) {
        best = c;
        best_r = r;
      }
    }
    if (best_r >= 0) {
      ref[i] = best_r;
      cs[i] = std::min(best, 1.0f);
      int same = 0;
      for (int32_t r : cand) same += cos[i * ld + r] == best;
      if (same > 1) ++stats.cosine_ties;
    } else {
      ++stats.unmatched;
    }
  }
}

TEST_F(MatcherTest, CandidatesAndBestMatchHostRule) {
  struct Case {
    int64_t n, m, pad;
    int bands;
    uint32_t alphabet;  // keys drawn from [0, alphabet): small alphabets give many equal hits
  };
  // m > blockDim (256); m = 33001 > 32 KiB exercises the uncached-hits path; 64 bands is
  // ReuseConfig's maximum.
  const Case cases[] = {
      {61, 1000, 3, 16, 4}, {9, 33001, 0, 8, 3}, {33, 7, 1, 3, 2}, {17, 700, 5, 64, 2}};
  // Cosines from a few levels, so that the best is often tied; 1 + ulp checks the clamp.
  const float levels[] = {-0.5f, 0.0f, 0.25f, 0.5f, 0.5f, 0.75f, 1.0f, std::nextafter(1.0f, 2.0f)};
  RefStats total;
  int64_t cap_changed = 0, matched = 0;
  for (const Case& cs : cases) {
    const int64_t ld = cs.m + cs.pad;
    std::mt19937_64 rng(seed_ + cs.m);
    std::vector<uint32_t> tc(cs.n * cs.bands), rc(cs.m * cs.bands);
    for (auto& x : rc) x = static_cast<uint32_t>(rng() % cs.alphabet);
    for (int64_t i = 0; i < cs.n; ++i) {
      for (int b = 0; b < cs.bands; ++b) {
        // Every 7th row hits nothing (a key outside the alphabet): no candidate.
        tc[i * cs.bands + b] =
            i % 7 == 3 ? cs.alphabet + 5 : static_cast<uint32_t>(rng() % cs.alphabet);
      }
    }
    std::vector<float> cos(cs.n * ld, 2.0f);  // padding 2.0: reading it would win
    for (int64_t i = 0; i < cs.n; ++i) {
      for (int64_t r = 0; r < cs.m; ++r) {
        // Every 7th row (offset 5) has only cosines <= 0: candidates but no match.
        cos[i * ld + r] = i % 7 == 5 ? levels[rng() % 2] : levels[rng() % 8];
      }
    }
    auto tc_d = Up(tc), rc_d = Up(rc), cos_d = Up(cos);
    std::vector<int32_t> uncapped_ref;
    for (const int64_t cap : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{32}, int64_t{100000}}) {
      std::vector<int32_t> want_ref;
      std::vector<float> want_cos;
      RefMatch(tc, rc, cos, ld, cs.n, cs.m, cs.bands, cap, want_ref, want_cos, total);
      auto ref_d = Up(std::vector<int32_t>(cs.n, 0x7f7f7f7f));  // poison: not a valid index
      auto out_d = Poisoned<float>(cs.n);
      ASSERT_EQ(
          k::MatchCandidates(tc_d.as<uint32_t>(), rc_d.as<uint32_t>(), cos_d.as<float>(), ld, cs.n,
                             cs.m, cs.bands, cap, ref_d.as<int32_t>(), out_d.as<float>(), stream()),
          cudaSuccess);
      const auto got_ref = Down<int32_t>(ref_d, cs.n);
      const auto got_cos = Down<float>(out_d, cs.n);
      for (int64_t i = 0; i < cs.n; ++i) {
        ASSERT_EQ(got_ref[i], want_ref[i]) << "m " << cs.m << " cap " << cap << " row " << i;
        ASSERT_EQ(got_cos[i], want_cos[i]) << "m " << cs.m << " cap " << cap << " row " << i;
        matched += want_ref[i] >= 0;
      }
      if (cap == 0) uncapped_ref = want_ref;
      for (int64_t i = 0; i < cs.n; ++i) cap_changed += want_ref[i] != uncapped_ref[i];
    }
  }
  // The cases exercise what they claim: binding caps that change the answer, tied cosines,
  // rows without a match and rows with one.
  EXPECT_GT(total.capped, 0);
  EXPECT_GT(cap_changed, 0);
  EXPECT_GT(total.cosine_ties, 0);
  EXPECT_GT(total.unmatched, 0);
  EXPECT_GT(matched, 0);
}

TEST_F(MatcherTest, DeviceMatcherAgreesWithTokenMatcher) {
  struct Case {
    int64_t dim, ref_tokens;
  };
  // 9000 reference tokens: the cosine GEMM runs in two row chunks (kMaxCosineElements / m).
  for (const Case cs : {Case{256, 700}, Case{4096, 700}, Case{256, 9000}}) {
    const int64_t vocab = 5000, dim = cs.dim;
    engine::Matrix embd;
    embd.rows = vocab;
    embd.cols = dim;
    embd.data = Bf16Values(Uniform(vocab * dim, seed_ + dim, -1.0f, 1.0f));
    auto embd_d = Up(ToBf16(embd.data));
    const engine::ReuseConfig config;  // defaults: rope base 1e16, 16 bands x 8 bits, cap 32
    const engine::TokenMatcher cpu(embd, config);
    auto dm = DeviceMatcher::Create(*ctx_, embd_d.data(), vocab, dim, config);
    ASSERT_TRUE(dm.ok()) << dm.status();
    const auto ref_ids = RandomIds(cs.ref_tokens, vocab, seed_ + 1);
    const auto tgt_ids = EditedIds(ref_ids, vocab, seed_ + 2);
    const engine::TokenSketch cr = cpu.Sketch(ref_ids), ct = cpu.Sketch(tgt_ids);
    auto gr = (*dm)->Sketch(ref_ids);
    ASSERT_TRUE(gr.ok()) << gr.status();
    auto gt = (*dm)->Sketch(tgt_ids);
    ASSERT_TRUE(gt.ok()) << gt.status();
    // The sketches themselves: E-cache to float rounding, codes up to near-zero projections.
    const int64_t n = ct.n, bands = config.lsh_bands;
    EXPECT_LT(RelErr(Down<float>(gt->ecache, n * dim), ct.ecache), 1e-5) << "dim " << dim;
    const auto codes = Down<uint32_t>(gt->codes, n * bands);
    int64_t same_codes = 0;
    for (int64_t q = 0; q < n * bands; ++q) same_codes += codes[q] == ct.codes[q];
    EXPECT_GE(same_codes, 0.99 * n * bands) << "dim " << dim;

    const engine::TokenMatch want = cpu.Match(ct, cr);
    auto got = (*dm)->Match(*gt, *gr);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->ref_index.size(), want.ref_index.size());
    ASSERT_EQ(got->cosine.size(), want.cosine.size());
    int64_t same = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (got->ref_index[i] != want.ref_index[i]) continue;
      ++same;
      worst = std::max(worst, std::abs(static_cast<double>(got->cosine[i]) - want.cosine[i]));
    }
    EXPECT_GE(same, 0.99 * n) << "dim " << dim << " m " << cs.ref_tokens;
    EXPECT_LT(worst, 1e-4) << "dim " << dim;
    EXPECT_NEAR(got->similarity, want.similarity, 1e-3) << "dim " << dim;
    EXPECT_LE(std::abs(got->matched - want.matched), 0.01 * std::max<int64_t>(want.matched, 1))
        << "dim " << dim;
    // Non-trivial: the edit leaves most tokens matched, and some unmatched or moved.
    EXPECT_GT(want.matched, n / 2);
    EXPECT_GT(want.similarity, 0.5f);
    EXPECT_LT(want.similarity, 1.0f);
    std::printf(
        "dim %lld m %lld: ref_index equal %lld/%lld, matched %lld vs %lld, similarity "
        "%.6f vs %.6f\n",
        static_cast<long long>(dim), static_cast<long long>(cs.ref_tokens),
        static_cast<long long>(same), static_cast<long long>(n),
        static_cast<long long>(got->matched), static_cast<long long>(want.matched), got->similarity,
        want.similarity);
  }
}

TEST_F(MatcherTest, EmptyPromptsAndNoBandsAreUnmatched) {
  const int64_t vocab = 50, dim = 64;
  engine::Matrix embd;
  embd.rows = vocab;
  embd.cols = dim;
  embd.data = Bf16Values(Uniform(vocab * dim, seed_, -1.0f, 1.0f));
  auto embd_d = Up(ToBf16(embd.data));
  const auto ids = RandomIds(40, vocab, seed_ + 1);
  for (const int bands : {16, 0}) {
    engine::ReuseConfig config;
    config.lsh_bands = bands;
    auto dm = DeviceMatcher::Create(*ctx_, embd_d.data(), vocab, dim, config);
    ASSERT_TRUE(dm.ok()) << dm.status();
    auto full = (*dm)->Sketch(ids);
    ASSERT_TRUE(full.ok()) << full.status();
    auto empty = (*dm)->Sketch({});
    ASSERT_TRUE(empty.ok()) << empty.status();
    EXPECT_EQ(empty->n, 0);
    // Against itself every token matches unless there are no bands.
    auto self = (*dm)->Match(*full, *full);
    ASSERT_TRUE(self.ok()) << self.status();
    EXPECT_EQ(self->matched, bands > 0 ? 40 : 0);
    auto none = (*dm)->Match(*full, *empty);
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_EQ(none->ref_index, std::vector<int32_t>(40, -1));
    EXPECT_EQ(none->cosine, std::vector<float>(40, 0.0f));
    EXPECT_EQ(none->matched, 0);
    EXPECT_EQ(none->similarity, 0.0f);
    auto nothing = (*dm)->Match(*empty, *full);
    ASSERT_TRUE(nothing.ok()) << nothing.status();
    EXPECT_TRUE(nothing->ref_index.empty());
  }
  engine::ReuseConfig too_many;
  too_many.lsh_bands = k::kMatchMaxBands + 1;
  EXPECT_FALSE(DeviceMatcher::Create(*ctx_, embd_d.data(), vocab, dim, too_many).ok());
}

}  // namespace
}  // namespace semshare::testing
