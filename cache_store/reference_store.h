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
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_REFERENCE_STORE_H_
