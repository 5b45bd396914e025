// Token matching on the device (engine/reuse/token_matcher.cc's algorithm, DESIGN.md 4.1-4.3);
// the GEMMs (SimHash projections, cosines) are cuBLAS calls in engine/cuda/device_matcher.cc.
//
// EcacheRows: one block per token. Gathers the BF16 embedding row (zeros for an id outside
// [0, vocab)), rotates adjacent pairs (2k, 2k + 1) by i * inv_freq[k] (angle and sincos in
// double, the rotation in double rounded to float, as the CPU; an odd last dimension is left
// unrotated), writes the row, then scales it by 1 / ||row|| (float sum of squares; rows of norm
// 0 stay 0). Each thread rescales exactly the elements it wrote, so no shared row is needed and
// dim is unbounded.
//
// PackCodes: one thread per (token, band): key = OR_j (proj[b * bits + j] > 0) << j.
//
// MatchCandidates: one block per target row i. hits(r) = bands b with tcode[i, b] ==
// rcode[r, b]; candidates are the r with hits > 0. Pass 1 counts a histogram of hits over r
// (hits are cached as bytes in shared memory when m fits, else recomputed in pass 2). With a
// cap below the candidate count, the histogram gives the threshold level h*: the largest h with
// count(hits >= h) >= cap; every r with hits > h* is kept plus the `cap - count(hits > h*)`
// lowest-index r with hits == h* (ranked by a block-wide prefix count over r in order). That is
// exactly TokenMatcher's nth_element rule (hits descending, then lower r). Pass 2 takes, over
// the kept r, the largest cosine cos[i, r] > 0 (ties to the lower r; the CPU's rule, which does
// not depend on the visiting order), reduced over the block. O(m * bands) per row.
#ifndef SEMSHARE_KERNELS_MATCH_CUH_
#define SEMSHARE_KERNELS_MATCH_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// Largest band count MatchCandidates accepts (ReuseConfig allows lsh_bands up to 64).
constexpr int kMatchMaxBands = 64;

// table: [vocab, dim] bf16 (__nv_bfloat16); ids: [n] int32; inv_freq: [dim / 2] float, null =
// no rotation (ecache_rope off); out: [n, dim] float, row-major, rows L2-normalised.
cudaError_t EcacheRows(const void* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                       const float* inv_freq, float* out, cudaStream_t stream);

// proj: [n, bands * bits] float (unused when bits == 0: every key is 0); codes: [n, bands]
// uint32. bands >= 0, bits in 0..32; cudaErrorInvalidValue otherwise.
cudaError_t PackCodes(const float* proj, int64_t n, int bands, int bits, uint32_t* codes,
                      cudaStream_t stream);

// tcodes: [n, bands] uint32 (target rows); rcodes: [m, bands] uint32 (reference rows);
// cos: [n, m] float with row stride ld >= m (cos[i * ld + r] = cosine of target i and
// reference r); max_candidates <= 0: no cap. Writes ref_index [n] int32 (-1 when no candidate
// has a positive cosine) and cosine [n] float (min(best, 1), 0 when unmatched). bands in
// 1..kMatchMaxBands, n < 2^31; cudaErrorInvalidValue otherwise.
cudaError_t MatchCandidates(const uint32_t* tcodes, const uint32_t* rcodes, const float* cos,
                            int64_t ld, int64_t n, int64_t m, int bands, int64_t max_candidates,
                            int32_t* ref_index, float* cosine, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_MATCH_CUH_
