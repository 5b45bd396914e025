// The exact-prefix index in the Redis tier (cache_store/redis_tier.h, prefix_index.h) through
// ReferenceStore::LookupPrefix, against real redis-server processes (tests/redis_harness.h):
// standalone and a 3-master Redis Cluster. A conversation's turns are found by the next turn's
// prompt from Redis alone (memory emptied) and promoted; the prefix keys follow the key scheme
// (P:p:<namespace hash>:<chain hash>, sets of 16-hex ids) and spread over the cluster's masters;
// namespaces are isolated; an id whose manifest is gone (Redis evicted or another replica
// deleted it) is never returned, the lookup falls back to the shorter turn and the stale id is
// removed from the keys; Delete removes the id from every prefix key; keys carry the TTL and
// expire with the record; a dead server makes lookups miss (counted), never fail.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache_store/prompt_features.h"
#include "cache_store/reference_store.h"
#include "tests/redis_harness.h"
#include "tests/store_prefix_util.h"

namespace semshare::store {
namespace {

using semshare::testing::RedisCluster;
using semshare::testing::RedisServer;

const Namespace kNs{"tenant-a", "fp-prefix-redis"};
const Namespace kOther{"tenant-b", "fp-prefix-redis"};

// A record of `ids` in the test's namespace (store_prefix_util.h).
RecordHandle MakeRecord(std::vector<int32_t> ids, const Namespace& ns = kNs) {
  return testing::MakeRecord(std::move(ids), ns);
}
using testing::Cat;
using testing::Random;

std::string Hex16(uint64_t v) { return absl::StrCat(absl::Hex(v, absl::kZeroPad16)); }

std::unique_ptr<ReferenceStore> OpenStore(const std::string& url, int64_t ttl_ms = 0) {
  StoreOptions o;
  o.memory_shards = 2;
  o.redis.client.url = url;
  o.redis.client.command_timeout_ms = 5000;  // the servers fsync every write (see redis_test)
  o.redis.client.connect_timeout_ms = 300;
  o.redis.client.retry_backoff_ms = 100;
  o.redis.ttl_ms = ttl_ms;
  absl::StatusOr<std::unique_ptr<ReferenceStore>> s = ReferenceStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

void PublishAll(ReferenceStore& store, const std::vector<RecordHandle>& records) {
  for (const RecordHandle& r : records) ASSERT_TRUE(store.Publish(r));
  store.Flush();
  ASSERT_EQ(store.Stats().publish_failed, 0);
}

// One command through the tier's own client (routed by slot in a cluster).
absl::StatusOr<RedisReply> Redis(RedisTier& tier, std::vector<std::string> args) {
  return tier.client().Run(RedisCommand{std::move(args), 1});
}

bool Member(RedisTier& tier, const std::string& key, uint64_t id) {
  absl::StatusOr<RedisReply> r = Redis(tier, {"SISMEMBER", key, Hex16(id)});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() && r->integer == 1;
}

// The scenario both deployments must pass; returns the prefix keys of the longest turn.
std::vector<std::string> Scenario(ReferenceStore& store) {
  RedisTier& tier = *store.redis();
  std::mt19937 rng(11);
  const RecordHandle turn1 = MakeRecord(Random(rng, 90));
  const RecordHandle turn2 = MakeRecord(Cat(turn1->ids, Random(rng, 50)));  // 140 tokens
  const RecordHandle theirs = MakeRecord(turn1->ids, kOther);  // same ids, another tenant
  const RecordHandle unrelated = MakeRecord(Random(rng, 70));
  PublishAll(store, {turn1, turn2, theirs, unrelated});
  EXPECT_TRUE(store.memory().Clear().ok());  // Redis alone holds them now

  // The next turn's prompt finds turn 2 (8 blocks, refined to 140) in Redis; it is promoted.
  const std::vector<int32_t> turn3 = Cat(turn2->ids, Random(rng, 30));
  absl::StatusOr<PrefixMatch> m = store.LookupPrefix(kNs, turn3);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  EXPECT_EQ(m->id, turn2->id);
  EXPECT_EQ(m->tokens, 140);
  EXPECT_STREQ(m->tier, "redis");
  EXPECT_EQ(m->record->kv.layer(1).v, turn2->kv.layer(1).v);
  EXPECT_EQ(store.Stats().promotions, 1);
  m = store.LookupPrefix(kNs, turn3);
  EXPECT_TRUE(m.ok() && std::string(m->tier) == "memory");
  EXPECT_TRUE(store.memory().Clear().ok());

  // Keys: one set per full block under the namespace hash, naming the record.
  std::vector<std::string> keys;
  for (uint64_t h : PrefixChain(kNs, turn2->ids)) keys.push_back(tier.PrefixKey(kNs.Hash(), h));
  EXPECT_EQ(keys.size(), 8u);
  EXPECT_EQ(keys[0],
            absl::StrCat("ss:p:", Hex16(kNs.Hash()), ":", Hex16(PrefixChain(kNs, turn2->ids)[0])));
  for (size_t b = 0; b < keys.size(); ++b) {
    EXPECT_TRUE(Member(tier, keys[b], turn2->id)) << b;
    EXPECT_EQ(Member(tier, keys[b], turn1->id), b < 5) << b;  // turn 1 has 5 full blocks
  }

  // Namespaces: the other tenant's record has turn 1's ids; each tenant sees only its own.
  m = store.LookupPrefix(kOther, turn3);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) {
    EXPECT_EQ(m->id, theirs->id);
    EXPECT_EQ(m->tokens, 90);
  }
  EXPECT_EQ(store.LookupPrefix({"tenant-c", kNs.model_fingerprint}, turn3).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(store.memory().Clear().ok());

  // Turn 2's manifest vanishes (Redis evicted it, or another replica deleted it) while its
  // prefix keys remain: the lookup falls back to turn 1, and the stale id leaves the keys of
  // the prompt that named it.
  const int64_t stale_before = tier.prefix_stale();
  EXPECT_TRUE(Redis(tier, {"DEL", tier.ManifestKey(turn2->id)}).ok());
  m = store.LookupPrefix(kNs, turn3);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) {
    EXPECT_EQ(m->id, turn1->id);
    EXPECT_EQ(m->tokens, 90);
    EXPECT_STREQ(m->tier, "redis");
  }
  EXPECT_EQ(tier.prefix_stale(), stale_before + 1);
  for (size_t b = 0; b < keys.size(); ++b) EXPECT_FALSE(Member(tier, keys[b], turn2->id)) << b;
  EXPECT_TRUE(store.memory().Clear().ok());

  // Delete removes the id from every prefix key of the record (the ids come from its manifest).
  EXPECT_TRUE(store.Delete(turn1->id).ok());
  for (size_t b = 0; b < 5; ++b) {
    EXPECT_FALSE(Member(tier, keys[b], turn1->id)) << b;
    absl::StatusOr<RedisReply> e = Redis(tier, {"EXISTS", keys[b]});
    EXPECT_TRUE(e.ok() && e->integer == 0) << "an emptied set disappears: " << b;
  }
  EXPECT_EQ(store.LookupPrefix(kNs, turn3).status().code(), absl::StatusCode::kNotFound);
  m = store.LookupPrefix(
      kNs, Cat(std::vector<int32_t>(unrelated->ids.begin(), unrelated->ids.begin() + 50),
               Random(rng, 5)));
  EXPECT_TRUE(m.ok() && m->id == unrelated->id && m->tokens == 50);
  EXPECT_EQ(store.Stats().prefix_errors, 0);
  EXPECT_EQ(tier.Stats().errors, 0);
  EXPECT_GE(tier.Stats().prefix_lookups, 6);
  return keys;
}

TEST(StorePrefixRedis, StandaloneFindsDeletesCleansAndExpires) {
  auto server = RedisServer::Start(false);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string url = absl::StrCat("redis://", (*server)->addr());
  {
    auto store = OpenStore(url);
    ASSERT_NE(store, nullptr);
    Scenario(*store);
  }
  // TTL: every prefix key carries it, and they go with the record.
  auto store = OpenStore(url, 1500);
  ASSERT_NE(store, nullptr);
  RedisTier& tier = *store->redis();
  std::mt19937 rng(12);
  const RecordHandle r = MakeRecord(Random(rng, 64));
  PublishAll(*store, {r});
  const std::vector<uint64_t> chain = PrefixChain(kNs, r->ids);
  for (uint64_t h : chain) {
    absl::StatusOr<RedisReply> ttl = Redis(tier, {"PTTL", tier.PrefixKey(kNs.Hash(), h)});
    ASSERT_TRUE(ttl.ok()) << ttl.status();
    EXPECT_GT(ttl->integer, 0);
  }
  // Wait (bounded) for Redis to expire the record's manifest, then for its last prefix key.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const std::string last = tier.PrefixKey(kNs.Hash(), chain.back());
  for (const std::string& key : {tier.ManifestKey(r->id), last}) {
    while (std::chrono::steady_clock::now() < deadline) {
      absl::StatusOr<RedisReply> e = Redis(tier, {"EXISTS", key});
      ASSERT_TRUE(e.ok()) << e.status();
      if (e->integer == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the keys did not expire";
  ASSERT_TRUE(store->memory().Clear().ok());
  EXPECT_EQ(store->LookupPrefix(kNs, r->ids).status().code(), absl::StatusCode::kNotFound);

  // A dead server: the lookup misses (counted), never an error.
  (*server)->Kill();
  absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, r->ids);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound) << m.status();
  EXPECT_GE(store->Stats().prefix_errors, 1);
}

TEST(StorePrefixRedis, ClusterSpreadsKeysAndAnswersLikeStandalone) {
  auto cluster = RedisCluster::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto store = OpenStore(cluster->seeds());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->redis()->client().cluster());
  const std::vector<std::string> keys = Scenario(*store);
  // Prefix keys carry no hash tag: one prompt's keys spread over the masters, like buckets.
  std::set<std::string> nodes;
  for (const std::string& k : keys) {
    EXPECT_EQ(k.find('{'), std::string::npos);
    absl::StatusOr<std::string> node = store->redis()->client().NodeForKey(k);
    ASSERT_TRUE(node.ok()) << node.status();
    nodes.insert(*node);
  }
  EXPECT_GE(nodes.size(), 2u);
  // A longer conversation, looked up through every master.
  std::mt19937 rng(13);
  std::vector<int32_t> ids = Random(rng, 40);
  std::vector<RecordHandle> turns;
  for (int t = 0; t < 5; ++t) {
    ids = Cat(ids, Random(rng, 100));
    turns.push_back(MakeRecord(ids));
  }
  PublishAll(*store, turns);
  ASSERT_TRUE(store->memory().Clear().ok());
  for (int t = 0; t < 5; ++t) {
    const std::vector<int32_t> prompt = Cat(turns[t]->ids, Random(rng, 20));
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, prompt);
    ASSERT_TRUE(m.ok()) << m.status();
    // Turn t and every later turn share exactly turn t's ids with the prompt.
    EXPECT_EQ(m->tokens, static_cast<int64_t>(turns[t]->ids.size()));
    EXPECT_EQ(CommonPrefix(m->record->ids, prompt), m->tokens);
    ASSERT_TRUE(store->memory().Clear().ok());
  }
  // A master dies: lookups answer from the keys the others hold (a shorter prefix, or the
  // record when its manifest survived) or miss; never an error, never a wrong answer.
  cluster->nodes[0]->Kill();
  const int64_t errors_before = store->redis()->Stats().errors;
  int answered = 0;
  for (int t = 0; t < 5; ++t) {
    const std::vector<int32_t> prompt = Cat(turns[t]->ids, Random(rng, 20));
    absl::StatusOr<PrefixMatch> m = store->LookupPrefix(kNs, prompt);
    if (m.ok()) {
      ++answered;
      EXPECT_GE(m->tokens, kPrefixBlockTokens);
      EXPECT_EQ(CommonPrefix(m->record->ids, prompt), m->tokens);
    } else {
      EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound) << m.status();
    }
    ASSERT_TRUE(store->memory().Clear().ok());
  }
  EXPECT_GT(store->redis()->Stats().errors, errors_before);  // the dead node's keys, counted
  std::fprintf(stderr, "with one master down: %d of 5 turns answered\n", answered);
}

}  // namespace
}  // namespace semshare::store
