// KV cache on the device, BF16, one set of buffers per layer (retention compacts layers to
// different sizes). Layer l: K and V [capacity, kv_dim] bf16 (K post-RoPE), positions
// [capacity] int32 on the device plus a host mirror of the positions (ascending, as
// engine/kv_cache.h requires). ByteSize() counts the K/V rows held (2 bytes per element), the
// figure the bench compares with the CPU cache's.
//
// PinnedKv: a reference's KV in pinned host memory, BF16, as a store tier would hold it;
// DeviceKvCache::StartUpload copies it layer by layer on the context's copy stream and records
// an event per layer, and WaitLayer(l) makes the compute stream wait for layer l only, so the
// transfer of deeper layers overlaps the computation of the first ones (layer 0's embedding
// and projections run while the reference's layers arrive). The PinnedKv must stay alive and
// unchanged until the compute stream has passed WaitLayer of every layer and synchronised (or
// the DeviceKvCache is destroyed, which waits for the copy stream).
#ifndef SEMSHARE_ENGINE_CUDA_DEVICE_KV_H_
#define SEMSHARE_ENGINE_CUDA_DEVICE_KV_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_context.h"
#include "engine/kv_cache.h"

namespace semshare::engine::cuda {

class DeviceKvCache;

struct DeviceLayerKv {
  DeviceBuffer k, v;  // bf16 [capacity, kv_dim]
  DeviceBuffer pos;   // int32 [capacity]
  int64_t rows = 0;
  int64_t capacity = 0;
  std::vector<int32_t> host_pos;  // [rows]
};

class PinnedKv {
 public:
  PinnedKv() = default;
  ~PinnedKv();
  PinnedKv(const PinnedKv&) = delete;
  PinnedKv& operator=(const PinnedKv&) = delete;
  // BF16 copy of the first `prefix` rows of every layer of a host KvCache (prefix < 0: layer
  // 0's count, the whole of an untrimmed reference); InvalidArgument if a layer has fewer.
  absl::Status From(const KvCache& kv, int64_t prefix = -1);
  // Copy of a device cache (what a store would keep after a GPU prefill); synchronous, and
  // ordered after the work already queued on the cache's compute stream.
  absl::Status FromDevice(const DeviceKvCache& kv);
  int64_t ByteSize() const { return 2 * n_layers() * rows_ * kv_dim_ * 2; }
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t rows() const { return rows_; }
  int64_t kv_dim() const { return kv_dim_; }
  const void* k(int64_t l) const { return layers_[l].k; }
  const void* v(int64_t l) const { return layers_[l].v; }
  const std::vector<int32_t>& pos(int64_t l) const { return layers_[l].pos; }
  const int32_t* pinned_pos(int64_t l) const { return layers_[l].pos_pinned; }

 private:
  struct Layer {
    void* k = nullptr;
    void* v = nullptr;
    int32_t* pos_pinned = nullptr;     // [rows], the copy source (pinned, so the copy is async)
    std::vector<int32_t> pos;          // host mirror
    int64_t k_bytes = 0, v_bytes = 0;  // capacities of k and v
    int64_t pos_bytes = 0;             // capacity of pos_pinned
  };
  void Release();
  // Sizes layers_ to n with room for `bytes` of K and of V each; the pinned buffers are kept
  // and reused while large enough (pinning is slow and cudaFreeHost may synchronise the
  // device, so a server's session pins once, not per hit).
  absl::Status Prepare(int64_t n_layers, int64_t bytes);
  absl::Status PinPositions(Layer& l);
  std::vector<Layer> layers_;
  int64_t rows_ = 0, kv_dim_ = 0;
};

class DeviceKvCache {
 public:
  DeviceKvCache(CudaContext& ctx, int64_t n_layers, int64_t kv_dim);
  ~DeviceKvCache();
  DeviceKvCache(const DeviceKvCache&) = delete;
  DeviceKvCache& operator=(const DeviceKvCache&) = delete;

  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t kv_dim() const { return kv_dim_; }
  CudaContext& context() const { return ctx_; }
  DeviceLayerKv& layer(int64_t l) { return layers_[l]; }
  const DeviceLayerKv& layer(int64_t l) const { return layers_[l]; }
  int64_t rows() const { return layers_.empty() ? 0 : layers_[0].rows; }
  int32_t next_position() const;
  int64_t ByteSize() const;

  // Capacity of layer l for at least `rows` rows (existing rows kept, stream-ordered copy).
  absl::Status Reserve(int64_t l, int64_t rows);
  absl::Status ReserveAll(int64_t rows);
  void Clear();

  // Whole-cache copies to and from host float caches (parity tests, store round trips).
  absl::Status FromHost(const KvCache& kv);
  absl::Status ToHost(KvCache* kv);

  // Asynchronous upload of a pinned reference (see the file comment); the cache is resized to
  // the reference's rows. WaitLayer(l) orders the compute stream after layer l's copy. Reading
  // a layer on the compute stream before WaitLayer(l) races with its copy.
  absl::Status StartUpload(const PinnedKv& ref);
  absl::Status WaitLayer(int64_t l);

  // This cache := the first `rows` rows of every layer of `src` (same context and shape; rows
  // <= each of src's layers), device to device on the compute stream, after src's upload of
  // each layer (src.WaitLayer). A failure part way leaves this cache empty.
  absl::Status CopyPrefixFrom(DeviceKvCache& src, int64_t rows);

 private:
  CudaContext& ctx_;
  int64_t kv_dim_;
  std::vector<DeviceLayerKv> layers_;
  std::vector<cudaEvent_t> events_;  // per layer, after StartUpload
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_DEVICE_KV_H_
