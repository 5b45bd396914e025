// Device memory with exact accounting. DevicePool hands out DeviceBuffers (move-only RAII)
// and caches freed blocks by size class so that a request's per-layer scratch does not
// cudaMalloc on the hot path. Accounting, in bytes:
//   used  - sum of the sizes callers asked for, of live buffers (what metrics report as GPU
//           memory in use by the engine);
//   peak  - the largest `used` seen since construction or ResetPeak();
//   reserved - bytes held from cudaMalloc (live blocks plus the cache, rounded sizes);
//   total - the device's memory (cudaMemGetInfo), for context.
// Thread-safe (one mutex); buffers must be freed before the pool is destroyed.
//
// Failure injection (tests, and a server run under SEMSHARE_CUDA_FAIL_ALLOC): an out-of-memory
// path is otherwise reachable only on a full device. InjectFailures(after, count) makes the
// Allocate calls number after+1 .. after+count from now (cache hits included, empty requests
// not counted) return ResourceExhausted without touching the device. The environment variable
// SEMSHARE_CUDA_FAIL_ALLOC="after[:count]" (count 1 when omitted) arms every new pool so.
#ifndef SEMSHARE_ENGINE_CUDA_DEVICE_POOL_H_
#define SEMSHARE_ENGINE_CUDA_DEVICE_POOL_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace semshare::engine::cuda {

class DevicePool;

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  int64_t bytes() const { return bytes_; }
  bool empty() const { return ptr_ == nullptr; }
  void Reset();  // returns the block to its pool

 private:
  friend class DevicePool;
  DevicePool* pool_ = nullptr;
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;     // requested
  int64_t capacity_ = 0;  // rounded block size
};

struct PoolStats {
  int64_t used = 0;
  int64_t peak = 0;
  int64_t reserved = 0;
  int64_t total = 0;
  int64_t allocations = 0;  // cudaMalloc calls
};

class DevicePool {
 public:
  DevicePool();   // armed per SEMSHARE_CUDA_FAIL_ALLOC when set
  ~DevicePool();  // releases the cache
  // The device whose memory this pool holds: made current around cudaMalloc / cudaFree /
  // cudaMemGetInfo, so a pool serves any host thread. -1 (default): the thread's current device.
  void BindDevice(int device) { device_ = device; }
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A buffer of `bytes` (256-byte aligned); ResourceExhausted when the device has no room even
  // after the cache is released. bytes == 0 gives an empty buffer.
  absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes);
  // Grows `buf` to at least `bytes` (contents not kept); no-op when big enough. The new block is
  // asked for while `buf` still holds the old one; only when that fails is the old one released
  // and the request retried. So on an error `buf` is either unchanged or empty, never a
  // dangling pointer, but callers that cached "buf holds N bytes" must drop that belief.
  absl::Status EnsureSize(DeviceBuffer& buf, int64_t bytes);
  // See the file comment. count 0 disarms.
  void InjectFailures(int64_t after, int64_t count);
  // Allocate calls that failed by injection so far.
  int64_t injected_failures() const;
  PoolStats Stats() const;
  void ResetPeak();
  // cudaFree of every cached (unused) block.
  void ReleaseCache();
  // Bytes a request of `bytes` takes from the device (its size class: 256-byte granules below
  // 1 MiB, then 1/8 steps of the power of two), for callers that size one large buffer to fit.
  static int64_t RoundUp(int64_t bytes);

 private:
  friend class DeviceBuffer;
  void Free(void* ptr, int64_t bytes, int64_t capacity);

  int device_ = -1;
  mutable std::mutex mu_;
  std::multimap<int64_t, void*> cache_;  // capacity -> free block
  int64_t used_ = 0, peak_ = 0, reserved_ = 0, allocations_ = 0;
  int64_t fail_after_ = 0, fail_count_ = 0, injected_ = 0;  // InjectFailures
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_DEVICE_POOL_H_
