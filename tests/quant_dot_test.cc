// Quantized matmul kernels (engine/cpu/quant_dot.h, quant_matmul.h) against float64 references
// built from the exact dequantisation (engine/model/dequant.h), for every block type and every
// ISA this CPU runs. Weight blocks are random bytes with sane scales: any such pattern is a
// valid block, and random codes reach every nibble and bit layout.
//
// Bounds (u = 2^-24, float32's unit roundoff; a sum of M float terms in any order is within
// M * u * sum|terms| of the exact sum, each product adding one u):
//  - reference vs exact: the reference adds at most 2k/16 terms, each a product of two rounded
//    factors, so |ref - exact| <= (k + 4) u (abs_sum + sum|w_j a_j|); the second sum covers the
//    one rounding in dequantised Q4_1/Q5_1/K-quant weights (d * q + m).
//  - SIMD vs reference: the same terms summed in another order: 2 k u abs_sum.
//  - activation quantization: |x_j - d_b q_j| <= d_b / 2 (round to nearest) so
//    |dot - sum w_j x_j| <= sum_b d_b / 2 * sum_{j in b} |w_j| plus the rounding above.
#include "engine/cpu/quant_dot.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/quant_matmul.h"
#include "engine/cpu/tile_matmul.h"
#include "engine/model/dequant.h"
#include "gtest/gtest.h"
#include "tests/random_blocks.h"

namespace semshare::engine {
namespace {

using testing::RandomBlocks;

constexpr double kU = 0x1p-24;

const GgmlType kIntTypes[] = {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                              GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

std::string Name(GgmlType t) {
  return std::string(GetGgmlTypeTraits(static_cast<uint32_t>(t))->name);
}

// Activations like a normed hidden state: mostly N(0, 1) with a few large outliers.
std::vector<float> RandomActs(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(rng);
  for (int64_t i = 0; i < n; i += 97) x[static_cast<size_t>(i)] *= 20.0f;
  return x;
}

std::vector<DotIsa> Isas() {
  std::vector<DotIsa> v = {DotIsa::kScalar};
  if (BestDotIsa() != DotIsa::kScalar) v.push_back(DotIsa::kAvx2);
  if (BestDotIsa() == DotIsa::kAvx512Vnni) v.push_back(DotIsa::kAvx512Vnni);
  return v;
}

TEST(QuantDot, KernelsMatchTheirDerivedBounds) {
  std::printf("best ISA on this CPU: %s\n", std::string(DotIsaName(BestDotIsa())).c_str());
  for (GgmlType type : kIntTypes) {
    for (int64_t k : {256, 768, 1536}) {
      const int64_t rows = 5;
      const auto blocks = RandomBlocks(type, rows, k, 7 + k);
      const int64_t row_bytes = GgmlRowBytes(type, k);
      const auto x = RandomActs(k, 11 + k);
      std::vector<Q8Block> a(static_cast<size_t>(k / kQ8Block));
      QuantizeRowQ8(x.data(), k, a.data());
      std::vector<float> w(static_cast<size_t>(k));
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(Name(type) + " k=" + std::to_string(k) + " row " + std::to_string(r));
        const uint8_t* wr = blocks.data() + r * row_bytes;
        ASSERT_TRUE(Dequantize(type, wr, k, w.data()).ok());
        double exact = 0, wa_abs = 0, wx = 0, act_bound = 0, w_abs = 0;
        for (int64_t j = 0; j < k; ++j) {
          const Q8Block& b = a[static_cast<size_t>(j / kQ8Block)];
          const int jj = static_cast<int>(j % kQ8Block);
          const double aj =
              static_cast<double>(b.d) * (16384 * b.q[jj] + 128 * b.mid[jj] + b.lo[jj]);
          exact += w[j] * aj;
          wa_abs += std::fabs(w[j] * aj);
          wx += static_cast<double>(w[j]) * x[j];
          act_bound += std::fabs(w[j]) * b.d / 2 + std::fabs(w[j] * x[j]) * 0x1p-23;
          w_abs += std::fabs(w[j]);
        }
        ASSERT_GT(w_abs, 0.0);
        double abs_sum = 0;
        const float ref = QuantDotRef(type, wr, a.data(), k, &abs_sum);
        const double ref_bound = (k + 4) * kU * (abs_sum + wa_abs);
        EXPECT_LE(std::fabs(ref - exact), ref_bound) << "exact " << exact;
        // The activation quantization's error, with the rounding slack on top.
        EXPECT_LE(std::fabs(ref - wx), act_bound * (1 + 1e-5) + ref_bound) << "float " << wx;
        for (DotIsa isa : Isas()) {
          const float got = GetQuantDot(type, isa)(wr, a.data(), k);
          EXPECT_LE(std::fabs(got - ref), 2 * k * kU * abs_sum)
              << DotIsaName(isa) << ": " << got << " vs reference " << ref;
        }
      }
    }
  }
}

TEST(QuantDot, QuantizedActivationsStayWithinHalfAStep) {
  const auto x = RandomActs(512, 3);
  std::vector<Q8Block> a(512 / kQ8Block);
  QuantizeRowQ8(x.data(), 512, a.data());
  for (int64_t j = 0; j < 512; ++j) {
    const Q8Block& b = a[static_cast<size_t>(j / kQ8Block)];
    const int jj = static_cast<int>(j % kQ8Block);
    const int v = 16384 * b.q[jj] + 128 * b.mid[jj] + b.lo[jj];
    EXPECT_LE(std::fabs(x[j] - b.d * v), b.d / 2 * (1 + 1e-5) + 1e-6f * std::fabs(x[j])) << j;
    EXPECT_LE(std::abs(b.lo[jj]), 64);
    EXPECT_LE(std::abs(b.mid[jj]), 64);
  }
  int s = 0;
  for (int j = 0; j < 16; ++j) s += 16384 * a[3].q[j] + 128 * a[3].mid[j] + a[3].lo[j];
  EXPECT_EQ(a[3].sum16[0], s);
}

// BlockMatMul (every strategy the backend picks by row count, and the float precision) against
// float64 products of the exactly dequantised weights.
TEST(QuantDot, BlockMatMulMatchesDequantisedProduct) {
  const GgmlType types[] = {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                            GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K,
                            GgmlType::kF16,  GgmlType::kBF16};
  const int64_t rows = 37, cols = 512;  // unaligned row count: ragged thread chunks
  for (GgmlType type : types) {
    const auto blocks = RandomBlocks(type, rows, cols, 99);
    Matrix w;
    ASSERT_TRUE(MakeBlockMatrix(type, rows, cols, blocks.data(), nullptr, &w).ok());
    const Matrix wf = ToFloatMatrix(w);
    // Every path and its edges: one row (dot), the tile kernel's 6-row steps and remainders and
    // its 18-row blocks, the sgemm tiles above kTileMaxRows.
    for (int64_t n :
         {int64_t{1}, int64_t{2}, kTileMinRows - 1, kTileMinRows, int64_t{7}, kDotMaxRows,
          kDotMaxRows + 1, int64_t{19}, int64_t{40}, kTileMaxRows, kTileMaxRows + 1}) {
      for (MatMulPrecision p : {MatMulPrecision::kQuantizedActivations, MatMulPrecision::kFloat}) {
        SCOPED_TRACE(Name(type) + " n=" + std::to_string(n) +
                     (p == MatMulPrecision::kFloat ? " float" : " quant"));
        const auto x = RandomActs(n * cols, 5 + n);
        std::vector<float> y(static_cast<size_t>(n * rows), -1.0f);
        CpuBackend backend(p);
        backend.MatMul(x.data(), n, w, Matrix{}, y.data());
        const bool int8 = ChooseMatMulPath(n, w, p) == MatMulPath::kDot && HasQuantDot(type);
        double worst = 0;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t r = 0; r < rows; ++r) {
            double want = 0, mag = 0, act = 0;
            const float* xi = x.data() + i * cols;
            for (int64_t b = 0; b < cols; b += kQ8Block) {
              float amax = 0;
              for (int64_t j = b; j < b + kQ8Block; ++j) amax = std::fmax(amax, std::fabs(xi[j]));
              for (int64_t j = b; j < b + kQ8Block; ++j) {
                const double wv = wf.data[r * cols + j];
                want += wv * xi[j];
                mag += std::fabs(wv * xi[j]);
                act += std::fabs(wv) * amax / kQ8Max / 2 + std::fabs(wv * xi[j]) * 0x1p-23;
              }
            }
            // Float paths: sgemm / float dot rounding, 2 k u sum|w x|. Int8: the activation
            // bound plus the kernels' float rounding, k u times the terms' magnitude (at most
            // 4x sum|w x| for these scales: |d u| + |m| <= 2 max|w| per block).
            const double bound = int8 ? act * (1 + 1e-5) + 8 * cols * kU * mag + 2 * cols * kU * mag
                                      : 2 * cols * kU * mag;
            const double err = std::fabs(y[i * rows + r] - want);
            worst = std::max(worst, err / bound);
            ASSERT_LE(err, bound) << "row " << i << " col " << r << ": " << y[i * rows + r]
                                  << " vs " << want;
          }
        }
        const MatMulPath path = ChooseMatMulPath(n, w, p);
        std::printf("%-5s n=%-2lld %-5s worst error / bound %.3f\n", Name(type).c_str(),
                    static_cast<long long>(n),
                    int8                        ? "int8"
                    : path == MatMulPath::kTile ? "tile"
                                                : "float",
                    worst);
      }
    }
  }
}

// The dot path on several rows at once (batched decode), per ISA: each output equals the
// reference kernel on its row, whatever the row count and thread split.
TEST(QuantDot, DotPathOnSeveralRowsEqualsTheReferencePerRow) {
  const int64_t rows = 37, cols = 768, n = 5;
  for (GgmlType type : kIntTypes) {
    const auto blocks = RandomBlocks(type, rows, cols, 5);
    Matrix w;
    ASSERT_TRUE(MakeBlockMatrix(type, rows, cols, blocks.data(), nullptr, &w).ok());
    const auto x = RandomActs(n * cols, 17);
    std::vector<Q8Block> a(static_cast<size_t>(n * cols / kQ8Block));
    for (int64_t i = 0; i < n; ++i) {
      QuantizeRowQ8(x.data() + i * cols, cols, a.data() + i * cols / kQ8Block);
    }
    for (DotIsa isa : Isas()) {
      std::vector<float> y(static_cast<size_t>(n * rows), 0.0f);
      BlockMatMulDot(x.data(), n, w, y.data(), isa);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          double abs_sum = 0;
          const float ref =
              QuantDotRef(type, w.block_row(r), a.data() + i * cols / kQ8Block, cols, &abs_sum);
          ASSERT_LE(std::fabs(y[i * rows + r] - ref), 2 * cols * kU * abs_sum)
              << Name(type) << " " << DotIsaName(isa) << " row " << i << " out " << r;
        }
      }
    }
  }
}

// Decode attention (CpuBackend's direct path for <= 4 queries) against the blocked GEMM path on
// the same queries: GQA, gapped positions, a sliding window, a query that sees nothing. Both
// are float32 with different summation orders; 1e-5 relative covers m = 300 terms (300 u).
TEST(QuantDot, DecodeAttentionMatchesTheBlockedPath) {
  const int64_t nh = 4, nkv = 2, hd = 64, m = 300, n = 7;
  std::vector<int32_t> kpos(m), qpos = {-1, 0, 3, 150, 299, 598, 600};
  for (int64_t j = 0; j < m; ++j) kpos[j] = static_cast<int32_t>(2 * j);
  const auto q = RandomActs(n * nh * hd, 7), k = RandomActs(m * nkv * hd, 8),
             v = RandomActs(m * nkv * hd, 9);
  CpuBackend be;
  for (int64_t window : {int64_t{0}, int64_t{40}}) {
    const AttentionParams p{nh, nkv, hd, 0.05f, window};
    std::vector<float> all(n * nh * hd), one(nh * hd);
    be.Attention(q.data(), qpos.data(), n, k.data(), v.data(), kpos.data(), m, p, all.data());
    for (int64_t i = 0; i < n; ++i) {
      std::fill(one.begin(), one.end(), std::nanf(""));
      be.Attention(q.data() + i * nh * hd, &qpos[i], 1, k.data(), v.data(), kpos.data(), m, p,
                   one.data());
      for (int64_t e = 0; e < nh * hd; ++e) {
        const float want = all[i * nh * hd + e];
        ASSERT_NEAR(one[e], want, 1e-5 * (1 + std::fabs(want)))
            << "query " << i << " window " << window << " element " << e;
      }
    }
  }
}

TEST(QuantDot, EmbedAndDequantizeRowsReadTheStoredBlocks) {
  const auto blocks = RandomBlocks(GgmlType::kQ8_0, 10, 64, 1);
  Matrix w;
  ASSERT_TRUE(MakeBlockMatrix(GgmlType::kQ8_0, 10, 64, blocks.data(), nullptr, &w).ok());
  EXPECT_EQ(w.StoredBytes(), 10 * 2 * 34);
  std::vector<float> all(640), out(2 * 64);
  ASSERT_TRUE(Dequantize(GgmlType::kQ8_0, blocks.data(), 640, all.data()).ok());
  const int32_t ids[2] = {7, 2};
  CpuBackend().Embed(w, ids, 2, out.data());
  EXPECT_EQ(0, std::memcmp(out.data(), all.data() + 7 * 64, 64 * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(out.data() + 64, all.data() + 2 * 64, 64 * sizeof(float)));
  Matrix bad;
  EXPECT_FALSE(MakeBlockMatrix(GgmlType::kQ4_K, 1, 100, blocks.data(), nullptr, &bad).ok());
}

// The vectorised dequantisation the tile and sgemm paths use is bit-identical to the reference
// (dequant.h), for every type (the ones without a vector kernel go through the reference) and
// any row range.
TEST(QuantDot, DequantizeRowsFastIsBitIdentical) {
  const GgmlType types[] = {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                            GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K,
                            GgmlType::kF16,  GgmlType::kBF16};
  const int64_t rows = 9, cols = 512;
  for (GgmlType type : types) {
    SCOPED_TRACE(Name(type));
    const auto blocks = RandomBlocks(type, rows, cols, 7);
    Matrix w;
    ASSERT_TRUE(MakeBlockMatrix(type, rows, cols, blocks.data(), nullptr, &w).ok());
    for (const auto& [r0, count] : {std::pair<int64_t, int64_t>{0, rows}, {3, 1}, {4, 5}}) {
      std::vector<float> want(static_cast<size_t>(count * cols), -1.0f);
      DequantizeRows(w, r0, count, want.data());
      for (const tile_matmul_internal::TileIsa& isa : tile_matmul_internal::CpuTileIsas()) {
        std::vector<float> got(want.size(), -2.0f);
        tile_matmul_internal::DequantizeRowsWith(isa, w, r0, count, got.data());
        ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
            << isa.name << " rows " << r0 << "+" << count;
      }
      std::vector<float> got(want.size(), -2.0f);
      DequantizeRowsFast(w, r0, count, got.data());
      ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));
    }
  }
}

// The tile kernel, every build this CPU runs, on every edge of its blocking: weight-row counts that
// leave 1..3 rows of a 4-row group, activation counts that leave 1..5 rows of a 6-row step or cross
// an 18-row block, k of one and of many 16-lane steps. Against float64 products of the exact
// weights, within the float summation bound 2 k u sum|w x|.
TEST(QuantDot, TileMatMulEdges) {
  const auto blocks = RandomBlocks(GgmlType::kQ4_1, 45, 576, 3);
  for (int64_t rows : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, int64_t{45}}) {
    for (int64_t cols : {int64_t{32}, int64_t{576}}) {
      Matrix w;
      ASSERT_TRUE(MakeBlockMatrix(GgmlType::kQ4_1, rows, cols, blocks.data(), nullptr, &w).ok());
      if (!HasTileMatMul(w)) GTEST_SKIP() << "no AVX2 on this CPU: the tile kernel is off";
      const Matrix wf = ToFloatMatrix(w);
      for (int64_t n = 1; n <= 20; ++n) {
        for (const tile_matmul_internal::TileIsa& isa : tile_matmul_internal::CpuTileIsas()) {
          SCOPED_TRACE(std::string(isa.name) + " rows " + std::to_string(rows) + " cols " +
                       std::to_string(cols) + " n " + std::to_string(n));
          const auto x = RandomActs(n * cols, 11 + n);
          std::vector<float> y(static_cast<size_t>(n * rows), std::nanf(""));
          tile_matmul_internal::TileMatMulWith(isa, x.data(), n, w, y.data());
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double want = 0, mag = 0;
              for (int64_t j = 0; j < cols; ++j) {
                const double t = static_cast<double>(wf.data[r * cols + j]) * x[i * cols + j];
                want += t;
                mag += std::fabs(t);
              }
              ASSERT_LE(std::fabs(y[i * rows + r] - want), 2 * cols * kU * mag)
                  << "row " << i << " col " << r;
            }
          }
        }
      }
    }
  }
}

// The small products of decode attention, every build this CPU runs: scores s = a b^T and the
// combination o = p v, with row strides wider than the rows (GQA heads inside a KV row), row
// counts around the kernels' steps and head sizes of 1 to 8 vectors. Against float64, within
// the float summation bound 2 d u sum|terms| (ABt: d terms; AB: m terms).
TEST(QuantDot, SmallGemmsMatchFloat64) {
  const auto isas = tile_matmul_internal::CpuTileIsas();
  if (isas.empty()) GTEST_SKIP() << "no AVX2 on this CPU: the small products are off";
  for (const tile_matmul_internal::TileIsa& isa : isas) {
    for (int64_t d : {int64_t{16}, int64_t{64}, int64_t{80}, int64_t{128}}) {
      for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{7}}) {
        for (int64_t m : {int64_t{1}, int64_t{5}, int64_t{37}}) {
          SCOPED_TRACE(std::string(isa.name) + " d " + std::to_string(d) + " n " +
                       std::to_string(n) + " m " + std::to_string(m));
          const int64_t lda = d + 16, ldb = 3 * d, ldp = m + 3;
          const auto a = RandomActs(n * lda, 1 + d + n);
          const auto b = RandomActs(m * ldb, 2 + d + m);
          std::vector<float> sc(static_cast<size_t>(n * ldp), std::nanf(""));
          isa.kernel(a.data(), lda, n, b.data(), ldb, m, d, sc.data(), ldp);
          std::vector<float> o(static_cast<size_t>(n * lda), std::nanf(""));
          isa.combine(sc.data(), ldp, n, b.data(), ldb, m, d, o.data(), lda);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < m; ++j) {
              double want = 0, mag = 0;
              for (int64_t e = 0; e < d; ++e) {
                const double t = static_cast<double>(a[i * lda + e]) * b[j * ldb + e];
                want += t;
                mag += std::fabs(t);
              }
              ASSERT_LE(std::fabs(sc[i * ldp + j] - want), 2 * d * kU * mag) << i << "," << j;
            }
            for (int64_t e = 0; e < d; ++e) {
              double want = 0, mag = 0;
              for (int64_t j = 0; j < m; ++j) {
                const double t = static_cast<double>(sc[i * ldp + j]) * b[j * ldb + e];
                want += t;
                mag += std::fabs(t);
              }
              ASSERT_LE(std::fabs(o[i * lda + e] - want), 2 * m * kU * mag) << i << "," << e;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace semshare::engine
