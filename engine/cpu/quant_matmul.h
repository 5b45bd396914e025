// y = x w^T for a weight held in ggml blocks (Matrix::quantized()): the CpuBackend's MatMul on
// quantized models. Three strategies, chosen by the number of activation rows n:
//  - few rows (decode; n < kTileMinRows, or n <= kDotMaxRows without the tile kernel): each
//    activation row is quantized to int8 blocks (quant_dot.h) once, and the int8 dot kernels of
//    the best ISA run over the weight rows, split across ThreadPool::Default(). Weights are read
//    once per call in their stored size (4.5 to 8.5 bits a weight), which is what decode is
//    bound by. F16/BF16 weights (no int8 kernel) are widened a row at a time and dotted with
//    the float row.
//  - a batch of rows (batched decode; kTileMinRows <= n <= kTileMaxRows, AVX-512 or AVX2):
//    tile_matmul.h. Each pool thread dequantises a tile of weight rows (vectorised, exact) and a
//    register-blocked float kernel runs all n rows over it, with no packing.
//  - many rows (prefill, large batches, or neither ISA): each pool thread walks its range of
//    weight rows in tiles of up to kTileFloats weights, dequantised (exactly) into its own float
//    buffer and multiplied at once with single-threaded OpenBLAS sgemm (gemm.h), so prefill
//    keeps float32 GEMM speed and accuracy; the dequantisation is amortised over the n rows.
// MatMulPrecision::kFloat forces the last path for every n (float32 arithmetic on the exact
// weights, as the float32 oracles compare), at the cost of a dequantisation per call.
#ifndef SEMSHARE_ENGINE_CPU_QUANT_MATMUL_H_
#define SEMSHARE_ENGINE_CPU_QUANT_MATMUL_H_

#include <cstdint>

#include "engine/cpu/quant_dot.h"
#include "engine/model/weights.h"

namespace semshare::engine {

enum class MatMulPrecision {
  kQuantizedActivations,  // few rows: activations quantized per block of 32 (quant_dot.h)
  kFloat,                 // always dequantised weights and float32 activations
};

// Rows up to which the dot kernels are used: decode and batched decode (one row per sequence).
// Above, a tile's dequantisation (about 1 ns a weight) costs less than n more passes of the dot
// kernels over the same weights. A row's result depends on which side of this its call falls:
// prompts are prefilled in chunks larger than this, except a final chunk of <= kDotMaxRows
// tokens, whose rows then differ from a one-chunk prefill's by the bound in quant_dot.h.
constexpr int64_t kDotMaxRows = 8;
// Rows from which and up to which the tile kernel (tile_matmul.h) is used where it runs. Up to 4
// rows the int8 kernels read less (4.5 bits a weight, against the tile's dequantised float32
// written and read again). Batched decode of the default model, tokens/s, int8 against tile,
// medians of 3 alternated rounds on a quiet 2-core machine (2026-12-05): 4 streams 169 / 166,
// 5 streams 193 / 245, 6 streams 201 / 280, 8 streams 199 / 244. Above kTileMaxRows, OpenBLAS'
// cache-blocked sgemm on dequantised tiles is as fast.
constexpr int64_t kTileMinRows = 5;
constexpr int64_t kTileMaxRows = 64;

enum class MatMulPath {
  kDot,    // int8 dot kernels (quant_dot.h), or the float dot for F16 / BF16
  kTile,   // tile_matmul.h
  kTiled,  // dequantised tiles + OpenBLAS sgemm
};
// The strategy BlockMatMul takes for n rows of w (tests read it to pick their bound).
MatMulPath ChooseMatMulPath(int64_t n, const Matrix& w, MatMulPrecision precision);
// Weights per dequantised tile: 512 KiB of float32 per pool thread, so the tile is still in
// that core's L2 when the GEMM reads it.
constexpr int64_t kTileFloats = int64_t{1} << 17;

// y[n, w.rows] = x[n, w.cols] * w^T for a quantized (non-F32) w. Thread-compatible: may be
// called from several threads at once (per-thread buffers), each call uses the default pool.
void BlockMatMul(const float* x, int64_t n, const Matrix& w, float* y,
                 MatMulPrecision precision = MatMulPrecision::kQuantizedActivations);

// The same, forcing one strategy (tests and benchmarks): the int8 dot path with the given ISA,
// or the dequantise-tile + sgemm path.
void BlockMatMulDot(const float* x, int64_t n, const Matrix& w, float* y, DotIsa isa);
void BlockMatMulTiled(const float* x, int64_t n, const Matrix& w, float* y);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_QUANT_MATMUL_H_
