// AVX2 int8 dot kernels (quant_dot_simd.inc): u8 x s8 products by vpmaddubsw + vpmaddwd.
// vpmaddubsw adds two products in int16 with saturation; codes are at most 63 (128 for |Q8_0|)
// and |q| <= 127, so a pair sums to at most 2 * 128 * 127 = 32512 < 32767: never saturates.
// F16C (present on every AVX2 CPU) widens the f16 scales.
#include <cstdint>
#include <cstring>

#include "engine/cpu/quant_dot.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace semshare::engine {
namespace {
inline __m256i DotU8S8Avx2(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
}  // namespace
#define SEMSHARE_DOT_U8S8(u, s) DotU8S8Avx2(u, s)
#define SEMSHARE_DOT_NS avx2
#include "engine/cpu/quant_dot_simd.inc"
#undef SEMSHARE_DOT_U8S8
#undef SEMSHARE_DOT_NS

namespace quant_dot_internal {
QuantDotFn Avx2Kernel(GgmlType type) { return avx2::Kernel(type); }
}  // namespace quant_dot_internal
}  // namespace semshare::engine
#pragma GCC pop_options

#else
namespace semshare::engine::quant_dot_internal {
QuantDotFn Avx2Kernel(GgmlType) { return nullptr; }
}  // namespace semshare::engine::quant_dot_internal
#endif
