// AVX2 build of the tile matmul (tile_matmul_simd.inc): 8 lanes, 2 activation rows x 4 weight
// rows per step (8 accumulators of the 16 registers), for CPUs without AVX-512.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "engine/cpu/tile_matmul.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace semshare::engine::tile_matmul_internal {
namespace avx2 {
namespace {
using V = __m256;
constexpr int kL = 8;
constexpr int kMr = 2;
inline V Zero() { return _mm256_setzero_ps(); }
inline V Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V Set1(float f) { return _mm256_set1_ps(f); }
inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V Fms(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }
inline V U8ToF(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
inline V S8ToF(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }
inline __m128i Load16B(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline V F16ToF(const uint8_t* p) { return _mm256_cvtph_ps(Load16B(p)); }
inline V Bf16ToF(const uint8_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(Load16B(p)), 16));
}
inline __m128 Reduce4(V a0, V a1, V a2, V a3) {
  // hadd pairs within each 128-bit half; then the halves are added: [a0, a1, a2, a3].
  const V t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
}  // namespace
#include "engine/cpu/tile_matmul_simd.inc"
}  // namespace avx2

TileIsa Avx2Isa() { return {"avx2", &avx2::Dequant, &avx2::TileKernel, &avx2::CombineKernel}; }

}  // namespace semshare::engine::tile_matmul_internal
#pragma GCC pop_options

#else
namespace semshare::engine::tile_matmul_internal {
TileIsa Avx2Isa() { return {}; }
}  // namespace semshare::engine::tile_matmul_internal
#endif
