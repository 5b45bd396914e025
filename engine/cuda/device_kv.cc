#include "engine/cuda/device_kv.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"
#include "kernels/swiglu.cuh"

namespace semshare::engine::cuda {

using bf16 = __nv_bfloat16;

namespace {

// Pinned host memory usable by every device's context (portable), so a reference pinned on
// one thread uploads to a context of any device.
cudaError_t PinnedAlloc(void** p, int64_t bytes) {
  return cudaHostAlloc(p, static_cast<size_t>(bytes), cudaHostAllocPortable);
}

}  // namespace

PinnedKv::~PinnedKv() { Release(); }

namespace {

void FreeLayer(void* k, void* v, void* pos) {
  if (k != nullptr) cudaFreeHost(k);
  if (v != nullptr) cudaFreeHost(v);
  if (pos != nullptr) cudaFreeHost(pos);
}

// Pinned buffer *p of at least `bytes` (capacity in *cap); the old contents are not kept.
cudaError_t EnsurePinned(void** p, int64_t* cap, int64_t bytes) {
  bytes = std::max<int64_t>(bytes, 1);
  if (*p != nullptr && *cap >= bytes) return cudaSuccess;
  if (*p != nullptr) cudaFreeHost(*p);
  *p = nullptr;
  *cap = 0;
  const cudaError_t e = PinnedAlloc(p, bytes);
  if (e == cudaSuccess) {
    *cap = bytes;
  } else {
    *p = nullptr;
    // Returned as a status; not left in the thread's last-error slot, where the next
    // CudaContext::Check (cudaGetLastError) would blame it on a good launch.
    (void)cudaGetLastError();
  }
  return e;
}

}  // namespace

void PinnedKv::Release() {
  for (Layer& l : layers_) FreeLayer(l.k, l.v, l.pos_pinned);
  layers_.clear();
}

absl::Status PinnedKv::Prepare(int64_t n_layers, int64_t bytes) {
  for (int64_t l = n_layers; l < static_cast<int64_t>(layers_.size()); ++l) {
    FreeLayer(layers_[l].k, layers_[l].v, layers_[l].pos_pinned);
  }
  layers_.resize(n_layers);
  for (Layer& d : layers_) {
    SEMSHARE_CUDA_RETURN(EnsurePinned(&d.k, &d.k_bytes, bytes));
    SEMSHARE_CUDA_RETURN(EnsurePinned(&d.v, &d.v_bytes, bytes));
  }
  return absl::OkStatus();
}

absl::Status PinnedKv::PinPositions(Layer& l) {
  void* p = l.pos_pinned;
  const cudaError_t e = EnsurePinned(&p, &l.pos_bytes, static_cast<int64_t>(l.pos.size()) * 4);
  // Also on failure: EnsurePinned may have freed the old block (p is then null), which must not
  // stay behind in pos_pinned to be freed a second time.
  l.pos_pinned = static_cast<int32_t*>(p);
  SEMSHARE_CUDA_RETURN(e);
  std::copy(l.pos.begin(), l.pos.end(), l.pos_pinned);
  return absl::OkStatus();
}

absl::Status PinnedKv::From(const KvCache& kv, int64_t prefix) {
  // Until the copy is complete the object describes no reference: a failure below (a ragged
  // cache, pinning refused) must not leave rows_ naming more bytes than the buffers hold.
  rows_ = 0;
  kv_dim_ = 0;
  const int64_t rows = prefix < 0 ? kv.rows() : prefix;
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    if (kv.layer(l).rows() < rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PinnedKv: layer ", l, " has ", kv.layer(l).rows(), " rows, fewer than ", rows));
    }
  }
  const int64_t count = rows * kv.kv_dim();
  SEMSHARE_STATUS_RETURN(Prepare(kv.n_layers(), count * 2));
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    const std::vector<int32_t>& pos = kv.layer(l).pos;
    layers_[l].pos.assign(pos.begin(), pos.begin() + rows);
    SEMSHARE_STATUS_RETURN(PinPositions(layers_[l]));
  }
  // float -> bf16, layers spread over threads (a 5k-token reference of an 8B model is 3e8
  // values: ~0.3 s on one core).
  const int64_t n_layers = kv.n_layers();
  const int64_t workers =
      std::clamp<int64_t>(std::min<int64_t>(std::thread::hardware_concurrency(), n_layers), 1, 16);
  auto convert = [&](int64_t w) {
    for (int64_t l = w; l < n_layers; l += workers) {
      const LayerKv& src = kv.layer(l);
      bf16* k = static_cast<bf16*>(layers_[l].k);
      bf16* v = static_cast<bf16*>(layers_[l].v);
      for (int64_t i = 0; i < count; ++i) {
        k[i] = __float2bfloat16_rn(src.k[i]);
        v[i] = __float2bfloat16_rn(src.v[i]);
      }
    }
  };
  int64_t started = 1;  // worker 0 is this thread
  std::vector<std::thread> threads;
  if (workers > 1 && count * n_layers >= (int64_t{1} << 20)) {
    for (; started < workers; ++started) {
      try {
        threads.emplace_back(convert, started);
      } catch (const std::system_error&) {
        break;  // no thread to be had: this thread converts the rest
      }
    }
  }
  for (int64_t w = started; w < workers; ++w) convert(w);
  convert(0);
  for (std::thread& t : threads) t.join();
  rows_ = rows;
  kv_dim_ = kv.kv_dim();
  return absl::OkStatus();
}

absl::Status PinnedKv::FromDevice(const DeviceKvCache& kv) {
  rows_ = 0;
  kv_dim_ = 0;
  const int64_t rows = kv.rows();
  // Checked before any copy is queued: an error return must not leave downloads in flight
  // into pinned buffers that the next From() rewrites from the host.
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    if (kv.layer(l).rows != rows) {
      return absl::InvalidArgumentError("PinnedKv: layers differ in rows");
    }
  }
  const int64_t bytes = std::max<int64_t>(rows * kv.kv_dim() * 2, 2);
  SEMSHARE_STATUS_RETURN(Prepare(kv.n_layers(), bytes));
  CudaContext& ctx = kv.context();
  const ScopedDevice on = ctx.Activate();
  // The cache was written on the context's compute stream, a non-blocking stream that a plain
  // cudaMemcpy (legacy default stream) would not wait for: copy on that stream, then sync.
  absl::Status s;
  for (int64_t l = 0; l < kv.n_layers() && s.ok(); ++l) {
    const DeviceLayerKv& src = kv.layer(l);
    Layer& d = layers_[l];
    s = ctx.Download(d.k, src.k.data(), rows * kv.kv_dim() * 2);
    if (s.ok()) s = ctx.Download(d.v, src.v.data(), rows * kv.kv_dim() * 2);
    d.pos = src.host_pos;
    if (s.ok()) s = PinPositions(d);
  }
  // Also after a failed enqueue: the copies already queued finish before the buffers are reused.
  const absl::Status synced = ctx.Sync();
  if (!s.ok()) return s;
  SEMSHARE_STATUS_RETURN(synced);
  rows_ = rows;
  kv_dim_ = kv.kv_dim();
  return absl::OkStatus();
}

DeviceKvCache::DeviceKvCache(CudaContext& ctx, int64_t n_layers, int64_t kv_dim)
    : ctx_(ctx), kv_dim_(kv_dim), layers_(n_layers) {}

DeviceKvCache::~DeviceKvCache() {
  if (events_.empty()) return;
  const ScopedDevice on = ctx_.Activate();
  // An upload may still be writing into the buffers about to return to the pool, where the
  // compute stream could take them next: let the copy stream finish first.
  cudaStreamSynchronize(ctx_.copy_stream());
  for (cudaEvent_t e : events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
}

int32_t DeviceKvCache::next_position() const {
  int32_t next = 0;
  for (const DeviceLayerKv& l : layers_) {
    if (!l.host_pos.empty()) next = std::max(next, l.host_pos.back() + 1);
  }
  return next;
}

int64_t DeviceKvCache::ByteSize() const {
  int64_t b = 0;
  for (const DeviceLayerKv& l : layers_) b += 2 * l.rows * kv_dim_ * 2;
  return b;
}

absl::Status DeviceKvCache::Reserve(int64_t li, int64_t rows) {
  DeviceLayerKv& l = layers_[li];
  if (l.capacity >= rows) return absl::OkStatus();
  const ScopedDevice on = ctx_.Activate();
  const int64_t cap = std::max<int64_t>(rows, l.capacity + l.capacity / 2);
  auto k = ctx_.pool().Allocate(cap * kv_dim_ * 2);
  if (!k.ok()) return k.status();
  auto v = ctx_.pool().Allocate(cap * kv_dim_ * 2);
  if (!v.ok()) return v.status();
  auto p = ctx_.pool().Allocate(cap * 4);
  if (!p.ok()) return p.status();
  if (l.rows > 0) {
    cudaStream_t s = ctx_.stream();
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(k->data(), l.k.data(), l.rows * kv_dim_ * 2, cudaMemcpyDeviceToDevice, s));
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(v->data(), l.v.data(), l.rows * kv_dim_ * 2, cudaMemcpyDeviceToDevice, s));
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(p->data(), l.pos.data(), l.rows * 4, cudaMemcpyDeviceToDevice, s));
  }
  // The old buffers return to the pool; later users are ordered after these copies on the
  // same stream.
  l.k = std::move(*k);
  l.v = std::move(*v);
  l.pos = std::move(*p);
  l.capacity = cap;
  return absl::OkStatus();
}

absl::Status DeviceKvCache::ReserveAll(int64_t rows) {
  for (int64_t l = 0; l < n_layers(); ++l) SEMSHARE_STATUS_RETURN(Reserve(l, rows));
  return absl::OkStatus();
}

void DeviceKvCache::Clear() {
  for (DeviceLayerKv& l : layers_) {
    l.rows = 0;
    l.host_pos.clear();
  }
}

absl::Status DeviceKvCache::FromHost(const KvCache& kv) {
  if (kv.n_layers() != n_layers() || kv.kv_dim() != kv_dim_) {
    return absl::InvalidArgumentError("DeviceKvCache::FromHost: shape mismatch");
  }
  const ScopedDevice on = ctx_.Activate();
  Clear();  // a failure part way leaves the layers not yet copied empty, not stale
  std::vector<bf16> tmp;
  for (int64_t li = 0; li < n_layers(); ++li) {
    const LayerKv& src = kv.layer(li);
    DeviceLayerKv& l = layers_[li];
    SEMSHARE_STATUS_RETURN(Reserve(li, src.rows()));
    const int64_t count = src.rows() * kv_dim_;
    tmp.resize(2 * count);
    for (int64_t i = 0; i < count; ++i) {
      tmp[i] = __float2bfloat16_rn(src.k[i]);
      tmp[count + i] = __float2bfloat16_rn(src.v[i]);
    }
    SEMSHARE_STATUS_RETURN(ctx_.Upload(l.k.data(), tmp.data(), count * 2));
    SEMSHARE_STATUS_RETURN(ctx_.Upload(l.v.data(), tmp.data() + count, count * 2));
    SEMSHARE_STATUS_RETURN(ctx_.Upload(l.pos.data(), src.pos.data(), src.rows() * 4));
    SEMSHARE_STATUS_RETURN(ctx_.Sync());  // tmp is reused
    l.rows = src.rows();
    l.host_pos = src.pos;
  }
  return absl::OkStatus();
}

absl::Status DeviceKvCache::ToHost(KvCache* kv) {
  const ScopedDevice on = ctx_.Activate();
  *kv = KvCache(n_layers(), kv_dim_);
  std::vector<bf16> tmp;
  for (int64_t li = 0; li < n_layers(); ++li) {
    const DeviceLayerKv& l = layers_[li];
    LayerKv& dst = kv->layer(li);
    const int64_t count = l.rows * kv_dim_;
    tmp.resize(2 * count);
    SEMSHARE_STATUS_RETURN(ctx_.Download(tmp.data(), l.k.data(), count * 2));
    SEMSHARE_STATUS_RETURN(ctx_.Download(tmp.data() + count, l.v.data(), count * 2));
    dst.pos.resize(l.rows);
    SEMSHARE_STATUS_RETURN(ctx_.Download(dst.pos.data(), l.pos.data(), l.rows * 4));
    SEMSHARE_STATUS_RETURN(ctx_.Sync());
    dst.k.resize(count);
    dst.v.resize(count);
    for (int64_t i = 0; i < count; ++i) {
      dst.k[i] = __bfloat162float(tmp[i]);
      dst.v[i] = __bfloat162float(tmp[count + i]);
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceKvCache::StartUpload(const PinnedKv& ref) {
  if (ref.n_layers() != n_layers() || ref.kv_dim() != kv_dim_) {
    return absl::InvalidArgumentError("DeviceKvCache::StartUpload: shape mismatch");
  }
  const ScopedDevice on = ctx_.Activate();
  if (events_.empty()) {
    events_.resize(n_layers(), nullptr);
    for (cudaEvent_t& e : events_) {
      SEMSHARE_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
  } else {
    // A previous upload into this cache: the compute stream passes all of its copies before
    // Reserve below may hand those buffers back to the pool.
    for (cudaEvent_t e : events_) SEMSHARE_CUDA_RETURN(cudaStreamWaitEvent(ctx_.stream(), e, 0));
  }
  // No rows until every copy is queued: a failure part way (Reserve out of memory, a refused
  // enqueue) must leave an empty cache, not one whose rows or host_pos (next_position(), the
  // retention's positions) still describe the previous contents. Then capacity (on the compute
  // stream, nothing to copy), then the copy stream waits for that.
  Clear();
  for (int64_t li = 0; li < n_layers(); ++li) SEMSHARE_STATUS_RETURN(Reserve(li, ref.rows()));
  cudaEvent_t ready = events_[0];
  SEMSHARE_CUDA_RETURN(cudaEventRecord(ready, ctx_.stream()));
  SEMSHARE_CUDA_RETURN(cudaStreamWaitEvent(ctx_.copy_stream(), ready, 0));
  const int64_t bytes = ref.rows() * kv_dim_ * 2;
  for (int64_t li = 0; li < n_layers(); ++li) {
    DeviceLayerKv& l = layers_[li];
    cudaStream_t cs = ctx_.copy_stream();
    SEMSHARE_CUDA_RETURN(cudaMemcpyAsync(l.k.data(), ref.k(li), bytes, cudaMemcpyHostToDevice, cs));
    SEMSHARE_CUDA_RETURN(cudaMemcpyAsync(l.v.data(), ref.v(li), bytes, cudaMemcpyHostToDevice, cs));
    SEMSHARE_CUDA_RETURN(cudaMemcpyAsync(l.pos.data(), ref.pinned_pos(li), ref.rows() * 4,
                                         cudaMemcpyHostToDevice, cs));
    SEMSHARE_CUDA_RETURN(cudaEventRecord(events_[li], cs));
  }
  for (int64_t li = 0; li < n_layers(); ++li) {
    layers_[li].rows = ref.rows();
    layers_[li].host_pos = ref.pos(li);
  }
  return absl::OkStatus();
}

absl::Status DeviceKvCache::CopyPrefixFrom(DeviceKvCache& src, int64_t rows) {
  if (&src.ctx_ != &ctx_ || src.n_layers() != n_layers() || src.kv_dim() != kv_dim_) {
    return absl::InvalidArgumentError("DeviceKvCache::CopyPrefixFrom: context or shape mismatch");
  }
  for (int64_t l = 0; l < n_layers(); ++l) {
    if (rows < 0 || src.layer(l).rows < rows) {
      return absl::InvalidArgumentError(absl::StrCat("DeviceKvCache::CopyPrefixFrom: ", rows,
                                                     " rows asked, layer ", l, " has ",
                                                     src.layer(l).rows));
    }
  }
  const ScopedDevice on = ctx_.Activate();
  Clear();
  for (int64_t l = 0; l < n_layers(); ++l) SEMSHARE_STATUS_RETURN(Reserve(l, rows));
  cudaStream_t s = ctx_.stream();
  for (int64_t l = 0; l < n_layers() && rows > 0; ++l) {
    SEMSHARE_STATUS_RETURN(src.WaitLayer(l));
    const DeviceLayerKv& a = src.layer(l);
    DeviceLayerKv& b = layers_[l];
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(b.k.data(), a.k.data(), rows * kv_dim_ * 2, cudaMemcpyDeviceToDevice, s));
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(b.v.data(), a.v.data(), rows * kv_dim_ * 2, cudaMemcpyDeviceToDevice, s));
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(b.pos.data(), a.pos.data(), rows * 4, cudaMemcpyDeviceToDevice, s));
  }
  for (int64_t l = 0; l < n_layers(); ++l) {
    layers_[l].rows = rows;
    layers_[l].host_pos.assign(src.layer(l).host_pos.begin(), src.layer(l).host_pos.begin() + rows);
  }
  return absl::OkStatus();
}

absl::Status DeviceKvCache::WaitLayer(int64_t l) {
  if (events_.empty()) return absl::OkStatus();
  SEMSHARE_CUDA_RETURN(cudaStreamWaitEvent(ctx_.stream(), events_[l], 0));
  return absl::OkStatus();
}

}  // namespace semshare::engine::cuda
