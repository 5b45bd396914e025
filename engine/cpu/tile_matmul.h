// y = x w^T for a quantized weight w and a batch of activation rows (batched decode: one row per
// running sequence, 2 to ~64 rows): the middle strategy of BlockMatMul (quant_matmul.h).
//
// Each pool thread walks its range of weight rows a tile at a time: the tile is dequantised
// exactly (ggml's formulas, vectorised: DequantizeRowsFast) into the thread's own buffer, and a
// register-blocked kernel takes 4 weight rows x 6 activation rows per step (AVX-512: 24 float
// accumulators of 16 lanes over k; AVX2: 4 x 2 of 8 lanes), so every dequantised weight is used
// by all n rows while it is in L1. Unlike the OpenBLAS tile path, nothing is packed or copied a
// second time: at 16 rows, packing and a scalar dequantisation took 36% of the server's CPU (perf,
// 2026-12-05).
//
// Arithmetic: float32 weights (exact) times float32 activations, summed in 16 lanes of k/16
// terms each and then across lanes; results differ from sgemm's by float summation order only
// (quant_dot_test bounds both against a float64 product).
#ifndef SEMSHARE_ENGINE_CPU_TILE_MATMUL_H_
#define SEMSHARE_ENGINE_CPU_TILE_MATMUL_H_

#include <cstdint>
#include <vector>

#include "engine/model/weights.h"

namespace semshare::engine {

// True when this CPU runs the tile kernel (AVX-512 F/VL/BW/DQ, or AVX2 with FMA and F16C) and w
// can use it: quantized (any type DequantizeRows takes) and w.cols a multiple of 16.
bool HasTileMatMul(const Matrix& w);

// Small single-threaded products for decode attention (one query row's GQA group of heads
// against its KV rows), with the tile kernel's vector code; false when this CPU has no build or
// d is not a multiple of 16 (callers then use gemm.h):
//   SmallGemmABt: s[n, m] = a[n, d] b[m, d]^T (scores: queries against key rows),
//   SmallGemmAB:  o[n, d] = p[n, m] v[m, d] (the probabilities against value rows).
// Row strides lda, ldb, lds / ldp, ldv, ldo. Summation order: 16 (AVX2: 8) lanes over d then
// across lanes for ABt; in row order j for AB.
bool HasSmallGemm(int64_t d);
void SmallGemmABt(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m,
                  int64_t d, float* s, int64_t lds);
void SmallGemmAB(const float* p, int64_t ldp, int64_t n, const float* v, int64_t ldv, int64_t m,
                 int64_t d, float* o, int64_t ldo);

// The build TileMatMul runs on this CPU: "avx512", "avx2" or "none".
const char* TileMatMulIsaName();

// y[n, w.rows] = x[n, w.cols] * w^T, split over ThreadPool::Default() by weight rows. Requires
// HasTileMatMul(w). Thread-compatible like BlockMatMul (per-thread buffers).
void TileMatMul(const float* x, int64_t n, const Matrix& w, float* y);

// dst[count, m.cols] = rows r0 .. r0+count of m, bit-identical to DequantizeRows (the same
// exact products and one rounding), vectorised (the tile kernel's ISA) for Q4_0, Q4_1, Q8_0,
// Q4_K, Q6_K, F16 and BF16; other types and CPUs use DequantizeRows. One difference: a NaN f16
// scale is quieted (hardware conversion), which weights never hold.
void DequantizeRowsFast(const Matrix& m, int64_t r0, int64_t count, float* dst);

namespace tile_matmul_internal {
// Dequantises `count` elements of one type at src into dst.
using DequantFn = void (*)(const uint8_t* src, int64_t count, float* dst);
// y[i * ldy + j] = dot(x row i, w row j) for i < n, j < rows: x [n, k] (row stride ldx), w
// [rows, k] (row stride ldw), k a multiple of 16.
using TileKernelFn = void (*)(const float* x, int64_t ldx, int64_t n, const float* w, int64_t ldw,
                              int64_t rows, int64_t k, float* y, int64_t ldy);
// o[n, d] = p[n, m] v[m, d], row strides ldp, ldv, ldo; d a multiple of 16.
using CombineKernelFn = void (*)(const float* p, int64_t ldp, int64_t n, const float* v,
                                 int64_t ldv, int64_t m, int64_t d, float* o, int64_t ldo);
// One ISA's build (tile_matmul_simd.inc): null members where not compiled.
struct TileIsa {
  const char* name = "none";
  DequantFn (*dequant)(GgmlType type) = nullptr;  // null for types without a vector kernel
  TileKernelFn kernel = nullptr;
  CombineKernelFn combine = nullptr;
};
TileIsa Avx512Isa();
TileIsa Avx2Isa();
// The builds this CPU runs, best first (empty without AVX2).
std::vector<TileIsa> CpuTileIsas();
// TileMatMul and DequantizeRowsFast with a given build (tests compare them).
void TileMatMulWith(const TileIsa& isa, const float* x, int64_t n, const Matrix& w, float* y);
void DequantizeRowsWith(const TileIsa& isa, const Matrix& m, int64_t r0, int64_t count, float* dst);
}  // namespace tile_matmul_internal

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_TILE_MATMUL_H_
