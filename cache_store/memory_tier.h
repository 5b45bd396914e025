// The in-process tier: N shards by record id, each with its own mutex, bucket index and
// priority order; a global byte budget shared by all shards.
//
// Eviction is GreedyDual-Size-Frequency (Cherkasova 1998): an entry's priority is
// L + (1 + hits) * 1 MiB / bytes, refreshed on every hit, where the clock L rises to the
// priority of each evicted entry. Entries untouched for a while fall behind the rising clock
// (recency), and at equal age many hits or a small size keep an entry longer. A Put first
// evicts, one global minimum over the shards' minima at a time, until the new record fits,
// then inserts it; Puts take turns (put_mu_), so the stored bytes never exceed the budget.
//
// Pinning: the tier stores RecordHandles; Get hands out a copy, so eviction or Delete only
// drop the tier's reference and a request holding a handle keeps the record alive and
// unchanged. Budgets count the tier's references only. A lookup takes one shard lock at a
// time and never waits on another shard's writer. All methods are thread-safe.
//
// Each shard also holds the exact-prefix index of its records (prefix_index.h), changed under
// the shard's lock together with its entries, so a record is in a shard's prefix index exactly
// while it is in the shard (eviction, Delete and Clear drop its keys at once). ProbePrefix binary
// searches each shard for the deepest block of the prompt it holds (shards that cannot beat the
// best so far cost one probe), and compares up to 32 holders' ids with the prompt under the
// lock, so its candidates carry the exact common prefix (verified), the best first. Cost:
// O(shards * log(blocks)) index probes plus one id comparison (up to the first difference) per
// holder examined. The index's own bytes (16 per 16-token
// block) are not counted in the budget.
#ifndef SEMSHARE_CACHE_STORE_MEMORY_TIER_H_
#define SEMSHARE_CACHE_STORE_MEMORY_TIER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cache_store/tier.h"

namespace semshare::store {

struct MemoryTierOptions {
  int32_t shards = 0;                      // 0 = std::thread::hardware_concurrency()
  int64_t byte_budget = int64_t{1} << 30;  // Record::ByteSize summed over stored records
  IndexConfig index;
};

class MemoryTier : public Tier {
 public:
  // InvalidArgument for a bad index config, a negative shard count or a budget <= 0.
  static absl::StatusOr<std::unique_ptr<MemoryTier>> Create(const MemoryTierOptions& options);

  const char* name() const override { return "memory"; }
  absl::Status Put(RecordHandle record) override;
  absl::StatusOr<RecordHandle> Get(uint64_t id) override;
  absl::StatusOr<std::vector<Candidate>> Lookup(const Namespace& ns, const Signature& sig,
                                                int k) override;
  absl::StatusOr<std::vector<PrefixCandidate>> ProbePrefix(const Namespace& ns,
                                                           std::span<const int32_t> ids,
                                                           std::span<const uint64_t> chain,
                                                           int max) override;
  absl::Status Delete(uint64_t id) override;
  absl::Status Clear() override;
  std::vector<RecordInfo> List() const override;
  TierStats Stats() const override;

  int32_t shard_count() const { return static_cast<int32_t>(shards_.size()); }
  // (block key, record id) pairs in the exact-prefix index: the stored records' full blocks.
  int64_t prefix_entries() const;
  int64_t byte_budget() const { return options_.byte_budget; }

 private:
  struct Entry {
    RecordHandle record;
    int64_t bytes = 0;
    int64_t hits = 0;
    int64_t last_used_ms = 0;
    double priority = 0;
    uint64_t tick = 0;  // last Put/Get: among equal priorities the least recent goes first
    std::vector<uint64_t> chain;  // the record's PrefixChain: its keys in the shard's prefix index
  };
  struct Shard {
    explicit Shard(const IndexConfig& c) : index(c) {}
    mutable std::mutex mu;
    absl::flat_hash_map<uint64_t, Entry> entries;
    std::set<std::tuple<double, uint64_t, uint64_t>> order;  // (priority, tick, id), lowest first
    LshIndex index;
    PrefixIndex prefix;
  };

  explicit MemoryTier(const MemoryTierOptions& options);
  Shard& ShardOf(uint64_t id) { return *shards_[id % shards_.size()]; }
  double Priority(int64_t hits, int64_t bytes) const;
  // Removes `id` from `s` (s.mu held); returns its bytes, 0 if absent.
  int64_t RemoveLocked(Shard& s, uint64_t id);
  // Evicts until `incoming` more bytes fit in the budget (put_mu_ held).
  void EvictToFit(int64_t incoming);

  const MemoryTierOptions options_;
  MinHasher hasher_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::mutex put_mu_;  // serialises growth: eviction + insert
  std::atomic<double> clock_{0.0};
  std::atomic<uint64_t> tick_{0};
  std::atomic<int64_t> bytes_{0}, entries_{0};
  std::atomic<int64_t> hits_{0}, misses_{0}, lookups_{0}, prefix_lookups_{0}, puts_{0},
      evictions_{0};
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_MEMORY_TIER_H_
