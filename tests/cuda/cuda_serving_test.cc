// The server's device path (engine/cuda/cuda_serving.h) against its CPU path
// (CpuServingSession) on a small random-weight model, through the ServingSession interface the
// server's workers call: a miss (full prefill, 16 decode steps, TakeKv of every row), the
// lookup's token matching (device vs CPU matcher), then a hit against the miss' KV as the
// reference (selective prefill with the same plan, retention, 16 decode steps), a second hit
// against a shorter reference (the session's pinned buffers and upload events reused), two
// sessions sharing one runtime's weights, the memory gauge's figures, and bad plans refused with
// InvalidArgument. Then the resident reference tier (repeated hits, exact reuse, a replaced KV,
// budgets 0 and one entry) and two sessions serving at once from two host threads. Logits within
// 3e-2 (full) and 5e-2 (selective) of the CPU's, as cuda_forward_test.cc; the decode is
// teacher-forced with the CPU's greedy token.
#include "engine/cuda/cuda_serving.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
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

// The resident reference tier (CudaServingSession::ref_tier_stats): a repeated hit is served
// from the device copy (same logits as the first, both within the CPU's bound), an exact-reuse
// repeat of the reference too, a different KV under the same ids is not served stale, a budget
// of 0 keeps nothing (same logits), and a budget of one entry evicts the least recently used.
TEST_F(CudaServingTest, RepeatedHitsServeTheReferenceFromTheDeviceTier) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  engine::ReuseConfig cfg;
  cfg.hit_threshold = 0.0f;
  engine::ReusePrefiller pc(*model, cpu_, cfg);
  engine::CpuServingSession cs(pc);
  auto runtime = engine::MakeServingRuntime("cuda", *model, cfg, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  auto session = [&]() {
    auto g = (*runtime)->NewSession();
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *std::move(g) : nullptr;
  };
  using Tier = engine::cuda::CudaServingSession::RefTierStats;
  auto tier = [](engine::ServingSession& g) {
    return dynamic_cast<engine::cuda::CudaServingSession&>(g).ref_tier_stats();
  };
  const int64_t m = 400;  // one reference: 3 layers * 400 rows * (2 * 128 * 2 + 4) B, ~0.6 MiB
  const auto ref_ids = RandomIds(m, vocab, seed_ + 1);
  auto ref = pc.MakeReference(ref_ids);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const auto ids = EditedIds(ref_ids, vocab, seed_ + 2);
  const engine::TokenMatch match = pc.Match(pc.Sketch(ids), ref->sketch);
  const engine::TokenMatch self = pc.Match(ref->sketch, ref->sketch);
  const int64_t entry = 3 * m * (2 * 128 * 2 + 4);
  std::vector<float> lc(vocab), lg(vocab), first(vocab);
  engine::PrefillStats sc, sg;

  auto g = session();
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(tier(*g).budget, int64_t{1024} << 20);  // the default
  ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *g, ids, ref_ids, ref->kv, match, m, lc, lg, &sc, &sg));
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  Tier t = tier(*g);
  EXPECT_EQ(t.misses, 1);
  EXPECT_EQ(t.hits, 0);
  EXPECT_EQ(t.entries, 1);
  EXPECT_EQ(t.bytes, entry);
  first = lg;
  ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *g, ids, ref_ids, ref->kv, match, m, lc, lg, &sc, &sg));
  EXPECT_EQ(tier(*g).hits, 1);
  EXPECT_LT(RelDiff(lg, first), 1e-5) << "the resident copy is the uploaded one";
  EXPECT_EQ(sg.layer_rows, sc.layer_rows);
  // The exact-reuse repeat reads the same resident copy (prefix rows copied on the device).
  ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *g, ref_ids, ref_ids, ref->kv, self, m, lc, lg, &sc, &sg));
  EXPECT_EQ(tier(*g).hits, 2);
  EXPECT_EQ(sg.reused_tokens, sc.reused_tokens);
  EXPECT_LT(RelDiff(lg, lc), 3e-2);
  // Another KV under the same ids (a store entry replaced): uploaded, not served stale.
  engine::KvCache changed = ref->kv.Copy();
  for (int64_t l = 0; l < changed.n_layers(); ++l) {
    for (float& x : changed.layer(l).k) x *= 1.5f;
  }
  ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *g, ids, ref_ids, changed, match, m, lc, lg, &sc, &sg));
  t = tier(*g);
  EXPECT_EQ(t.misses, 2);
  EXPECT_EQ(t.entries, 2);
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  EXPECT_GT(RelDiff(lg, first), 1e-4) << "the changed reference was not used";

  // Budget 0: nothing kept, the same answer.
  ASSERT_EQ(setenv("SEMSHARE_CUDA_REF_TIER_MB", "0", 1), 0);
  auto off = session();
  // Budget 1 MiB: room for one of these references.
  ASSERT_EQ(setenv("SEMSHARE_CUDA_REF_TIER_MB", "1", 1), 0);
  auto one = session();
  unsetenv("SEMSHARE_CUDA_REF_TIER_MB");
  ASSERT_NE(off, nullptr);
  ASSERT_NE(one, nullptr);
  ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *off, ids, ref_ids, ref->kv, match, m, lc, lg, &sc, &sg));
  EXPECT_LT(RelDiff(lg, first), 1e-5);
  EXPECT_EQ(tier(*off).entries, 0);
  EXPECT_EQ(tier(*off).bytes, 0);
  const auto other_ids = RandomIds(m, vocab, seed_ + 3);
  auto other = pc.MakeReference(other_ids);
  ASSERT_TRUE(other.ok()) << other.status();
  const engine::TokenMatch other_match = pc.Match(pc.Sketch(ids), other->sketch);
  for (int round = 0; round < 2; ++round) {  // A, B, A, B: each evicts the other
    ASSERT_NO_FATAL_FAILURE(HitBoth(cs, *one, ids, ref_ids, ref->kv, match, m, lc, lg, &sc, &sg));
    EXPECT_LT(RelDiff(lg, first), 1e-5);
    ASSERT_NO_FATAL_FAILURE(
        HitBoth(cs, *one, ids, other_ids, other->kv, other_match, m, lc, lg, &sc, &sg));
    EXPECT_LT(RelDiff(lg, lc), 5e-2);
    EXPECT_EQ(tier(*one).entries, 1);
    EXPECT_LE(tier(*one).bytes, tier(*one).budget);
  }
  EXPECT_EQ(tier(*one).misses, 4);
  EXPECT_EQ(tier(*one).hits, 0);
}

// Two sessions of one runtime used at once from two host threads (the server's workers: each
// thread's current device, its own streams and pool, the weights shared), three rounds each of a
// miss, a selective hit and an exact-reuse repeat with 4 decode steps after each, on prompts of
// its own. Every logits vector within the bounds of the CPU session's for the same request
// (computed first on this thread; decode teacher-forced with the CPU's greedy tokens).
TEST_F(CudaServingTest, TwoSessionsOnTwoThreadsMatchTheCpu) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  engine::ReuseConfig cfg;
  cfg.hit_threshold = 0.0f;
  engine::ReusePrefiller pc(*model, cpu_, cfg);
  engine::CpuServingSession cs(pc);
  auto runtime = engine::MakeServingRuntime("cuda", *model, cfg, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  constexpr int kThreads = 2, kRounds = 3, kSteps = 4;
  struct Request {
    std::vector<int32_t> ids;                   // the prompt
    const engine::TokenMatch* match;            // null: a miss
    std::vector<int32_t> tokens;                // the CPU's greedy tokens, fed to both
    std::vector<std::vector<float>> want, got;  // prefill logits, then each step's
  };
  struct Work {
    std::vector<int32_t> ref_ids;
    std::unique_ptr<engine::Reference> ref;
    engine::TokenMatch hit_match, self_match;
    std::vector<Request> requests;
    absl::Status status;
  };
  std::vector<Work> work(kThreads);
  for (int w = 0; w < kThreads; ++w) {
    Work& wk = work[w];
    wk.ref_ids = RandomIds(260 + 30 * w, vocab, seed_ + 10 * w + 1);
    auto ref = pc.MakeReference(wk.ref_ids);
    ASSERT_TRUE(ref.ok()) << ref.status();
    wk.ref = std::make_unique<engine::Reference>(*std::move(ref));
    const auto ids = EditedIds(wk.ref_ids, vocab, seed_ + 10 * w + 2);
    wk.hit_match = pc.Match(pc.Sketch(ids), wk.ref->sketch);
    wk.self_match = pc.Match(wk.ref->sketch, wk.ref->sketch);
    wk.requests = {{wk.ref_ids, nullptr, {}, {}, {}},
                   {ids, &wk.hit_match, {}, {}, {}},
                   {wk.ref_ids, &wk.self_match, {}, {}, {}}};
    for (Request& r : wk.requests) {
      std::vector<float> l(vocab);
      ASSERT_TRUE(cs.Begin(static_cast<int64_t>(r.ids.size()) + kSteps).ok());
      if (r.match == nullptr) {
        ASSERT_TRUE(cs.PrefillFull(r.ids, l.data()).ok());
      } else {
        ASSERT_TRUE(cs.PrefillHit(r.ids, wk.ref_ids, wk.ref->kv, *r.match, l.data()).ok());
      }
      r.want.push_back(l);
      for (int i = 0; i < kSteps; ++i) {
        r.tokens.push_back(ArgmaxOf(l));
        ASSERT_TRUE(cs.Step(r.tokens.back(), l.data()).ok());
        r.want.push_back(l);
      }
    }
  }
  std::vector<std::unique_ptr<engine::ServingSession>> sessions;
  for (int w = 0; w < kThreads; ++w) {
    auto g = (*runtime)->NewSession();
    ASSERT_TRUE(g.ok()) << g.status();
    sessions.push_back(*std::move(g));
  }
  auto serve = [&](int w) {
    Work& wk = work[w];
    engine::ServingSession& g = *sessions[w];
    auto one = [&](Request& r) -> absl::Status {
      std::vector<float> l(vocab, std::nanf(""));
      SEMSHARE_STATUS_RETURN(g.Begin(static_cast<int64_t>(r.ids.size()) + kSteps));
      if (r.match == nullptr) {
        SEMSHARE_STATUS_RETURN(g.PrefillFull(r.ids, l.data()));
      } else {
        auto st = g.PrefillHit(r.ids, wk.ref_ids, wk.ref->kv, *r.match, l.data());
        if (!st.ok()) return st.status();
      }
      r.got.push_back(l);
      for (int32_t tok : r.tokens) {
        SEMSHARE_STATUS_RETURN(g.Step(tok, l.data()));
        r.got.push_back(l);
      }
      return absl::OkStatus();
    };
    for (int round = 0; round < kRounds && wk.status.ok(); ++round) {
      for (Request& r : wk.requests) {
        r.got.clear();
        wk.status = one(r);
        if (!wk.status.ok()) return;
        for (size_t i = 0; i < r.want.size(); ++i) {
          const double bound = r.match == nullptr || r.match == &wk.self_match ? 3e-2 : 5e-2;
          if (RelDiff(r.got[i], r.want[i]) >= bound) {
            wk.status = absl::InternalError(absl::StrCat(
                "thread ", w, " round ", round, " request ", &r - wk.requests.data(), " logits ", i,
                ": relative difference ", RelDiff(r.got[i], r.want[i]), " >= ", bound));
            return;
          }
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < kThreads; ++w) threads.emplace_back(serve, w);
  for (std::thread& t : threads) t.join();
  for (int w = 0; w < kThreads; ++w) EXPECT_TRUE(work[w].status.ok()) << work[w].status;
}

}  // namespace
}  // namespace semshare::testing
