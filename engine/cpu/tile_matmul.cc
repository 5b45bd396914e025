#include "engine/cpu/tile_matmul.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/cpu/thread_pool.h"

namespace semshare::engine {
namespace tile_matmul_internal {
namespace {

// Float32 weights per dequantised tile: 96 KiB, so the tile stays in the core's L2 while every
// activation row passes over it (the 4 weight rows of a step are in L1).
constexpr int64_t kTileFloats = int64_t{24} << 10;

const TileIsa& BestTileIsa() {
  static const TileIsa best = [] {
    const std::vector<TileIsa> isas = CpuTileIsas();
    return isas.empty() ? TileIsa{} : isas.front();
  }();
  return best;
}

}  // namespace

std::vector<TileIsa> CpuTileIsas() {
  std::vector<TileIsa> isas;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      Avx512Isa().kernel != nullptr) {
    isas.push_back(Avx512Isa());
  }
  if (avx2 && Avx2Isa().kernel != nullptr) isas.push_back(Avx2Isa());
#endif
  return isas;
}

void DequantizeRowsWith(const TileIsa& isa, const Matrix& m, int64_t r0, int64_t count,
                        float* dst) {
  const DequantFn f = m.quantized() && isa.dequant != nullptr ? isa.dequant(m.type) : nullptr;
  if (f == nullptr) {
    DequantizeRows(m, r0, count, dst);
    return;
  }
  if (r0 < 0 || count < 0 || r0 + count > m.rows) {  // a broken invariant of the caller
    std::fprintf(stderr, "DequantizeRowsFast: rows %lld+%lld of %lld\n", static_cast<long long>(r0),
                 static_cast<long long>(count), static_cast<long long>(m.rows));
    std::abort();
  }
  f(m.block_row(r0), count * m.cols, dst);
}

void TileMatMulWith(const TileIsa& isa, const float* x, int64_t n, const Matrix& w, float* y) {
  const int64_t k = w.cols, out = w.rows;
  if (n <= 0 || out == 0) return;
  const int64_t tile = std::clamp<int64_t>(kTileFloats / k / 4 * 4, 4, out);
  ThreadPool::Default().ParallelFor(out, 16, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(tile * k));
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t rows = std::min(tile, r1 - t0);
      DequantizeRowsWith(isa, w, t0, rows, buf.data());
      isa.kernel(x, k, n, buf.data(), k, rows, k, y + t0, out);
    }
  });
}

}  // namespace tile_matmul_internal

bool HasTileMatMul(const Matrix& w) {
  return w.quantized() && w.cols > 0 && w.cols % 16 == 0 &&
         tile_matmul_internal::BestTileIsa().kernel != nullptr;
}

bool HasSmallGemm(int64_t d) {
  return d > 0 && d % 16 == 0 && tile_matmul_internal::BestTileIsa().kernel != nullptr;
}

void SmallGemmABt(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m,
                  int64_t d, float* s, int64_t lds) {
  if (n > 0 && m > 0) tile_matmul_internal::BestTileIsa().kernel(a, lda, n, b, ldb, m, d, s, lds);
}

void SmallGemmAB(const float* p, int64_t ldp, int64_t n, const float* v, int64_t ldv, int64_t m,
                 int64_t d, float* o, int64_t ldo) {
  if (n > 0) tile_matmul_internal::BestTileIsa().combine(p, ldp, n, v, ldv, m, d, o, ldo);
}

const char* TileMatMulIsaName() { return tile_matmul_internal::BestTileIsa().name; }

void DequantizeRowsFast(const Matrix& m, int64_t r0, int64_t count, float* dst) {
  tile_matmul_internal::DequantizeRowsWith(tile_matmul_internal::BestTileIsa(), m, r0, count, dst);
}

void TileMatMul(const float* x, int64_t n, const Matrix& w, float* y) {
  tile_matmul_internal::TileMatMulWith(tile_matmul_internal::BestTileIsa(), x, n, w, y);
}

}  // namespace semshare::engine
