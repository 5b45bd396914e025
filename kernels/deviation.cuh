// Per-token KV deviation and top-k selection (the selective prefill's recompute set).
// RowDistance: out[i] (+)= ||a_i - b_i||_2, one warp per row, float accumulation.
// SelectTopK: keeps every forced element plus the k highest-scoring other elements, and writes
// the kept indices in ascending order (and a 0/1 mask). One block of 1024 threads: a 4-pass
// 8-bit radix select finds the k-th largest score among the eligible elements (float keys
// mapped to order-preserving uint32), then an order-preserving block compaction emits indices
// with a larger key, plus as many of the threshold-equal ones as the top k needs, taken from
// the low indices (prefer_low) or the high ones. O(n) work in 5 passes over n; n up to a few
// 100k runs in tens of microseconds, all on the device, so the plan needs one small copy back.
#ifndef SEMSHARE_KERNELS_DEVIATION_CUH_
#define SEMSHARE_KERNELS_DEVIATION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// a: [n, dim] with row stride a_stride, b likewise; Ta/Tb float or bf16. accumulate: add to out.
template <typename Ta, typename Tb>
cudaError_t RowDistance(const Ta* a, int64_t a_stride, const Tb* b, int64_t b_stride, int64_t n,
                        int64_t dim, bool accumulate, float* out, cudaStream_t stream);

// scores [n], forced [n] (null = none). Writes kept indices ascending to out_idx [n] (may be
// null), mask [n] (may be null) and the number kept to *out_count (device int64).
cudaError_t SelectTopK(const float* scores, const uint8_t* forced, int64_t n, int64_t k,
                       bool prefer_low, int32_t* out_idx, uint8_t* mask, int64_t* out_count,
                       cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_DEVIATION_CUH_
