// MakeBackend (engine/backend_factory.h). Compiled in every build; the CUDA branch only when
// SEMSHARE_WITH_CUDA is defined (engine/cuda/CMakeLists.txt).
#include "engine/backend_factory.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"
#ifdef SEMSHARE_WITH_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_serving.h"
#endif

namespace semshare::engine {

bool CudaBackendBuilt() {
#ifdef SEMSHARE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view name,
                                                     const BackendOptions& options) {
  if (name == "cpu") return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
  if (name == "cuda") {
#ifdef SEMSHARE_WITH_CUDA
    auto b = cuda::CudaBackend::Create(options.device);
    if (!b.ok()) return b.status();
    return std::unique_ptr<Backend>(std::move(*b));
#else
    (void)options;
    return absl::UnimplementedError(
        "backend 'cuda': this build has no CUDA (configure with "
        "-DSEMSHARE_CUDA=ON on a machine with nvcc)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown backend '", std::string(name),
                                                 "' (available: cpu",
                                                 CudaBackendBuilt() ? ", cuda)" : ")"));
}

absl::StatusOr<std::unique_ptr<ServingRuntime>> MakeServingRuntime(std::string_view name,
                                                                   const Model& model,
                                                                   const ReuseConfig& reuse,
                                                                   const BackendOptions& options) {
  if (name == "cpu") return std::unique_ptr<ServingRuntime>();
  if (name == "cuda") {
#ifdef SEMSHARE_WITH_CUDA
    auto r = cuda::CudaServingRuntime::Create(model, reuse, options.device);
    if (!r.ok()) return r.status();
    return std::unique_ptr<ServingRuntime>(std::move(*r));
#else
    (void)model;
    (void)reuse;
    (void)options;
#endif
  }
  // The same answers as MakeBackend for names it rejects.
  absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend(name, options);
  return b.ok() ? absl::InternalError("unreachable") : b.status();
}

}  // namespace semshare::engine
