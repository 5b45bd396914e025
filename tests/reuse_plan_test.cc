// The ReusePlan (engine/reuse/reuse_plan.h): its contents for constructed prompts, and its
// hybrid with the selective path on the remainder (kHybridSelective, issue 15) executed by the
// CPU path on the real default model ($SEMSHARE_MODEL):
//  - rows [0, lcp) are the reference's bit for bit in every layer, never recomputed, never
//    evicted (retention set to trim);
//  - recomputing every remainder token at every layer without retention gives full prefill's
//    logits within the bound reuse_prefill_test states for the selective path (2e-4 of the
//    logit scale: the same float32 computation in another summation order; a wrong row,
//    position or mask moves logits by O(1));
//  - the default schedule counts the remainder only;
//  - the fallback guard computes the remainder in full after the copied rows (still a hit);
//  - the serving rule (serving::PlanHybridRemainder) sends a long matching remainder to the
//    selective path and keeps a short one on the full-remainder path, also through the server's
//    pipeline (serving::Pipeline with a real in-memory store).
#include "engine/reuse/reuse_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <future>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "cache_store/prompt_features.h"
#include "cache_store/record.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/serving_session.h"
#include "serving/hit_lookup.h"
#include "serving/pipeline.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

using semshare::testing::MaxRelDiff;

// A reference of 40 tokens 100..139 and a target sharing its first 20, then its last 10, then
// tokens 20..29 of it (passages swapped), one of them unmatched; the match a matcher would give.
struct Constructed {
  std::vector<int32_t> ref, ids;
  TokenMatch match;
};

Constructed Swapped() {
  Constructed c;
  for (int32_t i = 0; i < 40; ++i) c.ref.push_back(100 + i);
  std::vector<int32_t> from(20);
  std::iota(from.begin(), from.end(), 0);
  for (int32_t i = 30; i < 40; ++i) from.push_back(i);
  for (int32_t i = 20; i < 30; ++i) from.push_back(i);
  for (int32_t r : from) {
    c.ids.push_back(c.ref[r]);
    c.match.ref_index.push_back(r);
    c.match.cosine.push_back(1.0f);
  }
  c.match.ref_index[25] = -1;  // target position 25 (reference row 35) unmatched
  c.match.cosine[25] = 0.0f;
  c.ids[25] = 7;
  c.match.similarity = 39.0f / 40.0f;
  return c;
}

// A 40-token prompt's knobs: a small sink and window, and the paper's schedule without the
// default floor (recompute_min_tokens, which would recompute all 40 at every layer).
ReuseConfig Knobs() {
  ReuseConfig cfg;
  cfg.window = 4;
  cfg.sink = 4;
  cfg.recompute_min_tokens = 0;
  cfg.hybrid_selective_min_tokens = 16;
  return cfg;
}

TEST(ReusePlanTest, HybridSelectiveCopiesThePrefixAndRearrangesTheRemainder) {
  const Constructed c = Swapped();
  const ReuseConfig cfg = Knobs();
  const ReusePlan p = PlanReuse(c.ids, c.ref, c.match, cfg);
  ASSERT_EQ(p.kind, ReuseKind::kHybridSelective) << ReuseKindName(p.kind);
  EXPECT_EQ(p.n, 40);
  EXPECT_EQ(p.copy_rows, 20);
  EXPECT_EQ(p.computed(), 20);
  ASSERT_EQ(p.src.size(), 20u);
  ASSERT_EQ(p.delta.size(), 20u);
  for (int64_t i = 20; i < 40; ++i) {
    const int32_t r = c.match.ref_index[i];
    EXPECT_EQ(p.src[i - 20], std::max(r, 0)) << i;
    EXPECT_EQ(p.delta[i - 20], r < 0 ? 0 : static_cast<int32_t>(i) - r) << i;
  }
  EXPECT_FLOAT_EQ(p.remainder_similarity, 19.0f / 20.0f);
  // Forced (never evicted, never dropped from the set): the copied rows, the unmatched token,
  // the window; nothing else.
  for (int64_t i = 0; i < 40; ++i) {
    const bool want = i < 20 || i == 25 || i >= 36;
    EXPECT_EQ(p.forced[i] != 0, want) << i;
  }
  const std::vector<int32_t> first = p.FirstSet();
  ASSERT_EQ(first.size(), 20u);
  EXPECT_EQ(first.front(), 20);
  EXPECT_EQ(first.back(), 39);
  // The schedule counts the 20 remainder tokens, not the 40 of the prompt: ceil(0.4f * 20) = 9
  // after layer 0 (the float 0.4f is a hair above 0.4; 17 for 40 tokens), then
  // ceil(0.8f * 9) = 8.
  EXPECT_EQ(p.Keep(20, 0), 9);
  EXPECT_EQ(RecomputeKeep(cfg, 40, 20, 0), 17);
  EXPECT_EQ(p.Keep(9, 1), 8);
  // The next set: the 5 forced ones (25, 36..39) plus the 4 highest deviations.
  std::vector<float> dev(20, 0.0f);
  dev[1] = 9;   // position 21
  dev[10] = 8;  // position 30
  dev[12] = 7;  // position 32
  dev[2] = 2;   // position 22
  dev[3] = 1;   // position 23: fifth highest, left out
  EXPECT_EQ(p.NextSet(first, dev, 0), (std::vector<int32_t>{21, 22, 25, 30, 32, 36, 37, 38, 39}));
  // Retention keeps the copied rows and, while reusing, the recomputed ones.
  const std::vector<uint8_t> prot = p.Protected(std::vector<int32_t>{22, 23}, true);
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(prot[i] != 0, i < 20 || i == 22 || i == 23 || i == 25 || i >= 36) << i;
  }
  EXPECT_TRUE(p.Retains());
}

TEST(ReusePlanTest, OtherKindsWhenTheHybridRuleDoesNotHold) {
  const Constructed c = Swapped();
  ReuseConfig cfg = Knobs();
  // The remainder (20 tokens) shorter than the knob: the selective path over every row.
  cfg.hybrid_selective_min_tokens = 21;
  ReusePlan p = PlanReuse(c.ids, c.ref, c.match, cfg);
  EXPECT_EQ(p.kind, ReuseKind::kSelective);
  EXPECT_EQ(p.copy_rows, 0);
  ASSERT_EQ(p.src.size(), 40u);
  EXPECT_EQ(p.src[3], 3);
  EXPECT_EQ(p.Keep(40, 0), 17);
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(p.forced[i] != 0, i < 4 || i == 25 || i >= 36) << i;
  }
  // Off.
  cfg.hybrid_selective_min_tokens = 0;
  EXPECT_EQ(PlanReuse(c.ids, c.ref, c.match, cfg).kind, ReuseKind::kSelective);
  // The remainder matches poorly (mean cosine 0.5 < the 0.8 threshold).
  cfg = Knobs();
  Constructed poor = c;
  for (int64_t i = 20; i < 40; ++i) poor.match.cosine[i] = 0.5f;
  EXPECT_EQ(PlanReuse(poor.ids, poor.ref, poor.match, cfg).kind, ReuseKind::kSelective);
  // No common prefix: nothing to copy.
  Constructed shifted = c;
  shifted.ids[0] = 5;
  EXPECT_EQ(PlanReuse(shifted.ids, shifted.ref, shifted.match, cfg).kind, ReuseKind::kSelective);
  // A repeat: exact reuse, every row but the window copied.
  TokenMatch self;
  for (int32_t i = 0; i < 40; ++i) {
    self.ref_index.push_back(i);
    self.cosine.push_back(1.0f);
  }
  p = PlanReuse(c.ref, c.ref, self, cfg);
  EXPECT_EQ(p.kind, ReuseKind::kCopyPrefix);
  EXPECT_EQ(p.copy_rows, 36);
  EXPECT_FALSE(p.Retains());
  // The hit rule's exact prefixes: at most n - 1 rows; none is no reuse.
  EXPECT_EQ(PlanPrefixCopy(10, 50, cfg).copy_rows, 9);
  EXPECT_EQ(PlanPrefixCopy(10, 50, cfg).kind, ReuseKind::kCopyPrefix);
  EXPECT_EQ(PlanPrefixCopy(10, 4, cfg).copy_rows, 4);
  EXPECT_EQ(PlanPrefixCopy(10, 0, cfg).kind, ReuseKind::kNone);
}

// Run starts (ReuseConfig::run_start_tokens): a hand-built match of 30 target tokens whose
// reference rows are 0..9 (one run), 40 (a run of one), 20..22, unmatched, 23..28 (a new run
// after the unmatched token although 23 follows 22), 50..53, then 53..57 (a new run: 53 again).
TokenMatch Runs() {
  TokenMatch m;
  auto add = [&](int32_t first, int32_t count) {
    for (int32_t r = first; r < first + count; ++r) {
      m.ref_index.push_back(r);
      m.cosine.push_back(r < 0 ? 0.0f : 1.0f);
    }
  };
  add(0, 10);
  add(40, 1);
  add(20, 3);
  add(-1, 1);
  add(23, 6);
  add(50, 4);
  add(53, 5);
  return m;
}

// The forced positions of a plan, ascending.
std::vector<int32_t> ForcedOf(const ReusePlan& p) {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < static_cast<int32_t>(p.forced.size()); ++i) {
    if (p.forced[i]) out.push_back(i);
  }
  return out;
}

TEST(ReusePlanTest, RunStartTokensForceTheFirstTokensOfEveryRearrangedRun) {
  const TokenMatch m = Runs();
  ASSERT_EQ(m.ref_index.size(), 30u);
  ReuseConfig cfg;
  cfg.sink = 0;
  cfg.window = 0;
  cfg.recompute_min_tokens = 0;  // the paper's schedule on 30 tokens
  // k = 0 (the default): only the unmatched token, and the copied rows of a hybrid.
  ASSERT_EQ(ReuseConfig{}.run_start_tokens, 0);
  EXPECT_EQ(ForcedOf(PlanSelective(m, cfg, 0)), (std::vector<int32_t>{14}));
  EXPECT_EQ(ForcedOf(PlanSelective(m, cfg, 3)), (std::vector<int32_t>{0, 1, 2, 14}));
  // k = 2, selective: the first two of each run; the run of one forces itself only.
  cfg.run_start_tokens = 2;
  EXPECT_EQ(ForcedOf(PlanSelective(m, cfg, 0)),
            (std::vector<int32_t>{0, 1, 10, 11, 12, 14, 15, 16, 21, 22, 25, 26}));
  // With rows [0, 3) copied, the rearranged rows start a run at 3 (reference rows 3.. follow the
  // copied ones, but the copied rows are not rearranged).
  EXPECT_EQ(ForcedOf(PlanSelective(m, cfg, 3)),
            (std::vector<int32_t>{0, 1, 2, 3, 4, 10, 11, 12, 14, 15, 16, 21, 22, 25, 26}));
  // k = 4: a run shorter than k is forced whole (11..13), nothing past a run's end.
  cfg.run_start_tokens = 4;
  const ReusePlan p = PlanSelective(m, cfg, 3);
  EXPECT_EQ(ForcedOf(p), (std::vector<int32_t>{0,  1,  2,  3,  4,  5,  6,  10, 11, 12, 13, 14,
                                               15, 16, 17, 18, 21, 22, 23, 24, 25, 26, 27, 28}));
  // Everything else of the plan is as with k = 0.
  cfg.run_start_tokens = 0;
  const ReusePlan p0 = PlanSelective(m, cfg, 3);
  EXPECT_EQ(p.kind, p0.kind);
  EXPECT_EQ(p.src, p0.src);
  EXPECT_EQ(p.delta, p0.delta);
  EXPECT_EQ(p.Keep(27, 0), p0.Keep(27, 0));
  // The schedule keeps forced run starts beyond Keep(): layer 1 of 27 computed tokens keeps
  // ceil(0.4f * 27) = 11, fewer than the 21 forced rearranged rows; all 21 stay, nothing else.
  const std::vector<int32_t> first = p.FirstSet();
  const std::vector<float> dev(first.size(), 1.0f);
  std::vector<int32_t> forced_rearranged;
  for (int32_t i : ForcedOf(p)) {
    if (i >= 3) forced_rearranged.push_back(i);
  }
  EXPECT_EQ(p.NextSet(first, dev, 0), forced_rearranged);
  // And retention never evicts them.
  EXPECT_EQ(p.Protected({}, false), p.forced);
  // No reference, no runs: k changes nothing there.
  cfg.run_start_tokens = 4;
  EXPECT_EQ(PlanNoReuse(30, cfg).forced, std::vector<uint8_t>(30, 0));
}

// Exact runs first (ReuseConfig::exact_run_tokens, AlignExactRuns): the plan gathers a
// stretch the prompt shares verbatim with the reference from one occurrence of it, token for
// token, where the matcher scattered it over other occurrences of the same ids; a token whose
// id the reference lacks stays unmatched; with the knob at 0 the plan is the match's.
TEST(ReusePlanTest, PlanReuseGathersSharedStretchesFromOneOccurrence) {
  const std::vector<int32_t> ref = {10, 11, 12, 13, 14, 15, 16, 17, 18, 11, 12, 15};
  const std::vector<int32_t> ids = {10, 11, 12, 13, 20, 15, 16, 17, 18};
  TokenMatch m;
  m.ref_index = {0, 9, 2, -1, -1, 11, 6, 7, 8};
  m.cosine = {1, 1, 1, 0, 0, 1, 1, 1, 1};
  m.matched = 7;
  ReuseConfig cfg;
  cfg.exact_reuse = false;
  cfg.exact_run_tokens = 0;
  EXPECT_EQ(PlanReuse(ids, ref, m, cfg).src, (std::vector<int32_t>{0, 9, 2, 0, 0, 11, 6, 7, 8}));
  cfg.exact_run_tokens = 4;
  const ReusePlan p = PlanReuse(ids, ref, m, cfg);
  EXPECT_EQ(p.src, (std::vector<int32_t>{0, 1, 2, 3, 0, 5, 6, 7, 8}));
  EXPECT_EQ(p.delta, (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(p.forced[4], 1);  // 20: unmatched, computed at every layer
}

class HybridSelectiveTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    model_ = semshare::testing::DefaultModel(&error);
    ASSERT_NE(model_, nullptr) << error;
  }

  // Sentences of label-1 MRPC pairs (first sentences), `skip` pairs on.
  static std::vector<std::string> Sentences(size_t count, size_t skip) {
    std::string error;
    auto out = semshare::testing::ParaphraseSentences(false, count, skip, &error);
    EXPECT_TRUE(error.empty()) << error;
    return out;
  }

  // A document of 12 sentences (the shared prefix), then `passages` and a closing question.
  static std::vector<int32_t> Tokens(const std::vector<std::string>& passages) {
    std::string text = "Read the report, then the notes, and answer.\nReport:\n";
    for (const std::string& s : Sentences(12, 0)) text += s + "\n";
    text += "Notes:\n";
    for (const std::string& s : passages) text += s + "\n";
    text += "Question: what happened first?\nAnswer:";
    return model_->tokenizer->Encode(text, false);
  }

  static std::vector<float> FullLogits(const std::vector<int32_t>& ids) {
    return semshare::testing::FullPrefillLogits(*model_, ids);
  }

  // The reference's notes are 8 sentences; the target's the same in reverse order (a long
  // remainder that matches another part of the reference).
  void SetUp() override {
    std::vector<std::string> notes = Sentences(8, 12);
    ref_ids_ = Tokens(notes);
    std::reverse(notes.begin(), notes.end());
    ids_ = Tokens(notes);
    lcp_ = CommonPrefix(ids_, ref_ids_, static_cast<int64_t>(ids_.size()) - 1);
    ASSERT_GT(lcp_, 150);
    ASSERT_GT(static_cast<int64_t>(ids_.size()) - lcp_, 150);
  }

  // Rows of `cache` at positions < rows in every layer equal the reference's bit for bit.
  static void ExpectPrefixRowsAreTheReferences(const KvCache& cache, const KvCache& ref,
                                               int64_t rows) {
    const int64_t kvd = cache.kv_dim();
    for (int64_t l = 0; l < cache.n_layers(); ++l) {
      const LayerKv& kv = cache.layer(l);
      ASSERT_GE(kv.rows(), rows) << "layer " << l;
      for (int64_t j = 0; j < rows; ++j) {
        ASSERT_EQ(kv.pos[j], j) << "layer " << l;  // ascending: the first lcp rows are them
        ASSERT_EQ(std::memcmp(kv.k.data() + j * kvd, ref.layer(l).k.data() + j * kvd,
                              kvd * sizeof(float)),
                  0)
            << "K, layer " << l << " row " << j;
        ASSERT_EQ(std::memcmp(kv.v.data() + j * kvd, ref.layer(l).v.data() + j * kvd,
                              kvd * sizeof(float)),
                  0)
            << "V, layer " << l << " row " << j;
      }
    }
  }

  static const Model* model_;
  std::vector<int32_t> ref_ids_, ids_;
  int64_t lcp_ = 0;
};
const Model* HybridSelectiveTest::model_ = nullptr;

TEST_F(HybridSelectiveTest, RecomputingTheWholeRemainderEqualsFullPrefill) {
  ASSERT_NE(model_, nullptr);
  ReuseConfig cfg;
  cfg.hybrid_selective_min_tokens = 64;
  cfg.recompute_ratio = 1.0f;
  cfg.alpha = 1.0f;
  cfg.retention = RetentionSchedule::kNone;
  CpuBackend be;
  ReusePrefiller p(*model_, be, cfg);
  auto ref = p.MakeReference(ref_ids_);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const TokenMatch match = p.Match(p.Sketch(ids_), ref->sketch);
  const ReusePlan plan = PlanReuse(ids_, ref_ids_, match, cfg);
  ASSERT_EQ(plan.kind, ReuseKind::kHybridSelective) << plan.remainder_similarity;
  EXPECT_EQ(plan.copy_rows, lcp_);
  KvCache cache = p.forward().NewCache();
  std::vector<float> logits(model_->config.vocab_size);
  auto st = p.PrefillHit(ids_, ref_ids_, ref->kv, match, &cache, logits.data());
  ASSERT_TRUE(st.ok()) << st.status();
  const int64_t n = static_cast<int64_t>(ids_.size());
  EXPECT_TRUE(st->hit);
  EXPECT_FALSE(st->fallback);
  EXPECT_EQ(st->plan, ReuseKind::kHybridSelective);
  EXPECT_EQ(st->copied_rows, lcp_);
  EXPECT_EQ(st->layer0_deviation.size(), static_cast<size_t>(n - lcp_));
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    EXPECT_EQ(st->layer_computed[l], n - lcp_) << "layer " << l;
    EXPECT_EQ(cache.layer(l).rows(), n) << "layer " << l;
  }
  EXPECT_EQ(st->recomputed_tokens, n - lcp_);
  EXPECT_EQ(st->reused_tokens, lcp_);
  ExpectPrefixRowsAreTheReferences(cache, ref->kv, lcp_);
  EXPECT_LE(MaxRelDiff(logits, FullLogits(ids_)), 2e-4);
}

TEST_F(HybridSelectiveTest, DefaultScheduleRunsOnTheRemainderAndNeverEvictsTheCopiedRows) {
  ASSERT_NE(model_, nullptr);
  ReuseConfig cfg;
  cfg.hybrid_selective_min_tokens = 64;
  cfg.retention_min_rows = 64;  // below the prompt's length, so that retention trims
  CpuBackend be;
  ReusePrefiller p(*model_, be, cfg);
  auto ref = p.MakeReference(ref_ids_);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const TokenMatch match = p.Match(p.Sketch(ids_), ref->sketch);
  KvCache cache = p.forward().NewCache();
  std::vector<float> logits(model_->config.vocab_size);
  auto st = p.PrefillHit(ids_, ref_ids_, ref->kv, match, &cache, logits.data());
  ASSERT_TRUE(st.ok()) << st.status();
  const int64_t n = static_cast<int64_t>(ids_.size()), r = n - lcp_;
  ASSERT_EQ(st->plan, ReuseKind::kHybridSelective);
  EXPECT_TRUE(st->hit);
  EXPECT_FALSE(st->fallback);
  EXPECT_EQ(st->copied_rows, lcp_);
  EXPECT_EQ(st->layer_computed[0], r);
  // Layer 1 recomputes ceil(0.4 r) of the remainder, plus forced tokens beyond it.
  EXPECT_GE(st->layer_computed[1], static_cast<int64_t>(std::ceil(0.4 * r)));
  EXPECT_LT(st->layer_computed[1], r);
  EXPECT_EQ(st->recomputed_tokens, st->layer_computed[1]);
  EXPECT_EQ(st->reused_tokens, n - st->layer_computed[1]);
  const int64_t last = cache.n_layers() - 1;
  EXPECT_LT(cache.layer(last).rows(), n);  // retention trimmed the remainder's rows
  EXPECT_LE(st->layer_computed[last], st->layer_computed[1]);
  ExpectPrefixRowsAreTheReferences(cache, ref->kv, lcp_);
}

TEST_F(HybridSelectiveTest, GuardComputesThePoorRemainderInFullAfterTheCopiedRows) {
  ASSERT_NE(model_, nullptr);
  // An unrelated remainder (other sentences), forced through the rule with threshold 0. Its
  // mean layer-0 deviation is 2.3 on the default model, the reordered remainder's 0.45: a
  // guard at 1.5 (below the default 2.5) tells them apart.
  const std::vector<int32_t> other = Tokens(Sentences(8, 40));
  ReuseConfig cfg;
  cfg.hybrid_selective_min_tokens = 64;
  cfg.hit_threshold = 0.0f;
  cfg.fallback_deviation = 1.5f;
  CpuBackend be;
  ReusePrefiller p(*model_, be, cfg);
  auto ref = p.MakeReference(ref_ids_);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const TokenMatch match = p.Match(p.Sketch(other), ref->sketch);
  KvCache cache = p.forward().NewCache();
  std::vector<float> logits(model_->config.vocab_size);
  auto st = p.PrefillHit(other, ref_ids_, ref->kv, match, &cache, logits.data());
  ASSERT_TRUE(st.ok()) << st.status();
  const int64_t n = static_cast<int64_t>(other.size());
  const int64_t lcp = CommonPrefix(other, ref_ids_, n - 1);
  ASSERT_GT(lcp, 150);
  ASSERT_EQ(st->plan, ReuseKind::kHybridSelective);
  EXPECT_TRUE(st->fallback) << st->guard_deviation;
  EXPECT_TRUE(st->hit);  // the copied rows were still used
  EXPECT_EQ(st->copied_rows, lcp);
  EXPECT_EQ(st->recomputed_tokens, n - lcp);
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    EXPECT_EQ(st->layer_computed[l], n - lcp) << "layer " << l;
    EXPECT_EQ(cache.layer(l).rows(), n) << "layer " << l;
  }
  ExpectPrefixRowsAreTheReferences(cache, ref->kv, lcp);
  EXPECT_LE(MaxRelDiff(logits, FullLogits(other)), 2e-4);
}

TEST_F(HybridSelectiveTest, ServingRuleSendsOnlyALongMatchingRemainderToTheSelectivePath) {
  ASSERT_NE(model_, nullptr);
  ReuseConfig cfg;
  cfg.hybrid_selective_min_tokens = 64;
  CpuBackend be;
  ReusePrefiller p(*model_, be, cfg);
  CpuServingSession session(p);
  auto ref = p.MakeReference(ref_ids_);
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::vector<uint64_t> features = store::PromptFeatures(ref_ids_);
  absl::StatusOr<store::Record> rec = store::RecordFromReference(
      store::Namespace{"t", model_->fingerprint}, *std::move(ref), cfg, std::move(features));
  ASSERT_TRUE(rec.ok()) << rec.status();
  // The long reordered remainder matches: the selective path after the copied rows.
  std::optional<ReusePlan> m = serving::PlanHybridRemainder(session, cfg, ids_, *rec, lcp_);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->kind, ReuseKind::kHybridSelective);
  EXPECT_EQ(m->n, static_cast<int64_t>(ids_.size()));
  EXPECT_EQ(m->copy_rows, lcp_);
  // The reference's prompt plus a short question: its remainder stays on the full path.
  std::vector<int32_t> turn = ref_ids_;
  for (int32_t id : model_->tokenizer->Encode(" And then?", false)) turn.push_back(id);
  const int64_t copied = static_cast<int64_t>(ref_ids_.size());
  EXPECT_FALSE(serving::PlanHybridRemainder(session, cfg, turn, *rec, copied).has_value());
  // So does the long one with the knob off, or a remainder shorter than it.
  ReuseConfig off = cfg;
  off.hybrid_selective_min_tokens = 0;
  EXPECT_FALSE(serving::PlanHybridRemainder(session, off, ids_, *rec, lcp_).has_value());
  ReuseConfig high = cfg;
  high.hybrid_selective_min_tokens = static_cast<int32_t>(ids_.size() - lcp_) + 1;
  EXPECT_FALSE(serving::PlanHybridRemainder(session, high, ids_, *rec, lcp_).has_value());
}

// The server's pipeline (serving/pipeline.h) with the knob on: a miss publishes its turn; the
// same report with the notes reordered hits it as a hybrid whose remainder takes the selective
// path (kind "hybrid", the prefix copied, fewer remainder tokens computed than it has, not
// published); the published turn plus a short question copies and computes in full ("exact").
TEST_F(HybridSelectiveTest, PipelineServesALongMatchingRemainderAsASelectiveHybrid) {
  ASSERT_NE(model_, nullptr);
  absl::StatusOr<std::unique_ptr<store::ReferenceStore>> st =
      store::ReferenceStore::Open(store::StoreOptions{});
  ASSERT_TRUE(st.ok()) << st.status();
  serving::PipelineOptions po;
  po.serving.reuse.hybrid_selective_min_tokens = 64;
  po.serving.max_prompt_tokens = 8192;
  po.loop.kv_cache_bytes = int64_t{512} << 20;
  absl::StatusOr<std::unique_ptr<serving::Pipeline>> made = serving::Pipeline::Create(
      std::shared_ptr<const Model>(model_, [](const Model*) {}), po, st->get(), nullptr);
  ASSERT_TRUE(made.ok()) << made.status();
  serving::Pipeline& pipeline = **made;
  auto serve = [&](const std::string& prompt) {
    auto req = std::make_shared<serving::ServeRequest>();
    req->input.prompt = prompt;
    req->options.max_tokens = 4;
    req->ns = store::Namespace{"t", model_->fingerprint};
    std::promise<absl::StatusOr<serving::ServeResult>> done;
    std::future<absl::StatusOr<serving::ServeResult>> got = done.get_future();
    EXPECT_TRUE(pipeline
                    .Generate(req,
                              [&done](absl::StatusOr<serving::ServeResult> r) {
                                done.set_value(std::move(r));
                              })
                    .ok());
    absl::StatusOr<serving::ServeResult> r = got.get();
    (*st)->Flush();  // the turn's record is in the store before the next request looks
    return r;
  };
  std::vector<std::string> notes = Sentences(8, 12);
  auto text = [&](const std::vector<std::string>& n) {
    std::string t = "Read the report, then the notes, and answer.\nReport:\n";
    for (const std::string& s : Sentences(12, 0)) t += s + "\n";
    t += "Notes:\n";
    for (const std::string& s : n) t += s + "\n";
    return t + "Question: what happened first?\nAnswer:";
  };
  const std::string first = text(notes);
  absl::StatusOr<serving::ServeResult> miss = serve(first);
  ASSERT_TRUE(miss.ok()) << miss.status();
  EXPECT_EQ(miss->cache_result, serving::CacheResult::kMiss);
  EXPECT_TRUE(miss->published);
  std::reverse(notes.begin(), notes.end());
  absl::StatusOr<serving::ServeResult> hybrid = serve(text(notes));
  ASSERT_TRUE(hybrid.ok()) << hybrid.status();
  const int64_t n = hybrid->gen.prompt_tokens;
  EXPECT_EQ(hybrid->cache_result, serving::CacheResult::kHit);
  EXPECT_STREQ(hybrid->hit_kind, "hybrid");
  EXPECT_GT(hybrid->exact_tokens, 150);
  EXPECT_GT(hybrid->exact_tokens, n / 2);  // the exact prefix covers most: the hit rule's hybrid
  EXPECT_LT(hybrid->recomputed_tokens, n - hybrid->exact_tokens);  // selective on the remainder
  EXPECT_EQ(hybrid->reused_tokens + hybrid->recomputed_tokens, n);
  EXPECT_FALSE(hybrid->published);  // lossy KV is not published
  absl::StatusOr<serving::ServeResult> turn = serve(first + miss->gen.text + " And then?");
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_STREQ(turn->hit_kind, "exact");  // a short remainder: computed in full
  EXPECT_EQ(turn->recomputed_tokens, turn->gen.prompt_tokens - turn->exact_tokens);
  EXPECT_GT(turn->exact_tokens, hybrid->exact_tokens);
  pipeline.Close();
  EXPECT_TRUE(pipeline.WaitIdle(60000));
}

}  // namespace
}  // namespace semshare::engine
