// Prompt-level MinHash-LSH index (DESIGN.md section 5). A prompt's position-free feature set
// (prompt_features.h) becomes a MinHash signature of bands * rows 32-bit minima; each band's
// rows hash to a bucket key (mixed with the namespace hash). A query visits only the buckets of
// its own bands, so its cost grows with the number of colliding records, not with the number
// stored; colliding records are ranked by the signature agreement (the estimate of Jaccard
// similarity, over 8-bit fingerprints: see Entry), ties by band collisions, then id. With
// per-record Jaccard J, a record becomes a candidate with probability 1 - (1 - J^rows)^bands;
// the defaults are tuned on MRPC paraphrases (tests/store_index_test.cc).
//
// Hashes: feature f -> x = splitmix64(f ^ seed) = (hi, lo) 32-bit halves; h_i(x) = high 32 bits
// of a_i * lo + b_i * hi + c_i mod 2^64 (seeded 64-bit a_i, b_i, c_i: multiply-shift hashing of
// a vector, Dietzfelbinger 2018); the loop over i vectorises. (32-bit multipliers, which are
// cheaper, cost 6 points of recall in the first design's measurements.)
//
// Query work is bounded whatever the corpus (a shared system prompt can make every record
// collide): each bucket contributes at most its `max_bucket_visit` most recently inserted ids,
// and only the `max_scored` records with the most band collisions (the cheap estimate, ties by
// id) have their signatures compared. A query therefore costs at most bands * max_bucket_visit
// counter increments plus max_scored signature comparisons per index (per memory shard).
//
// Defaults: 128 bands x 6 rows over token-id sets (prompt_features.h). tests/store_index_test.cc,
// MRPC paraphrase groups inside a shared chat instruction among 10,688 references: the true
// reference is in the top 4 for 99.4% of the 688 targets (sentences reversed: the same); a
// query collides with ~101 records (0.9%) and scores ~81 (the cap of 256 trims the few
// queries that collide with more). `semshare bench --suite store`, 2,048-token prompts of MRPC
// sentences, query = the paraphrases of its reference's sentences, shuffled: recall@4 0.98 at
// 100,000 references (docs/benchmarks.md). Other shapes, measured without the caps (recall;
// records collided) on the short groups and on 2k-token prompts among 10,000 references: 96 x 6:
// 99.0%, 85; 96.5%, 19. 64 x 6: 97.0%, 62; 90%, 15. 128 x 7: 96.5%, 21; 89%, 5. 96 x 5: 99.7%,
// 575; 100%, 96. 80 x 6: 98.4%, 76; 95% (2,000 references). The first design (80 x 8 over ids
// plus SimHash bucket keys) gave 98.8% and 553 collided on the short groups, but on 2k-token
// prompts 80% of all records collided with every query (~100 ms per lookup at 100,000).
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
  int32_t bands = 128;
  int32_t rows = 6;
  uint64_t seed = 0x1d5eed5eedull;
  // Work bounds of a query (see above); neither changes signatures or bucket keys.
  int32_t max_bucket_visit = 512;  // ids taken from one bucket, most recent first
  int32_t max_scored = 256;        // records whose signatures are compared
  // InvalidArgument naming the knob: bands in [1, 1024], rows in [1, 64], max_bucket_visit and
  // max_scored >= 1.
  absl::Status Validate() const;
};

using Signature = std::vector<uint32_t>;  // [bands * rows] minima; empty for an empty set

struct Candidate {
  uint64_t id = 0;
  float score = 0.0f;  // estimated Jaccard: fraction of agreeing signature entries (LshIndex
                       // compares their low 8 bits, see Entry)
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
  // Up to k best records of namespace `ns` colliding with `sig` in at least one band (among
  // the ids the work bounds let it see). When given, `scored` receives how many records had
  // their signatures compared and `collided` how many distinct records were seen in the
  // query's buckets (the query's work).
  std::vector<Candidate> Query(const Namespace& ns, const Signature& sig, int k,
                               int64_t* scored = nullptr, int64_t* collided = nullptr) const;
  size_t size() const { return entries_.size(); }
  const MinHasher& hasher() const { return hasher_; }

 private:
  struct Entry {
    Namespace ns;
    // [bands * rows] low 8 bits of the signature's minima: what scoring compares (b-bit
    // minwise hashing, Li & Koenig 2010). Two different minima agree on them with probability
    // 1/256, which raises an estimate J by (1 - J) / 256 for every record alike (ranking is
    // kept; the estimate's own noise at 768 entries is ~0.018). Reading these bytes is most of
    // a query's cache misses (callgrind): a quarter of the full signature's.
    std::vector<uint8_t> sig8;
    std::vector<uint64_t> keys;  // [bands] bucket keys (empty for an empty signature)
  };
  MinHasher hasher_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> buckets_;  // key -> record ids
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_LSH_INDEX_H_
