// Memory tier (cache_store/memory_tier.h): eviction order (GreedyDual-Size-Frequency: least
// recent first among equals, hits and small size keep a record longer), pinning (a handle
// outlives eviction, Delete and Clear unchanged), oversize records refused, namespace isolation,
// stats; and a stress test of many threads publishing, looking up, getting and deleting under a
// budget of a few dozen records, verifying every byte of every record read (no torn or mixed
// record), the byte budget held at every moment, even mid-Put, and the entry accounting at
// quiescence. Label tsan: scripts/test also runs it under ThreadSanitizer (target tsan_targets).
#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache_store/memory_tier.h"

namespace semshare::store {
namespace {

Namespace NsOf(uint32_t seed) { return {"tenant-" + std::to_string(seed % 3), "fp"}; }
std::vector<uint64_t> FeaturesOf(uint32_t seed) {
  // Records with the same seed % 16 share most features, so lookups find several.
  return {seed % 16, 100 + seed % 16, 200 + seed % 16, 300 + seed};
}

// A record whose every field is a function of `seed` (ids[0] == seed), `tokens` rows.
RecordHandle MakeRecord(uint32_t seed, int64_t tokens = -1) {
  auto r = std::make_shared<Record>();
  const int64_t n = tokens >= 0 ? tokens : 8 + seed % 24;
  r->ns = NsOf(seed);
  for (int64_t i = 0; i < n; ++i)
    r->ids.push_back(static_cast<int32_t>(i == 0 ? seed : seed * 31 + i));
  r->id = RecordId(r->ns, r->ids);
  r->features = FeaturesOf(seed);
  r->kv = engine::KvCache(2, 8);
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t p = 0; p < n; ++p) {
      r->kv.layer(l).pos.push_back(static_cast<int32_t>(p));
      for (int d = 0; d < 8; ++d) {
        r->kv.layer(l).k.push_back(static_cast<float>((seed + l * 7 + p * 8 + d) % 4096));
        r->kv.layer(l).v.push_back(static_cast<float>((seed * 3 + l + p * 8 + d) % 4096));
      }
    }
  }
  return r;
}

// True when every field equals what MakeRecord(ids[0]) builds.
bool Intact(const Record& r) {
  if (r.ids.empty()) return false;
  const RecordHandle want = MakeRecord(static_cast<uint32_t>(r.ids[0]), r.ids.size());
  if (r.id != want->id || !(r.ns == want->ns) || r.ids != want->ids ||
      r.features != want->features || r.kv.n_layers() != 2) {
    return false;
  }
  for (int64_t l = 0; l < 2; ++l) {
    if (r.kv.layer(l).k != want->kv.layer(l).k || r.kv.layer(l).v != want->kv.layer(l).v ||
        r.kv.layer(l).pos != want->kv.layer(l).pos) {
      return false;
    }
  }
  return true;
}

std::unique_ptr<MemoryTier> Tier(int64_t budget, int shards) {
  absl::StatusOr<std::unique_ptr<MemoryTier>> t = MemoryTier::Create({shards, budget, {}});
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(StoreMemoryTierTest, EvictsLeastRecentThenByHitsAndSize) {
  const int64_t size = MakeRecord(1, 16)->ByteSize();
  auto tier = Tier(4 * size, 3);
  std::vector<RecordHandle> r;
  for (uint32_t s = 1; s <= 8; ++s) r.push_back(MakeRecord(s, 16));  // all the same size
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(tier->Put(r[i]).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(tier->Get(r[0]->id).ok());  // r0: hot
  ASSERT_TRUE(tier->Put(r[4]).ok());  // over budget by one: the least recent cold one goes
  EXPECT_FALSE(tier->Get(r[1]->id).ok());
  EXPECT_TRUE(tier->Get(r[0]->id).ok());
  ASSERT_TRUE(tier->Put(r[5]).ok());
  ASSERT_TRUE(tier->Put(r[6]).ok());
  EXPECT_FALSE(tier->Get(r[2]->id).ok());
  EXPECT_FALSE(tier->Get(r[3]->id).ok());
  EXPECT_TRUE(tier->Get(r[0]->id).ok()) << "a record with hits outlives colder ones";
  EXPECT_EQ(tier->Stats().evictions, 3);
  EXPECT_LE(tier->Stats().bytes, 4 * size);

  // Size: at equal age and hits, one record 4x larger goes before small ones.
  const RecordHandle big = MakeRecord(100, 64);
  const int64_t small = MakeRecord(101, 16)->ByteSize();
  auto t2 = Tier(big->ByteSize() + 2 * small, 2);
  ASSERT_TRUE(t2->Put(big).ok());
  ASSERT_TRUE(t2->Put(MakeRecord(101, 16)).ok());
  ASSERT_TRUE(t2->Put(MakeRecord(102, 16)).ok());
  ASSERT_TRUE(t2->Put(MakeRecord(103, 16)).ok());
  EXPECT_FALSE(t2->Get(big->id).ok());
  EXPECT_TRUE(t2->Get(MakeRecord(101, 16)->id).ok());
  EXPECT_EQ(t2->Stats().entries, 3);
}

TEST(StoreMemoryTierTest, HandlesPinRecordsAndOversizeIsRefused) {
  auto tier = Tier(1 << 20, 4);
  const RecordHandle r = MakeRecord(7);
  ASSERT_TRUE(tier->Put(r).ok());
  absl::StatusOr<RecordHandle> h = tier->Get(r->id);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(tier->Delete(r->id).ok());
  ASSERT_TRUE(tier->Clear().ok());
  EXPECT_TRUE(Intact(**h));
  EXPECT_EQ(h->get(), r.get());  // the very object, not a copy
  EXPECT_EQ(tier->Get(r->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->Stats().entries, 0);
  EXPECT_EQ(tier->Stats().bytes, 0);
  EXPECT_EQ(tier->Stats().hits, 1);
  EXPECT_EQ(tier->Stats().misses, 1);

  auto tiny = Tier(100, 1);
  EXPECT_EQ(tiny->Put(MakeRecord(8)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tiny->Stats().entries, 0);
  EXPECT_FALSE(MemoryTier::Create({-1, 100, {}}).ok());
  EXPECT_FALSE(MemoryTier::Create({1, 0, {}}).ok());
  EXPECT_FALSE(MemoryTier::Create({1, 100, {0, 4, 1}}).ok());
}

TEST(StoreMemoryTierTest, LookupStaysInItsNamespace) {
  auto tier = Tier(1 << 20, 4);
  for (uint32_t s = 0; s < 48; ++s) ASSERT_TRUE(tier->Put(MakeRecord(s)).ok());
  const MinHasher hasher(IndexConfig{});
  for (uint32_t s = 0; s < 48; ++s) {
    absl::StatusOr<std::vector<Candidate>> c =
        tier->Lookup(NsOf(s), hasher.Compute(FeaturesOf(s)), 4);
    ASSERT_TRUE(c.ok());
    ASSERT_FALSE(c->empty());
    EXPECT_EQ((*c)[0].id, MakeRecord(s)->id) << "exact features rank first";
    for (const Candidate& cand : *c) {
      absl::StatusOr<RecordHandle> h = tier->Get(cand.id);
      ASSERT_TRUE(h.ok());
      EXPECT_EQ((*h)->ns, NsOf(s));
    }
  }
  EXPECT_EQ(tier->List().size(), 48u);
}

TEST(StoreMemoryTierTest, ConcurrentPublishLookupGetEvictKeepsRecordsWhole) {
  const int64_t budget = 24 * MakeRecord(0, 20)->ByteSize();
  auto tier = Tier(budget, 4);
  const MinHasher hasher(IndexConfig{});
  constexpr int kWriters = 4, kReaders = 4, kIters = 1500;
  std::atomic<int64_t> torn{0}, gets{0}, foreign{0}, over_budget{0};
  std::vector<RecordHandle> kept_all;
  std::mutex kept_mu;
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(w);
      for (int i = 0; i < kIters; ++i) {
        const absl::Status s = tier->Put(MakeRecord(rng() % 400));
        if (!s.ok()) torn.fetch_add(1);
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937 rng(100 + r);
      std::deque<RecordHandle> pinned;  // handles held across other threads' evictions
      for (int i = 0; i < kIters; ++i) {
        const uint32_t seed = rng() % 400;
        absl::StatusOr<std::vector<Candidate>> c =
            tier->Lookup(NsOf(seed), hasher.Compute(FeaturesOf(seed)), 4);
        if (!c.ok()) continue;
        for (const Candidate& cand : *c) {
          absl::StatusOr<RecordHandle> h = tier->Get(cand.id);
          if (!h.ok()) continue;  // evicted in between: a miss, fine
          gets.fetch_add(1);
          if (!Intact(**h)) torn.fetch_add(1);
          if (!((*h)->ns == NsOf(seed))) foreign.fetch_add(1);
          pinned.push_back(*h);
          if (pinned.size() > 16) pinned.pop_front();
        }
        if (i % 50 == 0 && !c->empty()) (void)tier->Delete((*c)[0].id);
        if (tier->Stats().bytes > budget) over_budget.fetch_add(1);  // never, not even mid-Put
        if (i % 300 == 0) (void)tier->List();
      }
      for (const RecordHandle& h : pinned) {
        if (!Intact(*h)) torn.fetch_add(1);
      }
      std::lock_guard<std::mutex> lock(kept_mu);
      kept_all.insert(kept_all.end(), pinned.begin(), pinned.end());
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(foreign.load(), 0);
  EXPECT_EQ(over_budget.load(), 0);
  EXPECT_GT(gets.load(), kIters) << "readers must actually have read records";
  const TierStats st = tier->Stats();
  EXPECT_LE(st.bytes, budget);
  EXPECT_GT(st.evictions, 0);
  EXPECT_EQ(st.puts, kWriters * kIters);
  int64_t listed = 0;
  const std::vector<RecordInfo> list = tier->List();
  for (const RecordInfo& info : list) {
    listed += info.bytes;
    absl::StatusOr<RecordHandle> h = tier->Get(info.id);
    ASSERT_TRUE(h.ok());
    EXPECT_TRUE(Intact(**h));
  }
  EXPECT_EQ(listed, st.bytes);
  EXPECT_EQ(static_cast<int64_t>(list.size()), st.entries);
  ASSERT_TRUE(tier->Clear().ok());
  EXPECT_EQ(tier->Stats().bytes, 0);
  for (const RecordHandle& h : kept_all) EXPECT_TRUE(Intact(*h));  // pinned past Clear
}

}  // namespace
}  // namespace semshare::store
