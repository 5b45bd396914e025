#include "engine/cuda/batch_forward.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"
#include "engine/llama_forward.h"
#include "kernels/embed.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/paged_attention.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/sampling.cuh"
#include "kernels/swiglu.cuh"

namespace semshare::engine::cuda {
namespace {

using bf16 = __nv_bfloat16;
namespace k = ::semshare::kernels;

// Slots of a sequence's rows [0, rows) in a layer's page arrays.
std::vector<int32_t> Slots(const PagedSeq& seq, int64_t rows) {
  std::vector<int32_t> s(rows);
  for (int64_t j = 0; j < rows; ++j) s[j] = static_cast<int32_t>(seq.Slot(j));
  return s;
}

}  // namespace

BatchForward::BatchForward(CudaContext& ctx, const DeviceModel& model, PagedKvPool& pool)
    : ctx_(ctx), model_(model), pool_(pool) {
  const ModelConfig& c = model.config;
  d_ = c.d_model;
  qd_ = c.n_heads * c.head_dim;
  kvd_ = c.n_kv_heads * c.head_dim;
  qkvd_ = qd_ + 2 * kvd_;
  ff_ = c.d_ff;
  max_rows_.assign(c.n_layers, 0);
}

BatchForward::~BatchForward() {
  if (logits_h_ == nullptr) return;
  const ScopedDevice on = ctx_.Activate();
  cudaStreamSynchronize(ctx_.stream());  // no copy may still write it
  cudaFreeHost(logits_h_);
}

int64_t BatchForward::ScratchBytes(const ModelConfig& c, int64_t rows, int64_t logit_rows) {
  const int64_t d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const int64_t per_row =
      d * 4 + d * 2 + (qd + 2 * kvd) * 4 + 2 * qd * 2 + 3 * c.d_ff * 2 + 4 * (3 + 2 * c.n_layers);
  // The attention workspace: at most ~2 * 264 (row, kv head, split) blocks of partials.
  const int64_t ws = 1024 * c.n_heads * (2 + c.head_dim) * 4;
  return rows * per_row + logit_rows * (d * 4 + c.vocab_size * 4 + 8) + ws;
}

absl::Status BatchForward::Forward(std::span<const Item> items) { return Run(items, nullptr); }

absl::Status BatchForward::ForwardGreedy(std::span<const Item> items, std::span<int32_t> tokens) {
  if (tokens.size() != items.size()) {
    return absl::InvalidArgumentError("batched greedy forward: one token slot per item");
  }
  return Run(items, tokens.data());
}

absl::Status BatchForward::Run(std::span<const Item> items, int32_t* tokens) {
  const ModelConfig& c = model_.config;
  const int64_t n_items = static_cast<int64_t>(items.size());
  const int64_t layers = c.n_layers;
  if (n_items == 0) return absl::InvalidArgumentError("batched forward: no items");
  std::vector<PagedSeq*> seqs(n_items);
  std::vector<int64_t> want(n_items);
  int64_t r_total = 0, nl = 0, table = 0;
  for (int64_t i = 0; i < n_items; ++i) {
    const Item& it = items[i];
    if (it.seq == nullptr || &it.seq->pool_ != &pool_) {
      return absl::InvalidArgumentError(
          absl::StrCat("batched forward: item ", i, " has no sequence of this runner's pool"));
    }
    SEMSHARE_STATUS_RETURN(
        CheckForwardArgs(c, it.ids, it.pos, layers, kvd_, it.seq->next_position()));
    seqs[i] = it.seq;
    want[i] = it.seq->rows() + static_cast<int64_t>(it.ids.size());
    r_total += static_cast<int64_t>(it.ids.size());
    nl += tokens != nullptr || it.logits != nullptr ? 1 : 0;
  }
  {
    std::vector<PagedSeq*> sorted = seqs;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return absl::InvalidArgumentError("batched forward: a sequence appears twice in one batch");
    }
  }
  const ScopedDevice on = ctx_.Activate();
  // All or nothing: on RESOURCE_EXHAUSTED no sequence gained or lost a page.
  SEMSHARE_STATUS_RETURN(pool_.Reserve(seqs, want));
  for (PagedSeq* s : seqs) table += static_cast<int64_t>(s->blocks_.size());

  // Metadata, int32: ids [R] | pos [R] | row's item [R] | table offset [N] | tables [T] |
  // rows per (layer, item) [L, N] | page slot per (layer, row) [L, R] | logit row [NL].
  const int64_t r = r_total, n = n_items;
  off_pos_ = r;
  off_seq_ = 2 * r;
  off_toff_ = 3 * r;
  off_table_ = off_toff_ + n;
  off_rows_ = off_table_ + table;
  off_slot_ = off_rows_ + layers * n;
  off_lrow_ = off_slot_ + layers * r;
  meta_h_.assign(off_lrow_ + nl, 0);
  int32_t* m = meta_h_.data();
  int64_t row = 0, t = 0, li = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Item& it = items[i];
    const int64_t len = static_cast<int64_t>(it.ids.size());
    m[off_toff_ + i] = static_cast<int32_t>(t);
    for (int32_t b : it.seq->blocks_) m[off_table_ + t++] = b;
    for (int64_t j = 0; j < len; ++j, ++row) {
      m[row] = it.ids[j];
      m[off_pos_ + row] = it.pos[j];
      m[off_seq_ + row] = static_cast<int32_t>(i);
      for (int64_t l = 0; l < layers; ++l) {
        m[off_slot_ + l * r + row] = static_cast<int32_t>(it.seq->Slot(it.seq->layer_rows_[l] + j));
      }
    }
    if (tokens != nullptr || it.logits != nullptr)
      m[off_lrow_ + li++] = static_cast<int32_t>(row - 1);
  }
  for (int64_t l = 0; l < layers; ++l) {
    max_rows_[l] = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t rows = items[i].seq->layer_rows_[l] + static_cast<int64_t>(items[i].ids.size());
      m[off_rows_ + l * n + i] = static_cast<int32_t>(rows);
      max_rows_[l] = std::max(max_rows_[l], rows);
    }
  }

  DevicePool& p = ctx_.pool();
  SEMSHARE_STATUS_RETURN(p.EnsureSize(x_, r * d_ * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(h_, r * d_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(qkv_, r * qkvd_ * 4));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(q_, r * qd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(att_, r * qd_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(gu_, r * 2 * ff_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(act_, r * ff_ * 2));
  SEMSHARE_STATUS_RETURN(p.EnsureSize(meta_, static_cast<int64_t>(meta_h_.size()) * 4));
  if (nl > 0) {
    SEMSHARE_STATUS_RETURN(p.EnsureSize(xl_, nl * d_ * 4));
    SEMSHARE_STATUS_RETURN(p.EnsureSize(logits_, nl * c.vocab_size * 4));
    SEMSHARE_STATUS_RETURN(p.EnsureSize(tok_, nl * 4));
  }
  cudaStream_t st = ctx_.stream();
  SEMSHARE_STATUS_RETURN(
      ctx_.Upload(meta_.data(), meta_h_.data(), static_cast<int64_t>(meta_h_.size()) * 4));
  SEMSHARE_CUDA_RETURN(k::EmbedGather<float>(model_.tok_embd.data(), c.vocab_size, d_,
                                             meta_.as<int32_t>(), r, x_.as<float>(), st));
  for (int64_t l = 0; l < layers; ++l) SEMSHARE_STATUS_RETURN(Layer(l, r, n));

  if (nl > 0) {
    const int32_t* lrow = meta_.as<int32_t>() + off_lrow_;
    SEMSHARE_CUDA_RETURN(k::GatherRows<float>(x_.as<float>(), d_, lrow, nl, xl_.as<float>(), st));
    SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(xl_.as<float>(), d_, model_.out_norm.as<float>(),
                                                  nl, d_, c.rms_eps, h_.as<bf16>(), st)));
    SEMSHARE_STATUS_RETURN(ctx_.Gemm(h_.data(), d_, nl, model_.output(), c.vocab_size, d_,
                                     logits_.data(), c.vocab_size, false, 1, 0));
    if (tokens != nullptr) {
      SEMSHARE_CUDA_RETURN(
          k::ArgmaxRows(logits_.as<float>(), nl, c.vocab_size, tok_.as<int32_t>(), st));
      SEMSHARE_STATUS_RETURN(ctx_.Download(tokens, tok_.data(), nl * 4));
    } else {
      const int64_t bytes = nl * c.vocab_size * 4;
      if (logits_h_bytes_ < bytes) {
        if (logits_h_ != nullptr) {
          SEMSHARE_STATUS_RETURN(ctx_.Sync());  // an earlier (failed) call's copy may still write
          cudaFreeHost(logits_h_);
          logits_h_ = nullptr;
          logits_h_bytes_ = 0;
        }
        void* p = nullptr;
        const cudaError_t e = cudaHostAlloc(&p, static_cast<size_t>(bytes), cudaHostAllocPortable);
        if (e != cudaSuccess) {
          (void)cudaGetLastError();  // returned as a status, not left for the next Check
          return CudaStatus(e, "cudaHostAlloc (batched logits)");
        }
        logits_h_ = static_cast<float*>(p);
        logits_h_bytes_ = bytes;
      }
      SEMSHARE_STATUS_RETURN(ctx_.Download(logits_h_, logits_.data(), bytes));
    }
  }
  // One wait per iteration: the host needs the logits (or tokens), and the rows' bookkeeping
  // below must describe finished work.
  SEMSHARE_STATUS_RETURN(ctx_.Sync());
  SEMSHARE_STATUS_RETURN(ctx_.Check("batched forward"));
  li = 0;
  for (const Item& it : items) {
    const int64_t len = static_cast<int64_t>(it.ids.size());
    for (int64_t& lr : it.seq->layer_rows_) lr += len;
    it.seq->next_position_ = it.pos.back() + 1;
    if (tokens == nullptr && it.logits != nullptr) {
      std::memcpy(it.logits, logits_h_ + li++ * c.vocab_size, c.vocab_size * sizeof(float));
    }
  }
  return absl::OkStatus();
}

absl::Status BatchForward::Layer(int64_t l, int64_t r, int64_t n) {
  const ModelConfig& c = model_.config;
  const DeviceLayer& lw = model_.layers[l];
  cudaStream_t st = ctx_.stream();
  const int32_t* meta = meta_.as<int32_t>();
  const int32_t* pos_d = meta + off_pos_;
  const int32_t* slot_d = meta + off_slot_ + l * r;
  SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(x_.as<float>(), d_, lw.attn_norm.as<float>(), r, d_,
                                                c.rms_eps, h_.as<bf16>(), st)));
  SEMSHARE_STATUS_RETURN(
      ctx_.Gemm(h_.data(), d_, r, lw.wqkv.data(), qkvd_, d_, qkv_.data(), qkvd_, false, 1, 0));
  if (!lw.bqkv.empty()) {
    SEMSHARE_CUDA_RETURN(k::AddBias(qkv_.as<float>(), lw.bqkv.as<float>(), r, qkvd_, st));
  }
  SEMSHARE_CUDA_RETURN(
      (k::Rope<float, bf16>(qkv_.as<float>(), qkvd_, pos_d, r, RopeArgsFor(model_, c.n_heads, true),
                            q_.as<bf16>(), qd_, nullptr, st)));
  // K and V of every row straight into its page slot, and the slot's position.
  SEMSHARE_CUDA_RETURN((k::Rope<float, bf16>(qkv_.as<float>() + qd_, qkvd_, pos_d, r,
                                             RopeArgsFor(model_, c.n_kv_heads, true),
                                             static_cast<bf16*>(pool_.k(l)), kvd_, slot_d, st)));
  SEMSHARE_CUDA_RETURN((k::Rope<float, bf16>(qkv_.as<float>() + qd_ + kvd_, qkvd_, pos_d, r,
                                             RopeArgsFor(model_, c.n_kv_heads, false),
                                             static_cast<bf16*>(pool_.v(l)), kvd_, slot_d, st)));
  SEMSHARE_CUDA_RETURN(k::ScatterInt32(pos_d, slot_d, r, pool_.pos(l), st));

  k::PagedAttnShape sh;
  sh.n = r;
  sh.n_seqs = n;
  sh.max_rows = max_rows_[l];
  sh.n_heads = c.n_heads;
  sh.n_kv_heads = c.n_kv_heads;
  sh.head_dim = c.head_dim;
  sh.block_size = PagedKvPool::kBlockRows;
  sh.q_stride = qd_;
  sh.kv_stride = kvd_;
  sh.out_stride = qd_;
  sh.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  sh.window = c.sliding_window;
  SEMSHARE_STATUS_RETURN(ctx_.pool().EnsureSize(ws_, k::PagedAttentionWorkspace(sh)));
  SEMSHARE_CUDA_RETURN(k::PagedAttention<bf16>(q_.data(), pos_d, meta + off_seq_, pool_.k(l),
                                               pool_.v(l), pool_.pos(l), meta + off_table_,
                                               meta + off_toff_, meta + off_rows_ + l * n, sh,
                                               att_.as<bf16>(), ws_.data(), ws_.bytes(), st));
  SEMSHARE_STATUS_RETURN(
      ctx_.Gemm(att_.data(), qd_, r, lw.wo.data(), d_, qd_, x_.data(), d_, false, 1, 1));
  SEMSHARE_CUDA_RETURN((k::RmsNorm<float, bf16>(x_.as<float>(), d_, lw.ffn_norm.as<float>(), r, d_,
                                                c.rms_eps, h_.as<bf16>(), st)));
  SEMSHARE_STATUS_RETURN(
      ctx_.Gemm(h_.data(), d_, r, lw.w_gu.data(), 2 * ff_, d_, gu_.data(), 2 * ff_, true, 1, 0));
  SEMSHARE_CUDA_RETURN((k::SwiGluPacked<bf16, bf16>(gu_.as<bf16>(), r, ff_, act_.as<bf16>(), st)));
  return ctx_.Gemm(act_.data(), ff_, r, lw.w_down.data(), d_, ff_, x_.data(), d_, false, 1, 1);
}

absl::Status BatchForward::AdoptDevice(PagedSeq& seq, const DeviceKvCache& src) {
  if (&seq.pool_ != &pool_ || seq.rows() != 0 || !seq.blocks_.empty()) {
    return absl::InvalidArgumentError("paged KV adopt: an empty sequence of this runner's pool");
  }
  if (src.n_layers() != pool_.n_layers() || src.kv_dim() != kvd_) {
    return absl::InvalidArgumentError(
        "paged KV adopt: the device cache's shape is not the model's");
  }
  int64_t rows = 0;
  for (int64_t l = 0; l < src.n_layers(); ++l) rows = std::max(rows, src.layer(l).rows);
  if (rows == 0) return absl::OkStatus();
  const ScopedDevice on = ctx_.Activate();
  SEMSHARE_STATUS_RETURN(pool_.Reserve(seq, rows));
  const std::vector<int32_t> slots = Slots(seq, rows);
  absl::Status s = ctx_.pool().EnsureSize(tmp_idx_, rows * 4);
  if (s.ok()) s = ctx_.Upload(tmp_idx_.data(), slots.data(), rows * 4);
  cudaStream_t st = ctx_.stream();
  for (int64_t l = 0; s.ok() && l < src.n_layers(); ++l) {
    const DeviceLayerKv& sl = src.layer(l);
    if (sl.rows == 0) continue;
    s = CudaStatus(k::ScatterRows<bf16>(sl.k.as<bf16>(), kvd_, tmp_idx_.as<int32_t>(), sl.rows,
                                        static_cast<bf16*>(pool_.k(l)), st),
                   "paged KV adopt (K rows)");
    if (s.ok()) {
      s = CudaStatus(k::ScatterRows<bf16>(sl.v.as<bf16>(), kvd_, tmp_idx_.as<int32_t>(), sl.rows,
                                          static_cast<bf16*>(pool_.v(l)), st),
                     "paged KV adopt (V rows)");
    }
    if (s.ok()) {
      s = CudaStatus(
          k::ScatterInt32(sl.pos.as<int32_t>(), tmp_idx_.as<int32_t>(), sl.rows, pool_.pos(l), st),
          "paged KV adopt (positions)");
    }
  }
  if (s.ok()) s = ctx_.Sync();
  if (!s.ok()) {
    seq.Clear();
    return s;
  }
  for (int64_t l = 0; l < src.n_layers(); ++l) seq.layer_rows_[l] = src.layer(l).rows;
  seq.next_position_ = src.next_position();
  return absl::OkStatus();
}

absl::Status BatchForward::CopyFromHost(PagedSeq& seq, const KvCache& src, int64_t rows) {
  if (&seq.pool_ != &pool_ || seq.rows() != 0 || !seq.blocks_.empty()) {
    return absl::InvalidArgumentError("prefix copy: an empty sequence of this runner's pool");
  }
  if (src.n_layers() != pool_.n_layers() || src.kv_dim() != kvd_) {
    return absl::InvalidArgumentError("prefix copy: the reference's KV shape is not the model's");
  }
  if (rows < 0) return absl::InvalidArgumentError("prefix copy: negative row count");
  int32_t next = 0;
  for (int64_t l = 0; l < src.n_layers(); ++l) {
    const LayerKv& sl = src.layer(l);
    if (sl.rows() < rows || static_cast<int64_t>(sl.k.size()) < rows * kvd_ ||
        static_cast<int64_t>(sl.v.size()) < rows * kvd_) {
      return absl::InvalidArgumentError(absl::StrCat("prefix copy: reference layer ", l, " holds ",
                                                     sl.rows(), " rows, fewer than ", rows));
    }
    if (rows > 0) next = std::max(next, sl.pos[rows - 1] + 1);
  }
  if (rows == 0) return absl::OkStatus();
  const ScopedDevice on = ctx_.Activate();
  SEMSHARE_STATUS_RETURN(pool_.Reserve(seq, rows));
  const std::vector<int32_t> slots = Slots(seq, rows);
  const int64_t count = rows * kvd_;
  absl::Status s = ctx_.pool().EnsureSize(tmp_idx_, rows * 4);
  if (s.ok()) s = ctx_.pool().EnsureSize(tmp_, 2 * count * 2 + rows * 4);
  if (s.ok()) s = ctx_.Upload(tmp_idx_.data(), slots.data(), rows * 4);
  // Per layer: K | V as bf16, then the positions; a pageable upload returns once staged, so the
  // host buffer is refilled for the next layer while the device scatters this one.
  std::vector<bf16> host(2 * count + 2 * rows);
  cudaStream_t st = ctx_.stream();
  bf16* kd = tmp_.as<bf16>();
  bf16* vd = kd + count;
  int32_t* pd = reinterpret_cast<int32_t*>(vd + count);
  for (int64_t l = 0; s.ok() && l < src.n_layers(); ++l) {
    const LayerKv& sl = src.layer(l);
    for (int64_t i = 0; i < count; ++i) {
      host[i] = __float2bfloat16_rn(sl.k[i]);
      host[count + i] = __float2bfloat16_rn(sl.v[i]);
    }
    std::memcpy(static_cast<void*>(host.data() + 2 * count), sl.pos.data(), rows * 4);
    s = ctx_.Upload(kd, host.data(), 2 * count * 2 + rows * 4);
    if (s.ok()) {
      s = CudaStatus(k::ScatterRows<bf16>(kd, kvd_, tmp_idx_.as<int32_t>(), rows,
                                          static_cast<bf16*>(pool_.k(l)), st),
                     "prefix copy (K rows)");
    }
    if (s.ok()) {
      s = CudaStatus(k::ScatterRows<bf16>(vd, kvd_, tmp_idx_.as<int32_t>(), rows,
                                          static_cast<bf16*>(pool_.v(l)), st),
                     "prefix copy (V rows)");
    }
    if (s.ok()) {
      s = CudaStatus(k::ScatterInt32(pd, tmp_idx_.as<int32_t>(), rows, pool_.pos(l), st),
                     "prefix copy (positions)");
    }
    // The next layer's upload overwrites tmp_: stream order puts it after these scatters.
  }
  if (s.ok()) s = ctx_.Sync();
  if (!s.ok()) {
    seq.Clear();
    return s;
  }
  for (int64_t& lr : seq.layer_rows_) lr = rows;
  seq.next_position_ = next;
  return absl::OkStatus();
}

absl::Status BatchForward::ToHost(const PagedSeq& seq, KvCache* out) {
  if (&seq.pool_ != &pool_) {
    return absl::InvalidArgumentError("paged KV download: a sequence of another pool");
  }
  *out = KvCache(pool_.n_layers(), kvd_);
  const int64_t rows = seq.rows();
  if (rows == 0) return absl::OkStatus();
  const ScopedDevice on = ctx_.Activate();
  const std::vector<int32_t> slots = Slots(seq, rows);
  SEMSHARE_STATUS_RETURN(ctx_.pool().EnsureSize(tmp_idx_, rows * 4));
  SEMSHARE_STATUS_RETURN(ctx_.pool().EnsureSize(tmp_, 2 * rows * kvd_ * 2 + rows * 4));
  SEMSHARE_STATUS_RETURN(ctx_.Upload(tmp_idx_.data(), slots.data(), rows * 4));
  cudaStream_t st = ctx_.stream();
  std::vector<bf16> host;
  for (int64_t l = 0; l < pool_.n_layers(); ++l) {
    const int64_t r = seq.layer_rows(l), count = r * kvd_;
    LayerKv& dl = out->layer(l);
    dl.pos.resize(r);
    dl.k.resize(count);
    dl.v.resize(count);
    if (r == 0) continue;
    bf16* kd = tmp_.as<bf16>();
    bf16* vd = kd + count;
    int32_t* pd = reinterpret_cast<int32_t*>(vd + count);
    SEMSHARE_CUDA_RETURN(k::GatherRows<bf16>(static_cast<const bf16*>(pool_.k(l)), kvd_,
                                             tmp_idx_.as<int32_t>(), r, kd, st));
    SEMSHARE_CUDA_RETURN(k::GatherRows<bf16>(static_cast<const bf16*>(pool_.v(l)), kvd_,
                                             tmp_idx_.as<int32_t>(), r, vd, st));
    SEMSHARE_CUDA_RETURN(
        k::GatherRows<int32_t>(pool_.pos(l), 1, tmp_idx_.as<int32_t>(), r, pd, st));
    host.resize(2 * count);
    SEMSHARE_STATUS_RETURN(ctx_.Download(host.data(), kd, 2 * count * 2));
    SEMSHARE_STATUS_RETURN(ctx_.Download(dl.pos.data(), pd, r * 4));
    SEMSHARE_STATUS_RETURN(ctx_.Sync());
    for (int64_t i = 0; i < count; ++i) {
      dl.k[i] = __bfloat162float(host[i]);
      dl.v[i] = __bfloat162float(host[count + i]);
    }
  }
  return ctx_.Check("paged KV download");
}

}  // namespace semshare::engine::cuda
