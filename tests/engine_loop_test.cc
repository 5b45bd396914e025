// The engine loop (serving/engine_loop.h) on the real default model ($SEMSHARE_MODEL):
// continuous batching must not change what a request generates.
//  - 16 concurrent greedy requests of mixed lengths (prompts chunked across iterations), with
//    reuse hits (an exact repeat and a selective one, each with the engine::ReusePlan the
//    pipeline makes), misses, stop strings, max_tokens 1 and two cancelled mid-decode, give each
//    the token ids it gets alone (Generator / ReusePrefiller on one sequence), and the KV held
//    returns to 0. A plan that does not fit its request is refused at Submit.
//  - 64 requests against a KV budget of 4 sequences all finish with their tokens; some are
//    preempted (counted) and recomputed; nothing is lost.
//  - A runner whose own memory runs out before the loop's budget (as the CUDA page pool can):
//    the real CPU runner behind a decorator that answers RESOURCE_EXHAUSTED when more than N
//    sequences would hold KV. Every request finishes with its tokens alone (the loop preempts
//    and retries); one that cannot fit even alone fails with RESOURCE_EXHAUSTED; a reuse hit
//    and an exact prefix that find no room (PrefillHit, CopyPrefix refused) wait and still run
//    their plans.
// Tokens are compared exactly: batched and single-sequence logits differ by float summation
// order (kGemmOrderRelBound; tests/forward_test.cc checks it per sequence) and, on quantized
// weights, by the few-row kernels' activation quantization where a batch and a lone sequence
// fall on different sides of kDotMaxRows (engine/cpu/quant_matmul.h, bound in quant_dot.h).
// Either moves a greedy choice only at a near-tie; none occurs on these prompts (the test would
// show it).
#include "serving/engine_loop.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache_store/prompt_features.h"
#include "cache_store/record.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/reuse/reuse_prefill.h"
#include "serving/batch_runner.h"
#include "tests/loop_results.h"
#include "tests/test_util.h"

namespace semshare::serving {
namespace {

// The defaults but the paper's schedule alone: these prompts are a few hundred tokens at most,
// which the default recompute floor (ReuseConfig::recompute_min_tokens, 192) would recompute
// whole at every layer, leaving no selective path to check.
engine::ReuseConfig LoopReuse() {
  engine::ReuseConfig c;
  c.recompute_min_tokens = 0;
  return c;
}

constexpr const char* kSentences[] = {
    "The river flooded the old market town after three days of heavy rain.",
    "Engineers at the port said the new cranes would double the number of ships unloaded.",
    "A small bakery on the corner sells bread that people queue for before dawn.",
    "The committee postponed its vote on the budget until the auditors finish their report.",
    "Scientists found that the lake's water level has fallen by two metres in a decade.",
    "The orchestra will tour five cities this spring, opening with a new symphony.",
    "Farmers in the valley switched to drought resistant wheat after the failed harvest.",
    "The museum reopened its east wing with a collection of maps from the sixteenth century.",
    "Local officials promised to repair the bridge before the winter storms arrive.",
    "A team of students built a solar car that crossed the desert in four days.",
};
constexpr int kNumSentences = sizeof(kSentences) / sizeof(kSentences[0]);

class EngineLoopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    model_ = testing::DefaultModel(&error);
    if (model_ == nullptr) error_ = error;
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << error_; }

  // A prompt of `count` sentences starting at `first` (wrapping), with BOS when the model
  // wants one.
  std::vector<int32_t> Prompt(int first, int count, const std::string& tail = "") const {
    std::string text;
    for (int i = 0; i < count; ++i) {
      text += kSentences[(first + i) % kNumSentences];
      text += " ";
    }
    text += tail;
    engine::CpuBackend be;
    engine::Generator g(*model_, be);
    return g.TokenizePrompt(text);
  }

  static engine::GenerateOptions Greedy(int32_t max_tokens) {
    engine::GenerateOptions o;
    o.max_tokens = max_tokens;
    o.stop_at_eog = false;  // every request runs its full length: more decode rows
    return o;
  }

  // What a request generates alone: a full prefill (or the reference's hit plan) and a
  // single-sequence decode.
  std::vector<int32_t> Alone(const std::vector<int32_t>& ids, const engine::GenerateOptions& o,
                             const store::Record* ref = nullptr,
                             const engine::ReusePlan* plan = nullptr) const {
    engine::CpuBackend be;
    engine::Generator g(*model_, be);
    if (ref == nullptr) {
      auto r = g.Generate(ids, o);
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? r->tokens : std::vector<int32_t>{};
    }
    engine::ReusePrefiller p(*model_, be, LoopReuse());
    engine::KvCache cache = p.forward().NewCache();
    std::vector<float> logits(model_->config.vocab_size);
    auto st = p.PrefillPlan(ids, ref->ids, ref->kv, *plan, &cache, logits.data());
    EXPECT_TRUE(st.ok()) << st.status();
    auto r = g.Decode(static_cast<int64_t>(ids.size()), cache, logits, o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tokens : std::vector<int32_t>{};
  }

  // A store record of `ids` (full prefill), as the pipeline publishes a miss.
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
  // The plan the pipeline makes of a semantic hit on `ref` (serving::PlanHit: PlanReuse).
  engine::ReusePlan Plan(const std::vector<int32_t>& ids, const store::Record& ref) const {
    return engine::PlanReuse(ids, ref.ids, Match(ids, ref), LoopReuse());
  }

  std::unique_ptr<EngineLoop> NewLoop(const LoopOptions& o) const {
    return std::make_unique<EngineLoop>(
        NewCpuBatchRunner(*model_, std::make_unique<engine::CpuBackend>(), LoopReuse()), o,
        nullptr);
  }

  std::unique_ptr<EngineLoop> NewLoop(const LoopOptions& o,
                                      std::unique_ptr<BatchRunner> runner) const {
    return std::make_unique<EngineLoop>(std::move(runner), o, nullptr);
  }

  static const engine::Model* model_;
  static std::string error_;
};
const engine::Model* EngineLoopTest::model_ = nullptr;
std::string EngineLoopTest::error_;

using Results = testing::LoopResults;

// A BatchRunner with a small memory of its own, as the CUDA page pool is: the real runner
// underneath, RESOURCE_EXHAUSTED (changing nothing) whenever a call would leave more than
// `max_holding` sequences holding KV rows. Counts the refusals.
class SeqLimitedRunner final : public BatchRunner {
 public:
  SeqLimitedRunner(std::unique_ptr<BatchRunner> inner, int max_holding, std::atomic<int>* refusals)
      : inner_(std::move(inner)), max_holding_(max_holding), refusals_(refusals) {}

  std::string_view backend() const override { return inner_->backend(); }
  const engine::Model& model() const override { return inner_->model(); }
  absl::StatusOr<std::unique_ptr<SeqKv>> NewSeq(int64_t rows) override {
    absl::StatusOr<std::unique_ptr<SeqKv>> s = inner_->NewSeq(rows);
    if (!s.ok()) return s.status();
    return std::unique_ptr<SeqKv>(new Seq(this, *std::move(s)));
  }
  absl::Status Forward(std::span<const Item> items) override {
    std::vector<const SeqKv*> gaining;
    for (const Item& it : items) {
      if (!it.ids.empty() && it.seq->rows() == 0) gaining.push_back(it.seq);
    }
    if (auto s = Admit(static_cast<int>(gaining.size())); !s.ok()) return s;
    std::vector<Item> inner(items.begin(), items.end());
    for (Item& it : inner) it.seq = static_cast<Seq*>(it.seq)->inner.get();
    return inner_->Forward(inner);
  }
  absl::StatusOr<engine::PrefillStats> PrefillHit(SeqKv& seq, std::span<const int32_t> ids,
                                                  std::span<const int32_t> ref_ids,
                                                  const engine::KvCache& ref_kv,
                                                  const engine::ReusePlan& plan, float* logits,
                                                  std::function<bool()> interrupt) override {
    if (auto s = Admit(seq.rows() == 0 ? 1 : 0); !s.ok()) {
      ++hit_refusals_;
      return s;
    }
    return inner_->PrefillHit(*static_cast<Seq&>(seq).inner, ids, ref_ids, ref_kv, plan, logits,
                              std::move(interrupt));
  }
  absl::Status CopyPrefix(SeqKv& seq, const engine::KvCache& src, int64_t rows) override {
    if (auto s = Admit(seq.rows() == 0 ? 1 : 0); !s.ok()) {
      ++copy_refusals_;
      return s;
    }
    return inner_->CopyPrefix(*static_cast<Seq&>(seq).inner, src, rows);
  }
  absl::StatusOr<engine::KvCache> TakeKv(SeqKv& seq) override {
    return inner_->TakeKv(*static_cast<Seq&>(seq).inner);
  }
  int64_t max_chunk() const override { return inner_->max_chunk(); }
  int64_t row_bytes() const override { return inner_->row_bytes(); }

  int max_seen() const { return max_seen_; }
  int hit_refusals() const { return hit_refusals_; }
  int copy_refusals() const { return copy_refusals_; }

 private:
  struct Seq final : SeqKv {
    Seq(SeqLimitedRunner* r, std::unique_ptr<SeqKv> s) : runner(r), inner(std::move(s)) {
      runner->seqs_.push_back(this);
    }
    ~Seq() override { std::erase(runner->seqs_, this); }
    int64_t rows() const override { return inner->rows(); }
    int64_t bytes() const override { return inner->bytes(); }
    int32_t next_position() const override { return inner->next_position(); }
    SeqLimitedRunner* runner;
    std::unique_ptr<SeqKv> inner;
  };

  absl::Status Admit(int gaining) {
    int holding = 0;
    for (const Seq* s : seqs_) holding += s->rows() > 0 ? 1 : 0;
    if (holding + gaining > max_holding_) {
      if (refusals_ != nullptr) ++*refusals_;
      return absl::ResourceExhaustedError(absl::StrCat(
          "test pool: ", holding + gaining, " sequences would hold KV, room for ", max_holding_));
    }
    max_seen_ = std::max(max_seen_.load(), holding + gaining);
    return absl::OkStatus();
  }

  std::unique_ptr<BatchRunner> inner_;
  const int max_holding_;
  std::atomic<int>* refusals_;
  std::vector<Seq*> seqs_;  // live sequences (the loop's thread only)
  std::atomic<int> max_seen_{0}, hit_refusals_{0}, copy_refusals_{0};
};

TEST_F(EngineLoopTest, BatchedRequestsGenerateWhatEachGeneratesAlone) {
  struct Case {
    std::vector<int32_t> ids;
    engine::GenerateOptions opt;
    store::RecordHandle ref;
    engine::ReusePlan plan;
    bool cancel = false;
  };
  std::vector<Case> cases;
  // Misses of mixed lengths: 11 to ~280 tokens, longer than a 64-token batch budget.
  const int counts[] = {1, 3, 6, 10, 14, 2, 8, 12, 4, 5};
  for (int i = 0; i < 10; ++i) cases.push_back({Prompt(i, counts[i]), Greedy(6 + i), {}, {}});
  cases[3].opt.max_tokens = 1;  // max_tokens 1: the prefill's logits alone
  cases[7].opt.stop = {"the"};  // a stop string (the text ends before it)
  cases[7].opt.max_tokens = 24;
  // Reuse hits: an exact repeat of a reference (its plan a kCopyPrefix: the rows copied at
  // admission, the last `window` computed in the batch), and a selective one (a sentence
  // changed in the middle: the prompt differs long before its last `window` tokens).
  const std::vector<int32_t> ref_ids = Prompt(2, 12);
  store::RecordHandle ref = Reference(ref_ids);
  cases.push_back({ref_ids, Greedy(8), ref, Plan(ref_ids, *ref)});
  ASSERT_EQ(cases.back().plan.kind, engine::ReuseKind::kCopyPrefix);
  std::vector<int32_t> edited = Prompt(2, 5);
  const std::vector<int32_t> rest = Prompt(8, 7);
  edited.insert(edited.end(), rest.begin() + 1, rest.end());  // no second BOS
  cases.push_back({edited, Greedy(8), ref, Plan(edited, *ref)});
  ASSERT_EQ(cases.back().plan.kind, engine::ReuseKind::kSelective);
  ASSERT_GE(cases.back().plan.remainder_similarity, 0.5f);
  // Two cancelled mid-decode, and two more misses.
  cases.push_back({Prompt(4, 3), Greedy(40), {}, {}, true});
  cases.push_back({Prompt(6, 9), Greedy(40), {}, {}, true});
  cases.push_back({Prompt(9, 2), Greedy(12), {}, {}});
  cases.push_back({Prompt(1, 7), Greedy(10), {}, {}});
  ASSERT_EQ(cases.size(), 16u);

  LoopOptions lo;
  lo.max_batch_tokens = 64;  // long prompts take several iterations beside the decodes
  lo.max_num_seqs = 16;
  lo.kv_cache_bytes = int64_t{2} << 30;
  std::unique_ptr<EngineLoop> loop = NewLoop(lo);
  Results results(cases.size());
  std::vector<std::unique_ptr<std::atomic<int>>> pieces;
  for (size_t i = 0; i < cases.size(); ++i) {
    pieces.push_back(std::make_unique<std::atomic<int>>(0));
    auto r = std::make_unique<LoopRequest>();
    r->ids = cases[i].ids;
    r->options = cases[i].opt;
    r->reference = cases[i].ref;
    r->plan = cases[i].plan;
    std::atomic<int>* seen = pieces.back().get();
    r->on_text = [seen](std::string_view) {
      ++*seen;
      return true;
    };
    if (cases[i].cancel) r->cancelled = [seen] { return seen->load() >= 3; };
    r->done = results.Slot(i);
    ASSERT_TRUE(loop->Submit(std::move(r)).ok());
  }
  ASSERT_TRUE(results.Wait(static_cast<int>(cases.size())));
  ASSERT_TRUE(loop->WaitIdle(60000));
  const LoopStats stats = loop->Stats();
  EXPECT_EQ(stats.kv_bytes, 0);
  EXPECT_EQ(stats.running, 0);
  EXPECT_GT(stats.iterations, 20);  // decodes and chunks shared iterations

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
    const std::vector<int32_t> alone =
        Alone(cases[i].ids, cases[i].opt, cases[i].ref.get(), &cases[i].plan);
    EXPECT_EQ(r.gen.tokens, alone);
    EXPECT_GT(r.kv_bytes, 0);
    EXPECT_GT(r.ttft_ms, 0);
  }
  EXPECT_EQ(results.out[3]->gen.tokens.size(), 1u);
  EXPECT_EQ(results.out[7]->gen.finish, engine::FinishReason::kStopString);
  EXPECT_EQ(results.out[10]->copied_rows,  // exact: copied, the last `window` computed
            static_cast<int64_t>(ref_ids.size()) - engine::ReuseConfig{}.window);
  EXPECT_LT(results.out[11]->prefill.reused_tokens, static_cast<int64_t>(edited.size()));
  EXPECT_GT(results.out[11]->prefill.reused_tokens, 0);  // selective
}

TEST_F(EngineLoopTest, SixtyFourStreamsOnABudgetOfFourSequencesAllFinish) {
  constexpr int kRequests = 64, kMaxTokens = 8;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(Prompt(i, 1));
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, p.size());
  const engine::ModelConfig& c = model_->config;
  const int64_t row_bytes = c.n_layers * c.n_kv_heads * c.head_dim * 2 * 4;
  LoopOptions lo;
  lo.max_num_seqs = kRequests;
  lo.max_waiting = kRequests;
  lo.kv_cache_bytes = 4 * (longest + kMaxTokens) * row_bytes;  // four sequences' worth
  std::unique_ptr<EngineLoop> loop = NewLoop(lo);
  Results results(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    auto r = std::make_unique<LoopRequest>();
    r->ids = prompts[i % prompts.size()];
    r->options = Greedy(kMaxTokens);
    r->done = results.Slot(i);
    ASSERT_TRUE(loop->Submit(std::move(r)).ok());
  }
  ASSERT_TRUE(results.Wait(kRequests));
  ASSERT_TRUE(loop->WaitIdle(60000));
  const LoopStats stats = loop->Stats();
  EXPECT_GT(stats.preemptions, 0);  // admission by the prompt's need lets decodes outgrow it
  EXPECT_EQ(stats.kv_bytes, 0);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(Alone(p, Greedy(kMaxTokens)));
  int preempted = 0;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(results.out[i].ok()) << i << ": " << results.out[i].status();
    EXPECT_EQ(results.out[i]->gen.tokens, alone[i % prompts.size()]) << "request " << i;
    preempted += results.out[i]->preemptions > 0 ? 1 : 0;
  }
  EXPECT_GT(preempted, 0);
  // A request that alone needs more than the whole budget is refused at once, clearly.
  auto big = std::make_unique<LoopRequest>();
  big->ids = Prompt(0, 30);
  big->options = Greedy(kMaxTokens);
  const absl::Status s = loop->Submit(std::move(big));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("--kv-cache-bytes"), std::string_view::npos) << s;
}

TEST_F(EngineLoopTest, SubmitRefusesAPlanThatDoesNotFitItsRequest) {
  LoopOptions lo;
  lo.kv_cache_bytes = int64_t{1} << 30;
  std::unique_ptr<EngineLoop> loop = NewLoop(lo);
  const std::vector<int32_t> ref_ids = Prompt(3, 6);
  store::RecordHandle ref = Reference(ref_ids);
  const int64_t n = static_cast<int64_t>(ref_ids.size());
  auto submit = [&](store::RecordHandle r, engine::ReusePlan plan) {
    auto req = std::make_unique<LoopRequest>();
    req->ids = ref_ids;
    req->options = Greedy(2);
    req->reference = std::move(r);
    req->plan = std::move(plan);
    req->done = [](absl::StatusOr<LoopResult>) {};
    return loop->Submit(std::move(req));
  };
  const engine::ReuseConfig cfg;
  struct Bad {
    const char* what;
    store::RecordHandle ref;
    engine::ReusePlan plan;
  };
  const Bad bad[] = {
      {"a reference without a plan", ref, engine::PlanNoReuse(n, cfg)},
      {"a plan without a reference", nullptr, engine::PlanPrefixCopy(n, n - 1, cfg)},
      {"a plan for another prompt", ref, engine::PlanPrefixCopy(n + 5, n, cfg)},
  };
  for (const Bad& b : bad) {
    const absl::Status s = submit(b.ref, b.plan);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.what << ": " << s;
    EXPECT_NE(s.message().find("plan"), std::string_view::npos) << b.what << ": " << s;
  }
  engine::ReusePlan all = engine::PlanPrefixCopy(n, n - 1, cfg);
  all.copy_rows = n;  // the last token must be computed (its logits)
  const absl::Status s = submit(ref, all);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("always computed"), std::string_view::npos) << s;
  ASSERT_TRUE(loop->WaitIdle(60000));
  EXPECT_EQ(loop->Stats().running, 0);
}

TEST_F(EngineLoopTest, RunnerOutOfMemoryPreemptsAndRetries) {
  constexpr int kRequests = 12, kMaxTokens = 8, kRoom = 3;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(Prompt(i, 1 + i % 3));
  LoopOptions lo;
  lo.max_batch_tokens = 64;  // prompts in chunks: sequences gain KV over several iterations
  lo.max_num_seqs = kRequests;
  lo.max_waiting = kRequests;
  lo.kv_cache_bytes = int64_t{1} << 30;  // the loop's own budget never binds
  std::atomic<int> refusals{0};
  auto limited = std::make_unique<SeqLimitedRunner>(
      NewCpuBatchRunner(*model_, std::make_unique<engine::CpuBackend>(), LoopReuse()), kRoom,
      &refusals);
  SeqLimitedRunner* runner = limited.get();
  std::unique_ptr<EngineLoop> loop = NewLoop(lo, std::move(limited));
  // Misses, and in the middle a reuse hit (an exact repeat of a reference: its plan is kept
  // when the runner has no room for it).
  const std::vector<int32_t> hit_ids = Prompt(3, 6);
  store::RecordHandle ref = Reference(hit_ids);
  const engine::ReusePlan plan = Plan(hit_ids, *ref);
  Results results(kRequests + 1);
  for (int i = 0; i <= kRequests; ++i) {
    auto r = std::make_unique<LoopRequest>();
    r->options = Greedy(kMaxTokens);
    if (i == kRequests / 2) {
      r->ids = hit_ids;
      r->reference = ref;
      r->plan = plan;
      r->done = results.Slot(kRequests);
    } else {
      r->ids = prompts[(i - (i > kRequests / 2 ? 1 : 0)) % prompts.size()];
      r->done = results.Slot(i - (i > kRequests / 2 ? 1 : 0));
    }
    ASSERT_TRUE(loop->Submit(std::move(r)).ok());
  }
  ASSERT_TRUE(results.Wait(kRequests + 1));
  ASSERT_TRUE(loop->WaitIdle(60000));
  const LoopStats stats = loop->Stats();
  ASSERT_TRUE(results.out[kRequests].ok()) << results.out[kRequests].status();
  EXPECT_TRUE(results.out[kRequests]->hit);
  EXPECT_EQ(results.out[kRequests]->gen.tokens,
            Alone(hit_ids, Greedy(kMaxTokens), ref.get(), &plan));
  EXPECT_GT(refusals.load(), 0);    // the runner did run out
  EXPECT_GT(stats.preemptions, 0);  // and the loop preempted rather than failing
  EXPECT_LE(runner->max_seen(), kRoom);
  EXPECT_EQ(stats.kv_bytes, 0);
  EXPECT_EQ(stats.running, 0);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(Alone(p, Greedy(kMaxTokens)));
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(results.out[i].ok()) << i << ": " << results.out[i].status();
    EXPECT_EQ(results.out[i]->gen.tokens, alone[i % prompts.size()]) << "request " << i;
  }

  // A runner with room for no sequence: the request fails alone, clearly, and the loop goes on
  // idle (nothing retried forever).
  std::atomic<int> none_refusals{0};
  std::unique_ptr<EngineLoop> full = NewLoop(
      lo, std::make_unique<SeqLimitedRunner>(
              NewCpuBatchRunner(*model_, std::make_unique<engine::CpuBackend>(), LoopReuse()), 0,
              &none_refusals));
  Results one(1);
  auto r = std::make_unique<LoopRequest>();
  r->ids = prompts[0];
  r->options = Greedy(kMaxTokens);
  r->done = one.Slot(0);
  ASSERT_TRUE(full->Submit(std::move(r)).ok());
  ASSERT_TRUE(one.Wait(1));
  ASSERT_FALSE(one.out[0].ok());
  EXPECT_EQ(one.out[0].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(one.out[0].status().message().find("alone"), std::string_view::npos)
      << one.out[0].status();
  ASSERT_TRUE(full->WaitIdle(60000));
  EXPECT_EQ(full->Stats().kv_bytes, 0);
}

TEST_F(EngineLoopTest, RunnerOutOfMemoryKeepsAHitsPlan) {
  // Room for one sequence: while a long miss decodes, a selective reuse hit (the reference with
  // a sentence left out) and an exact-prefix request (the reference's prompt + a question)
  // find no room for their rows
  // (PrefillHit, CopyPrefix refused); they wait with their plans and run after it.
  LoopOptions lo;
  lo.kv_cache_bytes = int64_t{1} << 30;  // the loop's own budget never binds
  auto limited = std::make_unique<SeqLimitedRunner>(
      NewCpuBatchRunner(*model_, std::make_unique<engine::CpuBackend>(), LoopReuse()), 1, nullptr);
  SeqLimitedRunner* runner = limited.get();
  std::unique_ptr<EngineLoop> loop = NewLoop(lo, std::move(limited));

  const std::vector<int32_t> miss_ids = Prompt(0, 2);
  const std::vector<int32_t> ref_ids = Prompt(3, 6);
  store::RecordHandle ref = Reference(ref_ids);
  std::vector<int32_t> edited = Prompt(3, 2);
  const std::vector<int32_t> rest = Prompt(6, 3);
  edited.insert(edited.end(), rest.begin() + 1, rest.end());  // no second BOS
  const engine::ReusePlan plan = Plan(edited, *ref);
  ASSERT_EQ(plan.kind, engine::ReuseKind::kSelective);
  std::vector<int32_t> extended = ref_ids;
  const std::vector<int32_t> question = Prompt(7, 1);
  extended.insert(extended.end(), question.begin() + 1, question.end());  // no second BOS
  const engine::GenerateOptions long_run = Greedy(64), short_run = Greedy(8);

  Results results(3);
  std::mutex mu;
  std::condition_variable cv;
  bool streaming = false;
  auto miss = std::make_unique<LoopRequest>();
  miss->ids = miss_ids;
  miss->options = long_run;
  miss->on_text = [&](std::string_view) {
    std::lock_guard<std::mutex> lock(mu);
    streaming = true;
    cv.notify_all();
    return true;
  };
  miss->done = results.Slot(0);
  ASSERT_TRUE(loop->Submit(std::move(miss)).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::minutes(5), [&] { return streaming; }));
  }
  auto hit = std::make_unique<LoopRequest>();
  hit->ids = edited;
  hit->options = short_run;
  hit->reference = ref;
  hit->plan = plan;
  hit->done = results.Slot(1);
  ASSERT_TRUE(loop->Submit(std::move(hit)).ok());
  auto prefix = std::make_unique<LoopRequest>();
  prefix->ids = extended;
  prefix->options = short_run;
  prefix->reference = ref;
  prefix->plan = engine::PlanPrefixCopy(static_cast<int64_t>(extended.size()),
                                        static_cast<int64_t>(ref_ids.size()), LoopReuse());
  prefix->done = results.Slot(2);
  ASSERT_TRUE(loop->Submit(std::move(prefix)).ok());
  ASSERT_TRUE(results.Wait(3));
  ASSERT_TRUE(loop->WaitIdle(60000));

  EXPECT_GT(runner->hit_refusals(), 0);
  EXPECT_GT(runner->copy_refusals(), 0);
  EXPECT_EQ(runner->max_seen(), 1);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(results.out[i].ok()) << i << ": " << results.out[i].status();
  EXPECT_EQ(results.out[0]->gen.tokens, Alone(miss_ids, long_run));
  EXPECT_TRUE(results.out[1]->hit);
  EXPECT_EQ(results.out[1]->prefill.plan, engine::ReuseKind::kSelective);
  EXPECT_GT(results.out[1]->prefill.reused_tokens, 0);
  EXPECT_EQ(results.out[1]->gen.tokens, Alone(edited, short_run, ref.get(), &plan));
  EXPECT_TRUE(results.out[2]->hit);
  EXPECT_EQ(results.out[2]->copied_rows, static_cast<int64_t>(ref_ids.size()));
  EXPECT_EQ(results.out[2]->gen.tokens, Alone(extended, short_run));
  EXPECT_EQ(loop->Stats().kv_bytes, 0);
}

}  // namespace
}  // namespace semshare::serving
