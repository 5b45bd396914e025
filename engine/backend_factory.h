// One place that turns a backend name into a Backend: "cpu" (always) or "cuda" (when built
// with CUDA; otherwise Unimplemented saying so). Library target: semshare_backend_factory
// (engine/cuda/CMakeLists.txt); it links the CUDA backend only in CUDA builds, so callers
// (the server's --backend, tools) need no #ifdef.
#ifndef SEMSHARE_ENGINE_BACKEND_FACTORY_H_
#define SEMSHARE_ENGINE_BACKEND_FACTORY_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/serving_session.h"

namespace semshare::engine {

struct BackendOptions {
  int device = 0;  // CUDA device ordinal
};

// InvalidArgument for an unknown name; Unimplemented for "cuda" in a build without CUDA;
// FailedPrecondition when the build has CUDA but no device is visible.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view name,
                                                     const BackendOptions& options = {});

// Whether this build includes the CUDA backend.
bool CudaBackendBuilt();

// Device memory a serving runtime holds (the server's semshare_gpu_memory_* gauges). `device`
// is false for host backends, whose memory the process' resident size already shows. (A
// CudaBackend from MakeBackend reports its own: CudaBackend::context().pool().Stats(); its
// deferred op errors: CudaBackend::status().)
struct BackendMemory {
  bool device = false;
  int64_t used = 0;   // bytes of live device buffers (the pool's exact accounting)
  int64_t peak = 0;   // most bytes live at once
  int64_t total = 0;  // the device's memory
};

// What a server keeps per process for a device backend: the weights on the device, shared by
// every worker's session, each with its own streams and KV (engine/reuse/serving_session.h).
// Sessions must be destroyed before their runtime.
class ServingRuntime {
 public:
  virtual ~ServingRuntime() = default;
  // A session for one worker.
  virtual absl::StatusOr<std::unique_ptr<ServingSession>> NewSession() = 0;
  // The device memory of the weights and every live session (used and peak summed over them;
  // the peaks of different sessions may not coincide).
  virtual BackendMemory Memory() const = 0;
};

// "cuda": uploads `model` (its weights in BF16) to device options.device. Null for "cpu",
// whose sessions the worker builds on its own ReusePrefiller (CpuServingSession). Errors as
// MakeBackend's.
absl::StatusOr<std::unique_ptr<ServingRuntime>> MakeServingRuntime(std::string_view name,
                                                                   const Model& model,
                                                                   const ReuseConfig& reuse,
                                                                   const BackendOptions& options);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_BACKEND_FACTORY_H_
