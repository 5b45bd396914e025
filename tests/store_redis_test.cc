// Redis tier (cache_store/redis_tier.h) against real redis-server processes started here
// (tests/redis_harness.h): standalone and a 3-master Redis Cluster from `redis-cli --cluster
// create`. Records round-trip byte-exact (compared through their encodings) and are found by
// lookup; keys spread over all masters while each record's keys share one node; a slot
// migration exercises ASK then MOVED; a master killed with SIGKILL mid-test costs misses and
// counted errors, never a crash or a wrong record, and its records come back when it restarts
// on the same port and directory, without restarting the store; a server stalled with CLIENT
// PAUSE makes operations time out (counted misses) within the client timeout; damaged or
// missing chunks are DataLoss and dropped. If redis-server is missing the tests fail and say
// that scripts/setup installs it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "cache_store/codec.h"
#include "cache_store/redis_tier.h"
#include "cache_store/reference_store.h"
#include "tests/redis_harness.h"

namespace semshare::store {
namespace {

using semshare::testing::RedisCluster;
using semshare::testing::RedisServer;
using Clock = std::chrono::steady_clock;

const Namespace kNs{"tenant-a", "fp-0123456789abcdef"};

// A record of n tokens over `layers` layers (the last trimmed to every other row when `trim`),
// so records span several 256-token chunks with ragged layers. Features are a seeded random
// subset of a shared pool, so unrelated records share some but not most features.
RecordHandle MakeRecord(uint32_t seed, int64_t n = 600, int64_t layers = 3, int64_t kv_dim = 8,
                        bool trim = true, Namespace ns = kNs) {
  std::mt19937_64 rng(seed);
  Record r;
  r.ns = std::move(ns);
  for (int64_t i = 0; i < n; ++i) r.ids.push_back(static_cast<int32_t>(rng() % 49152));
  r.id = RecordId(r.ns, r.ids);
  r.lsh = {4, 8, 0x5eedull, true, 10000.0f};
  for (int64_t i = 0; i < n * 4; ++i) r.codes.push_back(static_cast<uint32_t>(rng() % 256));
  for (int64_t i = 0; i < 200; ++i) r.features.push_back(rng() % 100000);
  std::sort(r.features.begin(), r.features.end());
  r.features.erase(std::unique(r.features.begin(), r.features.end()), r.features.end());
  r.kv = engine::KvCache(layers, kv_dim);
  for (int64_t l = 0; l < layers; ++l) {
    engine::LayerKv& layer = r.kv.layer(l);
    const int step = (trim && l == layers - 1) ? 2 : 1;
    for (int64_t p = 0; p < n; p += step) {
      layer.pos.push_back(static_cast<int32_t>(p));
      for (int64_t d = 0; d < kv_dim; ++d) {
        layer.k.push_back(static_cast<float>(rng() % 20001) / 16.0f);
        layer.v.push_back(-static_cast<float>(rng() % 20001) / 16.0f);
      }
    }
  }
  r.created_ms = 1700000000000 + seed;
  r.last_used_ms = r.created_ms + 1;
  r.hit_count = seed;
  return std::make_shared<const Record>(std::move(r));
}

std::string Bytes(const Record& r) {
  absl::StatusOr<std::string> b = EncodeRecord(r);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : std::string();
}

// A generous command timeout where timing is not what a test checks: the servers fsync every
// write (appendfsync always), which a disk shared with parallel tests can stall past a second.
RedisTierOptions TierOptions(const std::string& url, int command_timeout_ms = 5000) {
  RedisTierOptions o;
  o.client.url = url;
  o.client.command_timeout_ms = command_timeout_ms;
  o.client.connect_timeout_ms = 300;
  o.client.retry_backoff_ms = 100;
  return o;
}

std::unique_ptr<RedisTier> MakeTier(const RedisTierOptions& o) {
  absl::StatusOr<std::unique_ptr<RedisTier>> t = RedisTier::Create(o);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// The record is found byte-exact by Get and as the best candidate of its own features.
void ExpectRoundTrip(RedisTier& tier, const RecordHandle& want) {
  absl::StatusOr<RecordHandle> got = tier.Get(want->id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Bytes(**got), Bytes(*want)) << "record " << want->id;
  const MinHasher hasher{IndexConfig{}};
  absl::StatusOr<std::vector<Candidate>> c =
      tier.Lookup(want->ns, hasher.Compute(want->features), 3);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_FALSE(c->empty());
  EXPECT_EQ((*c)[0].id, want->id);
  EXPECT_FLOAT_EQ((*c)[0].score, 1.0f);
}

TEST(RedisKeySlot, MatchesTheClusterSpec) {
  // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
  EXPECT_EQ(RedisKeySlot("123456789"), 0x31C3 & 16383);
  EXPECT_EQ(RedisKeySlot("foo"), 12182);
  EXPECT_EQ(RedisKeySlot("{user1000}.following"), RedisKeySlot("user1000"));
  EXPECT_EQ(RedisKeySlot("foo{}{bar}"), RedisKeySlot("foo{}{bar}"));  // empty tag: whole key
  EXPECT_NE(RedisKeySlot("foo{}{bar}"), RedisKeySlot("bar"));
}

TEST(RedisClient, RejectsBadUrls) {
  for (const char* url : {"", "redis://host", "redis://h:0", "redis://h:70000", "a:1,b",
                          "redis://h:1/x", "redis-cluster://h:1/2"}) {
    RedisClientOptions o;
    o.url = url;
    EXPECT_FALSE(RedisClient::Create(o).ok()) << url;
  }
}

TEST(RedisStandalone, RoundTripLookupDamageAndSharing) {
  auto server = RedisServer::Start(false);
  ASSERT_TRUE(server.ok()) << server.status();
  RedisTierOptions opts = TierOptions(absl::StrCat("redis://", (*server)->addr(), "/2"));
  opts.ttl_ms = 600000;
  auto tier = MakeTier(opts);
  ASSERT_NE(tier, nullptr);

  std::vector<RecordHandle> recs;
  for (uint32_t s = 1; s <= 6; ++s) recs.push_back(MakeRecord(s));
  recs.push_back(MakeRecord(7, 40, 2, 4, false));    // one chunk
  recs.push_back(MakeRecord(8, 1100, 2, 16, true));  // five chunks, ragged last layer
  for (const RecordHandle& r : recs) ASSERT_TRUE(tier->Put(r).ok());
  for (const RecordHandle& r : recs) ExpectRoundTrip(*tier, r);
  EXPECT_EQ(tier->Stats().hits, static_cast<int64_t>(recs.size()));
  EXPECT_EQ(tier->Stats().errors, 0);

  // Keys: 3 chunks + signature + manifest for a 600-token record, all in db 2, all with TTL.
  const uint64_t id = recs[0]->id;
  for (const std::string& k :
       {tier->ManifestKey(id), tier->SignatureKey(id), tier->ChunkKey(id, 2)}) {
    absl::StatusOr<std::string> ttl = (*server)->Command(
        {"EVAL", "redis.call('SELECT', 2) return redis.call('PTTL', KEYS[1])", "1", k});
    ASSERT_TRUE(ttl.ok()) << ttl.status();
    EXPECT_GT(std::stoll(*ttl), 0) << k;
  }
  EXPECT_EQ(tier->List().size(), recs.size());

  // Namespace isolation and misses.
  const MinHasher hasher{IndexConfig{}};
  auto other =
      tier->Lookup({"tenant-b", kNs.model_fingerprint}, hasher.Compute(recs[0]->features), 5);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->empty());
  EXPECT_TRUE(absl::IsNotFound(tier->Get(12345).status()));

  // Damage: a flipped byte in a chunk, a missing chunk, a truncated manifest -> DataLoss, the
  // record dropped (its manifest gone), counted; nothing else disturbed.
  const auto eval_db2 = [&](const std::string& script, const std::string& key) {
    return (*server)->Command({"EVAL", absl::StrCat("redis.call('SELECT', 2) ", script), "1", key});
  };
  ASSERT_TRUE(
      eval_db2("return redis.call('SETRANGE', KEYS[1], 100, 'X')", tier->ChunkKey(recs[1]->id, 1))
          .ok());
  ASSERT_TRUE(eval_db2("return redis.call('DEL', KEYS[1])", tier->ChunkKey(recs[2]->id, 2)).ok());
  ASSERT_TRUE(
      eval_db2("return redis.call('SETRANGE', KEYS[1], 20, 'Y')", tier->ManifestKey(recs[3]->id))
          .ok());
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<RecordHandle> g = tier->Get(recs[i]->id);
    EXPECT_TRUE(absl::IsDataLoss(g.status())) << i << ": " << g.status();
    EXPECT_TRUE(absl::IsNotFound(tier->Get(recs[i]->id).status())) << "dropped " << i;
    EXPECT_EQ(*eval_db2("return redis.call('EXISTS', KEYS[1])", tier->ManifestKey(recs[i]->id)),
              "0");
  }
  EXPECT_EQ(tier->RedisStats().data_loss, 3);
  EXPECT_GE(tier->Stats().errors, 3);
  ExpectRoundTrip(*tier, recs[4]);

  // Delete removes the record and its bucket entries.
  ASSERT_TRUE(tier->Delete(recs[4]->id).ok());
  EXPECT_TRUE(absl::IsNotFound(tier->Get(recs[4]->id).status()));
  auto after = tier->Lookup(kNs, hasher.Compute(recs[4]->features), 10);
  ASSERT_TRUE(after.ok());
  for (const Candidate& c : *after) EXPECT_NE(c.id, recs[4]->id);

  // Two replicas sharing the server through the facade: A publishes, B (cold memory) finds
  // and fetches it from Redis and promotes it into memory.
  StoreOptions so;
  so.redis = opts;
  so.redis.key_prefix = "replicas";
  auto a = ReferenceStore::Open(so);
  auto b = ReferenceStore::Open(so);
  ASSERT_TRUE(a.ok() && b.ok());
  const RecordHandle shared = MakeRecord(42, 700);
  ASSERT_TRUE((*a)->Publish(shared));
  (*a)->Flush();
  EXPECT_EQ((*a)->Stats().published, 1);
  EXPECT_EQ((*a)->Stats().publish_failed, 0);
  auto cands = (*b)->Lookup(kNs, shared->features, 2);
  ASSERT_TRUE(cands.ok());
  ASSERT_FALSE(cands->empty());
  EXPECT_EQ((*cands)[0].id, shared->id);
  auto got = (*b)->Get(kNs, shared->id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Bytes(**got), Bytes(*shared));
  EXPECT_EQ((*b)->Stats().promotions, 1);
  EXPECT_TRUE((*b)->memory().Get(shared->id).ok());
  EXPECT_TRUE(
      absl::IsNotFound((*b)->Get({"tenant-b", kNs.model_fingerprint}, shared->id).status()));

  ASSERT_TRUE((*a)->Clear().ok());
  EXPECT_TRUE((*a)->redis()->List().empty());
  EXPECT_EQ(tier->List().size(), recs.size() - 4);  // another prefix: untouched
}

TEST(RedisStandalone, DownAndSlowServerMissFastAndRecover) {
  auto server = RedisServer::Start(false);
  ASSERT_TRUE(server.ok()) << server.status();
  StoreOptions so;
  so.redis = TierOptions(absl::StrCat("redis://", (*server)->addr()), /*command_timeout_ms=*/200);
  auto store = ReferenceStore::Open(so);
  ASSERT_TRUE(store.ok());
  RedisTier& tier = *(*store)->redis();
  const RecordHandle rec = MakeRecord(5);
  ASSERT_TRUE(tier.Put(rec).ok());

  // Slow: CLIENT PAUSE stalls every client for 2 s and returns at once, the pause in effect (a
  // DEBUG SLEEP sent from another thread may not have reached the server yet when the caller
  // runs: on a loaded machine it once had not); operations time out after 200 ms.
  ASSERT_TRUE((*server)->Command({"CLIENT", "PAUSE", "2000", "ALL"}).ok());
  auto t0 = Clock::now();
  absl::StatusOr<RecordHandle> g = tier.Get(rec->id);
  const double get_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  EXPECT_TRUE(absl::IsDeadlineExceeded(g.status())) << g.status();
  EXPECT_LT(get_ms, 1000) << "a stalled Redis must not stall the caller past the timeout";
  auto c = (*store)->Lookup(kNs, rec->features, 3);
  ASSERT_TRUE(c.ok());  // the facade treats the failed tier as no candidates
  EXPECT_TRUE(c->empty());
  // A PING on a fresh connection is answered once the pause is over.
  ASSERT_TRUE((*server)->Command({"PING"}, 5000).ok());
  EXPECT_GE(tier.RedisStats().client.timeouts, 1);
  EXPECT_GE((*store)->Stats().lookup_errors, 1);
  EXPECT_GE(tier.Stats().misses, 1);
  // Afterwards: reconnects on its own.
  ExpectRoundTrip(tier, rec);

  // Down: killed; calls fail fast (refused connect, then backoff) and count; publish fails
  // without blocking the caller; nothing crashes.
  (*server)->Kill();
  t0 = Clock::now();
  for (int i = 0; i < 50; ++i) EXPECT_FALSE(tier.Get(rec->id).ok());
  const double per_get_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / 50;
  EXPECT_LT(per_get_ms, 20);
  auto miss = (*store)->Get(kNs, rec->id);
  EXPECT_FALSE(miss.ok());
  const RecordHandle later = MakeRecord(6);
  EXPECT_TRUE((*store)->Publish(later));
  (*store)->Flush();
  EXPECT_EQ((*store)->Stats().publish_failed, 1);
  EXPECT_GE(tier.Stats().errors, 50);
  EXPECT_GE(tier.RedisStats().client.connect_failures, 1);

  // Back (same port, same directory: the append-only file restores the data).
  ASSERT_TRUE((*server)->Restart().ok());
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (!tier.Get(rec->id).ok() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ExpectRoundTrip(tier, rec);
  ASSERT_TRUE(tier.Put(later).ok());
  ExpectRoundTrip(tier, later);
}

TEST(RedisCluster, SlotRoutingRedirectionsNodeLossAndRecovery) {
  auto cluster = RedisCluster::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto tier = MakeTier(TierOptions((*cluster).seeds()));
  ASSERT_NE(tier, nullptr);
  ASSERT_TRUE(tier->client().cluster());

  std::vector<RecordHandle> recs;
  for (uint32_t s = 100; s < 130; ++s) recs.push_back(MakeRecord(s));
  for (const RecordHandle& r : recs) ASSERT_TRUE(tier->Put(r).ok());
  for (const RecordHandle& r : recs) ExpectRoundTrip(*tier, r);

  // Every master holds some records; each record's keys sit on one node.
  std::map<RedisServer*, int> per_node;
  for (const RecordHandle& r : recs) {
    RedisServer* holder = cluster->Holding(tier->ManifestKey(r->id));
    ASSERT_NE(holder, nullptr);
    EXPECT_EQ(cluster->Holding(tier->ChunkKey(r->id, 2)), holder);
    EXPECT_EQ(cluster->Holding(tier->SignatureKey(r->id)), holder);
    ++per_node[holder];
  }
  EXPECT_EQ(per_node.size(), 3u) << "30 records should land on all 3 masters";
  for (const auto& n : cluster->nodes) EXPECT_GT(std::stoll(*n->Command({"DBSIZE"})), 0);
  // A second tier seeded with one node (redis-cluster://) finds the same records.
  auto one_seed = MakeTier(TierOptions("redis-cluster://" + cluster->nodes[1]->addr()));
  ExpectRoundTrip(*one_seed, recs[0]);

  // Slot migration of recs[0]'s slot from its node A to node B: while keys sit on B but the
  // slot is still A's (MIGRATING/IMPORTING), A answers ASK; once B owns the slot, A answers
  // MOVED. The tier keeps its stale map and follows both.
  const RecordHandle& mig = recs[0];
  const int slot = RedisKeySlot(tier->ManifestKey(mig->id));
  RedisServer* a = cluster->Holding(tier->ManifestKey(mig->id));
  RedisServer* b = cluster->nodes[0].get() == a ? cluster->nodes[1].get() : cluster->nodes[0].get();
  const std::string a_id = *a->Command({"CLUSTER", "MYID"}),
                    b_id = *b->Command({"CLUSTER", "MYID"});
  ASSERT_TRUE(b->Command({"CLUSTER", "SETSLOT", absl::StrCat(slot), "IMPORTING", a_id}).ok());
  ASSERT_TRUE(a->Command({"CLUSTER", "SETSLOT", absl::StrCat(slot), "MIGRATING", b_id}).ok());
  const std::string keys = *a->Command({"CLUSTER", "GETKEYSINSLOT", absl::StrCat(slot), "1000"});
  std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", absl::StrCat(b->port()), "", "0",
                                      "5000",    "KEYS"};
  for (absl::string_view k : absl::StrSplit(keys, '\n')) migrate.emplace_back(k);
  ASSERT_TRUE(a->Command(migrate).ok());
  const int64_t ask0 = tier->RedisStats().client.ask;
  ExpectRoundTrip(*tier, mig);
  EXPECT_GT(tier->RedisStats().client.ask, ask0);
  for (const auto& n : cluster->nodes) {
    ASSERT_TRUE(n->Command({"CLUSTER", "SETSLOT", absl::StrCat(slot), "NODE", b_id}).ok());
  }
  const int64_t moved0 = tier->RedisStats().client.moved;
  ExpectRoundTrip(*tier, mig);
  EXPECT_GT(tier->RedisStats().client.moved, moved0);
  EXPECT_EQ(cluster->Holding(tier->ManifestKey(mig->id)), b);
  EXPECT_EQ(tier->Stats().errors, 0);

  // Kill a master (SIGKILL) mid-test. Its records miss (counted); the others still round-trip;
  // nothing read is wrong; publishing continues for the live slots.
  RedisServer* victim = cluster->nodes[2].get();
  std::set<uint64_t> on_victim;
  for (const RecordHandle& r : recs) {
    if (cluster->Holding(tier->ManifestKey(r->id)) == victim) on_victim.insert(r->id);
  }
  ASSERT_FALSE(on_victim.empty());
  victim->Kill();
  StoreOptions so;
  so.redis = TierOptions(cluster->seeds());
  auto store = ReferenceStore::Open(so);  // a replica starting while a node is down
  ASSERT_TRUE(store.ok());
  const TierStats before = tier->Stats();
  int ok = 0, failed = 0;
  for (int round = 0; round < 3; ++round) {
    for (const RecordHandle& r : recs) {
      absl::StatusOr<RecordHandle> g = tier->Get(r->id);
      if (g.ok()) {
        ++ok;
        EXPECT_EQ(Bytes(**g), Bytes(*r)) << "a wrong record was read";
        EXPECT_FALSE(on_victim.contains(r->id));
      } else {
        ++failed;
        EXPECT_TRUE(on_victim.contains(r->id)) << g.status();
      }
      auto c = (*store)->Lookup(kNs, r->features, 2);  // never fails at the facade
      ASSERT_TRUE(c.ok());
      auto sg = (*store)->Get(kNs, r->id);
      if (sg.ok()) {
        EXPECT_EQ(Bytes(**sg), Bytes(*r));
      }
    }
  }
  EXPECT_EQ(failed, 3 * static_cast<int>(on_victim.size()));
  EXPECT_EQ(ok, 3 * static_cast<int>(recs.size() - on_victim.size()));
  EXPECT_GE(tier->Stats().misses - before.misses, failed);
  EXPECT_GE(tier->Stats().errors - before.errors, failed);
  std::vector<RecordHandle> fresh;
  for (uint32_t s = 500; s < 512; ++s) fresh.push_back(MakeRecord(s));
  int put_ok = 0;
  for (const RecordHandle& r : fresh) put_ok += tier->Put(r).ok();
  EXPECT_GT(put_ok, 0);
  EXPECT_LT(put_ok, static_cast<int>(fresh.size()));  // 12 records: some hash to the dead node

  // Restart it on the same port and directory: the same tier and store recover by themselves.
  ASSERT_TRUE(victim->Restart().ok());
  ASSERT_TRUE(semshare::testing::WaitClusterOk(cluster->raw()).ok());
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  const uint64_t probe = *on_victim.begin();
  while (!tier->Get(probe).ok() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const RecordHandle& r : recs) ExpectRoundTrip(*tier, r);
  for (const RecordHandle& r : fresh) ASSERT_TRUE(tier->Put(r).ok());
  for (const RecordHandle& r : fresh) ExpectRoundTrip(*tier, r);
  auto sg = (*store)->Get(kNs, probe);
  ASSERT_TRUE(sg.ok()) << sg.status();
  EXPECT_EQ(tier->RedisStats().data_loss, 0);

  ASSERT_TRUE(tier->Clear().ok());
  for (const auto& n : cluster->nodes) EXPECT_EQ(*n->Command({"DBSIZE"}), "0");
}

}  // namespace
}  // namespace semshare::store
