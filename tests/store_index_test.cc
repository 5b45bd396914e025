// Prompt-level MinHash-LSH index (cache_store/lsh_index.h, prompt_features.h) on real text:
// MRPC paraphrase pairs ($SEMSHARE_SOURCE_DIR/../shared/data/paraphrase), tokenized with the
// default model ($SEMSHARE_MODEL), whose embedding table also gives the SimHash bucket features.
//
// A true reference = the first sentences of kGroup consecutive label-1 pairs inside a fixed
// chat instruction; its target = the second sentences of the same pairs inside the same
// instruction. 10,000 distractor references are kGroup sentences drawn at random from the whole
// corpus (both columns, every label), never two from the same true group, in random order. The
// true reference must be among the top kTopK candidates for >= 95% of targets (the bar),
// also with the target's sentences reversed (features are position-free), while each query
// scores only a fraction of the index (sublinear work). Also: namespace isolation, determinism,
// empty sets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cache_store/lsh_index.h"
#include "cache_store/prompt_features.h"
#include "engine/model.h"
#include "tests/test_util.h"

namespace semshare::store {
namespace {

constexpr int kGroup = 4;  // sentences per reference / target
constexpr int kTopK = 4;   // candidates the store hands to the token matcher
constexpr int kDistractors = 10000;

using Pair = semshare::testing::MrpcPair;
using semshare::testing::ReadMrpc;

std::string Wrap(const std::vector<std::string>& sentences) {
  return "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
         "Summarize the following news sentences in one short paragraph.\n\n" +
         absl::StrJoin(sentences, "\n") + "<|im_end|>\n<|im_start|>assistant\n";
}

class StoreIndexTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    error_ = new std::string;
    const std::string path = semshare::testing::DefaultModelPath();
    if (path.empty()) {
      *error_ = "SEMSHARE_MODEL is not set: point it at the default model (scripts/test sets it)";
      return;
    }
    auto m = engine::LoadModel(path);
    if (!m.ok()) {
      *error_ = m.status().ToString();
      return;
    }
    model_ = std::move(*m).release();
    pairs_ = new std::vector<Pair>(ReadMrpc(error_));
    if (error_->empty() && pairs_->size() < 4000) *error_ = "MRPC file has too few pairs";
    matcher_ = MakeFeatureMatcher(model_->weights.tok_embd, engine::ReuseConfig{}).release();
  }
  static void TearDownTestSuite() {
    delete matcher_;
    delete model_;
    delete pairs_;
    delete error_;
  }
  void SetUp() override { ASSERT_TRUE(error_->empty()) << *error_; }

  static std::vector<uint64_t> Features(const std::vector<std::string>& sentences) {
    const std::vector<int32_t> ids = model_->tokenizer->Encode(Wrap(sentences), true);
    return PromptFeatures(ids, *matcher_);
  }

  static engine::Model* model_;
  static std::vector<Pair>* pairs_;
  static std::string* error_;
  static engine::TokenMatcher* matcher_;
};
engine::Model* StoreIndexTest::model_ = nullptr;
std::vector<Pair>* StoreIndexTest::pairs_ = nullptr;
std::string* StoreIndexTest::error_ = nullptr;
engine::TokenMatcher* StoreIndexTest::matcher_ = nullptr;

TEST_F(StoreIndexTest, TrueReferenceInTopKAmongTenThousandDistractors) {
  // True groups: kGroup consecutive label-1 pairs each.
  std::vector<std::vector<const Pair*>> groups;
  std::vector<int> group_of(pairs_->size(), -1);
  std::vector<const Pair*> cur;
  for (size_t i = 0; i < pairs_->size(); ++i) {
    if ((*pairs_)[i].label != 1) continue;
    cur.push_back(&(*pairs_)[i]);
    group_of[i] = static_cast<int>(groups.size());
    if (cur.size() == kGroup) {
      groups.push_back(cur);
      cur.clear();
    }
  }
  for (size_t i = 0; i < pairs_->size(); ++i) {
    if (group_of[i] == static_cast<int>(groups.size())) group_of[i] = -1;  // incomplete tail
  }
  ASSERT_GE(groups.size(), 600u);

  const Namespace ns{"tenant-a", model_->fingerprint};
  LshIndex index(IndexConfig{});
  const MinHasher& hasher = index.hasher();
  // Ids: true reference g is g; distractor d is 1'000'000 + d.
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::string> s;
    for (const Pair* p : groups[g]) s.push_back(p->first);
    index.Insert(g, ns, hasher.Compute(Features(s)));
  }
  std::mt19937_64 rng(20250101);
  std::uniform_int_distribution<size_t> pick(0, pairs_->size() - 1);
  for (int d = 0; d < kDistractors; ++d) {
    std::vector<std::string> s;
    std::vector<int> used;
    while (static_cast<int>(s.size()) < kGroup) {
      const size_t i = pick(rng);
      const int g = group_of[i];
      if (g >= 0 && std::find(used.begin(), used.end(), g) != used.end()) continue;
      used.push_back(g);
      s.push_back(rng() % 2 ? (*pairs_)[i].first : (*pairs_)[i].second);
    }
    index.Insert(1000000 + d, ns, hasher.Compute(Features(s)));
  }
  ASSERT_EQ(index.size(), groups.size() + kDistractors);

  int found = 0, found_reversed = 0;
  int64_t scored_total = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::string> s;
    for (const Pair* p : groups[g]) s.push_back(p->second);
    int64_t scored = 0;
    const std::vector<Candidate> top = index.Query(ns, hasher.Compute(Features(s)), kTopK, &scored);
    scored_total += scored;
    ASSERT_LE(top.size(), static_cast<size_t>(kTopK));
    for (size_t i = 1; i < top.size(); ++i) EXPECT_FALSE(CandidateBetter(top[i], top[i - 1]));
    found += std::any_of(top.begin(), top.end(), [&](const Candidate& c) { return c.id == g; });
    std::reverse(s.begin(), s.end());
    const std::vector<Candidate> rev = index.Query(ns, hasher.Compute(Features(s)), kTopK);
    found_reversed +=
        std::any_of(rev.begin(), rev.end(), [&](const Candidate& c) { return c.id == g; });
  }
  const double n = static_cast<double>(groups.size());
  const double mean_scored = static_cast<double>(scored_total) / n;
  std::printf("targets %zu, index %zu: recall@%d %.4f (reversed %.4f), mean scored %.1f\n",
              groups.size(), index.size(), kTopK, found / n, found_reversed / n, mean_scored);
  EXPECT_GE(found / n, 0.95);
  EXPECT_GE(found_reversed / n, 0.95);
  // Sublinear work: a query scores only the records that share a band with it (~5% here with
  // the defaults; 10% leaves room for a different seed without hiding a scan of everything).
  EXPECT_LT(mean_scored, 0.10 * static_cast<double>(index.size()));
}

TEST_F(StoreIndexTest, NamespacesAreIsolatedAndResultsDeterministic) {
  const std::vector<std::string> s = {(*pairs_)[0].first, (*pairs_)[1].first};
  const Signature sig = MinHasher(IndexConfig{}).Compute(Features(s));
  LshIndex index(IndexConfig{});
  const Namespace a{"tenant-a", model_->fingerprint}, b{"tenant-b", model_->fingerprint};
  const Namespace other_model{"tenant-a", "0000000000000000"};
  index.Insert(1, a, sig);
  index.Insert(2, b, sig);
  std::vector<Candidate> got = index.Query(a, sig, 4);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 1u);
  EXPECT_FLOAT_EQ(got[0].score, 1.0f);
  EXPECT_EQ(got[0].bands, IndexConfig{}.bands);
  got = index.Query(b, sig, 4);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 2u);
  EXPECT_TRUE(index.Query(other_model, sig, 4).empty());
  // Same seed, same signature; erase removes every bucket entry.
  EXPECT_EQ(MinHasher(IndexConfig{}).Compute(Features(s)), sig);
  EXPECT_TRUE(index.Erase(1));
  EXPECT_FALSE(index.Erase(1));
  EXPECT_TRUE(index.Query(a, sig, 4).empty());
  // Empty feature sets never collide.
  index.Insert(3, a, Signature{});
  EXPECT_TRUE(index.Query(a, Signature{}, 4).empty());
  EXPECT_TRUE(index.Query(a, sig, 0).empty());
}

TEST_F(StoreIndexTest, FeaturesArePositionFree) {
  const std::vector<int32_t> ids = model_->tokenizer->Encode((*pairs_)[2].first, false);
  ASSERT_GT(ids.size(), 8u);
  std::vector<int32_t> shifted(5, ids[0]);  // a prefix that only repeats a present token
  shifted.insert(shifted.end(), ids.rbegin(), ids.rend());
  EXPECT_EQ(PromptFeatures(ids, *matcher_), PromptFeatures(shifted, *matcher_));
  const std::vector<uint64_t> f = PromptFeatures(ids, *matcher_);
  EXPECT_TRUE(std::is_sorted(f.begin(), f.end()));
  EXPECT_EQ(std::adjacent_find(f.begin(), f.end()), f.end());
  const int bands = engine::ReuseConfig{}.lsh_bands;
  EXPECT_LE(f.size(), ids.size() * (bands + 1));
  EXPECT_GT(f.size(), static_cast<size_t>(bands));  // bucket features present
  EXPECT_TRUE(PromptFeatures({}, *matcher_).empty());
}

}  // namespace
}  // namespace semshare::store
