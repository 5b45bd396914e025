// Token sampling on the device, one block of 1024 threads per call:
// - Argmax: block reduction of (value, index), lowest index on ties (engine/sampling.h's rule).
// - SampleTopKTopP: the top min(top_k, 1024) logits (top_k = 0 means 1024: the candidate set is
//   capped, unlike the CPU Sampler's whole vocabulary; past the first 1024 tokens the
//   probability left is negligible at usual temperatures) found by radix select
//   (select_impl.cuh), sorted by (logit desc, index asc; -0.0 ties +0.0) with a bitonic sort in
//   shared memory; weights exp((l - l_max) * (1 / T)) rounded to float and summed in double, as
//   the CPU Sampler forms them; the smallest prefix reaching top_p kept; the token is
//   the first whose cumulative weight exceeds u * total, u in [0, 1) supplied by the caller
//   (the host owns the seeded generator, so a request stays reproducible).
#ifndef SEMSHARE_KERNELS_SAMPLING_CUH_
#define SEMSHARE_KERNELS_SAMPLING_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace semshare::kernels {

constexpr int kMaxSampleCandidates = 1024;

// logits [vocab] float; *out (device int32) = argmax (ArgmaxRows of one row).
cudaError_t Argmax(const float* logits, int64_t vocab, int32_t* out, cudaStream_t stream);

// out[i] = argmax of logits row i ([n, vocab] float): batched greedy, one block per row.
cudaError_t ArgmaxRows(const float* logits, int64_t n, int64_t vocab, int32_t* out,
                       cudaStream_t stream);

// temperature > 0, top_p in (0, 1], u in [0, 1). *out (device int32) = sampled token.
cudaError_t SampleTopKTopP(const float* logits, int64_t vocab, float temperature, int top_k,
                           float top_p, float u, int32_t* out, cudaStream_t stream);

}  // namespace semshare::kernels

#endif  // SEMSHARE_KERNELS_SAMPLING_CUH_
