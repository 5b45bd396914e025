// Helpers for the CUDA tests: GpuTest, the base of every CUDA fixture (skips without a device,
// or FAILS when SEMSHARE_REQUIRE_GPU=1, as scripts/gpu-check sets it, so that a machine whose
// driver does not work cannot pass the check by skipping; the test's seed, replayable with
// SEMSHARE_TEST_SEED=N and printed again when the test fails), CudaTest (GpuTest with a
// context), device buffers from host vectors (and back), NaN poisoning of outputs, bf16 rounding
// on the host and the relative error ||a - ref|| / ||ref|| (METHOD.md's measure; any NaN or inf
// in `a` fails).
#ifndef SEMSHARE_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define SEMSHARE_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/cuda_context.h"

namespace semshare::testing {

using bf16 = __nv_bfloat16;

inline float RoundBf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

inline std::vector<bf16> ToBf16(const std::vector<float>& v) {
  std::vector<bf16> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16_rn(v[i]);
  return o;
}

inline std::vector<float> FromBf16(const std::vector<bf16>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __bfloat162float(v[i]);
  return o;
}

// Rounds every element to bf16 (the value the device sees).
inline std::vector<float> Bf16Values(std::vector<float> v) {
  for (float& x : v) x = RoundBf16(x);
  return v;
}

// Relative L2 error; +inf when `a` holds a NaN/inf or the sizes differ.
template <typename A, typename R>
double RelErr(const std::vector<A>& a, const std::vector<R>& ref) {
  if (a.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(a[i]), r = static_cast<double>(ref[i]);
    if (!std::isfinite(x)) return std::numeric_limits<double>::infinity();
    num += (x - r) * (x - r);
    den += r * r;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Every element of the test's output regions must have been written (poison is NaN) and the
// padding around them left alone.
inline bool AllNan(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}

inline std::vector<float> Uniform(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// SEMSHARE_REQUIRE_GPU=1 (scripts/gpu-check): a missing device is a failure, not a skip.
inline bool GpuRequired() {
  const char* v = std::getenv("SEMSHARE_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// The seed of a test's random inputs: SEMSHARE_TEST_SEED when set (a failure's seed replayed),
// else fresh from random_device. A malformed SEMSHARE_TEST_SEED is reported, not ignored.
inline bool TestSeed(uint64_t* seed, std::string* error) {
  const char* v = std::getenv("SEMSHARE_TEST_SEED");
  if (v == nullptr || *v == '\0') {
    *seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    return true;
  }
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0') {
    *error = std::string("SEMSHARE_TEST_SEED is not an unsigned decimal integer: '") + v + "'";
    return false;
  }
  *seed = x;
  return true;
}

// Base of every CUDA fixture. Derived SetUp()s call GpuTest::SetUp() first and return when
// IsSkipped() || HasFatalFailure().
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (engine::cuda::DeviceCount() == 0) {
      if (GpuRequired()) {
        FAIL() << "no CUDA device visible and SEMSHARE_REQUIRE_GPU=1 (a skip would read as a pass)";
      }
      GTEST_SKIP() << "no CUDA device visible (SEMSHARE_REQUIRE_GPU=1 makes this a failure)";
    }
    std::string error;
    ASSERT_TRUE(TestSeed(&seed_, &error)) << error;
    seeded_ = true;
    std::printf("seed %llu\n", static_cast<unsigned long long>(seed_));
  }
  void TearDown() override {
    if (seeded_ && HasFailure()) {
      const ::testing::TestInfo* t = ::testing::UnitTest::GetInstance()->current_test_info();
      std::printf("replay: SEMSHARE_TEST_SEED=%llu <this binary> --gtest_filter=%s.%s\n",
                  static_cast<unsigned long long>(seed_), t->test_suite_name(), t->name());
    }
  }
  uint64_t seed_ = 0;
  bool seeded_ = false;  // SetUp got as far as the seed (a skip or missing device did not)
};

class CudaTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto c = engine::cuda::CudaContext::Create(0);
    ASSERT_TRUE(c.ok()) << c.status();
    ctx_ = std::move(*c);
  }

  template <typename T>
  engine::cuda::DeviceBuffer Up(const std::vector<T>& v) {
    auto b = ctx_->pool().Allocate(static_cast<int64_t>(std::max<size_t>(v.size(), 1) * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status();
    if (!v.empty()) {
      Settle();  // a pooled block may still be in use by a kernel on the context's stream
      EXPECT_EQ(cudaMemcpy(b->data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
      Settle();
    }
    return std::move(*b);
  }

  // An output buffer of n elements filled with 0xFF bytes (NaN for float and bf16), so any
  // element the kernel fails to write shows as NaN.
  template <typename T>
  engine::cuda::DeviceBuffer Poisoned(size_t n) {
    auto b = ctx_->pool().Allocate(static_cast<int64_t>(std::max<size_t>(n, 1) * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status();
    Settle();
    EXPECT_EQ(cudaMemset(b->data(), 0xFF, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    Settle();
    return std::move(*b);
  }

  // cudaMemcpy from pageable memory and cudaMemset may return before the device has finished
  // them, and they run on the legacy default stream, which does not order with the context's
  // cudaStreamNonBlocking stream: without this, a kernel could read the input before it lands,
  // or the NaN poison could land on top of the kernel's output (or on a pooled block a
  // previous kernel still uses). A device-wide synchronisation orders both.
  static void Settle() { EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

  template <typename T>
  std::vector<T> Down(const engine::cuda::DeviceBuffer& b, size_t n) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (n > 0) {
      EXPECT_EQ(cudaMemcpy(v.data(), b.data(), n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return v;
  }

  std::vector<float> DownBf16(const engine::cuda::DeviceBuffer& b, size_t n) {
    return FromBf16(Down<bf16>(b, n));
  }

  cudaStream_t stream() const { return ctx_->stream(); }

  std::unique_ptr<engine::cuda::CudaContext> ctx_;
};

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_CUDA_CUDA_TEST_UTIL_H_
