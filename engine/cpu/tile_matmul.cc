#include "engine/cpu/tile_matmul.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/cpu/thread_pool.h"

namespace semshare::engine {
namespace {

// Float32 weights per dequantised tile: 96 KiB, so the tile stays in the core's L2 while every
// activation row passes over it (4 weight rows at a time are in L1).
constexpr int64_t kTileFloats = int64_t{24} << 10;

}  // namespace

bool HasTileMatMul(const Matrix& w) {
  return w.quantized() && w.cols % 16 == 0 && w.cols > 0 && tile_matmul_internal::CpuHasAvx512() &&
         tile_matmul_internal::Avx512TileKernel() != nullptr;
}

void DequantizeRowsFast(const Matrix& m, int64_t r0, int64_t count, float* dst) {
  const tile_matmul_internal::DequantFn f = m.quantized() && tile_matmul_internal::CpuHasAvx512()
                                                ? tile_matmul_internal::Avx512Dequant(m.type)
                                                : nullptr;
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

void TileMatMul(const float* x, int64_t n, const Matrix& w, float* y) {
  const int64_t k = w.cols, out = w.rows;
  if (n <= 0 || out == 0) return;
  const tile_matmul_internal::TileKernelFn kernel = tile_matmul_internal::Avx512TileKernel();
  const int64_t tile = std::clamp<int64_t>(kTileFloats / k / 4 * 4, 4, out);
  ThreadPool::Default().ParallelFor(out, 16, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(tile * k));
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t rows = std::min(tile, r1 - t0);
      DequantizeRowsFast(w, t0, rows, buf.data());
      kernel(x, k, n, buf.data(), rows, k, y + t0, out);
    }
  });
}

}  // namespace semshare::engine
