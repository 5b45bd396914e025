// Dot products of one quantized weight row (ggml blocks, as the GGUF file stores them) with one
// activation row quantized to int8: the inner loop of CpuBackend::MatMul for few rows (decode).
//
// Activations are quantized per block of 32 like ggml's Q8_1 (scale d, per-block sums for the
// offset terms of Q4_0/Q4_1/Q5_*/K-quants and the 16-element groups of Q6_K), but to 22 bits
// held as three int8 parts: v = round(x / d) with d = max|x| / kQ8Max, v = 16384 hi + 128 mid
// + lo (|hi| <= 127, |mid|, |lo| <= 64). A kernel runs the u8 x s8 dot instruction three times
// per block and combines the parts exactly in int32. Why not ggml's single int8
// (d = max|x| / 127): SmolLM2's hidden states carry outliers 50x the typical value; int8
// activations moved the lm_head's logits by up to 0.25 (of 25), flipping greedy tokens at ties
// 0.08 apart (measured: "What is the capital of France?" answered in French), and 15 bits still
// moved logits by 1e-5 of their scale when a rounding of the input flipped, above the 1e-5 the
// reuse tests allow for GEMM summation order. At 22 bits the quantization error (2.4e-7 of
// max|x|) sits below float32 summation noise; the third instruction costs ~20% of the kernel.
//
// Every kernel computes, per weight block b with integer codes u and activation codes v,
//   sum_b c_b * (sum_j u_j v_j) + offsets(b),  c_b = (weight scale) * d_b,
// exactly in int32 inside a block and in float32 across blocks. The scalar reference
// (quant_dot_ref.cc) is the specification; the AVX2 and AVX512-VNNI kernels
// (quant_dot_simd.inc) differ from it only in the order of float additions, which
// tests/quant_dot_test.cc bounds.
//
// Error against the float dot product sum_j w_j x_j (derived; tests/quant_dot_test.cc checks
// it): |x_j - d_b v_j| <= d_b / 2 + 2^-23 |x_j| (round to nearest, after x_j / d_b rounded in
// float), so the activation quantization moves a dot product by at most
// sum_b d_b / 2 * sum_{j in b} |w_j| + 2^-23 sum_j |w_j x_j|; float rounding adds at most k * 2^-24
// * sum of |terms| (the int32 lane sums reach 2^30 and are rounded to float like any product).
#ifndef SEMSHARE_ENGINE_CPU_QUANT_DOT_H_
#define SEMSHARE_ENGINE_CPU_QUANT_DOT_H_

#include <cstdint>
#include <string_view>

#include "engine/model/ggml_type.h"

namespace semshare::engine {

constexpr int64_t kQ8Block = 32;  // activation elements per Q8Block

// 32 activations: x_j ~= d * v_j, v_j = 16384 q[j] + 128 mid[j] + lo[j].
struct Q8Block {
  float d = 0.0f;             // scale
  float dsum = 0.0f;          // d * (sum of v), for the Q4_1/Q5_1/K-quant minimum terms
  int32_t sum16[2] = {};      // sum of v over elements 0..15 and over 16..31
  int8_t q[kQ8Block] = {};    // high part, |q| <= 127
  int8_t mid[kQ8Block] = {};  // middle part, |mid| <= 64
  int8_t lo[kQ8Block] = {};   // low part, |lo| <= 64
};
static_assert(sizeof(Q8Block) == 112);

// The largest |v| (d = max|x| / kQ8Max).
constexpr int kQ8Max = 127 * 16384;

// out[k / 32] = x[k] quantized; k must be a multiple of 32.
void QuantizeRowQ8(const float* x, int64_t k, Q8Block* out);

// w: one weight row of k elements of the kernel's type (k a whole number of its blocks);
// a: the activation row, k / 32 blocks. Thread-safe, no allocation.
using QuantDotFn = float (*)(const uint8_t* w, const Q8Block* a, int64_t k);

enum class DotIsa { kScalar, kAvx2, kAvx512Vnni };
std::string_view DotIsaName(DotIsa isa);
// The best this CPU runs (cpuid at first call): AVX512-VNNI (with AVX512-VL/BW), else AVX2
// (with FMA and F16C), else scalar.
DotIsa BestDotIsa();

// The kernel for `type` at `isa`: null when the type has no int8 kernel at all (F32, F16, BF16
// and unsupported types: callers dot those in float). An ISA without a kernel for a type
// returns the next best one (Q5_0/Q5_1: scalar only).
QuantDotFn GetQuantDot(GgmlType type, DotIsa isa);

// The scalar reference for `type` (null as above). abs_sum, when non-null, receives the sum of
// the absolute values of the float terms it added, the scale of its rounding error.
float QuantDotRef(GgmlType type, const uint8_t* w, const Q8Block* a, int64_t k,
                  double* abs_sum = nullptr);
bool HasQuantDot(GgmlType type);

namespace quant_dot_internal {
// Per-ISA tables (quant_dot_avx2.cc, quant_dot_avx512.cc): null where not compiled or no kernel.
QuantDotFn Avx2Kernel(GgmlType type);
QuantDotFn Avx512VnniKernel(GgmlType type);
}  // namespace quant_dot_internal

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_QUANT_DOT_H_
