// One device's execution context: the device ordinal, a compute stream and a copy stream, the
// cuBLAS handle (bound to the compute stream, with its workspace) and the memory pool. Create()
// returns an error status, never aborts, when there is no device or a call fails. Not
// thread-safe: one request's work at a time (the pool itself is thread-safe).
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_CONTEXT_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_CONTEXT_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/cuda/cublas_loader.h"
#include "engine/cuda/device_pool.h"

namespace semshare::engine::cuda {

// Number of CUDA devices, 0 when the driver or runtime is missing (never an error).
int DeviceCount();

// Makes `device` current on this thread for the guard's lifetime and restores the previous
// device after. The current device is per host thread, so every entry point of engine/cuda
// that launches, allocates or frees takes one: a context created for device 1 may be used from
// a worker thread whose current device is 0. Cheap (no call when the device is already
// current); errors are left to the first CUDA call after it, which reports them.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = -1;
};

class CudaContext {
 public:
  static absl::StatusOr<std::unique_ptr<CudaContext>> Create(int device = 0);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  // A guard that makes this context's device current (see ScopedDevice).
  ScopedDevice Activate() const { return ScopedDevice(device_); }
  const std::string& device_name() const { return name_; }
  cudaStream_t stream() const { return stream_; }
  cudaStream_t copy_stream() const { return copy_stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // cuBLAS' entry points (loaded on first use, cublas_loader.h).
  const CublasApi& blas() const { return *blas_; }
  DevicePool& pool() { return pool_; }
  int sm_count() const { return sm_count_; }

  // y[n, out] (float or bf16 per y_bf16) = alpha * x[n, in] (bf16) * w[out, in]^T (bf16) +
  // beta * y, float accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F). ldx/ldy: row strides.
  absl::Status Gemm(const void* x, int64_t ldx, int64_t n, const void* w, int64_t out, int64_t in,
                    void* y, int64_t ldy, bool y_bf16, float alpha, float beta);

  absl::Status Upload(void* dst, const void* src, int64_t bytes);    // async on stream()
  absl::Status Download(void* dst, const void* src, int64_t bytes);  // async on stream()
  absl::Status Sync();                                               // stream()
  // The first launch error or asynchronous fault, as a status (cudaGetLastError).
  absl::Status Check(const char* what);

 private:
  CudaContext() = default;
  int device_ = 0;
  std::string name_;
  int sm_count_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;
  const CublasApi* blas_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DevicePool pool_;
  DeviceBuffer cublas_workspace_;
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_CUDA_CONTEXT_H_
