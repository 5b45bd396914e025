#include "cache_store/memory_tier.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"

namespace semshare::store {
namespace {

// Holders of the deepest block a probe compares with the prompt per shard (each comparison
// stops at the first differing token): records sharing the block differ only inside the next
// one, and the best of this many is the longest prefix unless more tie in one shard.
constexpr int kPrefixExamine = 32;

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryTier>> MemoryTier::Create(const MemoryTierOptions& options) {
  if (absl::Status s = options.index.Validate(); !s.ok()) return s;
  if (options.shards < 0 || options.shards > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory shards ", options.shards, " not in [0, 4096] (0 = hardware threads)"));
  }
  if (options.byte_budget <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory byte budget ", options.byte_budget, " must be positive"));
  }
  return std::unique_ptr<MemoryTier>(new MemoryTier(options));
}

MemoryTier::MemoryTier(const MemoryTierOptions& options)
    : options_(options), hasher_(options.index) {
  int32_t n = options.shards;
  if (n == 0) n = static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  for (int32_t i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>(options.index));
}

double MemoryTier::Priority(int64_t hits, int64_t bytes) const {
  constexpr double kScale = 1 << 20;
  return clock_.load(std::memory_order_relaxed) +
         static_cast<double>(1 + hits) * kScale / static_cast<double>(std::max<int64_t>(bytes, 1));
}

int64_t MemoryTier::RemoveLocked(Shard& s, uint64_t id) {
  auto it = s.entries.find(id);
  if (it == s.entries.end()) return 0;
  const int64_t bytes = it->second.bytes;
  s.order.erase({it->second.priority, it->second.tick, id});
  s.index.Erase(id);
  s.prefix.Erase(id, it->second.chain);
  s.entries.erase(it);
  bytes_.fetch_sub(bytes);
  entries_.fetch_sub(1);
  return bytes;
}

absl::Status MemoryTier::Put(RecordHandle record) {
  if (record == nullptr) return absl::InvalidArgumentError("null record");
  const int64_t bytes = record->ByteSize();
  if (bytes > options_.byte_budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "record of ", bytes, " bytes exceeds the memory budget of ", options_.byte_budget));
  }
  Signature sig = hasher_.Compute(record->features);  // outside the locks: the costly part
  std::vector<uint64_t> chain = PrefixChain(record->ns, record->ids);
  const uint64_t id = record->id;
  const Namespace ns = record->ns;
  Shard& s = ShardOf(id);
  // Room first, then the new entry (GreedyDual's order): all growth happens under put_mu_,
  // after the evictions that make room for it, so bytes_ never exceeds the budget, not even
  // for an instant a concurrent Stats or List could see.
  std::lock_guard<std::mutex> put_lock(put_mu_);
  int64_t hits = 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (auto it = s.entries.find(id); it != s.entries.end()) hits = it->second.hits;
    RemoveLocked(s, id);  // a republished id replaces its entry and keeps its hits
  }
  EvictToFit(bytes);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    Entry e{std::move(record), bytes,           hits, NowUnixMs(), Priority(hits, bytes),
            ++tick_,           std::move(chain)};
    s.order.insert({e.priority, e.tick, id});
    s.prefix.Insert(id, e.chain);
    s.entries.emplace(id, std::move(e));
    s.index.Insert(id, ns, std::move(sig));
    bytes_.fetch_add(bytes);
    entries_.fetch_add(1);
  }
  puts_.fetch_add(1);
  return absl::OkStatus();
}

void MemoryTier::EvictToFit(int64_t incoming) {
  while (bytes_.load() + incoming > options_.byte_budget) {
    // The global minimum of the shards' minima; a concurrent Get or Delete may change a shard
    // between the scan and the removal, which only makes this pass evict a slightly different
    // entry. Nothing else adds bytes meanwhile (put_mu_ is held).
    int64_t best_shard = -1;
    std::pair<double, uint64_t> best;  // (priority, tick)
    for (size_t i = 0; i < shards_.size(); ++i) {
      std::lock_guard<std::mutex> lock(shards_[i]->mu);
      if (shards_[i]->order.empty()) continue;
      const auto& [p, t, unused_id] = *shards_[i]->order.begin();
      if (best_shard < 0 || std::make_pair(p, t) < best) {
        best_shard = static_cast<int64_t>(i);
        best = {p, t};
      }
    }
    if (best_shard < 0) return;  // empty: incoming <= budget was checked, so it fits
    Shard& s = *shards_[best_shard];
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.order.empty()) continue;
    const auto [priority, tick, id] = *s.order.begin();  // copies: RemoveLocked erases it
    RemoveLocked(s, id);
    evictions_.fetch_add(1);
    if (priority > clock_.load()) clock_.store(priority);
  }
}

absl::StatusOr<RecordHandle> MemoryTier::Get(uint64_t id) {
  Shard& s = ShardOf(id);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.entries.find(id);
  if (it == s.entries.end()) {
    misses_.fetch_add(1);
    return absl::NotFoundError(absl::StrCat("record ", absl::Hex(id), " not in memory"));
  }
  Entry& e = it->second;
  s.order.erase({e.priority, e.tick, id});
  ++e.hits;
  e.last_used_ms = NowUnixMs();
  e.priority = Priority(e.hits, e.bytes);
  e.tick = ++tick_;
  s.order.insert({e.priority, e.tick, id});
  hits_.fetch_add(1);
  return e.record;
}

absl::StatusOr<std::vector<Candidate>> MemoryTier::Lookup(const Namespace& ns, const Signature& sig,
                                                          int k) {
  lookups_.fetch_add(1);
  std::vector<Candidate> all;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    std::vector<Candidate> c = s->index.Query(ns, sig, k);
    all.insert(all.end(), c.begin(), c.end());
  }
  const size_t keep = std::min(all.size(), static_cast<size_t>(std::max(k, 0)));
  std::partial_sort(all.begin(), all.begin() + keep, all.end(), CandidateBetter);
  all.resize(keep);
  return all;
}

absl::StatusOr<std::vector<PrefixCandidate>> MemoryTier::ProbePrefix(
    const Namespace& ns, std::span<const int32_t> ids, std::span<const uint64_t> chain, int max) {
  prefix_lookups_.fetch_add(1);
  std::vector<PrefixCandidate> out;
  int64_t best = 0;  // deepest block count found so far
  std::vector<uint64_t> holders;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    // A shard that does not hold the best depth's key cannot match deeper: one probe.
    if (best > 0 && !s->prefix.Contains(chain[best - 1])) continue;
    const int64_t depth = s->prefix.Depth(chain, best);
    if (depth == 0) continue;
    holders.clear();
    s->prefix.Holders(chain[depth - 1], std::max(max, kPrefixExamine), &holders);
    for (uint64_t id : holders) {
      auto it = s->entries.find(id);
      if (it == s->entries.end() || !(it->second.record->ns == ns)) continue;  // hash collision
      const int64_t tokens = CommonPrefix(it->second.record->ids, ids);
      if (tokens < kPrefixBlockTokens) continue;  // a 64-bit collision on the first block
      if (depth > best) {
        best = depth;
        out.clear();
      }
      out.push_back({id, depth, tokens, true});
    }
  }
  const size_t keep = std::min(out.size(), static_cast<size_t>(std::max(max, 0)));
  std::partial_sort(out.begin(), out.begin() + keep, out.end(), PrefixCandidateBetter);
  out.resize(keep);
  return out;
}

absl::Status MemoryTier::Delete(uint64_t id) {
  Shard& s = ShardOf(id);
  std::lock_guard<std::mutex> lock(s.mu);
  RemoveLocked(s, id);
  return absl::OkStatus();
}

absl::Status MemoryTier::Clear() {
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    int64_t bytes = 0;
    for (const auto& [id, e] : s->entries) bytes += e.bytes;
    bytes_.fetch_sub(bytes);
    entries_.fetch_sub(static_cast<int64_t>(s->entries.size()));
    s->entries.clear();
    s->order.clear();
    s->index.Clear();
    s->prefix.Clear();
  }
  return absl::OkStatus();
}

std::vector<RecordInfo> MemoryTier::List() const {
  std::vector<RecordInfo> out;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    for (const auto& [id, e] : s->entries) {
      out.push_back({id, e.record->ns, static_cast<int64_t>(e.record->ids.size()), e.bytes, e.hits,
                     e.last_used_ms, e.record->created_ms});
    }
  }
  return out;
}

int64_t MemoryTier::prefix_entries() const {
  int64_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    n += static_cast<int64_t>(s->prefix.size());
  }
  return n;
}

TierStats MemoryTier::Stats() const {
  TierStats st;
  st.entries = entries_.load();
  st.bytes = bytes_.load();
  st.hits = hits_.load();
  st.misses = misses_.load();
  st.lookups = lookups_.load();
  st.prefix_lookups = prefix_lookups_.load();
  st.puts = puts_.load();
  st.evictions = evictions_.load();
  st.errors = 0;  // nothing in memory can be corrupt or fail I/O
  return st;
}

}  // namespace semshare::store
