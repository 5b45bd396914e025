// CUDA and cuBLAS error codes as absl::Status: nothing in engine/cuda aborts on a device
// error; each becomes Internal (or ResourceExhausted for out-of-memory) naming the call.
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_STATUS_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_STATUS_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace semshare::engine::cuda {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (e == cudaErrorInvalidValue) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

inline absl::Status CublasStatus(cublasStatus_t e, const char* what) {
  if (e == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": cuBLAS status ", static_cast<int>(e));
  if (e == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace semshare::engine::cuda

#define SEMSHARE_CUDA_RETURN(...)                                              \
  do {                                                                         \
    if (cudaError_t semshare_e_ = (__VA_ARGS__); semshare_e_ != cudaSuccess) { \
      return ::semshare::engine::cuda::CudaStatus(semshare_e_, #__VA_ARGS__);  \
    }                                                                          \
  } while (0)

#define SEMSHARE_CUBLAS_RETURN(expr)                                                 \
  do {                                                                               \
    if (cublasStatus_t semshare_e_ = (expr); semshare_e_ != CUBLAS_STATUS_SUCCESS) { \
      return ::semshare::engine::cuda::CublasStatus(semshare_e_, #expr);             \
    }                                                                                \
  } while (0)

#define SEMSHARE_STATUS_RETURN(expr)                                              \
  do {                                                                            \
    if (absl::Status semshare_s_ = (expr); !semshare_s_.ok()) return semshare_s_; \
  } while (0)

#endif  // SEMSHARE_ENGINE_CUDA_CUDA_STATUS_H_
