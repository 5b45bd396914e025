#include "cache_store/lsh_index.h"

#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"

namespace semshare::store {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<uint8_t> Low8(const Signature& sig) {
  std::vector<uint8_t> out(sig.size());
  for (size_t i = 0; i < sig.size(); ++i) out[i] = static_cast<uint8_t>(sig[i]);
  return out;
}

}  // namespace

absl::Status IndexConfig::Validate() const {
  if (bands < 1 || bands > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("index bands ", bands, " not in [1, 1024]"));
  }
  if (rows < 1 || rows > 64) {
    return absl::InvalidArgumentError(absl::StrCat("index rows ", rows, " not in [1, 64]"));
  }
  if (max_bucket_visit < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("index max_bucket_visit ", max_bucket_visit, " must be >= 1"));
  }
  if (max_scored < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("index max_scored ", max_scored, " must be >= 1"));
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
  Entry e{ns, Low8(sig), hasher_.BandKeys(ns.Hash(), sig)};
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
                                       int64_t* scored, int64_t* collided) const {
  std::vector<Candidate> out;
  if (scored != nullptr) *scored = 0;
  if (collided != nullptr) *collided = 0;
  if (k <= 0) return out;
  const IndexConfig& config = hasher_.config();
  const std::vector<uint64_t> keys = hasher_.BandKeys(ns.Hash(), sig);
  // The cheap estimate: band collisions per record, from at most max_bucket_visit ids per
  // bucket (the most recently inserted: Insert appends; Erase moves the last id into the hole).
  absl::flat_hash_map<uint64_t, int32_t> collisions;
  const size_t visit = static_cast<size_t>(config.max_bucket_visit);
  for (uint64_t key : keys) {
    auto b = buckets_.find(key);
    if (b == buckets_.end()) continue;
    const std::vector<uint64_t>& ids = b->second;
    for (size_t i = ids.size() > visit ? ids.size() - visit : 0; i < ids.size(); ++i) {
      ++collisions[ids[i]];
    }
  }
  if (collided != nullptr) *collided = static_cast<int64_t>(collisions.size());
  std::vector<std::pair<int32_t, uint64_t>> ranked;  // (bands, id)
  ranked.reserve(collisions.size());
  for (const auto& [id, bands] : collisions) ranked.emplace_back(bands, id);
  const auto more_bands = [](const std::pair<int32_t, uint64_t>& a,
                             const std::pair<int32_t, uint64_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  const size_t limit = static_cast<size_t>(config.max_scored);
  if (ranked.size() > limit) {
    std::nth_element(ranked.begin(), ranked.begin() + limit, ranked.end(), more_bands);
    ranked.resize(limit);
  }
  // The exact estimate for the survivors: the fraction of agreeing signature entries.
  out.reserve(ranked.size());
  const size_t h = sig.size();
  const std::vector<uint8_t> q8 = Low8(sig);
  for (const auto& [bands, id] : ranked) {
    const Entry& e = entries_.at(id);
    // Bucket keys mix only the namespace hash; the exact comparison makes isolation absolute.
    if (!(e.ns == ns)) continue;
    if (e.sig8.size() != h) continue;  // cannot happen: one hasher; guards the loop below
    const uint8_t* a = e.sig8.data();
    const uint8_t* q = q8.data();
    int32_t agree = 0;
    for (size_t i = 0; i < h; ++i) agree += a[i] == q[i];  // vectorised
    out.push_back({id, static_cast<float>(agree) / static_cast<float>(h), bands});
  }
  if (scored != nullptr) *scored = static_cast<int64_t>(out.size());
  const size_t keep = std::min(out.size(), static_cast<size_t>(k));
  std::partial_sort(out.begin(), out.begin() + keep, out.end(), CandidateBetter);
  out.resize(keep);
  return out;
}

}  // namespace semshare::store
