// The server's device path (engine/cuda/cuda_serving.h) against its CPU path
// (CpuServingSession) on a small random-weight model, through the ServingSession interface the
// server's workers call: a miss (full prefill, 16 decode steps, TakeKv of every row), the
// lookup's token matching (device vs CPU matcher), then a hit against the miss' KV as the
// reference (selective prefill with the same plan, retention, 16 decode steps), a second hit
// against a shorter reference (the session's pinned buffers and upload events reused), two
// sessions sharing one runtime's weights, the memory gauge's figures, and bad plans refused with
// InvalidArgument. Logits within 3e-2 (full) and 5e-2 (selective) of the CPU's, as
// cuda_forward_test.cc; the decode is teacher-forced with the CPU's greedy token.
#include "engine/cuda/cuda_serving.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <span>
#include <utility>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/serving_session.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace semshare::testing {
namespace {

class CudaServingTest : public GpuTest {
 protected:
  engine::CpuBackend cpu_;
};

// ExpectSameGreedyDecode through two sessions' Step.
void DecodeBoth(engine::ServingSession& c, engine::ServingSession& g, std::vector<float>& lc,
                std::vector<float>& lg, int steps, double bound, const char* what) {
  SCOPED_TRACE(what);
  ExpectSameGreedyDecode(lc, lg, /*first_pos=*/0, steps, bound, [&](int32_t tok, int32_t) {
    SEMSHARE_STATUS_RETURN(c.Step(tok, lc.data()));
    return g.Step(tok, lg.data());
  });
}

// Begin (room for `rows` rows) and the same hit on both sessions: stats to *sc / *sg, logits
// to lc / lg.
void HitBoth(engine::ServingSession& c, engine::ServingSession& g, std::span<const int32_t> ids,
             std::span<const int32_t> ref_ids, const engine::KvCache& ref_kv,
             const engine::TokenMatch& match, int64_t rows, std::vector<float>& lc,
             std::vector<float>& lg, engine::PrefillStats* sc, engine::PrefillStats* sg) {
  ASSERT_TRUE(c.Begin(rows).ok());
  ASSERT_TRUE(g.Begin(rows).ok());
  auto a = c.PrefillHit(ids, ref_ids, ref_kv, match, lc.data());
  auto b = g.PrefillHit(ids, ref_ids, ref_kv, match, lg.data());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  *sc = *std::move(a);
  *sg = *std::move(b);
}

TEST_F(CudaServingTest, MissThenHitMatchTheCpuSession) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  engine::ReuseConfig cfg;
  cfg.hit_threshold = 0.0f;  // the server judges hits; the plan below is used as given
  engine::ReusePrefiller pc(*model, cpu_, cfg);
  engine::CpuServingSession cs(pc);
  auto runtime = engine::MakeServingRuntime("cuda", *model, cfg, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  ASSERT_NE(*runtime, nullptr);
  auto gs = (*runtime)->NewSession();
  ASSERT_TRUE(gs.ok()) << gs.status();
  engine::ServingSession& g = **gs;
  EXPECT_EQ(g.backend(), "cuda");

  // Miss: full prefill + decode, then the KV handed back for publishing.
  const auto ref_ids = RandomIds(300, vocab, seed_ + 1);
  const int steps = 16;
  std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
  ASSERT_TRUE(cs.Begin(300 + steps).ok());
  ASSERT_TRUE(g.Begin(300 + steps).ok());
  ASSERT_TRUE(cs.PrefillFull(ref_ids, lc.data()).ok());
  auto s = g.PrefillFull(ref_ids, lg.data());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_LT(RelDiff(lg, lc), 3e-2);
  DecodeBoth(cs, g, lc, lg, steps, 3e-2, "miss");
  EXPECT_EQ(g.KvBytes() * 2, cs.KvBytes());  // bf16 on the device, float on the host
  auto kc = cs.TakeKv();
  auto kg = g.TakeKv();
  ASSERT_TRUE(kc.ok() && kg.ok()) << kg.status();
  ASSERT_EQ(kg->n_layers(), kc->n_layers());
  for (int64_t l = 0; l < kc->n_layers(); ++l) {
    EXPECT_EQ(kg->layer(l).pos, kc->layer(l).pos) << "layer " << l;
    EXPECT_LT(RelDiff(kg->layer(l).k, kc->layer(l).k), 2e-2) << "layer " << l;
    EXPECT_LT(RelDiff(kg->layer(l).v, kc->layer(l).v), 2e-2) << "layer " << l;
  }
  EXPECT_EQ(g.KvBytes(), 0);

  // Hit: the CPU's prompt KV (trimmed to the prompt) is the reference for an edited prompt.
  engine::KvCache ref_kv = std::move(*kc);
  for (int64_t l = 0; l < ref_kv.n_layers(); ++l) {
    engine::LayerKv& layer = ref_kv.layer(l);
    const int64_t kvd = ref_kv.kv_dim();
    layer.pos.resize(300);
    layer.k.resize(300 * kvd);
    layer.v.resize(300 * kvd);
  }
  const auto ids = EditedIds(ref_ids, vocab, seed_ + 2);
  const engine::TokenMatch match = pc.Match(pc.Sketch(ids), pc.Sketch(ref_ids));

  // The lookup's matching on the device (DeviceMatcher over the BF16 embeddings) against the
  // CPU session's (TokenMatcher over float ones): the same quality of plan. Indices may differ
  // where bf16 rounding reorders near-equal cosines (repeated tokens of this small vocabulary
  // differ only by the E-cache rotation), so the figures are compared, not the indices.
  ASSERT_TRUE(cs.SetTarget(ids).ok());
  ASSERT_TRUE(g.SetTarget(ids).ok());
  auto mc = cs.MatchReference(ref_ids);
  auto mg = g.MatchReference(ref_ids);
  ASSERT_TRUE(mc.ok() && mg.ok()) << mg.status();
  EXPECT_NEAR(mg->similarity, mc->similarity, 2e-2);
  EXPECT_NEAR(static_cast<double>(mg->matched), static_cast<double>(mc->matched),
              0.05 * static_cast<double>(ids.size()));
  ASSERT_EQ(mg->ref_index.size(), ids.size());
  for (int32_t r : mg->ref_index) ASSERT_LT(r, 300);
  EXPECT_EQ(cs.TakeTargetSketch().n, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(g.TakeTargetSketch().n, 0);  // a device session keeps no host sketch
  engine::PrefillStats sc, sg;
  ASSERT_NO_FATAL_FAILURE(
      HitBoth(cs, g, ids, ref_ids, ref_kv, match, 300 + steps, lc, lg, &sc, &sg));
  EXPECT_EQ(sg.layer_computed, sc.layer_computed);
  EXPECT_EQ(sg.layer_rows, sc.layer_rows);
  EXPECT_EQ(sg.recomputed_tokens, sc.recomputed_tokens);
  EXPECT_EQ(sg.reused_tokens, sc.reused_tokens);
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  DecodeBoth(cs, g, lc, lg, steps, 5e-2, "hit");

  // A second hit on the same session against a shorter reference (the first 150 tokens): the
  // pinned buffers are refilled in place (PinnedKv keeps them) and the upload waits for the
  // previous one's events, the path every hit after a server's first takes.
  const std::vector<int32_t> short_ids(ref_ids.begin(), ref_ids.begin() + 150);
  engine::KvCache short_kv = ref_kv.Copy();
  for (int64_t l = 0; l < short_kv.n_layers(); ++l) {
    engine::LayerKv& layer = short_kv.layer(l);
    layer.pos.resize(150);
    layer.k.resize(150 * short_kv.kv_dim());
    layer.v.resize(150 * short_kv.kv_dim());
  }
  const engine::TokenMatch prefix_match = pc.Match(pc.Sketch(ids), pc.Sketch(short_ids));
  ASSERT_NO_FATAL_FAILURE(
      HitBoth(cs, g, ids, short_ids, short_kv, prefix_match, 300 + steps, lc, lg, &sc, &sg));
  EXPECT_EQ(sg.layer_rows, sc.layer_rows);
  EXPECT_EQ(sg.reused_tokens, sc.reused_tokens);
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  DecodeBoth(cs, g, lc, lg, 4, 5e-2, "second hit");

  // A repeat of the reference takes the exact-reuse path on both: the prefix rows copied, the
  // window computed, every row kept.
  const engine::TokenMatch self_match = pc.Match(pc.Sketch(ref_ids), pc.Sketch(ref_ids));
  ASSERT_NO_FATAL_FAILURE(
      HitBoth(cs, g, ref_ids, ref_ids, ref_kv, self_match, 300 + steps, lc, lg, &sc, &sg));
  EXPECT_EQ(sc.reused_tokens, 300 - cfg.window);
  EXPECT_EQ(sg.reused_tokens, sc.reused_tokens);
  EXPECT_EQ(sg.layer_rows, sc.layer_rows);
  EXPECT_EQ(sg.layer_rows, std::vector<int64_t>(ref_kv.n_layers(), 300));
  EXPECT_EQ(g.KvBytes() * 2, cs.KvBytes());
  EXPECT_LT(RelDiff(lg, lc), 3e-2);
  DecodeBoth(cs, g, lc, lg, 4, 3e-2, "repeat");

  // A second session shares the weights: same logits for the same prompt, and the memory
  // figures count the weights once plus both sessions' KV.
  auto gs2 = (*runtime)->NewSession();
  ASSERT_TRUE(gs2.ok()) << gs2.status();
  std::vector<float> lg2(vocab);
  ASSERT_TRUE((*gs2)->Begin(300).ok());
  ASSERT_TRUE((*gs2)->PrefillFull(ref_ids, lg2.data()).ok());
  ASSERT_TRUE(cs.Begin(300).ok());
  ASSERT_TRUE(cs.PrefillFull(ref_ids, lc.data()).ok());
  EXPECT_LT(RelDiff(lg2, lc), 3e-2);
  const engine::BackendMemory m = (*runtime)->Memory();
  EXPECT_TRUE(m.device);
  EXPECT_GE(m.used, g.KvBytes() + (*gs2)->KvBytes());
  EXPECT_GE(m.peak, m.used);
  EXPECT_GT(m.total, m.used);

  // Bad plans: InvalidArgument, and the session still serves.
  engine::TokenMatch short_match = match;
  short_match.ref_index.pop_back();
  ASSERT_TRUE(g.Begin(300).ok());
  EXPECT_EQ(g.PrefillHit(ids, ref_ids, ref_kv, short_match, lg.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  engine::TokenMatch past = match;
  past.ref_index[0] = 300;
  EXPECT_EQ(g.PrefillHit(ids, ref_ids, ref_kv, past, lg.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(g.Begin(300).ok());
  EXPECT_TRUE(g.PrefillFull(ref_ids, lg.data()).ok());
}

}  // namespace
}  // namespace semshare::testing
