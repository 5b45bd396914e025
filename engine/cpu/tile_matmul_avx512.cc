// AVX-512 build of the tile matmul (tile_matmul_simd.inc): 16 lanes, 6 activation rows x 4
// weight rows per step (24 accumulators of the 32 registers).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "engine/cpu/tile_matmul.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() (`__Y = __Y`), which its
// uninitialized-use warnings report at every inlined call.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace semshare::engine::tile_matmul_internal {
namespace avx512 {
namespace {
using V = __m512;
constexpr int kL = 16;
constexpr int kMr = 6;
inline V Zero() { return _mm512_setzero_ps(); }
inline V Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V Set1(float f) { return _mm512_set1_ps(f); }
inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V Fms(V a, V b, V c) { return _mm512_fmsub_ps(a, b, c); }
inline V U8ToF(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
inline V S8ToF(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
inline __m256i Load32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline V F16ToF(const uint8_t* p) { return _mm512_cvtph_ps(Load32(p)); }
inline V Bf16ToF(const uint8_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(Load32(p)), 16));
}
inline __m128 Reduce4(V a0, V a1, V a2, V a3) {
  // Per 128-bit lane: t0 = [a0_0+a0_2, a1_0+a1_2, a0_1+a0_3, a1_1+a1_3], t1 the same for a2, a3.
  const V t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const V t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  // Per lane: [a0, a1, a2, a3] partial sums; then the four 128-bit lanes are added.
  const V t2 = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t2), _mm512_extractf32x8_ps(t2, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
}  // namespace
#include "engine/cpu/tile_matmul_simd.inc"
}  // namespace avx512

TileIsa Avx512Isa() {
  return {"avx512", &avx512::Dequant, &avx512::TileKernel, &avx512::CombineKernel};
}

}  // namespace semshare::engine::tile_matmul_internal
#pragma GCC pop_options

#else
namespace semshare::engine::tile_matmul_internal {
TileIsa Avx512Isa() { return {}; }
}  // namespace semshare::engine::tile_matmul_internal
#endif
