// Vectorisable float math for the CPU kernels' inner loops: DotF, SumF, and exp for the softmax and
// SiLU inner loops. std::exp is a library call the
// compiler cannot vectorise without -ffast-math, and at 2k-token prompts the attention softmax
// evaluates ~0.6 billion exponentials, more time than its GEMMs. This is the usual Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2/2, with a degree-6 Taylor polynomial for e^r (truncation
// error r^7/7! < 1.3e-7 relative, about one float ulp) and 2^n built in the exponent bits.
// Inputs below -87.3 return 0 (true e^x is < 1.2e-38 there); above 88.7, +inf.
#ifndef SEMSHARE_ENGINE_CPU_FAST_MATH_H_
#define SEMSHARE_ENGINE_CPU_FAST_MATH_H_

#include <bit>
#include <cmath>
#include <cstdint>

namespace semshare::engine {

inline float FastExp(float x) {
  const bool underflow = x < -87.3f;
  const bool overflow = x > 88.7f;
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // Round to nearest by adding and removing 1.5 * 2^23 (plain adds, so the loop vectorises;
  // std::floor/nearbyint would not under GCC's default -ftrapping-math).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // ln2 split in a high part exact in float and a low correction.
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  const float y = p * scale;
  return underflow ? 0.0f : (overflow ? INFINITY : y);
}

// Float dot product of n elements with 16 partial sums, which the compiler keeps in vector
// registers (a single accumulator would serialise on the add latency).
inline float DotF(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// Sum of a[0..n), 16 partial sums (vectorised like DotF).
inline float SumF(const float* a, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += a[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_FAST_MATH_H_
