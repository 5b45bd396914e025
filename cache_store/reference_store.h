// The reference store facade (DESIGN.md section 5): tiers in order memory -> disk -> Redis (each
// optional but memory), one prompt-level index configuration for all of them, and asynchronous
// publication.
//
// Publish never runs on the caller's path: it enqueues the handle into a bounded queue that one
// background thread drains, writing memory first (visible to lookups at once) and then disk
// (write-through, so references survive a restart) and Redis (shared with other replicas). A
// full queue drops the record and counts it; the destructor finishes what is queued. Get
// promotes a disk or Redis hit into memory (not into disk: that would put a file write on the
// request's path). A Redis tier that is down or slow answers within its client timeouts: its
// lookups count as lookup_errors (no candidates), its Gets as misses, its Puts as
// publish_failed. Namespace
// isolation is absolute: Lookup filters inside every tier's index and Get answers NotFound for
// another namespace's id. All methods are thread-safe.
//
// Exact prefixes (issue 15): LookupPrefix finds the stored record sharing the longest common
// prefix with a prompt, through every tier's exact-prefix index (prefix_index.h), for the
// hybrid prefill that copies rows [0, tokens) of the record's KV exactly. Records hold whole
// turns (prompt + generated tokens), so the next turn of a conversation extends one.
#ifndef SEMSHARE_CACHE_STORE_REFERENCE_STORE_H_
#define SEMSHARE_CACHE_STORE_REFERENCE_STORE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "cache_store/disk_tier.h"
#include "cache_store/memory_tier.h"
#include "cache_store/redis_tier.h"

namespace semshare::store {

struct StoreOptions {
  IndexConfig index;          // used by every tier
  int32_t memory_shards = 0;  // 0 = hardware threads
  int64_t memory_byte_budget = int64_t{1} << 30;
  std::string disk_dir;  // empty: no disk tier
  int64_t disk_byte_budget = int64_t{16} << 30;
  int32_t publish_queue = 64;  // records waiting for the background writer
  // redis.client.url empty: no Redis tier (the server's --redis). redis.index is ignored:
  // `index` above is used.
  RedisTierOptions redis;
};

// The answer of LookupPrefix.
struct PrefixMatch {
  uint64_t id = 0;
  // The record, pinned for as long as the handle lives (read through Get: a disk or Redis
  // record was promoted into memory). record->ids[0, tokens) == the prompt's ids[0, tokens).
  RecordHandle record;
  // Exact common prefix of the record's ids and the prompt, in tokens: >= kPrefixBlockTokens,
  // refined to the token past the last matching block (so not a multiple of the block), at
  // most min(prompt, record) tokens. It may equal the prompt's length (a repeated prompt, or
  // one the record extends): the caller still computes at least the last token for logits.
  // The store does not look at the KV: the caller checks its shape (layers, kv_dim, rows ==
  // ids) as it does for a semantic candidate before copying rows [0, tokens).
  int64_t tokens = 0;
  int64_t blocks = 0;     // full blocks of the match: tokens / kPrefixBlockTokens
  const char* tier = "";  // the tier whose index named the record: memory, disk or redis
};

struct StoreStats {
  TierStats memory;
  bool has_disk = false;
  TierStats disk;
  bool has_redis = false;
  TierStats redis;
  RedisTierStats redis_detail;
  int64_t published = 0;        // records the writer stored in at least one tier
  int64_t publish_dropped = 0;  // queue full (or store closing)
  int64_t publish_failed = 0;   // a tier refused the record (too large, I/O error)
  int64_t lookup_errors = 0;    // a tier's lookup failed (counted, treated as no candidates)
  int64_t promotions = 0;       // disk or Redis hits copied into memory
  // LookupPrefix: calls, hits (a match of at least one block returned), the tokens those hits
  // matched, candidates an index named that could not be read or did not share the claimed
  // prefix (evicted, deleted or expired in between, damaged: the next candidate is tried), and
  // tier probes that failed (counted, treated as no candidates, like lookup_errors).
  int64_t prefix_lookups = 0;
  int64_t prefix_hits = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t prefix_stale = 0;
  int64_t prefix_errors = 0;
};

class ReferenceStore {
 public:
  static absl::StatusOr<std::unique_ptr<ReferenceStore>> Open(const StoreOptions& options);
  ~ReferenceStore();  // drains the publish queue, then stops the writer
  ReferenceStore(const ReferenceStore&) = delete;
  ReferenceStore& operator=(const ReferenceStore&) = delete;

  // Queues a record for storage; false (and counted) when the queue is full or null.
  bool Publish(RecordHandle record);
  // Blocks until every record queued before the call has been written (tests, shutdown).
  void Flush();

  // Up to k candidate ids of namespace `ns` for a prompt with these features (PromptFeatures),
  // best first by estimated Jaccard, merged across tiers.
  absl::StatusOr<std::vector<Candidate>> Lookup(const Namespace& ns,
                                                std::span<const uint64_t> features, int k);
  // The stored record of namespace `ns` with the longest common prefix with `ids`, at least
  // max(min_tokens, kPrefixBlockTokens) tokens long; see PrefixMatch. A caller that would not
  // use a short match passes its threshold as min_tokens: candidates that cannot reach it are
  // not read (a disk or Redis read costs the whole record). Tiers are probed in order (memory,
  // disk, Redis); the deepest block match wins, an earlier tier on a tie, and lower tiers are
  // skipped once a match covers every full block of the prompt. Candidates are read through Get
  // (promotion included) and their ids compared with the prompt, so the answer is exact even
  // against a hash collision. Only OK or NotFound (a miss: nothing shares a block, a prompt
  // shorter than a block, or every candidate vanished or failed): a tier that is down or a
  // record evicted between index and read is counted and never an error to the request. Cost:
  // the prompt's chain hashes (a few microseconds at 4k tokens), O(shards * log(blocks)) index
  // probes in memory, O(log(blocks)) on disk, two pipelined round trips to Redis, and one Get
  // per candidate tried (at most kMaxPrefixReads). Thread-safe.
  absl::StatusOr<PrefixMatch> LookupPrefix(const Namespace& ns, std::span<const int32_t> ids,
                                           int64_t min_tokens = kPrefixBlockTokens);
  // Candidates a lookup reads at most before it answers with the best it verified (or a miss).
  static constexpr int kMaxPrefixReads = 4;

  // The record, pinned for as long as the handle lives. NotFound on a miss or for another
  // namespace's id; DataLoss when a tier held it damaged (dropped and counted).
  absl::StatusOr<RecordHandle> Get(const Namespace& ns, uint64_t id);
  absl::Status Delete(uint64_t id);
  absl::Status Clear();
  // Records in any tier (one entry per id, memory's view first); all namespaces when ns is null.
  std::vector<RecordInfo> List(const Namespace* ns = nullptr) const;
  StoreStats Stats() const;

  const MinHasher& hasher() const { return hasher_; }
  MemoryTier& memory() { return *memory_; }
  DiskTier* disk() { return disk_.get(); }
  RedisTier* redis() { return redis_.get(); }

 private:
  explicit ReferenceStore(const StoreOptions& options);
  void WriterLoop();
  std::vector<Tier*> Tiers() const;

  const StoreOptions options_;
  MinHasher hasher_;
  std::unique_ptr<MemoryTier> memory_;
  std::unique_ptr<DiskTier> disk_;
  std::unique_ptr<RedisTier> redis_;

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;  // writer waits for work or stop
  std::condition_variable idle_cv_;   // Flush waits for the writer
  std::deque<RecordHandle> queue_;
  int64_t enqueued_ = 0, written_ = 0;  // guarded by queue_mu_
  bool stop_ = false;
  std::thread writer_;

  std::atomic<int64_t> published_{0}, dropped_{0}, failed_{0}, lookup_errors_{0}, promotions_{0};
  std::atomic<int64_t> prefix_lookups_{0}, prefix_hits_{0}, prefix_hit_tokens_{0}, prefix_stale_{0},
      prefix_errors_{0};
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_REFERENCE_STORE_H_
