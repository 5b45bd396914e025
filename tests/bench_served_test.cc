// The served path of `semshare bench --suite reuse` (tools/bench_reuse_hits.h) on the default
// model and the shipped corpus: the hit each pair kind gets from the server's rule
// (serving::HitRule through a real in-memory store), and the exact/hybrid prefill's logits
// against a full prefill's. No timings are asserted.
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/reuse/reuse_prefill.h"
#include "gtest/gtest.h"
#include "serving/pipeline.h"
#include "tests/test_util.h"
#include "tools/bench_pairs.h"
#include "tools/bench_reuse_hits.h"

namespace semshare::tools {
namespace {

using semshare::testing::kGemmOrderRelBound;
using semshare::testing::MaxRelDiff;
using serving::HitKind;

class ServedPathTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    model_ = semshare::testing::DefaultModel(&error);
    ASSERT_NE(model_, nullptr) << error;
    const char* src = std::getenv("SEMSHARE_SOURCE_DIR");
    ASSERT_NE(src, nullptr) << "SEMSHARE_SOURCE_DIR is not set (ctest sets it)";
    auto corpus = LoadMrpc(absl::StrCat(src, "/data/paraphrase/paraphrase_pairs.txt"));
    ASSERT_TRUE(corpus.ok()) << corpus.status();
    corpus_ = new std::vector<MrpcPair>(*std::move(corpus));
  }

  void SetUp() override {
    ASSERT_NE(model_, nullptr);
    generator_ = std::make_unique<engine::Generator>(*model_, backend_);
    prefiller_ =
        std::make_unique<engine::ReusePrefiller>(*model_, backend_, Options().serving.reuse);
  }

  // The server's defaults but for the prefill chunk: 8 tokens, so that the remainder after a
  // copied prefix takes several chunks.
  static ServedOptions Options() {
    ServedOptions o;
    o.serving.reuse.min_reuse_tokens = 960;  // the server's --min-reuse-tokens default
    o.chunk = 8;
    return o;
  }

  std::vector<int32_t> Encode(const std::string& text) const {
    return generator_->TokenizePrompt(text);
  }

  engine::Reference Reference(std::span<const int32_t> ids) {
    auto ref = prefiller_->MakeReference(ids);
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? *std::move(ref) : engine::Reference{};
  }

  std::vector<float> FullLogits(std::span<const int32_t> ids) {
    std::vector<float> logits(model_->config.vocab_size);
    engine::KvCache cache = prefiller_->forward().NewCache();
    std::vector<int32_t> pos(ids.size());
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i);
    EXPECT_TRUE(prefiller_->forward().Forward(ids, pos, cache, logits.data()).ok());
    return logits;
  }

  static const engine::Model* model_;
  static std::vector<MrpcPair>* corpus_;
  engine::CpuBackend backend_;
  std::unique_ptr<engine::Generator> generator_;
  std::unique_ptr<engine::ReusePrefiller> prefiller_;
};

const engine::Model* ServedPathTest::model_ = nullptr;
std::vector<MrpcPair>* ServedPathTest::corpus_ = nullptr;

// The next turn of a 512-token conversation extends the stored turn (prompt + answer): an exact
// prefix covering >= 90% of the prompt, copied, and the remainder computed in chunks gives the
// logits of a full prefill.
TEST_F(ServedPathTest, ChatTurnIsHybridAndMatchesFullPrefill) {
  PairOptions po;
  po.target_tokens = 512;
  po.pairs = 1;
  const ChatCounter count = [&](std::span<const engine::ChatMessage> m) -> absl::StatusOr<int64_t> {
    auto ids = generator_->TokenizeChat(m);
    if (!ids.ok()) return ids.status();
    return static_cast<int64_t>(ids->size());
  };
  auto pairs = BuildChatPairs(*corpus_, po, count);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  const PromptPair& p = pairs->front();
  // The stored turn: its prompt and the answer's tokens (the stand-in answer, as generated).
  auto prompt = generator_->TokenizeChat(p.reference_messages);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  std::vector<int32_t> ref_ids = *prompt;
  const std::vector<int32_t> answer = model_->tokenizer->Encode(p.answer, false);
  ref_ids.insert(ref_ids.end(), answer.begin(), answer.end());
  auto target = generator_->TokenizeChat(ChatTargetMessages(p, p.answer));
  ASSERT_TRUE(target.ok()) << target.status();
  const int64_t n = static_cast<int64_t>(target->size());
  EXPECT_LE(n, 512);
  EXPECT_GT(n, 400);

  auto served = ServedPath::Create(*model_, Options());
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_TRUE((*served)->Hold(Reference(ref_ids)).ok());
  auto d = (*served)->Decide(*target);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->hit.kind, HitKind::kHybrid) << serving::HitKindName(d->hit.kind);
  EXPECT_EQ(d->prefix_tokens, static_cast<int64_t>(ref_ids.size()))
      << "the whole stored turn is a prefix of the next";
  EXPECT_EQ(d->hit.exact_rows, d->prefix_tokens);
  EXPECT_GE(10 * d->hit.exact_rows, 9 * n) << d->hit.exact_rows << " of " << n;
  EXPECT_FALSE(d->semantic_lookup) << "the exact prefix covers most: no semantic lookup";
  ASSERT_NE(d->record, nullptr);

  std::vector<float> logits(model_->config.vocab_size);
  auto pre = (*served)->Prefill(*d, *target, logits.data());
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_EQ(pre->stats.reused_tokens, d->hit.exact_rows);
  EXPECT_EQ(pre->stats.recomputed_tokens, n - d->hit.exact_rows);
  EXPECT_EQ(pre->kv.rows(), n);
  // Copied rows are what a full prefill computes (causality); the rest differs by GEMM
  // summation order only.
  EXPECT_LE(MaxRelDiff(logits, FullLogits(*target)), kGemmOrderRelBound);
}

// A paraphrase shares only the instruction (under one block): never an exact or hybrid hit;
// at 512 tokens the semantic gate (960) is not reached either, so it misses. The repeated
// reference is exact: every row but the last copied.
TEST_F(ServedPathTest, ParaphraseIsNotExactAndRepeatIs) {
  PairOptions po;
  po.target_tokens = 512;
  po.pairs = 1;
  const TokenCounter count = [&](std::string_view t) {
    return static_cast<int64_t>(Encode(std::string(t)).size());
  };
  auto pairs = BuildParaphrasePairs(*corpus_, po, count);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  const std::vector<int32_t> ref_ids = Encode(pairs->front().reference);
  const std::vector<int32_t> ids = Encode(pairs->front().target);
  auto served = ServedPath::Create(*model_, Options());
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_TRUE((*served)->Hold(Reference(ref_ids)).ok());

  auto d = (*served)->Decide(ids);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_NE(d->hit.kind, HitKind::kExact);
  EXPECT_NE(d->hit.kind, HitKind::kHybrid);
  EXPECT_LT(d->prefix_tokens, store::kPrefixBlockTokens);
  EXPECT_EQ(d->hit.kind, HitKind::kMiss) << "512 tokens < the semantic gate";
  EXPECT_FALSE(d->semantic_lookup);

  // With the gate at 64 the same pair is looked up semantically (a hit or a miss by threshold,
  // never exact).
  ServedOptions low = Options();
  low.serving.reuse.min_reuse_tokens = 64;
  auto served_low = ServedPath::Create(*model_, low);
  ASSERT_TRUE(served_low.ok());
  ASSERT_TRUE((*served_low)->Hold(Reference(ref_ids)).ok());
  auto dl = (*served_low)->Decide(ids);
  ASSERT_TRUE(dl.ok()) << dl.status();
  EXPECT_TRUE(dl->semantic_lookup);
  EXPECT_EQ(dl->candidates, 1);
  EXPECT_GT(dl->similarity, 0.0f);
  EXPECT_TRUE(dl->hit.kind == HitKind::kSemantic || dl->hit.kind == HitKind::kMiss);

  auto r = (*served)->Decide(ref_ids);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->hit.kind, HitKind::kExact);
  EXPECT_EQ(r->hit.exact_rows, static_cast<int64_t>(ref_ids.size()) - 1);
  std::vector<float> logits(model_->config.vocab_size);
  auto pre = (*served)->Prefill(*r, ref_ids, logits.data());
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_EQ(pre->stats.recomputed_tokens, 1);
  EXPECT_LE(MaxRelDiff(logits, FullLogits(ref_ids)), kGemmOrderRelBound);
}

// HitRule::Decide's classes from its inputs alone.
TEST(HitRuleTest, DecideClassifiesExactHybridSemanticMiss) {
  using serving::HitRule;
  EXPECT_EQ(HitRule::Decide(100, 0, false).kind, HitKind::kMiss);
  EXPECT_EQ(HitRule::Decide(100, 100, false).kind, HitKind::kExact);
  EXPECT_EQ(HitRule::Decide(100, 100, false).exact_rows, 99);
  EXPECT_EQ(HitRule::Decide(100, 99, false).kind, HitKind::kExact);
  EXPECT_EQ(HitRule::Decide(100, 98, false).kind, HitKind::kHybrid);
  EXPECT_EQ(HitRule::Decide(100, 98, false).exact_rows, 98);
  EXPECT_EQ(HitRule::Decide(100, 32, true).kind, HitKind::kSemantic);
  EXPECT_EQ(HitRule::Decide(100, 32, true).exact_rows, 0);
  EXPECT_STREQ(serving::HitKindName(HitKind::kHybrid), "hybrid");
}

}  // namespace
}  // namespace semshare::tools
