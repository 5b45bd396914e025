// CudaBackend: the Backend interface (engine/backend.h) on a CUDA device, with HOST pointers,
// so that LlamaForward, ReusePrefiller, retention and Generator run unchanged on the GPU (the
// server's --backend cuda). Each op uploads its inputs to pool-owned staging buffers, runs the
// kernels (kernels/) and cuBLAS on the context's stream, and downloads the result before
// returning (ops stay synchronous, as the interface requires). Weights are converted to BF16
// and cached on the device on first use (keyed by the host Matrix's data pointer and shape,
// checked against a sample of its values, so a freed-and-reused address re-uploads); GEMMs
// are BF16 x BF16 with float accumulation, so activations entering a GEMM are rounded to BF16.
// Attention rounds q/k/v to BF16 too (the device-resident path keeps KV in BF16).
//
// The per-op transfers make this path PCIe-bound: it exists for parity and for running the
// unchanged engine on a GPU host. The fast path is CudaForward (cuda_forward.h), where
// activations, weights and KV stay on the device.
//
// Errors: Backend ops return void, so the first CUDA/cuBLAS error is kept in status() and every
// later op returns at once without touching its output. Callers check status() after a
// forward pass (the factory's users do). Nothing aborts.
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_BACKEND_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_context.h"

namespace semshare::engine::cuda {

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device = 0);
  std::string_view name() const override { return "cuda"; }

  void MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) override;
  void RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
               float* y) override;
  void Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
            const RopeParams& rope) override;
  void Attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                 const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out) override;
  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override;
  void Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) override;
  void GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                  float* dst) override;
  void Add(float* x, const float* y, int64_t count) override;
  void AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                     const int32_t* k_pos, int64_t m, const AttentionParams& p,
                     float* mass) override;
  void RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) override;

  // The first error of any op so far (OK when none); ClearStatus() resets it.
  const absl::Status& status() const { return status_; }
  void ClearStatus() { status_ = absl::OkStatus(); }
  CudaContext& context() { return *ctx_; }
  // Device bytes held by cached weights.
  int64_t weight_bytes() const;

 private:
  explicit CudaBackend(std::unique_ptr<CudaContext> ctx) : ctx_(std::move(ctx)) {}
  // Staging buffer `slot` grown to `bytes`.
  absl::StatusOr<void*> Stage(int slot, int64_t bytes);
  absl::StatusOr<void*> StageIn(int slot, const void* host, int64_t bytes);
  // BF16 device copy of a weight matrix (ggml blocks dequantised on upload), cached by its host
  // storage.
  absl::StatusOr<const void*> Weight(const Matrix& w);
  bool Failed(const absl::Status& s);  // records s; true when any error is recorded

  struct CachedWeight {
    DeviceBuffer buf;
    int64_t rows = 0, cols = 0;
    uint64_t sample = 0;  // hash of sampled values
  };
  std::unique_ptr<CudaContext> ctx_;
  absl::Status status_;
  std::unordered_map<const void*, CachedWeight> weights_;  // by host storage (floats or blocks)
  DeviceBuffer stage_[10];
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_CUDA_BACKEND_H_
