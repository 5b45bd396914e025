// KV rearrangement: dst row i = src row idx[i] (a reference's per-layer K or V in the target's
// order). For K, the gathered row is re-rotated by delta[i] = target position - reference
// position: RoPE rotations compose, Rot(a) Rot(b) = Rot(a + b), so the rotated key of the
// reference token becomes the key it would have at the target position without recomputing the
// projection. One block per output row; the rotation is the RoPE kernel's arithmetic (angle in
// double) on the gathered row, bf16 in and out (the cache's type) or float.
#ifndef SEMSHARE_KERNELS_KV_GATHER_CUH_
#define SEMSHARE_KERNELS_KV_GATHER_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/rope.cuh"

namespace semshare::kernels {

// dst[i, :] = src[idx[i], :], rows of row_len elements, i < n. T: float, bf16 or int32_t-sized
// by element type. Indices must be in range (the caller's plan guarantees it).
template <typename T>
cudaError_t GatherRows(const T* src, int64_t row_len, const int32_t* idx, int64_t n, T* dst,
                       cudaStream_t stream);

// dst[idx[i], :] = src[i, :] (scatter; idx distinct), rows of row_len elements, i < n.
template <typename T>
cudaError_t ScatterRows(const T* src, int64_t row_len, const int32_t* idx, int64_t n, T* dst,
                        cudaStream_t stream);

// dst[i] = rope(src[idx[i]], delta[i]) over kv rows [heads, head_dim] (args.heads = kv heads).
template <typename T>
cudaError_t GatherRerotate(const T* src, const int32_t* idx, const int32_t* delta, int64_t n,
                           const RopeArgs& args, T* dst, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_KV_GATHER_CUH_
