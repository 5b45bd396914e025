// TokenMatcher (engine/reuse/token_matcher.h) on the device: E-cache rows, SimHash codes and
// the per-token best match, with the CPU matcher's semantics (same hyperplanes from the same
// seed, same candidate cap and tie rules; kernels/match.cuh). Differences from the CPU are
// rounding only: FP32 cuBLAS GEMMs sum in another order, so a projection within rounding of 0
// may flip one code bit and near-equal cosines may pick another candidate; the E-cache angles
// come from exact double sincos rather than the CPU's recurrence.
//
// Cost: Sketch is one gather/rotate kernel, one [n, planes] SGEMM and a packing kernel. Match
// is an [n, m] FP32 SGEMM of cosines (2 n m dim flops: ~3-4 ms for 5k x 5k at dim 4096 on an
// H200; TF32 is kept off so that cosines agree with the CPU's to ~1e-6), computed in row
// chunks of at most kMaxCosineElements floats, plus one candidate kernel per chunk. Not
// thread-safe (the context is not); the embeddings and the context must outlive the matcher.
#ifndef SEMSHARE_ENGINE_CUDA_DEVICE_MATCHER_H_
#define SEMSHARE_ENGINE_CUDA_DEVICE_MATCHER_H_

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "engine/cuda/cuda_context.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::engine::cuda {

// A prompt's E-cache and codes on the device (TokenSketch's twin).
struct DeviceSketch {
  int64_t n = 0;        // tokens
  DeviceBuffer ecache;  // float [n, dim] rotated embeddings, rows L2-normalised
  DeviceBuffer codes;   // uint32 [n, bands] bucket key of each token in each band
};

class DeviceMatcher {
 public:
  // Cosine rows computed per chunk of target tokens: at most this many floats (256 MiB).
  static constexpr int64_t kMaxCosineElements = int64_t{64} << 20;

  // embeddings: BF16 [vocab, dim] on ctx's device (DeviceModel::tok_embd); borrowed. The
  // hyperplanes are drawn exactly as TokenMatcher draws them (std::mt19937_64(lsh_seed),
  // std::normal_distribution<float>(0, 1), planes * dim values in order) and uploaded once.
  // InvalidArgument for lsh_bands above kernels::kMatchMaxBands (64, ReuseConfig's bound).
  static absl::StatusOr<std::unique_ptr<DeviceMatcher>> Create(CudaContext& ctx,
                                                               const void* embeddings,
                                                               int64_t vocab, int64_t dim,
                                                               const ReuseConfig& config);
  DeviceMatcher(const DeviceMatcher&) = delete;
  DeviceMatcher& operator=(const DeviceMatcher&) = delete;

  // Asynchronous on ctx.stream() (the ids are staged by cudaMemcpyAsync from pageable memory,
  // which returns once the host span has been read). Out-of-range ids give zero rows.
  absl::StatusOr<DeviceSketch> Sketch(std::span<const int32_t> ids);

  // TokenMatcher::Match semantics; the result on the host (synchronises ctx.stream()).
  // similarity = mean of cosine over all n target tokens (summed in double in index order),
  // matched = tokens with ref_index >= 0. Empty prompts, lsh_bands == 0 or sketches whose
  // buffers do not fit this matcher's shape give an all-unmatched result, as on the CPU.
  absl::StatusOr<TokenMatch> Match(const DeviceSketch& target, const DeviceSketch& reference);

  int64_t dim() const { return dim_; }
  int bands() const { return bands_; }

 private:
  DeviceMatcher(CudaContext& ctx, const void* embeddings, int64_t vocab, int64_t dim,
                const ReuseConfig& config);
  // c[rows, cols] (ldc) = a[rows, k] * b[cols, k]^T, FP32 throughout (no TF32), row-major.
  absl::Status Sgemm(const float* a, int64_t rows, const float* b, int64_t cols, int64_t k,
                     float* c, int64_t ldc);
  bool Fits(const DeviceSketch& s) const;

  CudaContext& ctx_;
  const void* embeddings_;  // bf16 [vocab_, dim_], borrowed
  int64_t vocab_ = 0;
  int64_t dim_ = 0;
  ReuseConfig config_;
  int bands_ = 0;
  int bits_ = 0;
  DeviceBuffer hyperplanes_;  // float [bands_ * bits_, dim_]
  DeviceBuffer inv_freq_;     // float [dim_ / 2]; empty when config.ecache_rope is off
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_DEVICE_MATCHER_H_
