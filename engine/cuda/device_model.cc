#include "engine/cuda/device_model.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "engine/cuda/cuda_status.h"
#include "engine/rope.h"
#include "kernels/swiglu.cuh"

namespace semshare::engine::cuda {
namespace {

using bf16 = __nv_bfloat16;

absl::StatusOr<DeviceBuffer> UploadF32(CudaContext& ctx, std::initializer_list<const Matrix*> ms) {
  std::vector<float> host;
  for (const Matrix* m : ms) {
    const size_t at = host.size();
    host.resize(at + static_cast<size_t>(m->rows * m->cols));
    if (!m->empty()) DequantizeRows(*m, 0, m->rows, host.data() + at);
  }
  auto buf = ctx.pool().Allocate(static_cast<int64_t>(host.size()) * 4);
  if (!buf.ok()) return buf.status();
  SEMSHARE_STATUS_RETURN(ctx.Upload(buf->data(), host.data(), buf->bytes()));
  SEMSHARE_STATUS_RETURN(ctx.Sync());
  return buf;
}

#define SEMSHARE_ASSIGN_OR_RETURN(lhs, expr)            \
  {                                                     \
    auto semshare_v_ = (expr);                          \
    if (!semshare_v_.ok()) return semshare_v_.status(); \
    lhs = std::move(*semshare_v_);                      \
  }

template <typename T>
absl::StatusOr<DeviceBuffer> RandomBuffer(CudaContext& ctx, int64_t count, uint64_t seed,
                                          float scale, float offset) {
  auto buf = ctx.pool().Allocate(count * static_cast<int64_t>(sizeof(T)));
  if (!buf.ok()) return buf.status();
  SEMSHARE_CUDA_RETURN(
      kernels::FillRandom<T>(buf->as<T>(), count, seed, scale, offset, ctx.stream()));
  return buf;
}

}  // namespace

kernels::RopeArgs RopeArgsFor(const DeviceModel& m, int64_t heads, bool rotate) {
  kernels::RopeArgs a;
  a.kind = m.config.rope_style == RopeStyle::kAdjacent ? kernels::RopeKind::kAdjacent
                                                       : kernels::RopeKind::kHalfSplit;
  a.heads = heads;
  a.head_dim = m.config.head_dim;
  a.rope_dim = rotate ? m.config.rope_dim : 0;
  a.inv_freq = m.inv_freq.as<float>();
  return a;
}

absl::StatusOr<DeviceBuffer> UploadBf16(CudaContext& ctx, std::initializer_list<const Matrix*> ms) {
  int64_t count = 0;
  for (const Matrix* m : ms) count += m->rows * m->cols;
  std::vector<bf16> host(count);
  std::vector<float> rows;
  int64_t o = 0;
  for (const Matrix* m : ms) {
    if (!m->quantized()) {
      for (float f : m->data) host[o++] = __float2bfloat16_rn(f);
      continue;
    }
    const int64_t slice = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(m->cols, 1));
    for (int64_t r0 = 0; r0 < m->rows; r0 += slice) {
      const int64_t nr = std::min(slice, m->rows - r0);
      rows.resize(static_cast<size_t>(nr * m->cols));
      DequantizeRows(*m, r0, nr, rows.data());
      for (float f : rows) host[o++] = __float2bfloat16_rn(f);
    }
  }
  auto buf = ctx.pool().Allocate(count * 2);
  if (!buf.ok()) return buf.status();
  SEMSHARE_STATUS_RETURN(ctx.Upload(buf->data(), host.data(), count * 2));
  SEMSHARE_STATUS_RETURN(ctx.Sync());  // `host` is freed on return
  return buf;
}

int64_t DeviceModel::ByteSize() const {
  int64_t b = tok_embd.bytes() + out_norm.bytes() + lm_head.bytes() + inv_freq.bytes();
  for (const DeviceLayer& l : layers) {
    b += l.attn_norm.bytes() + l.ffn_norm.bytes() + l.wqkv.bytes() + l.bqkv.bytes() + l.wo.bytes() +
         l.w_gu.bytes() + l.w_down.bytes();
  }
  return b;
}

absl::StatusOr<std::unique_ptr<DeviceModel>> DeviceModel::Upload(CudaContext& ctx,
                                                                 const Model& model) {
  const ScopedDevice on = ctx.Activate();
  auto dm = std::make_unique<DeviceModel>();
  dm->config = model.config;
  const ModelWeights& w = model.weights;
  SEMSHARE_ASSIGN_OR_RETURN(dm->tok_embd, UploadBf16(ctx, {&w.tok_embd}));
  SEMSHARE_ASSIGN_OR_RETURN(dm->out_norm, UploadF32(ctx, {&w.out_norm}));
  if (!w.lm_head.empty()) SEMSHARE_ASSIGN_OR_RETURN(dm->lm_head, UploadBf16(ctx, {&w.lm_head}));
  const std::vector<float> inv = RopeInvFreq(model.config, w.rope_freqs);
  Matrix inv_m;
  inv_m.rows = 1;
  inv_m.cols = static_cast<int64_t>(inv.size());
  inv_m.data = inv;
  SEMSHARE_ASSIGN_OR_RETURN(dm->inv_freq, UploadF32(ctx, {&inv_m}));
  for (const LayerWeights& lw : w.layers) {
    DeviceLayer l;
    SEMSHARE_ASSIGN_OR_RETURN(l.attn_norm, UploadF32(ctx, {&lw.attn_norm}));
    SEMSHARE_ASSIGN_OR_RETURN(l.ffn_norm, UploadF32(ctx, {&lw.ffn_norm}));
    SEMSHARE_ASSIGN_OR_RETURN(l.wqkv, UploadBf16(ctx, {&lw.wq, &lw.wk, &lw.wv}));
    if (!lw.bq.empty()) SEMSHARE_ASSIGN_OR_RETURN(l.bqkv, UploadF32(ctx, {&lw.bq, &lw.bk, &lw.bv}));
    SEMSHARE_ASSIGN_OR_RETURN(l.wo, UploadBf16(ctx, {&lw.wo}));
    SEMSHARE_ASSIGN_OR_RETURN(l.w_gu, UploadBf16(ctx, {&lw.w_gate, &lw.w_up}));
    SEMSHARE_ASSIGN_OR_RETURN(l.w_down, UploadBf16(ctx, {&lw.w_down}));
    dm->layers.push_back(std::move(l));
  }
  return dm;
}

absl::StatusOr<std::unique_ptr<DeviceModel>> DeviceModel::Random(CudaContext& ctx,
                                                                 const ModelConfig& c,
                                                                 uint64_t seed) {
  SEMSHARE_STATUS_RETURN(c.Validate());
  const ScopedDevice on = ctx.Activate();
  auto dm = std::make_unique<DeviceModel>();
  dm->config = c;
  const int64_t d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d)) * std::sqrt(3.0f);
  const float sq = 1.0f / std::sqrt(static_cast<float>(qd)) * std::sqrt(3.0f);
  const float sf = 1.0f / std::sqrt(static_cast<float>(c.d_ff)) * std::sqrt(3.0f);
  SEMSHARE_ASSIGN_OR_RETURN(dm->tok_embd,
                            RandomBuffer<bf16>(ctx, c.vocab_size * d, seed++, 1.0f, 0));
  SEMSHARE_ASSIGN_OR_RETURN(dm->out_norm, RandomBuffer<float>(ctx, d, seed++, 0.1f, 1.0f));
  if (!c.tied_embeddings) {
    SEMSHARE_ASSIGN_OR_RETURN(dm->lm_head,
                              RandomBuffer<bf16>(ctx, c.vocab_size * d, seed++, sd, 0));
  }
  const std::vector<float> inv = RopeInvFreq(c, Matrix{});
  Matrix inv_m;
  inv_m.rows = 1;
  inv_m.cols = static_cast<int64_t>(inv.size());
  inv_m.data = inv;
  SEMSHARE_ASSIGN_OR_RETURN(dm->inv_freq, UploadF32(ctx, {&inv_m}));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    DeviceLayer l;
    SEMSHARE_ASSIGN_OR_RETURN(l.attn_norm, RandomBuffer<float>(ctx, d, seed++, 0.1f, 1.0f));
    SEMSHARE_ASSIGN_OR_RETURN(l.ffn_norm, RandomBuffer<float>(ctx, d, seed++, 0.1f, 1.0f));
    SEMSHARE_ASSIGN_OR_RETURN(l.wqkv, RandomBuffer<bf16>(ctx, (qd + 2 * kvd) * d, seed++, sd, 0));
    if (c.qkv_bias) {
      SEMSHARE_ASSIGN_OR_RETURN(l.bqkv, RandomBuffer<float>(ctx, qd + 2 * kvd, seed++, 0.1f, 0));
    }
    SEMSHARE_ASSIGN_OR_RETURN(l.wo, RandomBuffer<bf16>(ctx, d * qd, seed++, sq, 0));
    SEMSHARE_ASSIGN_OR_RETURN(l.w_gu, RandomBuffer<bf16>(ctx, 2 * c.d_ff * d, seed++, sd, 0));
    SEMSHARE_ASSIGN_OR_RETURN(l.w_down, RandomBuffer<bf16>(ctx, d * c.d_ff, seed++, sf, 0));
    dm->layers.push_back(std::move(l));
  }
  SEMSHARE_STATUS_RETURN(ctx.Sync());
  return dm;
}

}  // namespace semshare::engine::cuda
