#include "engine/cuda/device_pool.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cuda/cuda_context.h"
#include "engine/cuda/cuda_status.h"

namespace semshare::engine::cuda {

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    pool_ = std::exchange(o.pool_, nullptr);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    capacity_ = std::exchange(o.capacity_, 0);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr && pool_ != nullptr) pool_->Free(ptr_, bytes_, capacity_);
  pool_ = nullptr;
  ptr_ = nullptr;
  bytes_ = capacity_ = 0;
}

DevicePool::DevicePool() {
  const char* env = std::getenv("SEMSHARE_CUDA_FAIL_ALLOC");
  if (env == nullptr || *env == '\0') return;
  // "after[:count]". A malformed value arms nothing but says so: a run meant to inject
  // failures must not pass silently without them.
  const std::vector<std::string> parts = absl::StrSplit(env, ':');
  int64_t after = 0, count = 1;
  if (parts.size() > 2 || !absl::SimpleAtoi(parts[0], &after) || after < 0 ||
      (parts.size() == 2 && (!absl::SimpleAtoi(parts[1], &count) || count < 0))) {
    std::fprintf(stderr, "semshare: ignoring SEMSHARE_CUDA_FAIL_ALLOC='%s' (want after[:count])\n",
                 env);
    return;
  }
  InjectFailures(after, count);
}

DevicePool::~DevicePool() { ReleaseCache(); }

void DevicePool::InjectFailures(int64_t after, int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_after_ = std::max<int64_t>(after, 0);
  fail_count_ = std::max<int64_t>(count, 0);
}

int64_t DevicePool::injected_failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return injected_;
}

int64_t DevicePool::RoundUp(int64_t bytes) {
  // Size classes: 256-byte granules below 1 MiB, then 1/8 steps of the power of two, so a
  // growing buffer reuses blocks and waste stays under 12.5%.
  if (bytes <= (1 << 20)) return (bytes + 255) / 256 * 256;
  int64_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  const int64_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

absl::StatusOr<DeviceBuffer> DevicePool::Allocate(int64_t bytes) {
  DeviceBuffer b;
  if (bytes <= 0) return b;
  const int64_t cap = RoundUp(bytes);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_count_ > 0) {
      if (fail_after_ == 0) {
        --fail_count_;
        ++injected_;
        return absl::ResourceExhaustedError(
            absl::StrCat("cudaMalloc: ", bytes, " bytes refused (injected failure)"));
      }
      --fail_after_;
    }
    auto it = cache_.lower_bound(cap);
    // Reuse a cached block when it is not wastefully larger (at most 25% more).
    if (it != cache_.end() && it->first <= cap + cap / 4) {
      b.capacity_ = it->first;
      ptr = it->second;
      cache_.erase(it);
    }
  }
  if (ptr == nullptr) {
    std::optional<ScopedDevice> on;
    if (device_ >= 0) on.emplace(device_);
    cudaError_t e = cudaMalloc(&ptr, cap);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state of this thread
      ReleaseCache();
      e = cudaMalloc(&ptr, cap);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      return CudaStatus(e, "cudaMalloc");
    }
    b.capacity_ = cap;
    std::lock_guard<std::mutex> lock(mu_);
    reserved_ += cap;
    ++allocations_;
  }
  b.pool_ = this;
  b.ptr_ = ptr;
  b.bytes_ = bytes;
  std::lock_guard<std::mutex> lock(mu_);
  used_ += bytes;
  peak_ = std::max(peak_, used_);
  return b;
}

absl::Status DevicePool::EnsureSize(DeviceBuffer& buf, int64_t bytes) {
  if (buf.bytes() >= bytes) return absl::OkStatus();
  // The old block stays in `buf` while the new one is asked for: freeing it first left `buf`
  // empty on failure, and a caller that had sized its launches by the old size then launched
  // on a null pointer (an illegal address: a sticky error that ends every context in the
  // process).
  absl::StatusOr<DeviceBuffer> b = Allocate(bytes);
  if (!b.ok() && !buf.empty() && absl::IsResourceExhausted(b.status())) {
    // Short of memory: the old block may be what is missing. It goes to the cache, which
    // Allocate releases before its second cudaMalloc; `buf` is empty if this fails too.
    buf.Reset();
    b = Allocate(bytes);
  }
  if (!b.ok()) return b.status();
  buf = std::move(*b);
  return absl::OkStatus();
}

void DevicePool::Free(void* ptr, int64_t bytes, int64_t capacity) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ -= bytes;
  cache_.emplace(capacity, ptr);
}

PoolStats DevicePool::Stats() const {
  PoolStats s;
  size_t free_b = 0, total_b = 0;
  std::optional<ScopedDevice> on;
  if (device_ >= 0) on.emplace(device_);
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
  std::lock_guard<std::mutex> lock(mu_);
  s.used = used_;
  s.peak = peak_;
  s.reserved = reserved_;
  s.total = static_cast<int64_t>(total_b);
  s.allocations = allocations_;
  return s;
}

void DevicePool::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = used_;
}

void DevicePool::ReleaseCache() {
  std::multimap<int64_t, void*> cache;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cache.swap(cache_);
    for (const auto& [cap, p] : cache) reserved_ -= cap;
  }
  if (cache.empty()) return;
  std::optional<ScopedDevice> on;
  if (device_ >= 0) on.emplace(device_);
  for (const auto& [cap, p] : cache) cudaFree(p);
}

}  // namespace semshare::engine::cuda
