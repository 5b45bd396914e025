// Prompt-level MinHash-LSH index (DESIGN.md section 5). A prompt's position-free feature set
// (prompt_features.h) becomes a MinHash signature of bands * rows 32-bit minima; each band's
// rows hash to a bucket key (mixed with the namespace hash). A query visits only the buckets of
// its own bands, so its cost grows with the number of colliding records, not with the number
// stored; colliding records are ranked by the signature agreement (the unbiased estimate of
// Jaccard similarity), ties by band collisions. With per-record Jaccard J, a record becomes a
// candidate with probability 1 - (1 - J^rows)^bands; the defaults are tuned on MRPC paraphrases
// (tests/store_index_test.cc).
//
// Hashes: feature f -> x = splitmix64(f ^ seed) = (hi, lo) 32-bit halves; h_i(x) = high 32 bits
// of a_i * lo + b_i * hi + c_i mod 2^64 (seeded 64-bit a_i, b_i, c_i: multiply-shift hashing of
// a vector, Dietzfelbinger 2018); the loop over i vectorises. (32-bit multipliers, which are
// cheaper, cost 6 points of recall below.)
//
// Defaults (80 bands x 8 rows): on MRPC paraphrase groups in a shared chat instruction among
// 10,688 references, the true reference is in the top 4 for 98.8% of targets while a query
// scores ~550 records (5%); 64 x 8 gave 98.1% / 510. Fewer rows let the shared instruction
// and stop-words make most records collide (32 x 4: 99.6% but 5,400 scored); more rows lose
// recall (48 x 10: 82%). tests/store_index_test.cc prints the numbers.
#ifndef SEMSHARE_CACHE_STORE_LSH_INDEX_H_
#define SEMSHARE_CACHE_STORE_LSH_INDEX_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "cache_store/record.h"

namespace semshare::store {

struct IndexConfig {
  int32_t bands = 80;
  int32_t rows = 8;
  uint64_t seed = 0x1d5eed5eedull;
  // InvalidArgument naming the knob: bands in [1, 1024], rows in [1, 64].
  absl::Status Validate() const;
};

using Signature = std::vector<uint32_t>;  // [bands * rows] minima; empty for an empty set

struct Candidate {
  uint64_t id = 0;
  float score = 0.0f;  // estimated Jaccard: fraction of agreeing signature entries
  int32_t bands = 0;   // colliding bands
};

// Orders candidates best first: score, then bands, then id (deterministic).
bool CandidateBetter(const Candidate& a, const Candidate& b);

class MinHasher {
 public:
  explicit MinHasher(const IndexConfig& config);
  // Signature of a feature set (duplicates allowed); empty for an empty set. Thread-safe.
  Signature Compute(std::span<const uint64_t> features) const;
  // [bands] bucket keys of a signature within a namespace.
  std::vector<uint64_t> BandKeys(uint64_t ns_hash, const Signature& sig) const;
  const IndexConfig& config() const { return config_; }

 private:
  IndexConfig config_;
  std::vector<uint64_t> a_lo_, a_hi_;  // [bands * rows] multipliers of x's two halves
  std::vector<uint64_t> c_;            // [bands * rows] offsets
};

// Not thread-safe: each memory shard or disk tier guards its own index.
class LshIndex {
 public:
  explicit LshIndex(const IndexConfig& config) : hasher_(config) {}

  // Adds (or replaces) a record's entry. An empty signature is kept but never a candidate.
  void Insert(uint64_t id, const Namespace& ns, Signature sig);
  // False when absent.
  bool Erase(uint64_t id);
  void Clear();
  // Up to k best records of namespace `ns` colliding with `sig` in at least one band. When
  // `scored` is given it receives how many colliding records were scored (the query's work).
  std::vector<Candidate> Query(const Namespace& ns, const Signature& sig, int k,
                               int64_t* scored = nullptr) const;
  size_t size() const { return entries_.size(); }
  const MinHasher& hasher() const { return hasher_; }

 private:
  struct Entry {
    Namespace ns;
    Signature sig;
    std::vector<uint64_t> keys;  // [bands] bucket keys (empty for an empty signature)
  };
  MinHasher hasher_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> buckets_;  // key -> record ids
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_LSH_INDEX_H_
