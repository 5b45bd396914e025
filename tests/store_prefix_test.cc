// The exact-prefix index (cache_store/prefix_index.h) and ReferenceStore::LookupPrefix in the
// memory and disk tiers: the chain hash is pinned (Redis shares its keys between builds); the
// longest common prefix is found among records sharing prefixes of different lengths, refined
// to the token inside the last partial block, for identical prompts, prompts extending a
// record and prompts shorter than a block, and checked against a brute-force oracle on random
// record trees; namespaces never see each other; eviction under the memory budget, Delete and
// Clear remove index entries; a disk restart rebuilds the index from the files; a file removed
// behind the tier's back falls back to another holder; many threads publishing, looking up and
// deleting get only exact answers (label tsan: scripts/test also runs it under ThreadSanitizer).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache_store/prefix_index.h"
#include "cache_store/prompt_features.h"
#include "cache_store/reference_store.h"
#include "tests/store_prefix_util.h"

namespace semshare::store {
namespace {

const Namespace kNs{"tenant-a", "fp-prefix"};
constexpr int64_t kB = kPrefixBlockTokens;

// A record of `ids` in the test's namespace (store_prefix_util.h).
RecordHandle MakeRecord(std::vector<int32_t> ids, const Namespace& ns = kNs) {
  return testing::MakeRecord(std::move(ids), ns);
}
using testing::Cat;
using testing::Head;
using testing::Random;

std::unique_ptr<ReferenceStore> OpenStore(StoreOptions o = {}) {
  if (o.memory_shards == 0) o.memory_shards = 4;
  absl::StatusOr<std::unique_ptr<ReferenceStore>> s = ReferenceStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

void PublishAll(ReferenceStore& store, const std::vector<RecordHandle>& records) {
  for (const RecordHandle& r : records) {
    if (!store.Publish(r)) {  // the queue is full: wait for the writer, then again
      store.Flush();
      ASSERT_TRUE(store.Publish(r));
    }
  }
  store.Flush();
}

// The lookup's answer is exact: the record it names shares exactly `tokens` with the prompt.
void ExpectConsistent(const PrefixMatch& m, std::span<const int32_t> prompt, const Namespace& ns) {
  ASSERT_NE(m.record, nullptr);
  EXPECT_EQ(m.record->id, m.id);
  EXPECT_EQ(m.record->ns, ns);
  EXPECT_GE(m.tokens, kB);
  EXPECT_EQ(CommonPrefix(m.record->ids, prompt), m.tokens);
  EXPECT_EQ(m.blocks, m.tokens / kB);
}

// Brute force: the longest common prefix of `prompt` with any of `records`.
int64_t Oracle(const std::vector<RecordHandle>& records, std::span<const int32_t> prompt) {
  int64_t best = 0;
  for (const RecordHandle& r : records) best = std::max(best, CommonPrefix(r->ids, prompt));
  return best;
}

TEST(StorePrefixChain, IsPinnedPerNamespaceAndChained) {
  std::vector<int32_t> ids(40);
  for (int i = 0; i < 40; ++i) ids[i] = 1000 + i;
  const std::vector<uint64_t> chain = PrefixChain(kNs, ids);
  ASSERT_EQ(chain.size(), 2u);  // full blocks only: 40 = 2 * 16 + 8
  // Golden values: the keys are shared between replicas and builds through Redis, so a change
  // of the scheme must change the domain tag (and this test), never alias old keys.
  EXPECT_EQ(chain[0], 0x8f8f0c5b53b5cbe2ull) << std::hex << chain[0];
  EXPECT_EQ(chain[1], 0x306d17c9fb130de5ull) << std::hex << chain[1];
  // h_1 depends on block 0: same block 1, different block 0, different key.
  std::vector<int32_t> other = ids;
  other[0] = 7;
  const std::vector<uint64_t> c2 = PrefixChain(kNs, other);
  EXPECT_NE(c2[0], chain[0]);
  EXPECT_NE(c2[1], chain[1]);
  // Tokens past the last full block do not change the keys; another namespace does.
  EXPECT_EQ(PrefixChain(kNs, Head(ids, 32)), chain);
  EXPECT_NE(PrefixChain({"tenant-b", kNs.model_fingerprint}, ids)[0], chain[0]);
  EXPECT_NE(PrefixChain({kNs.tenant, "fp-other"}, ids)[0], chain[0]);
  EXPECT_TRUE(PrefixChain(kNs, Head(ids, 15)).empty());
}

TEST(StorePrefixIndex, DepthIsTheLongestHeldRunAndEraseDropsKeys) {
  std::mt19937 rng(1);
  const std::vector<int32_t> a = Random(rng, 100);
  const std::vector<uint64_t> ca = PrefixChain(kNs, a);                                  // 6 blocks
  const std::vector<uint64_t> cb = PrefixChain(kNs, Cat(Head(a, 50), Random(rng, 30)));  // 5
  PrefixIndex index;
  EXPECT_EQ(index.Depth(ca), 0);
  index.Insert(1, cb);
  EXPECT_EQ(index.Depth(ca), 3);  // shares 50 tokens: 3 full blocks
  index.Insert(2, ca);
  EXPECT_EQ(index.Depth(ca), 6);
  EXPECT_EQ(index.Depth(ca, 3), 6);
  std::vector<uint64_t> holders;
  index.Holders(ca[1], 8, &holders);
  EXPECT_EQ(holders, (std::vector<uint64_t>{1, 2}));
  index.Erase(2, ca);
  EXPECT_EQ(index.Depth(ca), 3);
  index.Erase(1, cb);
  EXPECT_EQ(index.size(), 0u);
  EXPECT_EQ(index.Depth(ca), 0);
}

TEST(StorePrefixLookup, LongestPrefixAmongSharedPrefixesRefinedToTheToken) {
  auto store = OpenStore();
  std::mt19937 rng(2);
  const std::vector<int32_t> base = Random(rng, 300);
  // Records sharing base's first 40, 100 and 170 tokens, then diverging; one unrelated.
  const RecordHandle a = MakeRecord(Cat(Head(base, 40), Random(rng, 60)));
  const RecordHandle b = MakeRecord(Cat(Head(base, 100), Random(rng, 50)));
  const RecordHandle c = MakeRecord(Cat(Head(base, 170), Random(rng, 10)));
  const RecordHandle d = MakeRecord(Random(rng, 200));
  PublishAll(*store, {a, b, c, d});

  struct Case {
    std::vector<int32_t> prompt;
    uint64_t want_id;  // 0: any record with the oracle's length
    int64_t want_tokens;
  };
  const std::vector<Case> cases = {
      {base, c->id, 170},                                     // the deepest of three
      {Cat(Head(b->ids, 103), Random(rng, 40)), b->id, 103},  // 6 blocks + 7 tokens
      {Cat(Head(base, 37), Random(rng, 40)), 0, 37},          // inside block 2 of a, b and c
      {Cat(Head(base, 40), Random(rng, 9)), 0, 40},
      {Head(base, 16), 0, 16},                     // exactly one block
      {a->ids, a->id, 100},                        // identical prompt
      {Cat(c->ids, Random(rng, 70)), c->id, 180},  // a prompt extending a record
      {Head(d->ids, 33), d->id, 33},               // a prompt a record extends
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    const Case& k = cases[i];
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, k.prompt);
    ASSERT_TRUE(m.ok()) << m.status();
    ExpectConsistent(*m, k.prompt, kNs);
    EXPECT_EQ(m->tokens, k.want_tokens);
    EXPECT_EQ(m->tokens, Oracle({a, b, c, d}, k.prompt));
    if (k.want_id != 0) {
      EXPECT_EQ(m->id, k.want_id);
    }
    EXPECT_STREQ(m->tier, "memory");
  }
  // Misses: nothing shares a full block (15 shared tokens), a prompt shorter than a block (even
  // if a record starts with it), an empty prompt, and a min_tokens no record reaches.
  for (const std::vector<int32_t>& p : {Cat(Head(base, 15), Random(rng, 60)), Head(base, 15),
                                        std::vector<int32_t>{}, Random(rng, 64)}) {
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, p);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound) << m.status();
  }
  EXPECT_EQ(store->LookupPrefix(kNs, base, 171).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, base, 170);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tokens, 170);

  const StoreStats st = store->Stats();
  EXPECT_EQ(st.prefix_lookups, static_cast<int64_t>(cases.size()) + 4 + 2);
  EXPECT_EQ(st.prefix_hits, static_cast<int64_t>(cases.size()) + 1);
  EXPECT_EQ(st.prefix_stale, 0);
  EXPECT_EQ(st.prefix_errors, 0);
  EXPECT_GT(st.memory.prefix_lookups, 0);
}

TEST(StorePrefixLookup, RecordsShorterThanABlockAreNotIndexed) {
  auto store = OpenStore();
  std::mt19937 rng(3);
  const RecordHandle tiny = MakeRecord(Random(rng, 15));
  const RecordHandle one = MakeRecord(Random(rng, 16));
  PublishAll(*store, {tiny, one});
  EXPECT_EQ(store->LookupPrefix(kNs, tiny->ids).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->LookupPrefix(kNs, Cat(tiny->ids, Random(rng, 40))).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, Cat(one->ids, Random(rng, 40)));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->id, one->id);
  EXPECT_EQ(m->tokens, 16);
}

TEST(StorePrefixLookup, NamespacesNeverSeeEachOther) {
  auto store = OpenStore();
  std::mt19937 rng(4);
  const std::vector<int32_t> ids = Random(rng, 64);
  const Namespace other{"tenant-b", kNs.model_fingerprint};
  const Namespace model{kNs.tenant, "fp-another-model"};
  PublishAll(*store, {MakeRecord(ids, kNs)});
  for (const Namespace& ns : {other, model}) {
    EXPECT_EQ(store->LookupPrefix(ns, ids).status().code(), absl::StatusCode::kNotFound);
  }
  // The same ids in another namespace are another record, found only there.
  const RecordHandle theirs = MakeRecord(Cat(ids, Random(rng, 20)), other);
  PublishAll(*store, {theirs});
  absl::StatusOr<PrefixMatch> mine = store->LookupPrefix(kNs, Cat(ids, Random(rng, 20)));
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->record->ns, kNs);
  EXPECT_EQ(mine->tokens, 64);
  absl::StatusOr<PrefixMatch> their = store->LookupPrefix(other, theirs->ids);
  ASSERT_TRUE(their.ok()) << their.status();
  EXPECT_EQ(their->id, theirs->id);
  EXPECT_EQ(their->tokens, 84);
  EXPECT_EQ(store->LookupPrefix(model, theirs->ids).status().code(), absl::StatusCode::kNotFound);
}

TEST(StorePrefixLookup, RandomRecordTreesMatchTheOracle) {
  // Records grown as conversations: each extends a prefix of an earlier one (or starts anew), so
  // many share prefixes of every length; prompts branch off records at random points.
  std::mt19937 rng(5);
  auto store = OpenStore();
  std::vector<RecordHandle> records;
  for (int i = 0; i < 120; ++i) {
    std::vector<int32_t> ids;
    if (!records.empty() && rng() % 5 != 0) {
      const RecordHandle& parent = records[rng() % records.size()];
      ids = Head(parent->ids, static_cast<int64_t>(rng() % (parent->ids.size() + 1)));
    }
    ids = Cat(ids, Random(rng, 1 + rng() % 90));
    records.push_back(MakeRecord(ids));
  }
  PublishAll(*store, records);
  int hits = 0;
  for (int q = 0; q < 400; ++q) {
    const RecordHandle& r = records[rng() % records.size()];
    std::vector<int32_t> prompt = Head(r->ids, static_cast<int64_t>(rng() % (r->ids.size() + 1)));
    if (rng() % 2) prompt = Cat(prompt, Random(rng, rng() % 40));
    const int64_t want = Oracle(records, prompt);
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, prompt);
    if (want < kB) {
      EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound) << m.status();
      continue;
    }
    ASSERT_TRUE(m.ok()) << "query " << q << ": " << m.status();
    ExpectConsistent(*m, prompt, kNs);
    // The deepest block is always found; inside the partial block the best of up to 32 records
    // per shard holding it is taken, so the answer is the oracle's unless more tie (not here).
    EXPECT_EQ(m->tokens / kB, want / kB) << "query " << q;
    EXPECT_EQ(m->tokens, want) << "query " << q;
    ++hits;
  }
  EXPECT_GT(hits, 200);  // the test exercised hits, not only misses
}

TEST(StorePrefixLookup, EvictionDeleteAndClearRemoveIndexEntries) {
  std::mt19937 rng(6);
  std::vector<RecordHandle> r;
  for (int i = 0; i < 6; ++i) r.push_back(MakeRecord(Random(rng, 64)));
  StoreOptions o;
  o.memory_byte_budget = 3 * r[0]->ByteSize();
  o.memory_shards = 2;
  auto store = OpenStore(o);
  PublishAll(*store, r);  // three fit: the first three are evicted
  const StoreStats st = store->Stats();
  ASSERT_EQ(st.memory.evictions, 3);
  ASSERT_LE(st.memory.bytes, o.memory_byte_budget);
  EXPECT_EQ(store->memory().prefix_entries(), 3 * 4);  // three records of 4 blocks, no more
  for (int i = 0; i < 6; ++i) {
    SCOPED_TRACE(i);
    // The tier's own index no longer names an evicted record (no stale candidate to read).
    absl::StatusOr<std::vector<PrefixCandidate>> probe =
        store->memory().ProbePrefix(kNs, r[i]->ids, PrefixChain(kNs, r[i]->ids), 4);
    ASSERT_TRUE(probe.ok());
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, r[i]->ids);
    if (i < 3) {
      EXPECT_TRUE(probe->empty());
      EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
    } else {
      ASSERT_EQ(probe->size(), 1u);
      EXPECT_EQ((*probe)[0].id, r[i]->id);
      EXPECT_TRUE((*probe)[0].verified);
      EXPECT_EQ((*probe)[0].tokens, 64);
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->id, r[i]->id);
    }
  }
  EXPECT_EQ(store->Stats().prefix_stale, 0);

  // A handle pins the record through Delete; the index forgets it at once.
  absl::StatusOr<PrefixMatch> held = store->LookupPrefix(kNs, r[4]->ids);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(store->Delete(r[4]->id).ok());
  EXPECT_EQ(store->memory().prefix_entries(), 2 * 4);
  EXPECT_EQ(store->LookupPrefix(kNs, r[4]->ids).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(held->record->ids, r[4]->ids);
  EXPECT_EQ(held->record->kv.layer(1).k, r[4]->kv.layer(1).k);
  ASSERT_TRUE(store->Clear().ok());
  EXPECT_EQ(store->memory().prefix_entries(), 0);
  EXPECT_EQ(store->LookupPrefix(kNs, r[5]->ids).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Stats().prefix_stale, 0);
}

TEST(StorePrefixLookup, ShorterRecordAnswersAfterTheLongerIsDeleted) {
  auto store = OpenStore();
  std::mt19937 rng(7);
  const RecordHandle turn1 = MakeRecord(Random(rng, 90));
  const RecordHandle turn2 = MakeRecord(Cat(turn1->ids, Random(rng, 50)));
  PublishAll(*store, {turn1, turn2});
  const std::vector<int32_t> turn3 = Cat(turn2->ids, Random(rng, 30));
  absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, turn3);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->id, turn2->id);
  EXPECT_EQ(m->tokens, 140);
  ASSERT_TRUE(store->Delete(turn2->id).ok());
  m = store->LookupPrefix(kNs, turn3);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->id, turn1->id);
  EXPECT_EQ(m->tokens, 90);
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/semshare-prefix-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(StorePrefixDisk, RestartRebuildsTheIndexAndDeletesPersist) {
  TempDir dir;
  std::mt19937 rng(8);
  const std::vector<int32_t> base = Random(rng, 200);
  const RecordHandle a = MakeRecord(Cat(Head(base, 50), Random(rng, 30)));
  const RecordHandle b = MakeRecord(Cat(Head(base, 133), Random(rng, 30)));
  const RecordHandle c = MakeRecord(Random(rng, 70));
  StoreOptions o;
  o.disk_dir = dir.path();
  {
    auto store = OpenStore(o);
    PublishAll(*store, {a, b, c});
    ASSERT_EQ(store->Stats().disk.entries, 3);
  }
  {
    auto store = OpenStore(o);  // a new process: memory empty, disk index from the files
    ASSERT_EQ(store->Stats().memory.entries, 0);
    EXPECT_EQ(store->disk()->prefix_entries(), 5 + 10 + 4);  // 80, 163 and 70 tokens
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, base);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->id, b->id);
    EXPECT_EQ(m->tokens, 133);  // refined past the 8 blocks the disk index matched
    EXPECT_STREQ(m->tier, "disk");
    ExpectConsistent(*m, base, kNs);
    EXPECT_EQ(m->record->kv.layer(0).k, b->kv.layer(0).k);  // read whole from the file
    EXPECT_EQ(store->Stats().promotions, 1);
    m = store->LookupPrefix(kNs, base);  // promoted: memory answers now
    ASSERT_TRUE(m.ok());
    EXPECT_STREQ(m->tier, "memory");
    EXPECT_EQ(m->tokens, 133);
    m = store->LookupPrefix(kNs, Cat(Head(c->ids, 40), Random(rng, 5)));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->id, c->id);
    EXPECT_EQ(m->tokens, 40);
    EXPECT_GE(store->Stats().disk.prefix_lookups, 2);
    ASSERT_TRUE(store->Delete(b->id).ok());
  }
  {
    auto store = OpenStore(o);
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, base);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->id, a->id);  // b's file went with the delete
    EXPECT_EQ(m->tokens, 50);
    EXPECT_EQ(store->Stats().prefix_stale, 0);
  }
}

TEST(StorePrefixDisk, AFileRemovedBehindTheTiersBackFallsBackToAnotherHolder) {
  TempDir dir;
  std::mt19937 rng(9);
  const RecordHandle turn1 = MakeRecord(Random(rng, 64));
  const RecordHandle turn2 = MakeRecord(Cat(turn1->ids, Random(rng, 64)));
  StoreOptions o;
  o.disk_dir = dir.path();
  auto store = OpenStore(o);
  PublishAll(*store, {turn1, turn2});
  ASSERT_TRUE(store->memory().Clear().ok());  // only the disk holds them
  std::filesystem::remove(store->disk()->PathOf(turn2->id));
  const std::vector<int32_t> prompt = Cat(turn2->ids, Random(rng, 10));
  absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, prompt);
  ASSERT_TRUE(m.ok()) << m.status();  // never an error: the next holder answers
  EXPECT_EQ(m->id, turn1->id);
  EXPECT_EQ(m->tokens, 64);
  EXPECT_EQ(store->Stats().prefix_stale, 1);
  // The vanished record's entry is gone: the next lookup does not try it again.
  ASSERT_TRUE(store->memory().Clear().ok());
  m = store->LookupPrefix(kNs, prompt);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->id, turn1->id);
  EXPECT_EQ(store->Stats().prefix_stale, 1);
  EXPECT_EQ(store->Stats().disk.entries, 1);
  EXPECT_EQ(store->disk()->prefix_entries(), 4);  // turn 1's blocks only
}

TEST(StorePrefixConcurrency, ThreadsPublishLookUpAndDeleteUnderABudget) {
  // Conversations of growing turns published by writers while readers look up later turns and
  // a deleter removes records, under a memory budget of a few records: every answer must be
  // exact (the record it names shares exactly `tokens` with the prompt, in the namespace), a
  // miss is allowed, an error never.
  std::mt19937 setup(10);
  constexpr int kConversations = 8, kTurns = 6;
  std::vector<std::vector<RecordHandle>> conv(kConversations);
  std::vector<Namespace> ns = {kNs, {"tenant-b", kNs.model_fingerprint}};
  for (int c = 0; c < kConversations; ++c) {
    std::vector<int32_t> ids;
    for (int t = 0; t < kTurns; ++t) {
      ids = Cat(ids, Random(setup, 20 + setup() % 40));
      conv[c].push_back(MakeRecord(ids, ns[c % 2]));
    }
  }
  StoreOptions o;
  o.memory_byte_budget = 6 * conv[0].back()->ByteSize();
  o.memory_shards = 3;
  auto store = OpenStore(o);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> answered{0}, bad{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(100 + w);
      for (int i = 0; i < 400; ++i) {
        const auto& c = conv[rng() % kConversations];
        if (!store->Publish(c[rng() % kTurns])) store->Flush();
      }
    });
  }
  for (int q = 0; q < 3; ++q) {
    threads.emplace_back([&, q] {
      std::mt19937 rng(200 + q);
      while (!stop.load()) {
        const int c = static_cast<int>(rng() % kConversations);
        const std::vector<int32_t> prompt = Cat(conv[c][rng() % kTurns]->ids, Random(rng, 9));
        const Namespace& want_ns = ns[c % 2];
        absl::StatusOr<PrefixMatch> m = store->LookupPrefix(want_ns, prompt);
        if (!m.ok()) {
          if (m.status().code() != absl::StatusCode::kNotFound) bad.fetch_add(1);
          continue;
        }
        if (!(m->record->ns == want_ns) || m->tokens < kB ||
            CommonPrefix(m->record->ids, prompt) != m->tokens) {
          bad.fetch_add(1);
        }
        answered.fetch_add(1);
      }
    });
  }
  threads.emplace_back([&] {
    std::mt19937 rng(300);
    while (!stop.load()) {
      const auto& c = conv[rng() % kConversations];
      (void)store->Delete(c[rng() % kTurns]->id);
      std::this_thread::yield();
    }
  });
  threads[0].join();
  threads[1].join();
  store->Flush();
  stop = true;
  for (size_t i = 2; i < threads.size(); ++i) threads[i].join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(answered.load(), 0);
  const StoreStats st = store->Stats();
  EXPECT_LE(st.memory.bytes, o.memory_byte_budget);
  EXPECT_EQ(st.prefix_errors, 0);
  // Quiescent: the index holds exactly the stored records' blocks, and every record still in
  // memory is found by its own ids, exactly.
  int64_t blocks = 0;
  for (const RecordInfo& info : store->List()) blocks += info.tokens / kB;
  EXPECT_EQ(store->memory().prefix_entries(), blocks);
  for (const RecordInfo& info : store->List()) {
    absl::StatusOr<RecordHandle> r = store->Get(info.ns, info.id);
    ASSERT_TRUE(r.ok());
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(info.ns, (*r)->ids);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->tokens, static_cast<int64_t>((*r)->ids.size()));
  }
}

}  // namespace
}  // namespace semshare::store
