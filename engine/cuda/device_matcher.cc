#include "engine/cuda/device_matcher.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <random>
#include <vector>

#include "engine/cuda/cuda_status.h"
#include "kernels/match.cuh"

namespace semshare::engine::cuda {

DeviceMatcher::DeviceMatcher(CudaContext& ctx, const void* embeddings, int64_t vocab, int64_t dim,
                             const ReuseConfig& config)
    : ctx_(ctx),
      embeddings_(embeddings),
      vocab_(vocab),
      dim_(dim),
      config_(config),
      bands_(std::max(config.lsh_bands, 0)),
      bits_(std::clamp(config.lsh_bits_per_band, 0, 32)) {}

absl::StatusOr<std::unique_ptr<DeviceMatcher>> DeviceMatcher::Create(CudaContext& ctx,
                                                                     const void* embeddings,
                                                                     int64_t vocab, int64_t dim,
                                                                     const ReuseConfig& config) {
  if (vocab < 0 || dim < 0 || (vocab > 0 && dim > 0 && embeddings == nullptr)) {
    return absl::InvalidArgumentError("DeviceMatcher: bad embedding table");
  }
  if (config.lsh_bands > kernels::kMatchMaxBands) {
    return absl::InvalidArgumentError(absl::StrCat("DeviceMatcher: lsh_bands ", config.lsh_bands,
                                                   " above ", kernels::kMatchMaxBands));
  }
  const ScopedDevice on = ctx.Activate();
  std::unique_ptr<DeviceMatcher> dm(new DeviceMatcher(ctx, embeddings, vocab, dim, config));
  // Exactly TokenMatcher's draw, so that codes agree with (and can be stored beside) the CPU's.
  const int64_t planes = static_cast<int64_t>(dm->bands_) * dm->bits_;
  std::vector<float> hyperplanes(static_cast<size_t>(planes * dim));
  std::mt19937_64 rng(config.lsh_seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : hyperplanes) x = normal(rng);
  std::vector<float> inv_freq(config.ecache_rope ? static_cast<size_t>(dim / 2) : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(inv_freq.size()); ++k) {
    inv_freq[k] = static_cast<float>(std::pow(static_cast<double>(config.ecache_rope_base),
                                              -2.0 * k / static_cast<double>(dim)));
  }
  const int64_t hp_bytes = static_cast<int64_t>(hyperplanes.size() * sizeof(float));
  const int64_t if_bytes = static_cast<int64_t>(inv_freq.size() * sizeof(float));
  auto hp = ctx.pool().Allocate(hp_bytes);
  if (!hp.ok()) return hp.status();
  dm->hyperplanes_ = std::move(*hp);
  auto fq = ctx.pool().Allocate(if_bytes);
  if (!fq.ok()) return fq.status();
  dm->inv_freq_ = std::move(*fq);
  SEMSHARE_STATUS_RETURN(ctx.Upload(dm->hyperplanes_.data(), hyperplanes.data(), hp_bytes));
  SEMSHARE_STATUS_RETURN(ctx.Upload(dm->inv_freq_.data(), inv_freq.data(), if_bytes));
  SEMSHARE_STATUS_RETURN(ctx.Sync());  // the host vectors die here
  return dm;
}

absl::Status DeviceMatcher::Sgemm(const float* a, int64_t rows, const float* b, int64_t cols,
                                  int64_t k, float* c, int64_t ldc) {
  if (rows <= 0 || cols <= 0) return absl::OkStatus();
  if (rows > INT_MAX || cols > INT_MAX || k > INT_MAX || ldc > INT_MAX) {
    return absl::InvalidArgumentError("DeviceMatcher: GEMM shape beyond cuBLAS's int range");
  }
  // CudaContext sets CUBLAS_DEFAULT_MATH (FP32 SGEMM stays FP32); should anyone have switched
  // the shared handle to TF32, switch back for this call and restore after.
  cublasHandle_t h = ctx_.cublas();
  cublasMath_t mode = CUBLAS_DEFAULT_MATH;
  SEMSHARE_CUBLAS_RETURN(ctx_.blas().get_math_mode(h, &mode));
  const bool change = mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_PEDANTIC_MATH;
  if (change) SEMSHARE_CUBLAS_RETURN(ctx_.blas().set_math_mode(h, CUBLAS_DEFAULT_MATH));
  // Row-major c[rows, cols] = a[rows, k] b[cols, k]^T is column-major c^T[cols, rows] =
  // b^T a^T: b read as column-major [k, cols] (ldb = k) transposed, a^T column-major [k, rows]
  // (lda = k), as CudaContext::Gemm maps it.
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st =
      ctx_.blas().sgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(rows),
                        static_cast<int>(k), &one, b, static_cast<int>(k), a, static_cast<int>(k),
                        &zero, c, static_cast<int>(ldc));
  const cublasStatus_t restored =
      change ? ctx_.blas().set_math_mode(h, mode) : CUBLAS_STATUS_SUCCESS;
  SEMSHARE_CUBLAS_RETURN(st);
  SEMSHARE_CUBLAS_RETURN(restored);
  return absl::OkStatus();
}

absl::StatusOr<DeviceSketch> DeviceMatcher::Sketch(std::span<const int32_t> ids) {
  DeviceSketch s;
  s.n = static_cast<int64_t>(ids.size());
  const int64_t n = s.n;
  if (n == 0) return s;
  if (n > INT_MAX) return absl::InvalidArgumentError("DeviceMatcher: prompt too long");
  const ScopedDevice on = ctx_.Activate();
  auto ids_d = ctx_.pool().Allocate(n * static_cast<int64_t>(sizeof(int32_t)));
  if (!ids_d.ok()) return ids_d.status();
  auto ecache = ctx_.pool().Allocate(n * dim_ * static_cast<int64_t>(sizeof(float)));
  if (!ecache.ok()) return ecache.status();
  s.ecache = std::move(*ecache);
  // Pageable source: cudaMemcpyAsync returns once the span has been staged, so the caller's
  // memory may go right after; the copy itself stays ordered on the stream.
  SEMSHARE_STATUS_RETURN(
      ctx_.Upload(ids_d->data(), ids.data(), n * static_cast<int64_t>(sizeof(int32_t))));
  const float* inv_freq =
      config_.ecache_rope && !inv_freq_.empty() ? inv_freq_.as<float>() : nullptr;
  SEMSHARE_CUDA_RETURN(kernels::EcacheRows(embeddings_, vocab_, dim_, ids_d->as<int32_t>(), n,
                                           inv_freq, s.ecache.as<float>(), ctx_.stream()));
  if (bands_ == 0) return s;
  auto codes = ctx_.pool().Allocate(n * bands_ * static_cast<int64_t>(sizeof(uint32_t)));
  if (!codes.ok()) return codes.status();
  s.codes = std::move(*codes);
  const int64_t planes = static_cast<int64_t>(bands_) * bits_;
  if (planes == 0 || dim_ == 0) {  // every key 0, as on the CPU
    SEMSHARE_CUDA_RETURN(
        kernels::PackCodes(nullptr, n, bands_, 0, s.codes.as<uint32_t>(), ctx_.stream()));
    return s;
  }
  // proj [n, planes] = ecache [n, dim] x hyperplanes [planes, dim]^T.
  auto proj = ctx_.pool().Allocate(n * planes * static_cast<int64_t>(sizeof(float)));
  if (!proj.ok()) return proj.status();
  SEMSHARE_STATUS_RETURN(Sgemm(s.ecache.as<float>(), n, hyperplanes_.as<float>(), planes, dim_,
                               proj->as<float>(), planes));
  SEMSHARE_CUDA_RETURN(kernels::PackCodes(proj->as<float>(), n, bands_, bits_,
                                          s.codes.as<uint32_t>(), ctx_.stream()));
  return s;  // ids_d and proj go back to the pool; later users are ordered on the same stream
}

bool DeviceMatcher::Fits(const DeviceSketch& s) const {
  const int64_t n = std::max<int64_t>(s.n, 0);
  return s.ecache.bytes() == n * dim_ * static_cast<int64_t>(sizeof(float)) &&
         s.codes.bytes() == n * bands_ * static_cast<int64_t>(sizeof(uint32_t));
}

absl::StatusOr<TokenMatch> DeviceMatcher::Match(const DeviceSketch& target,
                                                const DeviceSketch& reference) {
  TokenMatch out;
  const int64_t n = std::max<int64_t>(target.n, 0), m = std::max<int64_t>(reference.n, 0);
  out.ref_index.assign(static_cast<size_t>(n), -1);
  out.cosine.assign(static_cast<size_t>(n), 0.0f);
  // Sketches of another shape cannot be compared: everything unmatched (the CPU's rule). A
  // zero-width E-cache has cosine 0 everywhere: unmatched too.
  if (n == 0 || m == 0 || bands_ == 0 || dim_ == 0 || !Fits(target) || !Fits(reference)) {
    return out;
  }
  if (n > INT_MAX || m > INT_MAX) return absl::InvalidArgumentError("DeviceMatcher: too long");
  const ScopedDevice on = ctx_.Activate();
  const int64_t chunk = std::clamp<int64_t>(kMaxCosineElements / m, 1, n);
  auto cos = ctx_.pool().Allocate(chunk * m * static_cast<int64_t>(sizeof(float)));
  if (!cos.ok()) return cos.status();
  auto ref_d = ctx_.pool().Allocate(n * static_cast<int64_t>(sizeof(int32_t)));
  if (!ref_d.ok()) return ref_d.status();
  auto cosine_d = ctx_.pool().Allocate(n * static_cast<int64_t>(sizeof(float)));
  if (!cosine_d.ok()) return cosine_d.status();
  const float* et = target.ecache.as<float>();
  const float* er = reference.ecache.as<float>();
  const uint32_t* tc = target.codes.as<uint32_t>();
  const uint32_t* rc = reference.codes.as<uint32_t>();
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    // cos [rows, m] = E_t[r0 : r0 + rows] x E_r^T (rows are unit vectors: dot = cosine).
    SEMSHARE_STATUS_RETURN(Sgemm(et + r0 * dim_, rows, er, m, dim_, cos->as<float>(), m));
    SEMSHARE_CUDA_RETURN(kernels::MatchCandidates(
        tc + r0 * bands_, rc, cos->as<float>(), m, rows, m, bands_, config_.max_candidates,
        ref_d->as<int32_t>() + r0, cosine_d->as<float>() + r0, ctx_.stream()));
  }
  SEMSHARE_STATUS_RETURN(ctx_.Download(out.ref_index.data(), ref_d->data(),
                                       n * static_cast<int64_t>(sizeof(int32_t))));
  SEMSHARE_STATUS_RETURN(
      ctx_.Download(out.cosine.data(), cosine_d->data(), n * static_cast<int64_t>(sizeof(float))));
  SEMSHARE_STATUS_RETURN(ctx_.Sync());
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (out.ref_index[i] >= 0) ++out.matched;
    total += out.cosine[i];  // 0 for unmatched tokens
  }
  out.similarity = static_cast<float>(total / static_cast<double>(n));
  return out;
}

}  // namespace semshare::engine::cuda
