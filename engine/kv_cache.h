// Per-layer KV cache. Each layer holds its own rows because retention (later) compacts layers
// to different sizes. Row r of a layer: K (post-RoPE) and V of one token, [n_kv_heads *
// head_dim] floats each, and that token's position. Rows are kept in ascending position order
// (Backend::Attention relies on it).
#ifndef SEMSHARE_ENGINE_KV_CACHE_H_
#define SEMSHARE_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <vector>

namespace semshare::engine {

struct LayerKv {
  std::vector<float> k;      // [rows, kv_dim]
  std::vector<float> v;      // [rows, kv_dim]
  std::vector<int32_t> pos;  // [rows]
  int64_t rows() const { return static_cast<int64_t>(pos.size()); }
};

class KvCache {
 public:
  KvCache() = default;
  KvCache(int64_t n_layers, int64_t kv_dim) : kv_dim_(kv_dim), layers_(n_layers) {}
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;
  KvCache(const KvCache&) = delete;  // copies are costly: use Copy()
  KvCache& operator=(const KvCache&) = delete;
  KvCache Copy() const;
  // Replaces every layer's rows with the first `rows` rows of the same layer of `src` (same
  // shape; rows <= every layer's row count of src).
  void AssignPrefix(const KvCache& src, int64_t rows);

  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t kv_dim() const { return kv_dim_; }
  LayerKv& layer(int64_t l) { return layers_[l]; }
  const LayerKv& layer(int64_t l) const { return layers_[l]; }
  // Rows of layer 0 (all layers have the same count until retention compacts them).
  int64_t rows() const { return layers_.empty() ? 0 : layers_[0].rows(); }
  // Position one past the last cached token (0 when empty).
  int32_t next_position() const;
  void Reserve(int64_t rows);
  void Clear();
  // Bytes of K and V held (what metrics call KV bytes).
  int64_t ByteSize() const;

 private:
  int64_t kv_dim_ = 0;
  std::vector<LayerKv> layers_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_KV_CACHE_H_
