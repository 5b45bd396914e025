// The engine loop (serving/engine_loop.h) driving the GPU through CudaBatchRunner, as the server
// does with --backend cuda: a random-weight model (tests/cuda/cuda_model_util.h) with a
// byte-level tokenizer (256 byte tokens, no merges) so that the loop's TokenStream can decode.
//  - 16 concurrent requests of mixed lengths (prompts chunked across iterations beside decode
//    rows), an exact-prefix hit (its rows uploaded into the pages: CopyPrefix on the device), a
//    semantic hit (the selective prefill's rows adopted into the pages), max_tokens 1, two
//    cancelled mid-decode and a prefill-only request whose KV comes back: every request ends as
//    asked, the hits report their reuse, the KV handed back matches the CPU's within the bf16
//    bound, and the KV held returns to 0.
//  - 64 requests against a KV budget of 4 sequences all finish, some preempted and recomputed.
// Token ids are not compared with the CPU's here: without teacher forcing one near tie flipped
// by bf16 rounding changes the rest of a request (tests/cuda/cuda_batch_test.cc compares the
// batched forward's logits and greedy tokens step by step instead).
#include <gtest/gtest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cache_store/prompt_features.h"
#include "cache_store/record.h"
#include "engine/backend_factory.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode_utf8.h"
#include "nlohmann/json.hpp"
#include "serving/batch_runner.h"
#include "serving/engine_loop.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/loop_results.h"

namespace semshare::testing {
namespace {

// The defaults but the paper's schedule alone: these prompts are a few hundred tokens at most,
// which the default recompute floor (ReuseConfig::recompute_min_tokens, 192) would recompute
// whole at every layer, leaving no selective path to check.
engine::ReuseConfig LoopReuse() {
  engine::ReuseConfig c;
  c.recompute_min_tokens = 0;
  return c;
}

using serving::LoopRequest;
using serving::LoopResult;

// SmallLlama with a 256-token vocabulary and a byte-level BPE tokenizer over it.
std::unique_ptr<engine::Model> ByteModel(uint64_t seed) {
  auto m = SmallLlama(seed);
  m->config.vocab_size = 256;
  RandomWeights(*m, seed, 0.08f);
  nlohmann::json vocab = nlohmann::json::object();
  const auto& alphabet = engine::utf8::ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab[std::string(alphabet.CharOf(static_cast<uint8_t>(b)))] = b;
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
  };
  auto t = engine::Tokenizer::FromHfJson(tok.dump(), "");
  EXPECT_TRUE(t.ok()) << t.status();
  if (t.ok()) m->tokenizer = *std::move(t);
  m->fingerprint = "cuda-loop-test";
  return m;
}

engine::GenerateOptions Greedy(int32_t max_tokens) {
  engine::GenerateOptions o;
  o.max_tokens = max_tokens;
  o.stop_at_eog = false;  // every request runs its full length
  return o;
}

using Results = LoopResults;

// The fixture's model (host only: runs without a device): its tokenizer maps token b to byte b.
TEST(CudaLoopModel, ByteTokenizerCoversTheVocabulary) {
  const auto m = ByteModel(7);
  ASSERT_NE(m->tokenizer, nullptr);
  EXPECT_EQ(m->tokenizer->vocab_size(), m->config.vocab_size);
  const std::vector<int32_t> hi = {104, 105, 32, 255};
  EXPECT_EQ(m->tokenizer->Decode(hi), std::string("hi \xff"));
  EXPECT_EQ(m->tokenizer->Encode("hi ", false), std::vector<int32_t>({104, 105, 32}));
}

class CudaLoopTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    model_ = ByteModel(seed_);
    ASSERT_NE(model_->tokenizer, nullptr);
    auto rt = engine::MakeServingRuntime("cuda", *model_, LoopReuse(), {});
    ASSERT_TRUE(rt.ok()) << rt.status();
    runtime_ = *std::move(rt);
  }
  void TearDown() override {
    runtime_.reset();
    GpuTest::TearDown();
  }

  std::unique_ptr<serving::EngineLoop> NewLoop(serving::LoopOptions o) {
    auto runner = serving::NewCudaBatchRunner(*model_, *runtime_, &o.kv_cache_bytes,
                                              o.max_batch_tokens, o.max_num_seqs);
    EXPECT_TRUE(runner.ok()) << runner.status();
    if (!runner.ok()) return nullptr;
    return std::make_unique<serving::EngineLoop>(*std::move(runner), o, nullptr);
  }

  // A store record of `ids` computed on the CPU (as a published miss).
  store::RecordHandle Reference(const std::vector<int32_t>& ids) const {
    engine::CpuBackend be;
    engine::ReusePrefiller p(*model_, be, LoopReuse());
    auto ref = p.MakeReference(ids);
    EXPECT_TRUE(ref.ok()) << ref.status();
    auto rec = store::RecordFromReference(store::Namespace{"t", model_->fingerprint},
                                          *std::move(ref), LoopReuse(), store::PromptFeatures(ids));
    EXPECT_TRUE(rec.ok()) << rec.status();
    return std::make_shared<const store::Record>(*std::move(rec));
  }

  engine::TokenMatch Match(const std::vector<int32_t>& ids, const store::Record& ref) const {
    engine::CpuBackend be;
    engine::ReusePrefiller p(*model_, be, LoopReuse());
    return p.Match(p.Sketch(ids), p.Sketch(ref.ids));
  }

  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::ServingRuntime> runtime_;
};

TEST_F(CudaLoopTest, SixteenRequestsWithHitsAndCancellationsEndAsAsked) {
  const int64_t vocab = model_->config.vocab_size;
  struct Case {
    std::vector<int32_t> ids{};
    engine::GenerateOptions opt{};
    store::RecordHandle ref{};
    engine::ReusePlan plan{};  // what serving::PlanHit makes (kNone without a reference)
    bool cancel = false;
    bool prefill_only = false;
  };
  std::vector<Case> cases;
  const int lengths[] = {9, 30, 61, 100, 140, 17, 80, 120, 45, 210};
  for (int i = 0; i < 10; ++i) {
    cases.push_back({RandomIds(lengths[i], vocab, seed_ + i), Greedy(5 + i)});
  }
  cases[3].opt.max_tokens = 1;  // the prefill's logits alone
  // An exact prefix: the reference's 150 tokens then 20 more (rows copied, the rest prefilled).
  const std::vector<int32_t> ref_ids = RandomIds(150, vocab, seed_ + 100);
  const store::RecordHandle ref = Reference(ref_ids);
  std::vector<int32_t> extended = ref_ids;
  for (int32_t t : RandomIds(20, vocab, seed_ + 101)) extended.push_back(t);
  cases.push_back({extended, Greedy(8), ref,
                   engine::PlanPrefixCopy(static_cast<int64_t>(extended.size()),
                                          static_cast<int64_t>(ref_ids.size()), LoopReuse())});
  // A semantic hit: the reference edited (a span moved, ~10% replaced).
  const std::vector<int32_t> edited = EditedIds(ref_ids, vocab, seed_ + 102);
  cases.push_back({edited, Greedy(8), ref,
                   engine::PlanReuse(edited, ref_ids, Match(edited, *ref), LoopReuse())});
  // Two cancelled mid-decode.
  cases.push_back({RandomIds(12, vocab, seed_ + 103), Greedy(200), {}, {}, true});
  cases.push_back({RandomIds(20, vocab, seed_ + 104), Greedy(200), {}, {}, true});
  // A prefill-only request whose KV comes back (AddReference's path through the loop).
  const std::vector<int32_t> add_ids = RandomIds(70, vocab, seed_ + 105);
  cases.push_back({add_ids, Greedy(1), {}, {}, false, true});
  cases.push_back({RandomIds(33, vocab, seed_ + 106), Greedy(12)});
  ASSERT_EQ(cases.size(), 16u);

  serving::LoopOptions lo;
  lo.max_batch_tokens = 64;  // long prompts take several iterations beside the decodes
  lo.max_num_seqs = 16;
  lo.kv_cache_bytes = int64_t{64} << 20;
  std::unique_ptr<serving::EngineLoop> loop = NewLoop(lo);
  ASSERT_NE(loop, nullptr);
  EXPECT_EQ(loop->runner().backend(), "cuda");
  Results results(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    auto r = std::make_unique<LoopRequest>();
    r->ids = cases[i].ids;
    r->options = cases[i].opt;
    r->reference = cases[i].ref;
    r->plan = cases[i].plan;
    r->prefill_only = cases[i].prefill_only;
    r->keep_kv = cases[i].prefill_only;
    if (cases[i].cancel) {
      // True from its 40th check on: the loop checks once per iteration, and every prompt here
      // is prefilled within ~25 iterations of 64 rows, so this lands mid-decode of 200 tokens.
      r->cancelled = [n = 0]() mutable { return ++n >= 40; };
    }
    r->done = results.Slot(i);
    ASSERT_TRUE(loop->Submit(std::move(r)).ok());
  }
  ASSERT_TRUE(results.Wait(static_cast<int>(cases.size())));
  ASSERT_TRUE(loop->WaitIdle(60000));
  const serving::LoopStats stats = loop->Stats();
  EXPECT_EQ(stats.kv_bytes, 0);
  EXPECT_EQ(stats.running, 0);
  EXPECT_GT(stats.iterations, 10);

  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(::testing::Message()
                 << "request " << i << " (" << cases[i].ids.size() << " tokens)");
    if (cases[i].cancel) {
      ASSERT_FALSE(results.out[i].ok());
      EXPECT_EQ(results.out[i].status().code(), absl::StatusCode::kCancelled);
      continue;
    }
    ASSERT_TRUE(results.out[i].ok()) << results.out[i].status();
    const LoopResult& r = *results.out[i];
    EXPECT_EQ(r.hit, cases[i].ref != nullptr);
    EXPECT_GT(r.kv_bytes, 0);
    if (cases[i].prefill_only) continue;
    EXPECT_EQ(static_cast<int32_t>(r.gen.tokens.size()), cases[i].opt.max_tokens);
    for (int32_t t : r.gen.tokens) EXPECT_TRUE(t >= 0 && t < vocab);
  }
  // The exact prefix was copied into the pages, not recomputed; the semantic hit reused rows.
  EXPECT_EQ(results.out[10]->copied_rows, static_cast<int64_t>(ref_ids.size()));
  EXPECT_GT(results.out[11]->prefill.reused_tokens, 0);
  // The prefill-only request's KV: every prompt row, within the bf16 bound of the CPU's.
  const engine::KvCache& kv = results.out[14]->kv;
  engine::CpuBackend be;
  engine::ReusePrefiller p(*model_, be, LoopReuse());
  auto cpu_ref = p.MakeReference(add_ids);
  ASSERT_TRUE(cpu_ref.ok()) << cpu_ref.status();
  ASSERT_EQ(kv.n_layers(), cpu_ref->kv.n_layers());
  for (int64_t l = 0; l < kv.n_layers(); ++l) {
    ASSERT_EQ(kv.layer(l).rows(), static_cast<int64_t>(add_ids.size())) << "layer " << l;
    EXPECT_EQ(kv.layer(l).pos, cpu_ref->kv.layer(l).pos);
    // bf16 K/V (2^-9 relative each) after l layers of bf16 activations: the logits' 3e-2.
    EXPECT_LT(RelErr(kv.layer(l).k, cpu_ref->kv.layer(l).k), 3e-2) << "layer " << l;
    EXPECT_LT(RelErr(kv.layer(l).v, cpu_ref->kv.layer(l).v), 3e-2) << "layer " << l;
  }
}

TEST_F(CudaLoopTest, SixtyFourStreamsOnABudgetOfFourSequencesAllFinish) {
  constexpr int kRequests = 64, kMaxTokens = 8, kPrompt = 40;
  const engine::ModelConfig& c = model_->config;
  const int64_t row_bytes = c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;  // bf16 K and V
  serving::LoopOptions lo;
  lo.max_num_seqs = kRequests;
  lo.max_waiting = kRequests;
  lo.kv_cache_bytes = 4 * (kPrompt + kMaxTokens) * row_bytes;  // four sequences' worth
  std::unique_ptr<serving::EngineLoop> loop = NewLoop(lo);
  ASSERT_NE(loop, nullptr);
  Results results(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    auto r = std::make_unique<LoopRequest>();
    r->ids = RandomIds(kPrompt, c.vocab_size, seed_ + i % 8);
    r->options = Greedy(kMaxTokens);
    r->done = results.Slot(i);
    ASSERT_TRUE(loop->Submit(std::move(r)).ok());
  }
  ASSERT_TRUE(results.Wait(kRequests));
  ASSERT_TRUE(loop->WaitIdle(60000));
  const serving::LoopStats stats = loop->Stats();
  EXPECT_GT(stats.preemptions, 0);  // admission by the prompt's need lets decodes outgrow it
  EXPECT_EQ(stats.kv_bytes, 0);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(results.out[i].ok()) << i << ": " << results.out[i].status();
    EXPECT_EQ(results.out[i]->gen.tokens.size(), static_cast<size_t>(kMaxTokens)) << i;
  }
}

}  // namespace
}  // namespace semshare::testing
