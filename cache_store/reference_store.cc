#include "cache_store/reference_store.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace semshare::store {

absl::StatusOr<std::unique_ptr<ReferenceStore>> ReferenceStore::Open(const StoreOptions& options) {
  if (absl::Status s = options.index.Validate(); !s.ok()) return s;
  if (options.publish_queue < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("publish queue ", options.publish_queue, " must be at least 1"));
  }
  std::unique_ptr<ReferenceStore> store(new ReferenceStore(options));
  absl::StatusOr<std::unique_ptr<MemoryTier>> mem =
      MemoryTier::Create({options.memory_shards, options.memory_byte_budget, options.index});
  if (!mem.ok()) return mem.status();
  store->memory_ = *std::move(mem);
  if (!options.disk_dir.empty()) {
    absl::StatusOr<std::unique_ptr<DiskTier>> disk =
        DiskTier::Open({options.disk_dir, options.disk_byte_budget, options.index});
    if (!disk.ok()) return disk.status();
    store->disk_ = *std::move(disk);
  }
  if (!options.redis.client.url.empty()) {
    RedisTierOptions ro = options.redis;
    ro.index = options.index;
    absl::StatusOr<std::unique_ptr<RedisTier>> redis = RedisTier::Create(ro);
    if (!redis.ok()) return redis.status();
    store->redis_ = *std::move(redis);
  }
  store->writer_ = std::thread([s = store.get()] { s->WriterLoop(); });
  return store;
}

ReferenceStore::ReferenceStore(const StoreOptions& options)
    : options_(options), hasher_(options.index) {}

ReferenceStore::~ReferenceStore() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

std::vector<Tier*> ReferenceStore::Tiers() const {
  std::vector<Tier*> t{memory_.get()};
  if (disk_ != nullptr) t.push_back(disk_.get());
  if (redis_ != nullptr) t.push_back(redis_.get());
  return t;
}

bool ReferenceStore::Publish(RecordHandle record) {
  if (record == nullptr) {
    dropped_.fetch_add(1);
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (stop_ || static_cast<int64_t>(queue_.size()) >= options_.publish_queue) {
      dropped_.fetch_add(1);
      return false;
    }
    queue_.push_back(std::move(record));
    ++enqueued_;
  }
  queue_cv_.notify_one();
  return true;
}

void ReferenceStore::Flush() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  const int64_t target = enqueued_;
  idle_cv_.wait(lock, [&] { return written_ >= target; });
}

void ReferenceStore::WriterLoop() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  while (true) {
    queue_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and drained
    RecordHandle record = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    bool stored = false, failed = false;
    for (Tier* tier : Tiers()) {
      if (tier->Put(record).ok()) {
        stored = true;
      } else {
        failed = true;
      }
    }
    if (stored) published_.fetch_add(1);
    if (failed) failed_.fetch_add(1);
    record.reset();
    lock.lock();
    ++written_;
    idle_cv_.notify_all();
  }
}

absl::StatusOr<std::vector<Candidate>> ReferenceStore::Lookup(const Namespace& ns,
                                                              std::span<const uint64_t> features,
                                                              int k) {
  if (k <= 0) return std::vector<Candidate>{};
  const Signature sig = hasher_.Compute(features);
  absl::flat_hash_map<uint64_t, Candidate> best;
  for (Tier* tier : Tiers()) {
    absl::StatusOr<std::vector<Candidate>> c = tier->Lookup(ns, sig, k);
    if (!c.ok()) {
      lookup_errors_.fetch_add(1);
      continue;
    }
    for (const Candidate& cand : *c) {
      auto [it, inserted] = best.try_emplace(cand.id, cand);
      if (!inserted && CandidateBetter(cand, it->second)) it->second = cand;
    }
  }
  std::vector<Candidate> out;
  out.reserve(best.size());
  for (const auto& [id, c] : best) out.push_back(c);
  const size_t keep = std::min(out.size(), static_cast<size_t>(k));
  std::partial_sort(out.begin(), out.begin() + keep, out.end(), CandidateBetter);
  out.resize(keep);
  return out;
}

absl::StatusOr<PrefixMatch> ReferenceStore::LookupPrefix(const Namespace& ns,
                                                         std::span<const int32_t> ids,
                                                         int64_t min_tokens) {
  prefix_lookups_.fetch_add(1);
  min_tokens = std::max(min_tokens, kPrefixBlockTokens);
  const auto miss = [&] {
    return absl::NotFoundError(absl::StrCat("no record shares the first ", min_tokens,
                                            " tokens of the prompt in ", ns.DebugString()));
  };
  if (static_cast<int64_t>(ids.size()) < min_tokens) return miss();
  const std::vector<uint64_t> chain = PrefixChain(ns, ids);
  struct Found {
    PrefixCandidate c;
    const char* tier;
  };
  std::vector<Found> found;
  for (Tier* tier : Tiers()) {
    absl::StatusOr<std::vector<PrefixCandidate>> c =
        tier->ProbePrefix(ns, ids, chain, kMaxPrefixReads);
    if (!c.ok()) {
      prefix_errors_.fetch_add(1);
      continue;
    }
    for (const PrefixCandidate& cand : *c) found.push_back({cand, tier->name()});
    // Every full block matched and verified: a lower tier can add at most the partial block.
    if (!c->empty() && (*c)[0].verified && (*c)[0].blocks == static_cast<int64_t>(chain.size())) {
      break;
    }
  }
  // Deepest first; the sort is stable, so among equals the earlier tier's candidate comes first.
  std::stable_sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.c.blocks != b.c.blocks ? a.c.blocks > b.c.blocks : a.c.tokens > b.c.tokens;
  });
  PrefixMatch best;
  absl::flat_hash_set<uint64_t> tried;
  for (const Found& f : found) {
    if (static_cast<int>(tried.size()) >= kMaxPrefixReads) break;
    if (!tried.insert(f.c.id).second) continue;
    // At most the claimed blocks plus a partial one: stop when that cannot beat what we hold or
    // reach min_tokens (later candidates claim no more).
    const int64_t bound = f.c.verified ? f.c.tokens : (f.c.blocks + 1) * kPrefixBlockTokens - 1;
    if (bound <= best.tokens || bound < min_tokens) break;
    absl::StatusOr<RecordHandle> h = Get(ns, f.c.id);
    const int64_t tokens = h.ok() ? CommonPrefix((*h)->ids, ids) : 0;
    if (tokens < f.c.blocks * kPrefixBlockTokens) prefix_stale_.fetch_add(1);
    if (tokens >= min_tokens && tokens > best.tokens) {
      best = PrefixMatch{f.c.id, *std::move(h), tokens, tokens / kPrefixBlockTokens, f.tier};
    }
    // As long as the index claimed: later candidates claim no more blocks (sorted).
    if (tokens >= f.c.blocks * kPrefixBlockTokens) break;
  }
  if (best.record == nullptr) return miss();
  prefix_hits_.fetch_add(1);
  prefix_hit_tokens_.fetch_add(best.tokens);
  return best;
}

absl::StatusOr<RecordHandle> ReferenceStore::Get(const Namespace& ns, uint64_t id) {
  const auto not_found = [&] {
    return absl::NotFoundError(
        absl::StrCat("no record ", absl::Hex(id), " for ", ns.DebugString()));
  };
  absl::StatusOr<RecordHandle> h = memory_->Get(id);
  if (h.ok()) {
    if (!((*h)->ns == ns)) return not_found();
    return h;
  }
  // Lower tiers in order; a damaged copy in one (DataLoss, dropped there) does not hide an
  // intact one further down, but is what the caller hears if nothing else has the record.
  absl::Status first_error;
  for (Tier* tier : {static_cast<Tier*>(disk_.get()), static_cast<Tier*>(redis_.get())}) {
    if (tier == nullptr) continue;
    h = tier->Get(id);
    if (!h.ok()) {
      if (!absl::IsNotFound(h.status()) && first_error.ok()) first_error = h.status();
      continue;
    }
    if (!((*h)->ns == ns)) return not_found();
    if (memory_->Put(*h).ok()) promotions_.fetch_add(1);
    return h;
  }
  return first_error.ok() ? not_found() : first_error;
}

absl::Status ReferenceStore::Delete(uint64_t id) {
  absl::Status status;
  for (Tier* tier : Tiers()) status.Update(tier->Delete(id));
  return status;
}

absl::Status ReferenceStore::Clear() {
  absl::Status status;
  for (Tier* tier : Tiers()) status.Update(tier->Clear());
  return status;
}

std::vector<RecordInfo> ReferenceStore::List(const Namespace* ns) const {
  std::vector<RecordInfo> out;
  absl::flat_hash_set<uint64_t> seen;
  for (Tier* tier : Tiers()) {
    for (RecordInfo& info : tier->List()) {
      if (ns != nullptr && !(info.ns == *ns)) continue;
      if (seen.insert(info.id).second) out.push_back(std::move(info));
    }
  }
  return out;
}

StoreStats ReferenceStore::Stats() const {
  StoreStats st;
  st.memory = memory_->Stats();
  if (disk_ != nullptr) {
    st.has_disk = true;
    st.disk = disk_->Stats();
  }
  if (redis_ != nullptr) {
    st.has_redis = true;
    st.redis = redis_->Stats();
    st.redis_detail = redis_->RedisStats();
  }
  st.published = published_.load();
  st.publish_dropped = dropped_.load();
  st.publish_failed = failed_.load();
  st.lookup_errors = lookup_errors_.load();
  st.promotions = promotions_.load();
  st.prefix_lookups = prefix_lookups_.load();
  st.prefix_hits = prefix_hits_.load();
  st.prefix_hit_tokens = prefix_hit_tokens_.load();
  st.prefix_stale = prefix_stale_.load();
  st.prefix_errors = prefix_errors_.load();
  return st;
}

}  // namespace semshare::store
