// Record codec (cache_store/codec.h): records round-trip bit-exact, including trimmed layers,
// LSH codes and several 256-row KV chunks, and through engine References; every single-bit
// flip and every truncation is rejected; wrong magic, version and dtype, oversize and
// inconsistent fields give a Status naming the problem (header checksums are recomputed so the
// field checks themselves are exercised); random mutations never crash or allocate wildly
// (also under ASan + UBSan). Values are small integers / 8 so comparisons are exact.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cache_store/codec.h"
#include "cache_store/record.h"
#include "engine/reuse/token_matcher.h"
#include "tests/test_util.h"

namespace semshare::store {
namespace {

// A record with n tokens, `layers` layers of kv_dim; layer l keeps rows_of(l) rows (every
// other position when trimmed). Values are distinct small multiples of 1/8.
Record MakeRecord(int64_t n, int64_t layers, int64_t kv_dim, bool trim_last, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Record r;
  r.ns = {"tenant-x", "0123456789abcdef"};
  for (int64_t i = 0; i < n; ++i) r.ids.push_back(static_cast<int32_t>(rng() % 49152));
  r.id = RecordId(r.ns, r.ids);
  r.lsh = {8, 12, 0x5e5a4e2025ull, true, 10000.0f};
  for (int64_t i = 0; i < n * 8; ++i) r.codes.push_back(static_cast<uint32_t>(rng() % 4096));
  for (int64_t i = 0; i < 3 * n; ++i) r.features.push_back(rng());
  std::sort(r.features.begin(), r.features.end());
  r.features.erase(std::unique(r.features.begin(), r.features.end()), r.features.end());
  r.kv = engine::KvCache(layers, kv_dim);
  for (int64_t l = 0; l < layers; ++l) {
    engine::LayerKv& layer = r.kv.layer(l);
    const int step = (trim_last && l == layers - 1) ? 2 : 1;
    for (int64_t p = 0; p < n; p += step) {
      layer.pos.push_back(static_cast<int32_t>(p));
      for (int64_t d = 0; d < kv_dim; ++d) {
        layer.k.push_back(static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 8.0f);
        layer.v.push_back(static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 8.0f);
      }
    }
  }
  r.created_ms = 1700000000123;
  r.last_used_ms = 1700000000456;
  r.hit_count = 7;
  return r;
}

void ExpectSame(const Record& a, const Record& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.ns, b.ns);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.lsh, b.lsh);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.features, b.features);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.created_ms, b.created_ms);
  EXPECT_EQ(a.last_used_ms, b.last_used_ms);
  EXPECT_EQ(a.hit_count, b.hit_count);
  ASSERT_EQ(a.kv.n_layers(), b.kv.n_layers());
  EXPECT_EQ(a.kv.kv_dim(), b.kv.kv_dim());
  for (int64_t l = 0; l < a.kv.n_layers(); ++l) {
    EXPECT_EQ(a.kv.layer(l).pos, b.kv.layer(l).pos) << "layer " << l;
    EXPECT_EQ(a.kv.layer(l).k, b.kv.layer(l).k) << "layer " << l;
    EXPECT_EQ(a.kv.layer(l).v, b.kv.layer(l).v) << "layer " << l;
  }
}

// Offsets of header fields for the records above (layout in codec.h).
struct Layout {
  int64_t tenant_len = 40, n_tokens, n_layers, kv_dim, dtype, n_features, header_sum;
  explicit Layout(const Record& r, const std::string& bytes) {
    const int64_t t = static_cast<int64_t>(r.ns.tenant.size());
    const int64_t f = static_cast<int64_t>(r.ns.model_fingerprint.size());
    n_tokens = 48 + t + f;
    n_layers = n_tokens + 8;
    kv_dim = n_layers + 4;
    dtype = kv_dim + 4;
    n_features = dtype + 28;
    uint32_t header_len = 0;
    std::memcpy(&header_len, bytes.data() + 12, 4);
    header_sum = kRecordPreludeBytes + header_len;
  }
};

template <typename T>
void Patch(std::string* b, int64_t off, T v) {
  std::memcpy(b->data() + off, &v, sizeof(T));
}
void FixHeaderSum(std::string* b, const Layout& lay) {
  Patch<uint64_t>(b, lay.header_sum, XXH3_64bits(b->data(), static_cast<size_t>(lay.header_sum)));
}

TEST(StoreCodecTest, RoundTripIsBitExact) {
  for (bool trim : {false, true}) {
    const Record r = MakeRecord(600, 3, 12, trim, 1);  // 3 chunks per full layer
    absl::StatusOr<std::string> bytes = EncodeRecord(r);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    absl::StatusOr<Record> back = DecodeRecord(*bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSame(r, *back);
    EXPECT_EQ(back->ByteSize(), r.ByteSize());
    // Encoding is deterministic.
    EXPECT_EQ(*EncodeRecord(*back), *bytes);
    // The summary from the prefix a directory scan reads.
    absl::StatusOr<int64_t> need = SummaryPrefixBytes(bytes->substr(0, 10));
    ASSERT_TRUE(need.ok());
    EXPECT_EQ(*need, kRecordPreludeBytes);
    int64_t have = 0;
    for (int i = 0; i < 4 && have < *need; ++i) {
      have = *need;
      need = SummaryPrefixBytes(bytes->substr(0, have));
      ASSERT_TRUE(need.ok()) << need.status();
    }
    ASSERT_LE(*need, have);
    EXPECT_LT(have, static_cast<int64_t>(bytes->size()) / 4);  // the KV is not read
    absl::StatusOr<RecordSummary> sum =
        DecodeSummary(bytes->substr(0, have), static_cast<int64_t>(bytes->size()));
    ASSERT_TRUE(sum.ok()) << sum.status();
    EXPECT_EQ(sum->id, r.id);
    EXPECT_EQ(sum->ns, r.ns);
    EXPECT_EQ(sum->features, r.features);
    EXPECT_EQ(sum->ids, r.ids);  // the disk tier's exact-prefix index is rebuilt from them
    EXPECT_EQ(sum->n_tokens, 600);
    // A damaged id in the prefix is caught there (the index would otherwise hash wrong blocks).
    std::string bad_ids = bytes->substr(0, have);
    bad_ids[have - 8 - 4 * 300] ^= 1;  // inside the ids section, before its checksum
    EXPECT_EQ(DecodeSummary(bad_ids, static_cast<int64_t>(bytes->size())).status().code(),
              absl::StatusCode::kDataLoss);
    EXPECT_EQ(sum->total_len, static_cast<int64_t>(bytes->size()));
    // A file shorter than its header promises is caught from the prefix alone.
    absl::Status s = DecodeSummary(bytes->substr(0, have), bytes->size() - 1).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  }
  // Empty record (no tokens, no layers) round-trips too.
  Record empty;
  empty.id = RecordId(empty.ns, empty.ids);
  absl::StatusOr<Record> back = DecodeRecord(*EncodeRecord(empty));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(empty, *back);
}

TEST(StoreCodecTest, EveryBitFlipAndTruncationIsRejected) {
  const Record r = MakeRecord(300, 2, 4, true, 2);  // chunks of 256 + 44 rows, trimmed layer
  const std::string bytes = *EncodeRecord(r);
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
    absl::Status s = DecodeRecord(bad).status();
    ASSERT_FALSE(s.ok()) << "flip at byte " << i << " of " << bytes.size() << " accepted";
    ASSERT_TRUE(s.code() == absl::StatusCode::kDataLoss ||
                s.code() == absl::StatusCode::kInvalidArgument)
        << s;
  }
  for (size_t len = 0; len < bytes.size(); ++len) {
    absl::Status s = DecodeRecord(std::string_view(bytes).substr(0, len)).status();
    ASSERT_FALSE(s.ok()) << "truncation to " << len << " accepted";
  }
  EXPECT_EQ(DecodeRecord(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
  absl::Status s = DecodeRecord(bytes.substr(0, bytes.size() - 10)).status();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s;
}

TEST(StoreCodecTest, ForeignAndUnsupportedFilesAreNamed) {
  const Record r = MakeRecord(40, 2, 4, false, 3);
  const std::string bytes = *EncodeRecord(r);
  const Layout lay(r, bytes);
  const auto expect = [](const std::string& b, absl::StatusCode code, const std::string& words) {
    absl::Status s = DecodeRecord(b).status();
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(words), std::string::npos) << s;
  };
  std::string b = bytes;
  b[0] = 'X';
  expect(b, absl::StatusCode::kInvalidArgument, "magic");
  b = bytes;
  Patch<uint32_t>(&b, 8, 2);
  expect(b, absl::StatusCode::kInvalidArgument, "version 2");
  for (uint8_t dtype : {0, 2, 3, 200}) {
    b = bytes;
    Patch<uint8_t>(&b, lay.dtype, dtype);
    FixHeaderSum(&b, lay);
    expect(b, absl::StatusCode::kInvalidArgument, "dtype");
  }
  b = bytes;
  Patch<uint64_t>(&b, lay.n_tokens, uint64_t{1} << 40);
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kInvalidArgument, "tokens exceeds");
  b = bytes;
  Patch<uint32_t>(&b, lay.n_layers, 100000);
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kInvalidArgument, "layers exceeds");
  b = bytes;
  Patch<uint32_t>(&b, lay.kv_dim, 1u << 30);
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kInvalidArgument, "kv_dim");
  b = bytes;
  Patch<uint64_t>(&b, lay.n_features, ~uint64_t{0});
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kInvalidArgument, "features exceeds");
  b = bytes;
  Patch<uint32_t>(&b, lay.tenant_len, 0xFFFFFFFFu);
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kDataLoss, "shorter than its fields");
  b = bytes;
  Patch<uint32_t>(&b, 12, 0xFFFFFFF0u);  // header_len
  expect(b, absl::StatusCode::kInvalidArgument, "exceeds the limit");
  // Fields within limits that disagree with the size: total_len no longer adds up.
  b = bytes;
  Patch<uint64_t>(&b, lay.n_tokens, 41);
  FixHeaderSum(&b, lay);
  expect(b, absl::StatusCode::kDataLoss, "inconsistent");
  // Valid checksums over content that breaks an invariant: unsorted features.
  b = bytes;
  const int64_t feat = lay.header_sum + 8;
  uint64_t f0, f1;
  std::memcpy(&f0, b.data() + feat, 8);
  std::memcpy(&f1, b.data() + feat + 8, 8);
  Patch(&b, feat, f1);
  Patch(&b, feat + 8, f0);
  const int64_t feat_end = feat + 8 * static_cast<int64_t>(r.features.size());
  Patch<uint64_t>(&b, feat_end, XXH3_64bits(b.data() + feat, static_cast<size_t>(feat_end - feat)));
  expect(b, absl::StatusCode::kDataLoss, "features are not sorted");
  expect("", absl::StatusCode::kDataLoss, "truncated");
}

TEST(StoreCodecTest, EncoderRejectsInvalidRecords) {
  Record r = MakeRecord(20, 2, 4, false, 4);
  r.dtype = static_cast<KvDtype>(7);
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRecord(20, 2, 4, false, 4);
  r.kv.layer(1).k.pop_back();
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRecord(20, 2, 4, false, 4);
  r.codes.pop_back();
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRecord(20, 2, 4, false, 4);
  std::swap(r.kv.layer(0).pos[3], r.kv.layer(0).pos[4]);
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRecord(20, 2, 4, false, 4);
  r.ns.tenant.assign(5000, 't');
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StoreCodecTest, RandomMutationsNeverCrash) {
  const std::string bytes = *EncodeRecord(MakeRecord(300, 2, 4, false, 5));
  std::mt19937_64 rng(6);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = bytes;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t i = rng() % b.size();
      b[i] = static_cast<char>(b[i] ^ (1 + rng() % 255));
    }
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    absl::StatusOr<Record> got = DecodeRecord(b);
    EXPECT_FALSE(got.ok()) << "mutation " << iter << " accepted";
    (void)SummaryPrefixBytes(b);
    (void)DecodeSummary(b, static_cast<int64_t>(b.size()));
  }
}

TEST(StoreCodecTest, EngineReferenceRoundTrip) {
  const engine::Matrix embd = semshare::testing::RandomMatrix(97, 32, 11, 1.0f);
  engine::ReuseConfig cfg;
  const engine::TokenMatcher matcher(embd, cfg);
  engine::Reference ref;
  for (int i = 0; i < 300; ++i) ref.ids.push_back((i * 7) % 97);
  ref.kv = engine::KvCache(2, 8);
  for (int64_t l = 0; l < 2; ++l) {
    for (int p = 0; p < 300; ++p) {
      ref.kv.layer(l).pos.push_back(p);
      for (int d = 0; d < 8; ++d) {
        ref.kv.layer(l).k.push_back(static_cast<float>(p + d + l));
        ref.kv.layer(l).v.push_back(static_cast<float>(p - d - l));
      }
    }
  }
  ref.sketch = matcher.Sketch(ref.ids);
  const engine::KvCache kv_copy = ref.kv.Copy();
  const std::vector<int32_t> ids = ref.ids;
  const std::vector<uint32_t> codes = ref.sketch.codes;
  const Namespace ns{"t", "fp"};
  absl::StatusOr<Record> rec = RecordFromReference(ns, std::move(ref), cfg, {9, 3, 3, 5});
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->id, RecordId(ns, ids));
  EXPECT_EQ(rec->features, (std::vector<uint64_t>{3, 5, 9}));
  EXPECT_EQ(rec->codes, codes);
  absl::StatusOr<Record> back = DecodeRecord(*EncodeRecord(*rec));
  ASSERT_TRUE(back.ok()) << back.status();
  absl::StatusOr<engine::Reference> out = ReferenceFromRecord(*back, matcher, cfg);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->ids, ids);
  EXPECT_EQ(out->sketch.codes, codes);
  EXPECT_EQ(out->sketch.n, 300);
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_EQ(out->kv.layer(l).k, kv_copy.layer(l).k);
    EXPECT_EQ(out->kv.layer(l).v, kv_copy.layer(l).v);
    EXPECT_EQ(out->kv.layer(l).pos, kv_copy.layer(l).pos);
  }
  // Another embedding table under the same LSH parameters: the stored codes disagree.
  const engine::Matrix other = semshare::testing::RandomMatrix(97, 32, 12, 1.0f);
  const engine::TokenMatcher other_matcher(other, cfg);
  EXPECT_EQ(ReferenceFromRecord(*back, other_matcher, cfg).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A trimmed reference is not a reference.
  engine::Reference trimmed;
  trimmed.ids = {1, 2, 3};
  trimmed.kv = engine::KvCache(1, 2);
  trimmed.kv.layer(0).pos = {0, 2};
  trimmed.kv.layer(0).k = {1, 2, 3, 4};
  trimmed.kv.layer(0).v = {1, 2, 3, 4};
  EXPECT_EQ(RecordFromReference(ns, std::move(trimmed), cfg, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace semshare::store
