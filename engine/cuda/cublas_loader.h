// cuBLAS, loaded on first use instead of at process start. Linking libcublas makes the dynamic
// loader map libcublasLt with it, and that load alone leaves ~148 MiB resident (its relocated
// tables: measured by loading the library into an empty process), which every semshare-server
// paid even on the CPU backend. The CUDA backend calls these eight entry points through the
// table below; the library is opened (dlopen) when the first CudaContext is created.
#ifndef SEMSHARE_ENGINE_CUDA_CUBLAS_LOADER_H_
#define SEMSHARE_ENGINE_CUDA_CUBLAS_LOADER_H_

#include <cublas_v2.h>

#include "absl/status/statusor.h"

namespace semshare::engine::cuda {

struct CublasApi {
  decltype(&::cublasCreate_v2) create = nullptr;
  decltype(&::cublasDestroy_v2) destroy = nullptr;
  decltype(&::cublasSetStream_v2) set_stream = nullptr;
  decltype(&::cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&::cublasGetMathMode) get_math_mode = nullptr;
  decltype(&::cublasSetMathMode) set_math_mode = nullptr;
  // The exported C entry point (the header's C++ overload taking a cudaDataType compute type is
  // an inline wrapper).
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  decltype(&::cublasSgemm_v2) sgemm = nullptr;
};

// The table, loading libcublas.so.<major of the headers> on the first call (thread-safe; later
// calls return the same table or the same error). FailedPrecondition, naming the library and
// dlerror(), when it cannot be opened or lacks an entry point.
absl::StatusOr<const CublasApi*> LoadCublas();

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_CUBLAS_LOADER_H_
