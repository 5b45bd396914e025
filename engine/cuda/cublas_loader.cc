#include "engine/cuda/cublas_loader.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace semshare::engine::cuda {
namespace {

// The directory of the loaded CUDA runtime (libcudart), where the toolkit keeps cuBLAS too.
std::string CudartDir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaRuntimeGetVersion), &info) == 0 ||
      info.dli_fname == nullptr) {
    return "";
  }
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* out, std::string* missing) {
  *out = reinterpret_cast<Fn>(dlsym(lib, name));
  if (*out == nullptr) absl::StrAppend(missing, missing->empty() ? "" : ", ", name);
  return *out != nullptr;
}

absl::StatusOr<const CublasApi*> Load() {
  const std::string name = absl::StrCat("libcublas.so.", CUBLAS_VER_MAJOR);
  // The executable's run path and the system's first, then beside libcudart.
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  std::string first_error = lib == nullptr ? dlerror() : "";
  if (lib == nullptr) {
    const std::string beside = CudartDir() + name;
    lib = dlopen(beside.c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  if (lib == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load cuBLAS (", name, "): ", first_error,
                     "; install the CUDA toolkit's cuBLAS or add its directory to "
                     "LD_LIBRARY_PATH"));
  }
  static CublasApi api;  // filled once, under the caller's static initialisation
  std::string missing;
  Resolve(lib, "cublasCreate_v2", &api.create, &missing);
  Resolve(lib, "cublasDestroy_v2", &api.destroy, &missing);
  Resolve(lib, "cublasSetStream_v2", &api.set_stream, &missing);
  Resolve(lib, "cublasSetWorkspace_v2", &api.set_workspace, &missing);
  Resolve(lib, "cublasGetMathMode", &api.get_math_mode, &missing);
  Resolve(lib, "cublasSetMathMode", &api.set_math_mode, &missing);
  Resolve(lib, "cublasGemmEx", &api.gemm_ex, &missing);
  Resolve(lib, "cublasSgemm_v2", &api.sgemm, &missing);
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " lacks ", missing, " (a cuBLAS older than the headers?)"));
  }
  return &api;
}

}  // namespace

absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<const CublasApi*> api = Load();
  return api;
}

}  // namespace semshare::engine::cuda
