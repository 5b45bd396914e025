// Scalar reference of the int8 dot kernels (quant_dot.h): the specification the SIMD kernels
// are tested against, and the kernel on CPUs without AVX2. Block layouts are ggml's, as
// engine/model/dequant.cc documents them; codes are unpacked to small integers per block of 32
// and dotted exactly in int32.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/cpu/quant_dot.h"
#include "engine/model/dequant.h"

namespace semshare::engine {
namespace {

inline float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return HalfToFloat(h);
}

inline int32_t Code(const Q8Block& a, int j) { return 16384 * a.q[j] + 128 * a.mid[j] + a.lo[j]; }

// sum_j u_j v_j over n codes from element `at` of block a (int64: reaches 255 * 2^21 * 32).
inline int64_t DotCodes(const uint8_t* u, const Q8Block& a, int at, int n) {
  int64_t s = 0;
  for (int j = 0; j < n; ++j) s += static_cast<int64_t>(u[j]) * Code(a, at + j);
  return s;
}

// Accumulates float terms and the sum of their magnitudes.
struct Acc {
  float sum = 0.0f;
  double abs = 0.0;
  void Add(float t) {
    sum += t;
    abs += std::fabs(static_cast<double>(t));
  }
};

// Q4_0 (18 bytes: f16 d, 16 nibble bytes) and Q4_1 (20: f16 d, f16 m, nibbles); element j < 16
// is the low nibble of byte j, element j + 16 its high nibble.
float DotQ4(const uint8_t* w, const Q8Block* a, int64_t k, bool with_min, double* abs_sum) {
  const int64_t nb = k / 32, bytes = with_min ? 20 : 18;
  Acc acc, off;
  for (int64_t b = 0; b < nb; ++b, w += bytes) {
    const uint8_t* qs = w + (with_min ? 4 : 2);
    uint8_t u[32];
    for (int j = 0; j < 16; ++j) {
      u[j] = qs[j] & 0x0F;
      u[j + 16] = qs[j] >> 4;
    }
    const float c = LoadHalf(w) * a[b].d;
    acc.Add(c * static_cast<float>(DotCodes(u, a[b], 0, 32)));
    if (with_min) {
      off.Add(LoadHalf(w + 2) * a[b].dsum);
    } else {
      off.Add(c * static_cast<float>(a[b].sum16[0] + a[b].sum16[1]));
    }
  }
  if (abs_sum != nullptr) *abs_sum = acc.abs + (with_min ? 1.0 : 8.0) * off.abs;
  return with_min ? acc.sum + off.sum : acc.sum - 8.0f * off.sum;
}

// Q5_0 (22 bytes: f16 d, u32 qh, nibbles) and Q5_1 (24: f16 d, f16 m, qh, nibbles): element e's
// fifth bit is bit e of qh.
float DotQ5(const uint8_t* w, const Q8Block* a, int64_t k, bool with_min, double* abs_sum) {
  const int64_t nb = k / 32, bytes = with_min ? 24 : 22;
  Acc acc, off;
  for (int64_t b = 0; b < nb; ++b, w += bytes) {
    uint32_t qh;
    std::memcpy(&qh, w + (with_min ? 4 : 2), 4);
    const uint8_t* qs = w + (with_min ? 8 : 6);
    uint8_t u[32];
    for (int j = 0; j < 16; ++j) {
      u[j] = static_cast<uint8_t>((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4));
      u[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
    const float c = LoadHalf(w) * a[b].d;
    acc.Add(c * static_cast<float>(DotCodes(u, a[b], 0, 32)));
    if (with_min) {
      off.Add(LoadHalf(w + 2) * a[b].dsum);
    } else {
      off.Add(c * static_cast<float>(a[b].sum16[0] + a[b].sum16[1]));
    }
  }
  if (abs_sum != nullptr) *abs_sum = acc.abs + (with_min ? 1.0 : 16.0) * off.abs;
  return with_min ? acc.sum + off.sum : acc.sum - 16.0f * off.sum;
}

// Q8_0 (34 bytes: f16 d, 32 signed bytes).
float DotQ8_0(const uint8_t* w, const Q8Block* a, int64_t k, double* abs_sum) {
  const int64_t nb = k / 32;
  Acc acc;
  for (int64_t b = 0; b < nb; ++b, w += 34) {
    // sum w q = sum (w + 128) q - 128 sum q: an unsigned x signed product. GCC 12 at -O3 with
    // AVX512-VNNI vectorises a plain int8 x int8 sum into vpdpbusd (unsigned x signed), which
    // is wrong for negative weights; this form is what that instruction computes.
    int64_t s = 0;
    for (int j = 0; j < 32; ++j) {
      s += static_cast<int64_t>(static_cast<uint8_t>(w[2 + j] ^ 0x80)) * Code(a[b], j);
    }
    s -= int64_t{128} * (a[b].sum16[0] + a[b].sum16[1]);
    acc.Add(LoadHalf(w) * a[b].d * static_cast<float>(s));
  }
  if (abs_sum != nullptr) *abs_sum = acc.abs;
  return acc.sum;
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (dequant.cc ScaleMinK4).
inline void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (144 bytes: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes) and Q5_K (176: the same
// with 32 bytes qh before the nibbles). Sub-block 2g is the low nibbles of qs[32g .. 32g+31],
// 2g+1 the high ones; Q5_K's fifth bit of element l of sub-block s is bit s of qh[l].
float DotK45(const uint8_t* w, const Q8Block* a, int64_t k, bool five, double* abs_sum) {
  const int64_t nsb = k / 256, bytes = five ? 176 : 144;
  Acc acc, off;
  for (int64_t sb = 0; sb < nsb; ++sb, w += bytes, a += 8) {
    const float d = LoadHalf(w), dmin = LoadHalf(w + 2);
    const uint8_t* scales = w + 4;
    const uint8_t* qh = w + 16;
    const uint8_t* qs = w + (five ? 48 : 16);
    for (int s = 0; s < 8; ++s) {
      const uint8_t* q = qs + 32 * (s / 2);
      uint8_t u[32];
      for (int l = 0; l < 32; ++l) {
        u[l] = (s % 2 == 0) ? (q[l] & 0x0F) : (q[l] >> 4);
        if (five) u[l] |= static_cast<uint8_t>(((qh[l] >> s) & 1) << 4);
      }
      int sc, m;
      ScaleMinK4(s, scales, &sc, &m);
      acc.Add(d * static_cast<float>(sc) * a[s].d * static_cast<float>(DotCodes(u, a[s], 0, 32)));
      off.Add(dmin * static_cast<float>(m) * a[s].dsum);
    }
  }
  if (abs_sum != nullptr) *abs_sum = acc.abs + off.abs;
  return acc.sum - off.sum;
}

// Q6_K (210 bytes: ql[128], qh[64], int8 scales[16], f16 d). Per half h of 128 elements (ql +
// 64h, qh + 32h, scales + 8h), chunk c of 32 elements takes the low (c = 0, 1) or high (c = 2,
// 3) nibbles of ql[32 (c % 2) + l] and bits 2c, 2c+1 of qh[l]; its two 16-element groups have
// scales 2c and 2c + 1 of the half. x = d * sc * (u - 32).
float DotQ6K(const uint8_t* w, const Q8Block* a, int64_t k, double* abs_sum) {
  const int64_t nsb = k / 256;
  Acc acc, off;
  for (int64_t sb = 0; sb < nsb; ++sb, w += 210) {
    const float d = LoadHalf(w + 208);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = w + 64 * h;
      const uint8_t* qh = w + 128 + 32 * h;
      const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192) + 8 * h;
      for (int c = 0; c < 4; ++c, ++a) {
        uint8_t u[32];
        for (int l = 0; l < 32; ++l) {
          const uint8_t lo = ql[32 * (c % 2) + l];
          u[l] = static_cast<uint8_t>((c < 2 ? (lo & 0x0F) : (lo >> 4)) |
                                      (((qh[l] >> (2 * c)) & 3) << 4));
        }
        for (int g = 0; g < 2; ++g) {
          const float cg = d * static_cast<float>(sc[2 * c + g]) * a->d;
          acc.Add(cg * static_cast<float>(DotCodes(u + 16 * g, *a, 16 * g, 16)));
          off.Add(cg * static_cast<float>(a->sum16[g]));
        }
      }
    }
  }
  if (abs_sum != nullptr) *abs_sum = acc.abs + 32.0 * off.abs;
  return acc.sum - 32.0f * off.sum;
}

}  // namespace

void QuantizeRowQ8(const float* x, int64_t k, Q8Block* out) {
  // Written to vectorise (no libm rounding call, shifts instead of division): rounding half
  // away from zero by truncation of x * id +- 0.5, and hi = floor((v + 64) / 128).
  for (int64_t b = 0; b < k / kQ8Block; ++b, x += kQ8Block) {
    float amax = 0.0f;
    for (int j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / static_cast<float>(kQ8Max);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    Q8Block& o = out[b];
    int32_t v[kQ8Block];
    for (int j = 0; j < kQ8Block; ++j) {
      const float t = x[j] * id;
      // |t| <= kQ8Max up to a rounding of id; the clamp keeps hi within int8.
      v[j] = std::clamp(static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f)), -kQ8Max, kQ8Max);
    }
    int32_t s0 = 0, s1 = 0;
    for (int j = 0; j < kQ8Block; ++j) {
      // Arithmetic shifts floor: hi = floor((v + 8192) / 16384), then the same split of the
      // rest (|rest| <= 8192) by 128, so |mid|, |lo| <= 64.
      const int32_t hi = (v[j] + 8192) >> 14;
      const int32_t rest = v[j] - 16384 * hi;
      const int32_t mid = (rest + 64) >> 7;
      o.q[j] = static_cast<int8_t>(hi);
      o.mid[j] = static_cast<int8_t>(mid);
      o.lo[j] = static_cast<int8_t>(rest - 128 * mid);
    }
    for (int j = 0; j < 16; ++j) s0 += v[j];
    for (int j = 16; j < 32; ++j) s1 += v[j];
    o.d = d;
    o.sum16[0] = s0;
    o.sum16[1] = s1;
    o.dsum = d * static_cast<float>(s0 + s1);
  }
}

bool HasQuantDot(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

float QuantDotRef(GgmlType type, const uint8_t* w, const Q8Block* a, int64_t k, double* abs_sum) {
  switch (type) {
    case GgmlType::kQ4_0:
      return DotQ4(w, a, k, false, abs_sum);
    case GgmlType::kQ4_1:
      return DotQ4(w, a, k, true, abs_sum);
    case GgmlType::kQ5_0:
      return DotQ5(w, a, k, false, abs_sum);
    case GgmlType::kQ5_1:
      return DotQ5(w, a, k, true, abs_sum);
    case GgmlType::kQ8_0:
      return DotQ8_0(w, a, k, abs_sum);
    case GgmlType::kQ4_K:
      return DotK45(w, a, k, false, abs_sum);
    case GgmlType::kQ5_K:
      return DotK45(w, a, k, true, abs_sum);
    case GgmlType::kQ6_K:
      return DotQ6K(w, a, k, abs_sum);
    default:
      return 0.0f;
  }
}

namespace {

template <GgmlType T>
float RefKernel(const uint8_t* w, const Q8Block* a, int64_t k) {
  return QuantDotRef(T, w, a, k, nullptr);
}

QuantDotFn ScalarKernel(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
      return &RefKernel<GgmlType::kQ4_0>;
    case GgmlType::kQ4_1:
      return &RefKernel<GgmlType::kQ4_1>;
    case GgmlType::kQ5_0:
      return &RefKernel<GgmlType::kQ5_0>;
    case GgmlType::kQ5_1:
      return &RefKernel<GgmlType::kQ5_1>;
    case GgmlType::kQ8_0:
      return &RefKernel<GgmlType::kQ8_0>;
    case GgmlType::kQ4_K:
      return &RefKernel<GgmlType::kQ4_K>;
    case GgmlType::kQ5_K:
      return &RefKernel<GgmlType::kQ5_K>;
    case GgmlType::kQ6_K:
      return &RefKernel<GgmlType::kQ6_K>;
    default:
      return nullptr;
  }
}

}  // namespace

std::string_view DotIsaName(DotIsa isa) {
  switch (isa) {
    case DotIsa::kAvx512Vnni:
      return "avx512vnni";
    case DotIsa::kAvx2:
      return "avx2";
    case DotIsa::kScalar:
      break;
  }
  return "scalar";
}

DotIsa BestDotIsa() {
  static const DotIsa best = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") &&
        quant_dot_internal::Avx512VnniKernel(GgmlType::kQ4_0) != nullptr) {
      return DotIsa::kAvx512Vnni;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        quant_dot_internal::Avx2Kernel(GgmlType::kQ4_0) != nullptr) {
      return DotIsa::kAvx2;
    }
#endif
    return DotIsa::kScalar;
  }();
  return best;
}

QuantDotFn GetQuantDot(GgmlType type, DotIsa isa) {
  QuantDotFn f = nullptr;
  if (isa == DotIsa::kAvx512Vnni) f = quant_dot_internal::Avx512VnniKernel(type);
  if (f == nullptr && isa != DotIsa::kScalar) f = quant_dot_internal::Avx2Kernel(type);
  if (f == nullptr) f = ScalarKernel(type);
  return f;
}

}  // namespace semshare::engine
