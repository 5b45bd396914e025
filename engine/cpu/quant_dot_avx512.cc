// AVX512-VNNI int8 dot kernels (quant_dot_simd.inc): u8 x s8 products summed in int32 by one
// vpdpbusd (EVEX-encoded on 256-bit registers, AVX512-VL), no int16 stage.
#include <cstdint>
#include <cstring>

#include "engine/cpu/quant_dot.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#include <immintrin.h>

namespace semshare::engine {
namespace {
inline __m256i DotU8S8Vnni(__m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}
}  // namespace
#define SEMSHARE_DOT_U8S8(u, s) DotU8S8Vnni(u, s)
#define SEMSHARE_DOT_NS avx512vnni
#include "engine/cpu/quant_dot_simd.inc"
#undef SEMSHARE_DOT_U8S8
#undef SEMSHARE_DOT_NS

namespace quant_dot_internal {
QuantDotFn Avx512VnniKernel(GgmlType type) { return avx512vnni::Kernel(type); }
}  // namespace quant_dot_internal
}  // namespace semshare::engine
#pragma GCC pop_options

#else
namespace semshare::engine::quant_dot_internal {
QuantDotFn Avx512VnniKernel(GgmlType) { return nullptr; }
}  // namespace semshare::engine::quant_dot_internal
#endif
