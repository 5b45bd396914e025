// Tests of engine/model/dequant.h on hand-built blocks. Expected values are derived here from the
// documented block layouts, element by element (independently of the loops in dequant.cc), with
// scales chosen so that every product is exact in float: the comparisons are exact.
// tests/oracle/dequant_oracle_test.py compares random blocks against gguf-py.
#include "engine/model/dequant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace semshare::engine {
namespace {

using ::testing::HasSubstr;

constexpr uint16_t kHalfOne = 0x3C00;

void PutU16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(&b[at], &v, 2); }

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

// Runs Dequantize and reports the first differing element on mismatch.
void ExpectDequant(GgmlType type, const std::vector<uint8_t>& raw, const std::vector<float>& want) {
  std::vector<float> got(want.size(), -12345.0f);
  ASSERT_TRUE(Dequantize(type, raw.data(), static_cast<int64_t>(want.size()), got.data()).ok());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
        << "element " << i << ": got " << got[i] << ", want " << want[i];
  }
}

// The inputs must not be trivial (e.g. all zeros), or the test could pass by accident.
void ExpectVaried(const std::vector<float>& v) {
  float lo = v[0], hi = v[0];
  for (float x : v) lo = std::min(lo, x), hi = std::max(hi, x);
  ASSERT_LT(lo, hi);
  ASSERT_LT(lo, 0.0f);
}

TEST(DequantTest, Q8_0) {
  std::vector<uint8_t> raw(2 * 34);
  std::vector<float> want;
  PutU16(raw, 0, 0x3800);   // 0.5
  PutU16(raw, 34, 0xC400);  // -4.0
  const float d[2] = {0.5f, -4.0f};
  for (int b = 0; b < 2; ++b) {
    for (int j = 0; j < 32; ++j) {
      const int8_t q = static_cast<int8_t>(j * 9 - 128 + b);
      raw[b * 34 + 2 + j] = static_cast<uint8_t>(q);
      want.push_back(static_cast<float>(q) * d[b]);
    }
  }
  EXPECT_EQ(want[0], -64.0f);  // -128 * 0.5
  ExpectVaried(want);
  ExpectDequant(GgmlType::kQ8_0, raw, want);
}

TEST(DequantTest, Q4_0) {
  std::vector<uint8_t> raw = RandomBytes(18, 1);
  PutU16(raw, 0, 0x3400);  // 0.25
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) {
    want[j] = ((raw[2 + j] & 0xF) - 8) * 0.25f;
    want[j + 16] = ((raw[2 + j] >> 4) - 8) * 0.25f;
  }
  ExpectVaried(want);
  ExpectDequant(GgmlType::kQ4_0, raw, want);
}

TEST(DequantTest, Q4_1) {
  std::vector<uint8_t> raw(20);
  PutU16(raw, 0, 0x3800);  // d = 0.5
  PutU16(raw, 2, 0xBE00);  // m = -1.5
  for (int j = 0; j < 16; ++j) raw[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) {
    want[j] = j * 0.5f - 1.5f;
    want[j + 16] = (15 - j) * 0.5f - 1.5f;
  }
  EXPECT_EQ(want[0], -1.5f);
  EXPECT_EQ(want[15], 6.0f);
  ExpectDequant(GgmlType::kQ4_1, raw, want);
}

TEST(DequantTest, Q5_0AndQ5_1) {
  std::vector<uint8_t> r0 = RandomBytes(22, 2);
  PutU16(r0, 0, 0x4000);  // d = 2
  const uint32_t qh = 0xA5C3F00Fu;
  std::memcpy(&r0[2], &qh, 4);
  std::vector<float> want0(32);
  for (int j = 0; j < 32; ++j) {
    const int nib = j < 16 ? (r0[6 + j] & 0xF) : (r0[6 + j - 16] >> 4);
    const int q = nib | static_cast<int>((qh >> j) & 1) << 4;
    want0[j] = (q - 16) * 2.0f;
  }
  ExpectVaried(want0);
  ExpectDequant(GgmlType::kQ5_0, r0, want0);

  std::vector<uint8_t> r1 = RandomBytes(24, 3);
  PutU16(r1, 0, 0x3400);  // d = 0.25
  PutU16(r1, 2, 0xC500);  // m = -5
  std::memcpy(&r1[4], &qh, 4);
  std::vector<float> want1(32);
  for (int j = 0; j < 32; ++j) {
    const int nib = j < 16 ? (r1[8 + j] & 0xF) : (r1[8 + j - 16] >> 4);
    const int q = nib | static_cast<int>((qh >> j) & 1) << 4;
    want1[j] = q * 0.25f - 5.0f;
  }
  ExpectVaried(want1);
  ExpectDequant(GgmlType::kQ5_1, r1, want1);
}

// The 12-byte scale/min packing of Q4_K and Q5_K, written from its description: bytes 0..3 hold
// sc[0..3] in bits 0..5, bytes 4..7 m[0..3]; for sub-blocks 4..7 the low 4 bits go to bytes
// 8..11 (sc low nibble, m high nibble) and the top 2 bits to bits 6..7 of bytes 0..3 (sc) and
// 4..7 (m).
void PackK4Scales(const int sc[8], const int m[8], uint8_t* out) {
  for (int i = 0; i < 4; ++i) {
    out[i] = static_cast<uint8_t>(sc[i] | ((sc[i + 4] >> 4) << 6));
    out[i + 4] = static_cast<uint8_t>(m[i] | ((m[i + 4] >> 4) << 6));
    out[i + 8] = static_cast<uint8_t>((sc[i + 4] & 0xF) | ((m[i + 4] & 0xF) << 4));
  }
}

// Values chosen to use all 6 bits (including the top bits of sub-blocks 4..7).
constexpr int kSc[8] = {1, 2, 63, 7, 17, 33, 48, 63};
constexpr int kMin[8] = {0, 5, 63, 9, 40, 16, 1, 62};

TEST(DequantTest, Q4_K) {
  std::vector<uint8_t> raw = RandomBytes(144, 4);
  PutU16(raw, 0, kHalfOne);  // d = 1
  PutU16(raw, 2, 0x3800);    // dmin = 0.5
  PackK4Scales(kSc, kMin, &raw[4]);
  std::vector<float> want(256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32;
    const uint8_t byte = raw[16 + (s / 2) * 32 + l];
    const int q = s % 2 == 0 ? (byte & 0xF) : (byte >> 4);
    want[i] = static_cast<float>(kSc[s] * q) - 0.5f * kMin[s];
  }
  ExpectVaried(want);
  ExpectDequant(GgmlType::kQ4_K, raw, want);
}

TEST(DequantTest, Q5_K) {
  std::vector<uint8_t> raw = RandomBytes(176, 5);
  PutU16(raw, 0, 0x3800);  // d = 0.5
  PutU16(raw, 2, 0x4000);  // dmin = 2
  PackK4Scales(kSc, kMin, &raw[4]);
  std::vector<float> want(256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32;
    const uint8_t byte = raw[48 + (s / 2) * 32 + l];
    const int lo = s % 2 == 0 ? (byte & 0xF) : (byte >> 4);
    const int q = lo | ((raw[16 + l] >> s) & 1) << 4;
    want[i] = 0.5f * static_cast<float>(kSc[s] * q) - 2.0f * kMin[s];
  }
  ExpectVaried(want);
  ExpectDequant(GgmlType::kQ5_K, raw, want);
}

TEST(DequantTest, Q6_K) {
  std::vector<uint8_t> raw = RandomBytes(210, 6);
  PutU16(raw, 208, 0xB800);  // d = -0.5
  // Element i: half h = i / 128 and r = i % 128, quarter k = r / 32, l = r % 32. Low 4 bits:
  // nibble (k >= 2 ? high : low) of ql[64h + 32(k % 2) + l]; high 2 bits: bits 2k..2k+1 of
  // qh[32h + l]; scale: scales[8h + 2k + l / 16]; x = d * scale * (q - 32).
  std::vector<float> want(256);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, r = i % 128, k = r / 32, l = r % 32;
    const uint8_t lbyte = raw[64 * h + 32 * (k % 2) + l];
    const int lo = k >= 2 ? (lbyte >> 4) : (lbyte & 0xF);
    const int hi = (raw[128 + 32 * h + l] >> (2 * k)) & 3;
    const int sc = static_cast<int8_t>(raw[192 + 8 * h + 2 * k + l / 16]);
    // Grouped as ggml does, (d * scale) * (q - 32): exact either way, but the grouping decides
    // the sign of a zero result (d * scale > 0 when both are negative).
    want[i] = (-0.5f * static_cast<float>(sc)) * static_cast<float>((lo | (hi << 4)) - 32);
  }
  ExpectVaried(want);
  ExpectDequant(GgmlType::kQ6_K, raw, want);
}

TEST(DequantTest, PlainTypes) {
  const std::vector<float> f = {1.0f, -2.5f, 0.0f, 1e-30f, -3.4e38f};
  std::vector<uint8_t> raw(f.size() * 4);
  std::memcpy(raw.data(), f.data(), raw.size());
  ExpectDequant(GgmlType::kF32, raw, f);

  const std::vector<uint16_t> h = {0x3C00, 0xC100, 0x0001, 0x7BFF, 0x8000};
  const std::vector<float> hf = {1.0f, -2.5f, std::ldexp(1.0f, -24), 65504.0f, -0.0f};
  std::vector<uint8_t> hraw(h.size() * 2);
  std::memcpy(hraw.data(), h.data(), hraw.size());
  ExpectDequant(GgmlType::kF16, hraw, hf);

  const std::vector<uint16_t> b = {0x3F80, 0xC020, 0x0001, 0x7F7F};
  const std::vector<float> bf = {1.0f, -2.5f, std::bit_cast<float>(0x00010000u),
                                 std::bit_cast<float>(0x7F7F0000u)};
  std::vector<uint8_t> braw(b.size() * 2);
  std::memcpy(braw.data(), b.data(), braw.size());
  ExpectDequant(GgmlType::kBF16, braw, bf);
}

// Tensor data in a file or buffer need not be aligned for the block's fields.
TEST(DequantTest, UnalignedSource) {
  std::vector<uint8_t> raw = RandomBytes(3 * 144 + 1, 7);
  for (int b = 0; b < 3; ++b) {
    PutU16(raw, 1 + b * 144, 0x3C00);
    PutU16(raw, 3 + b * 144, 0x3800);
  }
  std::vector<uint8_t> aligned(raw.begin() + 1, raw.end());
  std::vector<float> want(768), got(768);
  ASSERT_TRUE(Dequantize(GgmlType::kQ4_K, aligned.data(), 768, want.data()).ok());
  ASSERT_TRUE(Dequantize(GgmlType::kQ4_K, raw.data() + 1, 768, got.data()).ok());
  EXPECT_EQ(got, want);
}

TEST(DequantTest, Errors) {
  std::vector<uint8_t> raw(512);
  std::vector<float> dst(512, 7.0f);
  absl::Status s = Dequantize(GgmlType::kQ4_0, raw.data(), 31, dst.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not a whole number of 32-element blocks"));
  s = Dequantize(GgmlType::kQ6_K, raw.data(), 128, dst.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Q6_K"));
  EXPECT_EQ(Dequantize(GgmlType::kF32, raw.data(), -1, dst.data()).code(),
            absl::StatusCode::kInvalidArgument);
  s = Dequantize(GgmlType::kQ2_K, raw.data(), 256, dst.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("Q2_K"));
  EXPECT_EQ(Dequantize(GgmlType::kF64, raw.data(), 4, dst.data()).code(),
            absl::StatusCode::kUnimplemented);
  s = Dequantize(static_cast<GgmlType>(99), raw.data(), 4, dst.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("unknown"));
  // Errors and empty input write nothing.
  EXPECT_TRUE(Dequantize(GgmlType::kQ8_0, raw.data(), 0, dst.data()).ok());
  for (float x : dst) ASSERT_EQ(x, 7.0f);
}

// Every half value, against the IEEE binary16 definition evaluated in double.
TEST(HalfTest, HalfToFloatExhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (exp == 0x1F && mant != 0) {
      ASSERT_TRUE(std::isnan(f)) << h;
      // The payload is widened unchanged (sign, quiet bit and all).
      ASSERT_EQ(std::bit_cast<uint32_t>(f), ((h & 0x8000u) << 16) | 0x7F800000u | (mant << 13))
          << h;
      continue;
    }
    double want;
    if (exp == 0x1F) {
      want = sign * std::numeric_limits<double>::infinity();
    } else if (exp == 0) {
      want = sign * std::ldexp(static_cast<double>(mant), -24);
    } else {
      want = sign * std::ldexp(1.0 + mant / 1024.0, exp - 15);
    }
    ASSERT_EQ(static_cast<double>(f), want) << "half 0x" << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    // Every non-NaN half round-trips.
    ASSERT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h;
  }
}

// Round to nearest, ties to even, at every boundary between adjacent positive halves (the sign
// is handled separately and checked by the round-trip above and the negative cases here).
TEST(HalfTest, FloatToHalfRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    const double lo = HalfToFloat(static_cast<uint16_t>(h));
    const double hi = HalfToFloat(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: 12 significant bits
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = (h % 2 == 0) ? h : h + 1;
    ASSERT_EQ(FloatToHalf(mid), even) << "tie above half 0x" << std::hex << h;
    ASSERT_EQ(FloatToHalf(-mid), even | 0x8000) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 0.0f)), h) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 1e9f)), h + 1) << h;
  }
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7BFF);  // just below the tie with 2^16
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);    // the tie rounds to even: 2^16, i.e. inf
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::denorm_min()), 0x8000);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x3FF, 0);
  // A signalling float NaN whose payload lives only in the low bits still gives a NaN.
  const uint16_t snan = FloatToHalf(std::bit_cast<float>(0x7F800001u));
  EXPECT_EQ(snan & 0x7C00, 0x7C00);
  EXPECT_NE(snan & 0x3FF, 0);
}

#if defined(__FLT16_MAX__) && !defined(__clang__)
// A second oracle where the compiler has _Float16: its conversions are IEEE round-to-nearest.
TEST(HalfTest, FloatToHalfMatchesFloat16OnRandomFloats) {
  std::mt19937 rng(42);
  for (int i = 0; i < 200000; ++i) {
    // Exponents spread over the half range and beyond.
    std::uniform_real_distribution<float> mant(1.0f, 2.0f);
    std::uniform_int_distribution<int> ex(-30, 17);
    float f = std::ldexp(mant(rng), ex(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    const _Float16 ref = static_cast<_Float16>(f);
    ASSERT_EQ(FloatToHalf(f), std::bit_cast<uint16_t>(ref)) << f;
  }
}
#endif

TEST(Bf16Test, Conversions) {
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC020), -2.5f);
  EXPECT_TRUE(std::isinf(Bf16ToFloat(0x7F80)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC1)));
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  // Ties between neighbours 2^-7 apart go to the even one.
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(FloatToBf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3F81);
  EXPECT_EQ(FloatToBf16(-1.0f - std::ldexp(1.0f, -8)), 0xBF80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  // NaN stays NaN even when only low payload bits are set (truncation alone would give inf).
  const uint16_t nan = FloatToBf16(std::bit_cast<float>(0x7F800001u));
  EXPECT_EQ(nan & 0x7F80, 0x7F80);
  EXPECT_NE(nan & 0x7F, 0);
  // Every bf16 value except NaN round-trips.
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), b) << b;
  }
}

}  // namespace
}  // namespace semshare::engine
