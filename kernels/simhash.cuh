// SimHash codes of the E-cache: codes[i, b] has bit j set iff planes[b * bits + j] . e_i > 0
// (engine/reuse/token_matcher.cc's definition). One block per token: the row e_i is staged
// in shared memory, each warp takes hyperplanes and reduces the dot product over lanes, the
// sign bits land in shared memory, and the first `bands` threads pack them. Projections within
// float rounding of 0 may differ from the CPU's OpenBLAS GEMM in their bit; the parity test
// checks only bits whose projection is clearly signed.
#ifndef SEMSHARE_KERNELS_SIMHASH_CUH_
#define SEMSHARE_KERNELS_SIMHASH_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

// ecache [n, dim] float, planes [bands * bits, dim] float, codes [n, bands] uint32.
// bits in 1..32; bands * bits <= 4096; dim * 4 bytes <= 44 KB (the 4 KB of sign bytes make up
// the 48 KB default shared-memory limit). cudaErrorInvalidValue otherwise.
cudaError_t SimHashCodes(const float* ecache, const float* planes, int64_t n, int64_t dim,
                         int bands, int bits, uint32_t* codes, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_SIMHASH_CUH_
