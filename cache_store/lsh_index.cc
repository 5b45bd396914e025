#include "cache_store/lsh_index.h"

#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"

namespace semshare::store {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::Status IndexConfig::Validate() const {
  if (bands < 1 || bands > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("index bands ", bands, " not in [1, 1024]"));
  }
  if (rows < 1 || rows > 64) {
    return absl::InvalidArgumentError(absl::StrCat("index rows ", rows, " not in [1, 64]"));
  }
  return absl::OkStatus();
}

bool CandidateBetter(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.bands != b.bands) return a.bands > b.bands;
  return a.id < b.id;
}

MinHasher::MinHasher(const IndexConfig& config) : config_(config) {
  const size_t h = static_cast<size_t>(std::max(config_.bands, 0)) * std::max(config_.rows, 0);
  std::mt19937_64 rng(config_.seed);
  a_lo_.resize(h);
  a_hi_.resize(h);
  c_.resize(h);
  for (size_t i = 0; i < h; ++i) {
    a_lo_[i] = rng();
    a_hi_[i] = rng();
    c_[i] = rng();
  }
}

Signature MinHasher::Compute(std::span<const uint64_t> features) const {
  Signature sig;
  if (features.empty()) return sig;
  const size_t h = c_.size();
  sig.assign(h, std::numeric_limits<uint32_t>::max());
  uint32_t* out = sig.data();
  const uint64_t* a_lo = a_lo_.data();
  const uint64_t* a_hi = a_hi_.data();
  const uint64_t* c = c_.data();
  for (uint64_t f : features) {
    const uint64_t x = SplitMix64(f ^ config_.seed);
    const uint64_t lo = static_cast<uint32_t>(x), hi = x >> 32;
    for (size_t i = 0; i < h; ++i) {  // vectorised
      const uint32_t v = static_cast<uint32_t>((a_lo[i] * lo + a_hi[i] * hi + c[i]) >> 32);
      out[i] = std::min(out[i], v);
    }
  }
  return sig;
}

std::vector<uint64_t> MinHasher::BandKeys(uint64_t ns_hash, const Signature& sig) const {
  std::vector<uint64_t> keys;
  const size_t rows = static_cast<size_t>(config_.rows);
  if (sig.size() != c_.size() || sig.empty()) return keys;
  keys.resize(static_cast<size_t>(config_.bands));
  for (size_t b = 0; b < keys.size(); ++b) {
    keys[b] = XXH3_64bits_withSeed(sig.data() + b * rows, rows * sizeof(uint32_t),
                                   SplitMix64(ns_hash + b));
  }
  return keys;
}

void LshIndex::Insert(uint64_t id, const Namespace& ns, Signature sig) {
  Erase(id);
  Entry e{ns, std::move(sig), {}};
  e.keys = hasher_.BandKeys(ns.Hash(), e.sig);
  for (uint64_t key : e.keys) buckets_[key].push_back(id);
  entries_.emplace(id, std::move(e));
}

bool LshIndex::Erase(uint64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  for (uint64_t key : it->second.keys) {
    auto b = buckets_.find(key);
    if (b == buckets_.end()) continue;
    std::vector<uint64_t>& ids = b->second;
    auto pos = std::find(ids.begin(), ids.end(), id);
    if (pos != ids.end()) {
      *pos = ids.back();
      ids.pop_back();
    }
    if (ids.empty()) buckets_.erase(b);
  }
  entries_.erase(it);
  return true;
}

void LshIndex::Clear() {
  entries_.clear();
  buckets_.clear();
}

std::vector<Candidate> LshIndex::Query(const Namespace& ns, const Signature& sig, int k,
                                       int64_t* scored) const {
  std::vector<Candidate> out;
  if (scored != nullptr) *scored = 0;
  if (k <= 0) return out;
  const std::vector<uint64_t> keys = hasher_.BandKeys(ns.Hash(), sig);
  absl::flat_hash_map<uint64_t, int32_t> collisions;
  for (uint64_t key : keys) {
    auto b = buckets_.find(key);
    if (b == buckets_.end()) continue;
    for (uint64_t id : b->second) ++collisions[id];
  }
  out.reserve(collisions.size());
  if (scored != nullptr) *scored = static_cast<int64_t>(collisions.size());
  for (const auto& [id, bands] : collisions) {
    const Entry& e = entries_.at(id);
    // Bucket keys mix only the namespace hash; the exact comparison makes isolation absolute.
    if (!(e.ns == ns)) continue;
    int64_t agree = 0;
    for (size_t i = 0; i < sig.size(); ++i) agree += e.sig[i] == sig[i];
    out.push_back({id, static_cast<float>(agree) / static_cast<float>(sig.size()), bands});
  }
  const size_t keep = std::min(out.size(), static_cast<size_t>(k));
  std::partial_sort(out.begin(), out.begin() + keep, out.end(), CandidateBetter);
  out.resize(keep);
  return out;
}

}  // namespace semshare::store
