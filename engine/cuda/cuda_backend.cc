#include "engine/cuda/cuda_backend.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_model.h"
#include "kernels/attention.cuh"
#include "kernels/deviation.cuh"
#include "kernels/embed.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/retention.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/swiglu.cuh"

namespace semshare::engine::cuda {
namespace {

using bf16 = __nv_bfloat16;
namespace k = ::semshare::kernels;

// Where a matrix's host storage starts: its floats or its ggml blocks.
const void* HostData(const Matrix& w) {
  return w.quantized() ? static_cast<const void*>(w.blocks) : w.data.data();
}

// 16 words sampled across the host storage, so a cached upload is redone when the same address
// holds different weights.
uint64_t SampleHash(const Matrix& w) {
  uint64_t h = 1469598103934665603ull;
  const auto* bytes = static_cast<const uint8_t*>(HostData(w));
  const size_t n = w.quantized() ? static_cast<size_t>(w.rows * w.row_bytes) / 4 : w.data.size();
  for (size_t i = 0; i < 16 && n > 0; ++i) {
    uint32_t bits;
    std::memcpy(&bits, bytes + 4 * (i * (n - 1) / 15), sizeof(bits));
    h = (h ^ bits) * 1099511628211ull;
  }
  return h;
}

k::AttnShape Shape(int64_t n, int64_t m, const AttentionParams& p) {
  k::AttnShape s;
  s.n = n;
  s.m = m;
  s.n_heads = p.n_heads;
  s.n_kv_heads = p.n_kv_heads;
  s.head_dim = p.head_dim;
  s.q_stride = p.n_heads * p.head_dim;
  s.kv_stride = p.n_kv_heads * p.head_dim;
  s.out_stride = p.n_heads * p.head_dim;
  s.scale = p.scale;
  s.window = p.window;
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  auto ctx = CudaContext::Create(device);
  if (!ctx.ok()) return ctx.status();
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(*ctx)));
}

bool CudaBackend::Failed(const absl::Status& s) {
  if (!s.ok() && status_.ok()) status_ = s;
  return !status_.ok();
}

int64_t CudaBackend::weight_bytes() const {
  int64_t b = 0;
  for (const auto& [p, w] : weights_) b += w.buf.bytes();
  return b;
}

absl::StatusOr<void*> CudaBackend::Stage(int slot, int64_t bytes) {
  if (auto s = ctx_->pool().EnsureSize(stage_[slot], std::max<int64_t>(bytes, 256)); !s.ok()) {
    return s;
  }
  return stage_[slot].data();
}

absl::StatusOr<void*> CudaBackend::StageIn(int slot, const void* host, int64_t bytes) {
  auto p = Stage(slot, bytes);
  if (!p.ok()) return p;
  if (auto s = ctx_->Upload(*p, host, bytes); !s.ok()) return s;
  return p;
}

absl::StatusOr<const void*> CudaBackend::Weight(const Matrix& w) {
  const uint64_t sample = SampleHash(w);
  auto it = weights_.find(HostData(w));
  if (it != weights_.end() && it->second.rows == w.rows && it->second.cols == w.cols &&
      it->second.sample == sample) {
    return static_cast<const void*>(it->second.buf.data());
  }
  auto buf = UploadBf16(*ctx_, {&w});
  if (!buf.ok()) return buf.status();
  CachedWeight cw;
  cw.buf = std::move(*buf);
  cw.rows = w.rows;
  cw.cols = w.cols;
  cw.sample = sample;
  const void* p = cw.buf.data();
  weights_[HostData(w)] = std::move(cw);
  return p;
}

#define SEMSHARE_OP_ASSIGN(var, expr)    \
  auto var##_or = (expr);                \
  if (Failed(var##_or.status())) return; \
  auto var = *var##_or;
#define SEMSHARE_OP_CHECK(expr) \
  if (Failed(expr)) return;
#define SEMSHARE_OP_LAUNCH(...) \
  if (Failed(CudaStatus((__VA_ARGS__), #__VA_ARGS__))) return;

void CudaBackend::MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(wd, Weight(w));
  SEMSHARE_OP_ASSIGN(xf, StageIn(0, x, n * w.cols * 4));
  SEMSHARE_OP_ASSIGN(xb, Stage(1, n * w.cols * 2));
  SEMSHARE_OP_ASSIGN(yd, Stage(2, n * w.rows * 4));
  SEMSHARE_OP_LAUNCH(k::Convert<float, bf16>(static_cast<const float*>(xf), n * w.cols,
                                             static_cast<bf16*>(xb), ctx_->stream()));
  SEMSHARE_OP_CHECK(ctx_->Gemm(xb, w.cols, n, wd, w.rows, w.cols, yd, w.rows, false, 1.0f, 0.0f));
  if (!bias.empty()) {
    SEMSHARE_OP_ASSIGN(bd, StageIn(3, bias.data.data(), w.rows * 4));
    SEMSHARE_OP_LAUNCH(k::AddBias(static_cast<float*>(yd), static_cast<const float*>(bd), n, w.rows,
                                  ctx_->stream()));
  }
  SEMSHARE_OP_CHECK(ctx_->Download(y, yd, n * w.rows * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
                          float* y) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(xd, StageIn(0, x, n * d * 4));
  SEMSHARE_OP_ASSIGN(gd, StageIn(1, gamma, d * 4));
  SEMSHARE_OP_ASSIGN(yd, Stage(2, n * d * 4));
  SEMSHARE_OP_LAUNCH(
      (k::RmsNorm<float, float>(static_cast<const float*>(xd), d, static_cast<const float*>(gd), n,
                                d, eps, static_cast<float*>(yd), ctx_->stream())));
  SEMSHARE_OP_CHECK(ctx_->Download(y, yd, n * d * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
                       const RopeParams& rope) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  const int64_t row = heads * head_dim;
  SEMSHARE_OP_ASSIGN(xd, StageIn(0, x, n * row * 4));
  SEMSHARE_OP_ASSIGN(pd, StageIn(1, pos, n * 4));
  SEMSHARE_OP_ASSIGN(fd, StageIn(2, rope.inv_freq, rope.rope_dim / 2 * 4));
  k::RopeArgs a;
  a.kind = rope.style == RopeStyle::kAdjacent ? k::RopeKind::kAdjacent : k::RopeKind::kHalfSplit;
  a.heads = heads;
  a.head_dim = head_dim;
  a.rope_dim = rope.rope_dim;
  a.inv_freq = static_cast<const float*>(fd);
  float* xp = static_cast<float*>(xd);
  SEMSHARE_OP_LAUNCH((k::Rope<float, float>(xp, row, static_cast<const int32_t*>(pd), n, a, xp, row,
                                            nullptr, ctx_->stream())));
  SEMSHARE_OP_CHECK(ctx_->Download(x, xd, n * row * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::Attention(const float* q, const int32_t* q_pos, int64_t n, const float* kk,
                            const float* v, const int32_t* k_pos, int64_t m,
                            const AttentionParams& p, float* out) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  const k::AttnShape s = Shape(n, m, p);
  const int64_t qn = n * s.q_stride, kn = std::max<int64_t>(m, 1) * s.kv_stride;
  SEMSHARE_OP_ASSIGN(qf, StageIn(0, q, qn * 4));
  SEMSHARE_OP_ASSIGN(kf, StageIn(1, kk, m * s.kv_stride * 4));
  SEMSHARE_OP_ASSIGN(vf, StageIn(2, v, m * s.kv_stride * 4));
  SEMSHARE_OP_ASSIGN(qp, StageIn(3, q_pos, n * 4));
  SEMSHARE_OP_ASSIGN(kp, StageIn(4, k_pos, m * 4));
  SEMSHARE_OP_ASSIGN(qb, Stage(5, qn * 2));
  SEMSHARE_OP_ASSIGN(kb, Stage(6, kn * 2));
  SEMSHARE_OP_ASSIGN(vb, Stage(7, kn * 2));
  SEMSHARE_OP_ASSIGN(od, Stage(8, n * s.out_stride * 4));
  const int64_t ws_bytes = k::GenericAttentionWorkspace(s);
  SEMSHARE_OP_ASSIGN(ws, Stage(9, ws_bytes));
  cudaStream_t st = ctx_->stream();
  SEMSHARE_OP_LAUNCH(
      (k::Convert<float, bf16>(static_cast<const float*>(qf), qn, static_cast<bf16*>(qb), st)));
  SEMSHARE_OP_LAUNCH((k::Convert<float, bf16>(static_cast<const float*>(kf), m * s.kv_stride,
                                              static_cast<bf16*>(kb), st)));
  SEMSHARE_OP_LAUNCH((k::Convert<float, bf16>(static_cast<const float*>(vf), m * s.kv_stride,
                                              static_cast<bf16*>(vb), st)));
  SEMSHARE_OP_LAUNCH(k::Attention<float>(qb, static_cast<const int32_t*>(qp), kb, vb,
                                         static_cast<const int32_t*>(kp), s,
                                         static_cast<float*>(od), ws, ws_bytes, st));
  SEMSHARE_OP_CHECK(ctx_->Download(out, od, n * s.out_stride * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  if (!status_.ok() || count <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(gd, StageIn(0, gate, count * 4));
  SEMSHARE_OP_ASSIGN(ud, StageIn(1, up, count * 4));
  SEMSHARE_OP_LAUNCH(
      (k::SwiGlu<float, float>(static_cast<const float*>(gd), static_cast<const float*>(ud), count,
                               static_cast<float*>(gd), ctx_->stream())));
  SEMSHARE_OP_CHECK(ctx_->Download(out, gd, count * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(td, Weight(table));
  SEMSHARE_OP_ASSIGN(idd, StageIn(0, ids, n * 4));
  SEMSHARE_OP_ASSIGN(od, Stage(1, n * table.cols * 4));
  SEMSHARE_OP_LAUNCH(k::EmbedGather<float>(td, table.rows, table.cols,
                                           static_cast<const int32_t*>(idd), n,
                                           static_cast<float*>(od), ctx_->stream()));
  SEMSHARE_OP_CHECK(ctx_->Download(out, od, n * table.cols * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                             float* dst) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  const int64_t rows = *std::max_element(idx, idx + n) + 1;  // src holds at least these rows
  SEMSHARE_OP_ASSIGN(sd, StageIn(0, src, rows * row_len * 4));
  SEMSHARE_OP_ASSIGN(idd, StageIn(1, idx, n * 4));
  SEMSHARE_OP_ASSIGN(dd, Stage(2, n * row_len * 4));
  SEMSHARE_OP_LAUNCH(k::GatherRows<float>(static_cast<const float*>(sd), row_len,
                                          static_cast<const int32_t*>(idd), n,
                                          static_cast<float*>(dd), ctx_->stream()));
  SEMSHARE_OP_CHECK(ctx_->Download(dst, dd, n * row_len * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::Add(float* x, const float* y, int64_t count) {
  if (!status_.ok() || count <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(xd, StageIn(0, x, count * 4));
  SEMSHARE_OP_ASSIGN(yd, StageIn(1, y, count * 4));
  SEMSHARE_OP_LAUNCH(
      k::AddInPlace(static_cast<float*>(xd), static_cast<const float*>(yd), count, ctx_->stream()));
  SEMSHARE_OP_CHECK(ctx_->Download(x, xd, count * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* kk,
                                const int32_t* k_pos, int64_t m, const AttentionParams& p,
                                float* mass) {
  if (!status_.ok() || m <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  const k::AttnShape s = Shape(n, m, p);
  SEMSHARE_OP_ASSIGN(qd, StageIn(0, q, std::max<int64_t>(n, 1) * s.q_stride * 4));
  SEMSHARE_OP_ASSIGN(qp, StageIn(1, q_pos, std::max<int64_t>(n, 1) * 4));
  SEMSHARE_OP_ASSIGN(kd, StageIn(2, kk, m * s.kv_stride * 4));
  SEMSHARE_OP_ASSIGN(kp, StageIn(3, k_pos, m * 4));
  SEMSHARE_OP_ASSIGN(md, Stage(4, m * 4));
  SEMSHARE_OP_ASSIGN(ws, Stage(5, k::AttentionMassWorkspace(s) * 4));
  SEMSHARE_OP_LAUNCH(
      k::AttentionMass<float>(static_cast<const float*>(qd), static_cast<const int32_t*>(qp),
                              static_cast<const float*>(kd), static_cast<const int32_t*>(kp), s,
                              static_cast<float*>(md), static_cast<float*>(ws), ctx_->stream()));
  SEMSHARE_OP_CHECK(ctx_->Download(mass, md, m * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

void CudaBackend::RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) {
  if (!status_.ok() || n <= 0) return;
  const ScopedDevice on = ctx_->Activate();
  SEMSHARE_OP_ASSIGN(ad, StageIn(0, a, n * dim * 4));
  SEMSHARE_OP_ASSIGN(bd, StageIn(1, b, n * dim * 4));
  SEMSHARE_OP_ASSIGN(od, Stage(2, n * 4));
  SEMSHARE_OP_LAUNCH((k::RowDistance<float, float>(
      static_cast<const float*>(ad), dim, static_cast<const float*>(bd), dim, n, dim, false,
      static_cast<float*>(od), ctx_->stream())));
  SEMSHARE_OP_CHECK(ctx_->Download(out, od, n * 4));
  SEMSHARE_OP_CHECK(ctx_->Sync());
}

}  // namespace semshare::engine::cuda
