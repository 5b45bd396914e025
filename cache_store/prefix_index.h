// The exact-prefix index (DESIGN.md section 5; issue 15): which stored records share a prompt's
// first tokens, block by block, as vLLM's automatic prefix caching and SGLang's radix tree do.
//
// A record's token ids are cut into blocks of kPrefixBlockTokens tokens; full blocks only (a
// trailing partial block is not indexed). Block b's key is a chain hash over the namespace and
// every token up to the block's end:
//   h_-1 = XXH3_64(domain tag, seed = Namespace::Hash())
//   h_b  = XXH3_64(h_{b-1} as 8 little-endian bytes | block b's 16 token ids as i32 LE)
// so h_b names the whole prefix ids[0, 16 (b + 1)) within one namespace: two records share key
// h_b exactly when they share those tokens (up to 64-bit collisions, which the store rules out
// by comparing the ids of the record it returns). The keys are stable across processes and
// builds (XXH3 is specified), so the Redis tier shares them between replicas; the domain tag
// names the block size, so a build with another size never reads this one's keys.
//
// Why 16 tokens: vLLM's default block size; the smallest reusable prefix is one block (a
// repeated 16-token prompt hits), and the last partial block is recovered to the token by
// comparing ids, so the block size bounds nothing the caller sees. A 4k-token prompt is 256
// keys: hashing them costs ~256 x 72 bytes of XXH3 (a few microseconds), and the index holds
// one (key, id) pair per 16 tokens, a 16th of the record's own ids (its KV is ~10^4 times more).
// Larger blocks would make prompts shorter than a block miss; smaller ones only add keys.
//
// PrefixIndex is the in-process map (memory shards, disk tier): (key, record id) pairs in a
// B-tree, so inserting or erasing a record costs O(blocks * log n) however many records share a
// block (a system prompt shared by every record), and the holders of a key come out in id
// order. Not thread-safe: each memory shard and the disk tier guard their own.
#ifndef SEMSHARE_CACHE_STORE_PREFIX_INDEX_H_
#define SEMSHARE_CACHE_STORE_PREFIX_INDEX_H_

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/btree_set.h"
#include "cache_store/record.h"

namespace semshare::store {

inline constexpr int64_t kPrefixBlockTokens = 16;

// [ids.size() / kPrefixBlockTokens] chain hashes h_0, h_1, ... of the full blocks of `ids`.
std::vector<uint64_t> PrefixChain(const Namespace& ns, std::span<const int32_t> ids);

// Length of the common prefix of two token sequences.
int64_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b);

// One record a tier offers for a prompt's prefix.
struct PrefixCandidate {
  uint64_t id = 0;
  int64_t blocks = 0;  // leading blocks of the prompt whose chain hash this record holds
  // Common prefix with the prompt in tokens: exact when `verified` (the tier compared the
  // record's ids with the prompt), else blocks * kPrefixBlockTokens, a claim the caller checks.
  int64_t tokens = 0;
  bool verified = false;
};

// Orders candidates best first: blocks, then tokens, then id (deterministic).
bool PrefixCandidateBetter(const PrefixCandidate& a, const PrefixCandidate& b);

class PrefixIndex {
 public:
  // Adds the record's keys (its PrefixChain). Inserting an id twice with the same chain is a
  // no-op; a caller replacing a record erases its old chain first.
  void Insert(uint64_t id, std::span<const uint64_t> chain);
  void Erase(uint64_t id, std::span<const uint64_t> chain);
  void Clear() { pairs_.clear(); }
  bool Contains(uint64_t key) const;
  // The number d of leading keys of `chain` that some record holds, given that the first `lo`
  // are known to be held: a binary search, since holding chain[b] implies holding every
  // chain[b' < b] (one record holds all of its prefix's keys). O(log(chain) * log n).
  int64_t Depth(std::span<const uint64_t> chain, int64_t lo = 0) const;
  // Appends up to `max` ids holding `key`, ascending.
  void Holders(uint64_t key, int max, std::vector<uint64_t>* out) const;
  size_t size() const { return pairs_.size(); }  // (key, id) pairs

 private:
  absl::btree_set<std::pair<uint64_t, uint64_t>> pairs_;  // (chain hash, record id)
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_PREFIX_INDEX_H_
