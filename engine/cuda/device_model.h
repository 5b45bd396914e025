// A model's weights on the device in BF16 (norm gains, biases and RoPE frequencies in float),
// laid out for the device forward pass: Q, K and V projections concatenated into one
// [q_dim + 2 kv_dim, d_model] matrix (one GEMM), gate and up into one [2 d_ff, d_model]
// matrix. From a loaded Model (its float32 weights rounded to BF16 on the host and uploaded),
// or seeded random weights of a config generated on the device (benchmarks at real shapes
// without a model file: the 8B file would not fit the transfer to the GPU machine).
#ifndef SEMSHARE_ENGINE_CUDA_DEVICE_MODEL_H_
#define SEMSHARE_ENGINE_CUDA_DEVICE_MODEL_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda/cuda_context.h"
#include "engine/model/model.h"
#include "kernels/rope.cuh"

namespace semshare::engine::cuda {

// Uploads the rows of several host matrices, stacked, as one bf16 device buffer. Matrices held
// in ggml blocks (engine/model/weights.h) are dequantised a slice of rows at a time (exact), so
// the host never holds a float copy of a whole quantized matrix.
absl::StatusOr<DeviceBuffer> UploadBf16(CudaContext& ctx, std::initializer_list<const Matrix*> ms);

struct DeviceLayer {
  DeviceBuffer attn_norm, ffn_norm;  // float [d_model]
  DeviceBuffer wqkv;                 // bf16 [q_dim + 2 kv_dim, d_model]
  DeviceBuffer bqkv;                 // float [q_dim + 2 kv_dim], qwen2 only (empty otherwise)
  DeviceBuffer wo;                   // bf16 [d_model, q_dim]
  DeviceBuffer w_gu;                 // bf16 [2 d_ff, d_model]: gate rows, then up rows
  DeviceBuffer w_down;               // bf16 [d_model, d_ff]
};

struct DeviceModel {
  ModelConfig config;
  DeviceBuffer tok_embd;  // bf16 [vocab, d_model]
  DeviceBuffer out_norm;  // float [d_model]
  DeviceBuffer lm_head;   // bf16 [vocab, d_model]; empty when tied (use tok_embd)
  DeviceBuffer inv_freq;  // float [rope_dim / 2]
  std::vector<DeviceLayer> layers;

  const void* output() const { return lm_head.empty() ? tok_embd.data() : lm_head.data(); }
  int64_t ByteSize() const;

  static absl::StatusOr<std::unique_ptr<DeviceModel>> Upload(CudaContext& ctx, const Model& model);
  // Uniform weights scaled 1/sqrt(fan_in) (activations keep unit scale through the layers),
  // norm gains 1 +- 0.1, embeddings +-1. Deterministic in `seed`.
  static absl::StatusOr<std::unique_ptr<DeviceModel>> Random(CudaContext& ctx,
                                                             const ModelConfig& config,
                                                             uint64_t seed);
};

// The RoPE launch arguments for `heads` heads of this model: rotate = false turns the kernel into
// a strided convert-and-copy (V rows, rope_dim 0).
kernels::RopeArgs RopeArgsFor(const DeviceModel& m, int64_t heads, bool rotate);

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_DEVICE_MODEL_H_
