// The interface every storage tier implements (memory, disk, and next a Redis tier), so the
// ReferenceStore facade can chain them (memory -> disk -> Redis) and promote on a hit.
//
// Contract for implementations: all methods are thread-safe; records are immutable and shared
// as RecordHandle (a tier never mutates a record it was given); Get returns NotFound on a miss
// and DataLoss/Unavailable when the tier holds the id but cannot produce it intact (the caller
// treats both as a miss; the tier counts the error and drops what it cannot read). Lookup
// never returns another namespace's records. A remote tier (Redis) answers errors or timeouts
// with a non-OK Status from Lookup/Get/Put, never by blocking indefinitely. Every tier indexes
// every record's full token blocks (prefix_index.h) beside its prompt-level index, and drops a
// record's prefix keys whenever it drops the record (delete, eviction, damage, expiry).
#ifndef SEMSHARE_CACHE_STORE_TIER_H_
#define SEMSHARE_CACHE_STORE_TIER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache_store/lsh_index.h"
#include "cache_store/prefix_index.h"
#include "cache_store/record.h"

namespace semshare::store {

// Counters of one tier (monotonic except entries and bytes).
struct TierStats {
  int64_t entries = 0;
  int64_t bytes = 0;           // bytes the tier holds (memory: Record::ByteSize; disk: file sizes)
  int64_t hits = 0;            // Get found the record
  int64_t misses = 0;          // Get did not (or could not read it intact)
  int64_t lookups = 0;         // index queries
  int64_t prefix_lookups = 0;  // exact-prefix index probes (ProbePrefix)
  int64_t puts = 0;            // records stored
  int64_t evictions = 0;       // records dropped to respect the byte budget
  int64_t errors = 0;          // corrupt/unreadable records, I/O failures
};

// What List reports about one stored record.
struct RecordInfo {
  uint64_t id = 0;
  Namespace ns;
  int64_t tokens = 0;
  int64_t bytes = 0;
  int64_t hits = 0;
  int64_t last_used_ms = 0;
  int64_t created_ms = 0;  // when the record was made (unix ms)
};

class Tier {
 public:
  virtual ~Tier() = default;
  virtual const char* name() const = 0;
  // Stores (or replaces) a record. ResourceExhausted when it alone exceeds the tier's budget.
  virtual absl::Status Put(RecordHandle record) = 0;
  virtual absl::StatusOr<RecordHandle> Get(uint64_t id) = 0;
  // Up to k candidates of namespace `ns` whose index signature collides with `sig`, best first.
  // `sig` comes from a MinHasher with this tier's IndexConfig.
  virtual absl::StatusOr<std::vector<Candidate>> Lookup(const Namespace& ns, const Signature& sig,
                                                        int k) = 0;
  // Records of namespace `ns` that share the longest run of leading full blocks with a prompt:
  // `ids` is the prompt and `chain` its PrefixChain(ns, ids). Up to `max` candidates, best first
  // (PrefixCandidateBetter), all holding the deepest block the tier knows (a tier may add
  // shallower ones after them as fallbacks); empty when none shares even the first block.
  // O(chain) hash probes at most; a remote tier answers in a bounded number of round trips.
  virtual absl::StatusOr<std::vector<PrefixCandidate>> ProbePrefix(const Namespace& ns,
                                                                   std::span<const int32_t> ids,
                                                                   std::span<const uint64_t> chain,
                                                                   int max) = 0;
  // OK whether or not the id was present.
  virtual absl::Status Delete(uint64_t id) = 0;
  virtual absl::Status Clear() = 0;
  virtual std::vector<RecordInfo> List() const = 0;
  virtual TierStats Stats() const = 0;
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_TIER_H_
