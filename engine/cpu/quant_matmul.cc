#include "engine/cpu/quant_matmul.h"

#include <algorithm>
#include <vector>

#include "engine/cpu/fast_math.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/quant_dot.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/tile_matmul.h"

namespace semshare::engine {
namespace {

// Output rows per work item: enough that a chunk's bookkeeping is noise next to its dots.
constexpr int64_t kRowsPerChunk = 16;

void DotPath(const float* x, int64_t n, const Matrix& w, float* y, DotIsa isa) {
  const int64_t k = w.cols, out = w.rows;
  const QuantDotFn dot = GetQuantDot(w.type, isa);
  if (dot == nullptr) {
    // Float activations (kFloat, F16 / BF16): widen a weight row exactly (L1-resident), dot in
    // float32.
    ThreadPool::Default().ParallelFor(out, kRowsPerChunk, [&](int64_t r0, int64_t r1) {
      thread_local std::vector<float> row;
      row.resize(static_cast<size_t>(k));
      for (int64_t r = r0; r < r1; ++r) {
        DequantizeRowsFast(w, r, 1, row.data());
        for (int64_t i = 0; i < n; ++i) y[i * out + r] = DotF(row.data(), x + i * k, k);
      }
    });
    return;
  }
  thread_local std::vector<Q8Block> acts;  // the calling thread's; workers only read it
  const int64_t nb = k / kQ8Block;
  acts.resize(static_cast<size_t>(n * nb));
  for (int64_t i = 0; i < n; ++i) QuantizeRowQ8(x + i * k, k, acts.data() + i * nb);
  const Q8Block* a = acts.data();
  ThreadPool::Default().ParallelFor(out, kRowsPerChunk, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w.block_row(r);
      for (int64_t i = 0; i < n; ++i) y[i * out + r] = dot(wr, a + i * nb, k);
    }
  });
}

}  // namespace

void BlockMatMulTiled(const float* x, int64_t n, const Matrix& w, float* y) {
  const int64_t k = w.cols, out = w.rows;
  const int64_t tile = std::clamp<int64_t>(kTileFloats / std::max<int64_t>(k, 1), 16, out);
  // Each thread takes a range of weight rows and walks it a tile at a time: dequantise into its
  // own buffer, multiply while the tile is still in its cache (single-threaded BLAS, gemm.h).
  ThreadPool::Default().ParallelFor(out, 16, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(tile * k));
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t rows = std::min(tile, r1 - t0);
      DequantizeRowsFast(w, t0, rows, buf.data());
      GemmOnThisThread(GemmB::kTransposed, n, rows, k, 1.0f, x, k, buf.data(), k, 0.0f, y + t0,
                       out);
    }
  });
}

void BlockMatMulDot(const float* x, int64_t n, const Matrix& w, float* y, DotIsa isa) {
  DotPath(x, n, w, y, isa);
}

MatMulPath ChooseMatMulPath(int64_t n, const Matrix& w, MatMulPrecision precision) {
  // kFloat: the dequantised-tile path for every n, so the arithmetic is exactly that of float
  // weights (sgemv for one row, sgemm for more), as before weights stayed quantized.
  if (precision == MatMulPrecision::kFloat) return MatMulPath::kTiled;
  if (n >= kTileMinRows && n <= kTileMaxRows && HasTileMatMul(w)) return MatMulPath::kTile;
  if (n <= kDotMaxRows && w.cols % kQ8Block == 0) return MatMulPath::kDot;
  return MatMulPath::kTiled;
}

void BlockMatMul(const float* x, int64_t n, const Matrix& w, float* y, MatMulPrecision precision) {
  if (n <= 0 || w.rows == 0) return;
  switch (ChooseMatMulPath(n, w, precision)) {
    case MatMulPath::kDot:
      DotPath(x, n, w, y, BestDotIsa());
      break;
    case MatMulPath::kTile:
      TileMatMul(x, n, w, y);
      break;
    case MatMulPath::kTiled:
      BlockMatMulTiled(x, n, w, y);
      break;
  }
}

}  // namespace semshare::engine
