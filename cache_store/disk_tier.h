// The on-disk tier (--cache-dir): one file per record, "<16 hex digits of id>.ssref" in the
// record codec's format, so references survive a restart.
//
// Writes are atomic: the encoded record goes to a ".tmp-*" file that is fsynced, renamed over
// the final name and the directory fsynced, so a reader sees the old file or the new one, never
// a torn one; a crash leaves at worst a temp file, deleted at the next Open. Reads verify every
// checksum (codec.h). Open rebuilds the index by scanning the directory, reading only each
// file's header and features (DecodeSummary: checksums, and the size the header promises, so a
// truncated file is caught); a damaged file found then or on a later read is moved into
// "quarantine/" (kept for inspection, never read again) and counted as an error. A byte budget
// evicts the least recently used files (recency = last Get or Put; at Open, file mtime).
//
// The exact-prefix index (prefix_index.h) is kept beside the prompt-level one under the same
// mutex and rebuilt at Open from each file's token ids (DecodeSummary reads them with the
// features, still without the KV), so it survives a restart; eviction, Delete, Clear and a
// quarantined file drop a record's keys with its entry. The tier does not keep ids in memory,
// so its prefix candidates are unverified (blocks * 16 tokens): the store checks the record it
// reads.
//
// Thread-safe: one mutex guards the index and metadata; encoding, writing and fsync of the
// temp file and reading a file happen outside it (the rename and evictions happen under it, so
// an eviction never unlinks a file a concurrent Put just renamed into place).
#ifndef SEMSHARE_CACHE_STORE_DISK_TIER_H_
#define SEMSHARE_CACHE_STORE_DISK_TIER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "cache_store/tier.h"

namespace semshare::store {

struct DiskTierOptions {
  std::string dir;                          // created if missing
  int64_t byte_budget = int64_t{16} << 30;  // file bytes
  IndexConfig index;
};

class DiskTier : public Tier {
 public:
  // Creates the directory if needed and rebuilds the index from the files in it. Unavailable
  // if the directory cannot be created or read; damaged files do not fail Open (see above).
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const DiskTierOptions& options);

  const char* name() const override { return "disk"; }
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

  // Path of a record's file (whether or not it exists).
  std::string PathOf(uint64_t id) const;
  int64_t quarantined() const { return quarantined_.load(); }
  // (block key, record id) pairs in the exact-prefix index: the stored records' full blocks.
  int64_t prefix_entries() const;

 private:
  struct Entry {
    Namespace ns;
    int64_t bytes = 0;
    int64_t tokens = 0;
    int64_t hits = 0;
    int64_t last_used_ms = 0;
    uint64_t tick = 0;  // LRU order
    int64_t created_ms = 0;
    std::vector<uint64_t> chain;  // PrefixChain of the record's ids: its prefix index keys
  };

  explicit DiskTier(const DiskTierOptions& options);
  absl::Status Scan();
  // Adds or replaces an entry (mu_ held).
  void InsertLocked(uint64_t id, Entry e, Signature sig);
  // Drops an entry and its index keys (mu_ held), leaving the file; false if absent.
  bool EraseLocked(uint64_t id);
  // Drops an entry and its file (mu_ held); false if absent.
  bool RemoveLocked(uint64_t id);
  void EvictLocked();
  // Moves a damaged file into quarantine/ (or deletes it if that fails) and counts the error.
  void Quarantine(const std::string& path);

  const DiskTierOptions options_;
  MinHasher hasher_;
  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  std::set<std::pair<uint64_t, uint64_t>> lru_;  // (tick, id), least recent first
  LshIndex index_;
  PrefixIndex prefix_;
  int64_t bytes_ = 0;
  uint64_t tick_ = 0;
  std::atomic<uint64_t> temp_serial_{0};
  std::atomic<int64_t> hits_{0}, misses_{0}, lookups_{0}, prefix_lookups_{0}, puts_{0},
      evictions_{0}, errors_{0};
  std::atomic<int64_t> quarantined_{0};
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_DISK_TIER_H_
