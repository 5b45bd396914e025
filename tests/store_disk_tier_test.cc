// Disk tier (cache_store/disk_tier.h) and the ReferenceStore facade (reference_store.h):
// records published through the store survive destroying and reopening it (hit from disk, then
// promoted to memory); truncated, bit-flipped, foreign and misnamed files are quarantined and
// counted at start-up or on read and never returned; interrupted writes are cleaned up; the disk
// budget evicts least recently used files; namespaces are isolated; a full publish queue drops
// and counts; Delete, Clear and List cover both tiers.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache_store/codec.h"
#include "cache_store/disk_tier.h"
#include "cache_store/reference_store.h"

namespace semshare::store {
namespace {

namespace fs = std::filesystem;

const Namespace kNs{"tenant-a", "00ff00ff00ff00ff"};

std::vector<uint64_t> FeaturesOf(uint32_t seed) { return {seed, 1000 + seed, 2000 + seed}; }

RecordHandle MakeRecord(uint32_t seed, int64_t n = 300, Namespace ns = kNs) {
  auto r = std::make_shared<Record>();
  r->ns = std::move(ns);
  for (int64_t i = 0; i < n; ++i) r->ids.push_back(static_cast<int32_t>(seed * 1000 + i));
  r->id = RecordId(r->ns, r->ids);
  r->features = FeaturesOf(seed);
  r->kv = engine::KvCache(3, 16);
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t p = 0; p < n; ++p) {
      r->kv.layer(l).pos.push_back(static_cast<int32_t>(p));
      for (int d = 0; d < 16; ++d) {
        r->kv.layer(l).k.push_back(static_cast<float>((seed + l + p + d) % 997) * 0.5f);
        r->kv.layer(l).v.push_back(static_cast<float>((seed * 5 + l + p * 3 + d) % 991) * 0.25f);
      }
    }
  }
  return r;
}

void ExpectSameRecord(const Record& a, const Record& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.ns, b.ns);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.features, b.features);
  ASSERT_EQ(a.kv.n_layers(), b.kv.n_layers());
  for (int64_t l = 0; l < a.kv.n_layers(); ++l) {
    EXPECT_EQ(a.kv.layer(l).k, b.kv.layer(l).k);
    EXPECT_EQ(a.kv.layer(l).v, b.kv.layer(l).v);
    EXPECT_EQ(a.kv.layer(l).pos, b.kv.layer(l).pos);
  }
}

class StoreDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "semshare_store_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<ReferenceStore> OpenStore(int32_t queue = 64) {
    StoreOptions o;
    o.memory_shards = 2;
    o.memory_byte_budget = 64 << 20;
    o.disk_dir = dir_;
    o.publish_queue = queue;
    absl::StatusOr<std::unique_ptr<ReferenceStore>> s = ReferenceStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  std::string FileOf(uint64_t id) const { return absl::StrFormat("%s/%016x.ssref", dir_, id); }
  int CountFiles(const std::string& sub = "") const {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir_ + sub)) n += e.is_regular_file();
    return n;
  }

  std::string dir_;
};

TEST_F(StoreDiskTest, ReferencesSurviveRestartAndPromote) {
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    for (uint32_t s = 1; s <= 5; ++s) ASSERT_TRUE(store->Publish(MakeRecord(s)));
    store->Flush();
    const StoreStats st = store->Stats();
    EXPECT_EQ(st.published, 5);
    EXPECT_EQ(st.memory.entries, 5);
    EXPECT_EQ(st.disk.entries, 5);
    EXPECT_EQ(st.disk.puts, 5);
  }  // the process "restarts"
  EXPECT_EQ(CountFiles(), 5);
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Stats().memory.entries, 0);
  EXPECT_EQ(store->Stats().disk.entries, 5);
  const RecordHandle want = MakeRecord(3);
  absl::StatusOr<std::vector<Candidate>> c = store->Lookup(kNs, FeaturesOf(3), 4);
  ASSERT_TRUE(c.ok());
  ASSERT_FALSE(c->empty());
  EXPECT_EQ((*c)[0].id, want->id);
  EXPECT_FLOAT_EQ((*c)[0].score, 1.0f);
  absl::StatusOr<RecordHandle> h = store->Get(kNs, want->id);
  ASSERT_TRUE(h.ok()) << h.status();
  ExpectSameRecord(**h, *want);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.disk.hits, 1);
  EXPECT_EQ(st.promotions, 1);
  EXPECT_EQ(st.memory.entries, 1);
  ASSERT_TRUE(store->Get(kNs, want->id).ok());
  EXPECT_EQ(store->Stats().memory.hits, 1);  // second Get served from memory
  EXPECT_EQ(store->Stats().disk.hits, 1);

  // Another tenant or model never sees it.
  const Namespace other{"tenant-b", kNs.model_fingerprint};
  EXPECT_EQ(store->Get(other, want->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->Lookup(other, FeaturesOf(3), 4)->empty());
  EXPECT_TRUE(store->Lookup({kNs.tenant, "1111111111111111"}, FeaturesOf(3), 4)->empty());
  EXPECT_EQ(store->List(&other).size(), 0u);
  EXPECT_EQ(store->List(&kNs).size(), 5u);

  ASSERT_TRUE(store->Delete(want->id).ok());
  EXPECT_FALSE(fs::exists(FileOf(want->id)));
  EXPECT_EQ(store->Get(kNs, want->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->List().size(), 4u);
  ASSERT_TRUE(store->Clear().ok());
  EXPECT_EQ(store->List().size(), 0u);
  EXPECT_EQ(CountFiles(), 0);
}

TEST_F(StoreDiskTest, CorruptAndTruncatedFilesAreSkippedAndCounted) {
  std::vector<RecordHandle> r;
  for (uint32_t s = 1; s <= 5; ++s) r.push_back(MakeRecord(s));
  {
    auto store = OpenStore();
    for (const RecordHandle& h : r) ASSERT_TRUE(store->Publish(h));
    store->Flush();
  }
  const auto edit = [](const std::string& path, auto&& f) {
    std::ifstream in(path, std::ios::binary);
    std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    f(b);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
  };
  edit(FileOf(r[0]->id), [](std::string& b) { b.resize(b.size() / 2); });     // truncated
  edit(FileOf(r[1]->id), [](std::string& b) { b[50] ^= 0x10; });              // header flip
  edit(FileOf(r[2]->id), [](std::string& b) { b[b.size() - 100] ^= 0x01; });  // KV flip
  fs::copy_file(FileOf(r[3]->id), dir_ + "/0123456789abcdef.ssref");          // misnamed
  std::ofstream(dir_ + "/00000000000000ff.ssref") << "not a record at all";   // foreign
  std::ofstream(dir_ + "/.tmp-00000000000000aa-1-1") << "interrupted write";  // leftover
  std::ofstream(dir_ + "/notes.txt") << "not ours: left alone";

  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.disk.entries, 3);  // r2 (KV damage is found on read), r3, r4
  EXPECT_EQ(st.disk.errors, 4);
  EXPECT_EQ(store->disk()->quarantined(), 4);
  EXPECT_EQ(CountFiles("/quarantine"), 4);
  EXPECT_FALSE(fs::exists(dir_ + "/.tmp-00000000000000aa-1-1"));
  EXPECT_TRUE(fs::exists(dir_ + "/notes.txt"));
  EXPECT_EQ(store->Get(kNs, r[0]->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Get(kNs, r[1]->id).status().code(), absl::StatusCode::kNotFound);

  absl::Status s = store->Get(kNs, r[2]->id).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("checksum"), std::string::npos) << s;
  st = store->Stats();
  EXPECT_EQ(st.disk.errors, 5);
  EXPECT_EQ(st.disk.entries, 2);
  EXPECT_EQ(st.memory.entries, 0) << "damaged data must never reach memory";
  EXPECT_FALSE(fs::exists(FileOf(r[2]->id)));
  EXPECT_EQ(CountFiles("/quarantine"), 5);
  for (int i : {3, 4}) {
    absl::StatusOr<RecordHandle> h = store->Get(kNs, r[i]->id);
    ASSERT_TRUE(h.ok()) << h.status();
    ExpectSameRecord(**h, *r[i]);
  }
}

TEST_F(StoreDiskTest, DiskBudgetEvictsLeastRecentlyUsed) {
  const int64_t file = static_cast<int64_t>(EncodeRecord(*MakeRecord(1))->size());
  absl::StatusOr<std::unique_ptr<DiskTier>> t = DiskTier::Open({dir_, 3 * file, {}});
  ASSERT_TRUE(t.ok()) << t.status();
  DiskTier& disk = **t;
  std::vector<RecordHandle> r;
  for (uint32_t s = 1; s <= 5; ++s) r.push_back(MakeRecord(s));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(disk.Put(r[i]).ok());
  ASSERT_TRUE(disk.Get(r[0]->id).ok());  // r0 is now more recent than r1
  ASSERT_TRUE(disk.Put(r[3]).ok());
  EXPECT_FALSE(fs::exists(disk.PathOf(r[1]->id)));
  EXPECT_EQ(disk.Get(r[1]->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(disk.Get(r[0]->id).ok());
  EXPECT_EQ(disk.Stats().evictions, 1);
  EXPECT_EQ(disk.Stats().bytes, 3 * file);
  EXPECT_EQ(CountFiles(), 3);
  EXPECT_EQ(disk.Put(MakeRecord(9, 3000)).code(), absl::StatusCode::kResourceExhausted);
  t->reset();
  // Reopened with a smaller budget: the scan keeps what fits.
  t = DiskTier::Open({dir_, file, {}});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->Stats().entries, 1);
  EXPECT_LE((*t)->Stats().bytes, file);
  EXPECT_EQ(CountFiles(), 1);
}

TEST_F(StoreDiskTest, FullPublishQueueDropsAndCounts) {
  auto store = OpenStore(/*queue=*/1);
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(store->Publish(nullptr));
  int accepted = 0;
  for (uint32_t s = 0; s < 200; ++s) accepted += store->Publish(MakeRecord(s, 64));
  store->Flush();
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.published, accepted);
  EXPECT_EQ(st.publish_dropped, 200 - accepted + 1);
  // Each disk write fsyncs a file and the directory (milliseconds) while an enqueue takes
  // microseconds, so a one-slot queue must overflow.
  EXPECT_GT(st.publish_dropped, 1);
  EXPECT_EQ(st.disk.entries, accepted);
}

}  // namespace
}  // namespace semshare::store
