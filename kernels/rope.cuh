// RoPE at arbitrary positions: token i at pos[i] rotates each head's pairs by pos[i] *
// inv_freq[k]. Both pairings of engine/model/model_config.h's RopeStyle: kAdjacent (2k, 2k + 1) and
// kHalfSplit (k, k + rope_dim / 2). The angle is formed in double (pos * inv_freq reaches
// thousands of radians, where float rounding alone moves cos/sin by ~1e-4; the CPU reference
// does the same), cos/sin in double, the rotation in float. One block per token, threads over
// (head, pair). Out of place with a row map so one launch can rotate K and scatter it into KV
// cache rows; dims past rope_dim are copied unchanged. Negative positions are valid (the KV
// rearrangement rotates by a position delta).
#ifndef SEMSHARE_KERNELS_ROPE_CUH_
#define SEMSHARE_KERNELS_ROPE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

enum class RopeKind : int { kAdjacent = 0, kHalfSplit = 1 };

struct RopeArgs {
  RopeKind kind = RopeKind::kAdjacent;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t rope_dim = 0;             // rotated dims per head, even, <= head_dim
  const float* inv_freq = nullptr;  // device [rope_dim / 2]
};

// y[rows ? rows[i] : i] = rope(x[i], pos[i]) for i < n. x: token row stride x_stride elements
// ([heads, head_dim] at its start); y: row stride y_stride. y may equal x (in place, rows null).
template <typename Tin, typename Tout>
cudaError_t Rope(const Tin* x, int64_t x_stride, const int32_t* pos, int64_t n,
                 const RopeArgs& args, Tout* y, int64_t y_stride, const int32_t* rows,
                 cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_ROPE_CUH_
