// Dequantisation of ggml block formats to float32.
//
// Written by hand because no packaged library exposes ggml's block formats (ggml itself is not
// a Debian 12 package). The formulas follow ggml's reference `dequantize_row_*`
// (ggml/src/ggml-quants.c) operation for operation: Q4_0/Q5_0/Q8_0 `q * d`, Q4_1/Q5_1
// `q * d + m`, Q4_K/Q5_K `(d * sc) * q - dmin * m`, Q6_K `(d * sc) * q`, with d, dmin f16 scales
// widened exactly, sc a 6- or 8-bit integer scale and q a small integer.
//
// Why the results are bit-identical to ggml and gguf-py (tests/oracle/dequant_oracle_test.py
// checks every type): every product above is exact in float32. An f16 significand has 11 bits
// and the integer factors together at most 12 significant bits (the largest case, Q6_K: 7 for
// |sc| <= 128 and 5 for |q| <= 32; Q8_0: 7 for |q| <= 128), so no product needs more than 23 of
// float32's 24 bits (and f16 subnormals are normal floats, so nothing underflows). The
// only rounding is the final addition of Q4_1/Q5_1/Q4_K/Q5_K, one correctly rounded operation
// on exact operands. Any evaluation order, or fusing into FMA (which -O3 -march=native does),
// therefore gives the same bits; only the sign of a zero depends on grouping, which follows
// ggml's.
//
// Block layouts are declared as byte arrays (alignment 1): tensor data in a GGUF file is only
// aligned to the start of the tensor, and callers may pass any byte buffer, so multi-byte fields
// are read with memcpy.
#include "engine/model/dequant.h"

#include <bit>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

namespace semshare::engine {
namespace {

constexpr int kQK = 32;    // elements per block of the legacy formats (Q4_0 .. Q8_0)
constexpr int kQKK = 256;  // elements per super-block of the k-quants
constexpr int kKScaleSize = 12;

// Q4_0: x = (q - 8) * d, q a 4-bit nibble. Element j < 16 is the low nibble of qs[j],
// element j + 16 its high nibble.
struct BlockQ4_0 {
  uint8_t d[2];         // f16 scale
  uint8_t qs[kQK / 2];  // nibbles
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_1: x = q * d + m.
struct BlockQ4_1 {
  uint8_t d[2];  // f16 scale
  uint8_t m[2];  // f16 minimum
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q5_0: x = (q - 16) * d, q = nibble | (bit j of qh) << 4; qh is a little-endian u32.
struct BlockQ5_0 {
  uint8_t d[2];
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// Q5_1: x = q * d + m with the 5-bit q of Q5_0.
struct BlockQ5_1 {
  uint8_t d[2];
  uint8_t m[2];
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q8_0: x = q * d, q a signed byte.
struct BlockQ8_0 {
  uint8_t d[2];
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q4_K: 8 sub-blocks of 32; sub-block s has a 6-bit scale sc_s and 6-bit min m_s packed in
// `scales`, x = (d * sc_s) * q - (dmin * m_s). qs holds 4 groups of 32 bytes; group g carries
// sub-block 2g in its low nibbles and sub-block 2g + 1 in its high nibbles.
struct BlockQ4_K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q5_K: Q4_K plus a fifth bit per element: bit s of qh[l] belongs to element l of sub-block s.
struct BlockQ5_K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales, x = (d * sc) * (q - 32), q 6 bits: low 4
// bits in ql, high 2 bits in qh. Layout per half of 128 elements: see DequantQ6K.
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint8_t d[2];
};
static_assert(sizeof(BlockQ6_K) == 210);

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;  // GGUF is little-endian, as are all hosts we build for
}

inline float LoadHalf(const uint8_t* p) { return HalfToFloat(LoadU16(p)); }

void DequantF16(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(LoadU16(src + 2 * i));
}

void DequantBf16(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(LoadU16(src + 2 * i));
}

void DequantQ4_0(const BlockQ4_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = LoadHalf(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = (b[i].qs[j] & 0x0F) - 8;
      const int x1 = (b[i].qs[j] >> 4) - 8;
      y[j] = static_cast<float>(x0) * d;
      y[j + kQK / 2] = static_cast<float>(x1) * d;
    }
  }
}

void DequantQ4_1(const BlockQ4_1* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = LoadHalf(b[i].d);
    const float m = LoadHalf(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = b[i].qs[j] & 0x0F;
      const int x1 = b[i].qs[j] >> 4;
      y[j] = static_cast<float>(x0) * d + m;
      y[j + kQK / 2] = static_cast<float>(x1) * d + m;
    }
  }
}

inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void DequantQ5_0(const BlockQ5_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = LoadHalf(b[i].d);
    const uint32_t qh = LoadU32(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int h0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int h1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      const int x0 = ((b[i].qs[j] & 0x0F) | h0) - 16;
      const int x1 = ((b[i].qs[j] >> 4) | h1) - 16;
      y[j] = static_cast<float>(x0) * d;
      y[j + kQK / 2] = static_cast<float>(x1) * d;
    }
  }
}

void DequantQ5_1(const BlockQ5_1* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = LoadHalf(b[i].d);
    const float m = LoadHalf(b[i].m);
    const uint32_t qh = LoadU32(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int h0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int h1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      const int x0 = (b[i].qs[j] & 0x0F) | h0;
      const int x1 = (b[i].qs[j] >> 4) | h1;
      y[j] = static_cast<float>(x0) * d + m;
      y[j + kQK / 2] = static_cast<float>(x1) * d + m;
    }
  }
}

void DequantQ8_0(const BlockQ8_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = LoadHalf(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

// Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block. Bytes 0..3
// hold sc[0..3] in bits 0..5, bytes 4..7 m[0..3]; sub-blocks 4..7 keep their low 4 bits in the
// nibbles of bytes 8..11 and their top 2 bits in bits 6..7 of bytes 0..7.
inline void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void DequantQ4K(const BlockQ4_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = LoadHalf(b[i].d);
    const float dmin = LoadHalf(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(2 * g, b[i].scales, &sc0, &m0);
      ScaleMinK4(2 * g + 1, b[i].scales, &sc1, &m1);
      const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
      for (int l = 0; l < 32; ++l) y[l] = d0 * static_cast<float>(q[l] & 0x0F) - min0;
      for (int l = 0; l < 32; ++l) y[32 + l] = d1 * static_cast<float>(q[l] >> 4) - min1;
      y += 64;
    }
  }
}

void DequantQ5K(const BlockQ5_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = LoadHalf(b[i].d);
    const float dmin = LoadHalf(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    const uint8_t* qh = b[i].qh;
    for (int g = 0; g < 4; ++g, ql += 32) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(2 * g, b[i].scales, &sc0, &m0);
      ScaleMinK4(2 * g + 1, b[i].scales, &sc1, &m1);
      const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
      const int bit0 = 2 * g, bit1 = 2 * g + 1;
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] & 0x0F) | (((qh[l] >> bit0) & 1) << 4);
        y[l] = d0 * static_cast<float>(q) - min0;
      }
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] >> 4) | (((qh[l] >> bit1) & 1) << 4);
        y[32 + l] = d1 * static_cast<float>(q) - min1;
      }
      y += 64;
    }
  }
}

// Each half of 128 elements uses 64 bytes of ql, 32 of qh and 8 scales. For l in 0..31, the four
// elements l, l+32, l+64, l+96 take the low nibble of ql[l], the low nibble of ql[l+32], the high
// nibble of ql[l], the high nibble of ql[l+32], and bit pairs 0-1, 2-3, 4-5, 6-7 of qh[l]; the
// scale index is l / 16 + {0, 2, 4, 6}.
void DequantQ6K(const BlockQ6_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = LoadHalf(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[s + 0]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[s + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[s + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[s + 6]) * static_cast<float>(q4);
      }
    }
  }
}

// Debian 12's abseil has its own absl::string_view, which StrCat takes but std::string_view
// does not convert to.
std::string TypeName(const std::optional<GgmlTypeTraits>& traits) {
  return traits ? std::string(traits->name) : std::string("unknown");
}

template <typename Block>
const Block* As(const void* src) {
  return static_cast<const Block*>(src);
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    // Inf or NaN. The payload is widened unchanged (a signalling NaN stays signalling), as
    // numpy does; F16C hardware would quiet it. Weights never hold NaN.
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: mant * 2^-24, exact in float (mant < 2^10).
    bits = sign | std::bit_cast<uint32_t>(static_cast<float>(mant) * 0x1p-24f);
  }
  return std::bit_cast<float>(bits);
}

float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToHalf(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {  // inf, or NaN: keep the top payload bits and force quiet
    if (x == 0x7F800000u) return sign | 0x7C00u;
    return sign | 0x7E00u | static_cast<uint16_t>((x >> 13) & 0x3FFu);
  }
  // 65520 is halfway between the largest half (65504) and 2^16; ties go to the even
  // neighbour, 2^16, which overflows.
  if (x >= 0x477FF000u) return sign | 0x7C00u;
  if (x < 0x38800000u) {  // below 2^-14: result is subnormal (or zero) in units of 2^-24
    const uint32_t e = x >> 23;
    if (e < 102) return sign;  // < 2^-25, at most half of the smallest subnormal: zero
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;  // value = m * 2^(e - 150)
    const uint32_t shift = 126 - e;                  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1))) ++q;  // may carry into 2^-14: correct
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t h = ((((x >> 23) - (127 - 15))) << 10) | ((x >> 13) & 0x3FFu);
  const uint32_t rem = x & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // a carry bumps the exponent: correct
  return sign | static_cast<uint16_t>(h);
}

uint16_t FloatToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: truncate and force quiet (as ggml does)
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  // Round to nearest even; overflow of the largest finite values to inf is correct rounding.
  return static_cast<uint16_t>((static_cast<uint64_t>(x) + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

absl::Status Dequantize(GgmlType type, const void* src, int64_t n, float* dst) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits || !traits->can_dequantize) {
    return absl::UnimplementedError(absl::StrCat("dequantize: ggml type ", TypeName(traits), " (",
                                                 static_cast<uint32_t>(type),
                                                 ") is not supported"));
  }
  if (n < 0 || n % traits->block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("dequantize: ", n, " elements of ",
                                                   TypeName(traits), " is not a whole number of ",
                                                   traits->block_size, "-element blocks"));
  }
  if (n == 0) return absl::OkStatus();
  const int64_t nb = n / traits->block_size;
  const auto* bytes = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case GgmlType::kF16:
      DequantF16(bytes, n, dst);
      break;
    case GgmlType::kBF16:
      DequantBf16(bytes, n, dst);
      break;
    case GgmlType::kQ4_0:
      DequantQ4_0(As<BlockQ4_0>(src), nb, dst);
      break;
    case GgmlType::kQ4_1:
      DequantQ4_1(As<BlockQ4_1>(src), nb, dst);
      break;
    case GgmlType::kQ5_0:
      DequantQ5_0(As<BlockQ5_0>(src), nb, dst);
      break;
    case GgmlType::kQ5_1:
      DequantQ5_1(As<BlockQ5_1>(src), nb, dst);
      break;
    case GgmlType::kQ8_0:
      DequantQ8_0(As<BlockQ8_0>(src), nb, dst);
      break;
    case GgmlType::kQ4_K:
      DequantQ4K(As<BlockQ4_K>(src), nb, dst);
      break;
    case GgmlType::kQ5_K:
      DequantQ5K(As<BlockQ5_K>(src), nb, dst);
      break;
    case GgmlType::kQ6_K:
      DequantQ6K(As<BlockQ6_K>(src), nb, dst);
      break;
    default:
      // can_dequantize in ggml_type.cc and this switch disagree: a programming error, but
      // still reported rather than crashing.
      return absl::InternalError(
          absl::StrCat("dequantize: no kernel for ggml type ", TypeName(traits)));
  }
  return absl::OkStatus();
}

}  // namespace semshare::engine
