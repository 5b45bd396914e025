#include "engine/kv_cache.h"

#include <algorithm>

namespace semshare::engine {

KvCache KvCache::Copy() const {
  KvCache c(n_layers(), kv_dim_);
  c.layers_ = layers_;
  return c;
}

void KvCache::AssignPrefix(const KvCache& src, int64_t rows) {
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerKv& from = src.layers_[l];
    LayerKv& to = layers_[l];
    to.k.assign(from.k.begin(), from.k.begin() + rows * kv_dim_);
    to.v.assign(from.v.begin(), from.v.begin() + rows * kv_dim_);
    to.pos.assign(from.pos.begin(), from.pos.begin() + rows);
  }
}

int32_t KvCache::next_position() const {
  int32_t next = 0;
  for (const LayerKv& l : layers_) {
    if (!l.pos.empty()) next = std::max(next, l.pos.back() + 1);
  }
  return next;
}

void KvCache::Reserve(int64_t rows) {
  for (LayerKv& l : layers_) {
    l.k.reserve(rows * kv_dim_);
    l.v.reserve(rows * kv_dim_);
    l.pos.reserve(rows);
  }
}

void KvCache::Clear() {
  for (LayerKv& l : layers_) {
    l.k.clear();
    l.v.clear();
    l.pos.clear();
  }
}

int64_t KvCache::ByteSize() const {
  int64_t b = 0;
  for (const LayerKv& l : layers_) b += (l.k.size() + l.v.size()) * sizeof(float);
  return b;
}

}  // namespace semshare::engine
