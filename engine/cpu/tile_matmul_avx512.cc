// AVX-512 pieces of the tile matmul (tile_matmul.h): exact vectorised dequantisation of ggml
// blocks and the 4 x 4 register-blocked float kernel.
//
// Dequantisation follows engine/model/dequant.cc formula for formula (its comment says why the
// results are bit-identical whatever the evaluation order: every product is exact in float32
// and the only rounding is one final addition, which an FMA performs identically).
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
namespace {

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 16 bytes -> 16 int32 -> float.
inline __m512 U8ToF(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
inline __m512 S8ToF(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
inline __m128i Load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline __m128i LowNibbles(__m128i b) { return _mm_and_si128(b, _mm_set1_epi8(0x0F)); }
inline __m128i HighNibbles(__m128i b) {
  return _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
}

// Q4_0 (18 bytes): (q - 8) * d.
void DequantQ4_0(const uint8_t* src, int64_t count, float* y) {
  const __m512 eight = _mm512_set1_ps(8.0f);
  for (int64_t i = 0; i < count; i += 32, src += 18, y += 32) {
    const __m512 d = _mm512_set1_ps(Half(src));
    const __m128i b = Load16(src + 2);
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_sub_ps(U8ToF(LowNibbles(b)), eight), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_sub_ps(U8ToF(HighNibbles(b)), eight), d));
  }
}

// Q4_1 (20 bytes): q * d + m.
void DequantQ4_1(const uint8_t* src, int64_t count, float* y) {
  for (int64_t i = 0; i < count; i += 32, src += 20, y += 32) {
    const __m512 d = _mm512_set1_ps(Half(src)), m = _mm512_set1_ps(Half(src + 2));
    const __m128i b = Load16(src + 4);
    _mm512_storeu_ps(y, _mm512_fmadd_ps(U8ToF(LowNibbles(b)), d, m));
    _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(U8ToF(HighNibbles(b)), d, m));
  }
}

// Q8_0 (34 bytes): q * d.
void DequantQ8_0(const uint8_t* src, int64_t count, float* y) {
  for (int64_t i = 0; i < count; i += 32, src += 34, y += 32) {
    const __m512 d = _mm512_set1_ps(Half(src));
    _mm512_storeu_ps(y, _mm512_mul_ps(S8ToF(Load16(src + 2)), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(S8ToF(Load16(src + 18)), d));
  }
}

inline void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (144 bytes per 256): (d * sc) * q - dmin * m per sub-block of 32.
void DequantQ4K(const uint8_t* src, int64_t count, float* y) {
  for (int64_t i = 0; i < count; i += 256, src += 144) {
    const float d = Half(src), dmin = Half(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int g = 0; g < 4; ++g, q += 32, y += 64) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(2 * g, scales, &sc0, &m0);
      ScaleMinK4(2 * g + 1, scales, &sc1, &m1);
      const __m512 d0 = _mm512_set1_ps(d * static_cast<float>(sc0));
      const __m512 min0 = _mm512_set1_ps(dmin * static_cast<float>(m0));
      const __m512 d1 = _mm512_set1_ps(d * static_cast<float>(sc1));
      const __m512 min1 = _mm512_set1_ps(dmin * static_cast<float>(m1));
      for (int h = 0; h < 2; ++h) {
        const __m128i b = Load16(q + 16 * h);
        _mm512_storeu_ps(y + 16 * h, _mm512_fmsub_ps(d0, U8ToF(LowNibbles(b)), min0));
        _mm512_storeu_ps(y + 32 + 16 * h, _mm512_fmsub_ps(d1, U8ToF(HighNibbles(b)), min1));
      }
    }
  }
}

// Q6_K (210 bytes per 256): (d * sc) * (q - 32), layout as DequantQ6K in dequant.cc: per half
// of 128, element l + 32c (c = 0..3) takes a nibble of ql and bit pair c of qh[l]; the scale of
// elements l..l+15 (l = 0 or 16) of quarter c is sc[l / 16 + 2c].
void DequantQ6K(const uint8_t* src, int64_t count, float* y) {
  const __m128i three = _mm_set1_epi8(3);
  const __m512 off = _mm512_set1_ps(32.0f);
  for (int64_t i = 0; i < count; i += 256, src += 210) {
    const float d = Half(src + 208);
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; l += 16) {
        const __m128i a = Load16(ql + l), b = Load16(ql + 32 + l), h = Load16(qh + l);
        const __m128i q[4] = {
            _mm_or_si128(LowNibbles(a), _mm_slli_epi16(_mm_and_si128(h, three), 4)),
            _mm_or_si128(LowNibbles(b),
                         _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), three), 4)),
            _mm_or_si128(HighNibbles(a),
                         _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), three), 4)),
            _mm_or_si128(HighNibbles(b),
                         _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), three), 4))};
        for (int c = 0; c < 4; ++c) {
          const __m512 s = _mm512_set1_ps(d * static_cast<float>(sc[l / 16 + 2 * c]));
          _mm512_storeu_ps(y + l + 32 * c, _mm512_mul_ps(s, _mm512_sub_ps(U8ToF(q[c]), off)));
        }
      }
    }
  }
}

void DequantF16(const uint8_t* src, int64_t count, float* y) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
    _mm512_storeu_ps(y + i, _mm512_cvtph_ps(h));
  }
  for (; i < count; ++i) y[i] = Half(src + 2 * i);
}

void DequantBf16(const uint8_t* src, int64_t count, float* y) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
    _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  for (; i < count; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    std::memcpy(y + i, &bits, 4);
  }
}

// Sums of a0..a3 in lanes 0..3.
inline __m128 Reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // Per 128-bit lane: t0 = [a0_0+a0_2, a1_0+a1_2, a0_1+a0_3, a1_1+a1_3], t1 the same for a2, a3.
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  // Per lane: [a0, a1, a2, a3] partial sums.
  const __m512 t2 = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t2), _mm512_extractf32x8_ps(t2, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// y[i * ldy + j] = dot(x row i, w_j) for i < MR, j < 4 with mask bit j set.
template <int MR>
inline void Kernel4(const float* x, int64_t ldx, const float* w0, const float* w1, const float* w2,
                    const float* w3, int64_t k, float* y, int64_t ldy, __mmask8 mask) {
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; kk += 16) {
    const __m512 b0 = _mm512_loadu_ps(w0 + kk), b1 = _mm512_loadu_ps(w1 + kk);
    const __m512 b2 = _mm512_loadu_ps(w2 + kk), b3 = _mm512_loadu_ps(w3 + kk);
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_loadu_ps(x + i * ldx + kk);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm_mask_storeu_ps(y + i * ldy, mask, Reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
  }
}

// Activation rows per pass over a tile: 16 rows of k = 1536 floats (96 KiB) stay in L2 while
// the tile's 4-row groups pass over them, the 4 rows of a group in L1.
constexpr int64_t kRowBlock = 18;
constexpr int kMr = 6;

void TileKernel(const float* x, int64_t ldx, int64_t n, const float* w, int64_t rows, int64_t k,
                float* y, int64_t ldy) {
  for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
    const int64_t i1 = std::min(n, i0 + kRowBlock);
    for (int64_t j = 0; j < rows; j += 4) {
      // A last group of fewer than 4 rows repeats its last row and stores only the valid lanes.
      const float* wr[4];
      for (int64_t q = 0; q < 4; ++q) wr[q] = w + std::min(j + q, rows - 1) * k;
      const auto mask = static_cast<__mmask8>((1u << std::min<int64_t>(4, rows - j)) - 1);
      int64_t i = i0;
      for (; i + kMr <= i1; i += kMr) {
        Kernel4<kMr>(x + i * ldx, ldx, wr[0], wr[1], wr[2], wr[3], k, y + i * ldy + j, ldy, mask);
      }
      const float* xi = x + i * ldx;
      float* yi = y + i * ldy + j;
      switch (i1 - i) {
        case 5:
          Kernel4<5>(xi, ldx, wr[0], wr[1], wr[2], wr[3], k, yi, ldy, mask);
          break;
        case 4:
          Kernel4<4>(xi, ldx, wr[0], wr[1], wr[2], wr[3], k, yi, ldy, mask);
          break;
        case 3:
          Kernel4<3>(xi, ldx, wr[0], wr[1], wr[2], wr[3], k, yi, ldy, mask);
          break;
        case 2:
          Kernel4<2>(xi, ldx, wr[0], wr[1], wr[2], wr[3], k, yi, ldy, mask);
          break;
        case 1:
          Kernel4<1>(xi, ldx, wr[0], wr[1], wr[2], wr[3], k, yi, ldy, mask);
          break;
        default:
          break;
      }
    }
  }
}

}  // namespace

DequantFn Avx512Dequant(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
      return &DequantQ4_0;
    case GgmlType::kQ4_1:
      return &DequantQ4_1;
    case GgmlType::kQ8_0:
      return &DequantQ8_0;
    case GgmlType::kQ4_K:
      return &DequantQ4K;
    case GgmlType::kQ6_K:
      return &DequantQ6K;
    case GgmlType::kF16:
      return &DequantF16;
    case GgmlType::kBF16:
      return &DequantBf16;
    default:
      return nullptr;
  }
}

TileKernelFn Avx512TileKernel() { return &TileKernel; }

}  // namespace semshare::engine::tile_matmul_internal
#pragma GCC pop_options

namespace semshare::engine::tile_matmul_internal {
bool CpuHasAvx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return has;
}
}  // namespace semshare::engine::tile_matmul_internal

#else
namespace semshare::engine::tile_matmul_internal {
DequantFn Avx512Dequant(GgmlType) { return nullptr; }
TileKernelFn Avx512TileKernel() { return nullptr; }
bool CpuHasAvx512() { return false; }
}  // namespace semshare::engine::tile_matmul_internal
#endif
