// CudaForward (weights, activations and KV on the device) against the CPU engine on small
// random-weight models: full prefill logits, 16 decode steps, a selective (semshare) prefill
// with the same plan (the CPU matcher's TokenMatch; the reference KV moved through pinned
// memory on the copy stream), retention and 16 decode steps on the retained cache, and the KV
// accounting. Tokens and logits are compared at every step (greedy, teacher-forced with the
// CPU's token so that one near-tie flip does not derail the rest). Bounds as in
// cuda_backend_test.cc: 3e-2 for logits (bf16 GEMM operands and bf16 KV at every layer), 5e-2
// for the selective path (its recompute set follows a deviation ranking bf16 may reorder).
// Also: the selective path with the adjacent RoPE pairing of GGUF llama models; a hybrid plan
// (copied prefix rows, the selective path on the remainder, and its fallback); head_dim 128
// with a ~4k-token prompt (flash prefill, chunked and whole) and split-KV decode after it;
// PinnedKv::FromDevice.
#include "engine/cuda/cuda_forward.h"

#include <gtest/gtest.h>

#include <numeric>

#include "engine/cpu/cpu_backend.h"
#include "engine/llama_forward.h"
#include "engine/reuse/reuse_prefill.h"
#include "kernels/attention.cuh"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace semshare::testing {
namespace {

using engine::cuda::CudaContext;
using engine::cuda::CudaForward;
using engine::cuda::DeviceKvCache;
using engine::cuda::DeviceModel;

class CudaForwardTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto c = CudaContext::Create(0);
    ASSERT_TRUE(c.ok()) << c.status();
    ctx_ = std::move(*c);
  }
  void SelectiveParity(engine::RopeStyle style);
  std::unique_ptr<CudaContext> ctx_;
  engine::CpuBackend cpu_;
};

TEST_F(CudaForwardTest, FullPrefillAndDecodeMatchCpu) {
  for (auto arch : {engine::Arch::kLlama, engine::Arch::kQwen2, engine::Arch::kMistral}) {
    auto model = arch == engine::Arch::kLlama
                     ? SmallLlama(seed_)
                     : TinyModel(arch, engine::RopeStyle::kAdjacent, seed_);
    const int64_t vocab = model->config.vocab_size;
    auto dm = DeviceModel::Upload(*ctx_, *model);
    ASSERT_TRUE(dm.ok()) << dm.status();
    // A chunk size below the prompt length exercises chunked prefill too.
    CudaForward fg(*ctx_, **dm, /*max_chunk=*/64);
    engine::LlamaForward fc(*model, cpu_);
    const auto ids = RandomIds(173, vocab, seed_ + 1);
    std::vector<int32_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    engine::KvCache cc = fc.NewCache();
    DeviceKvCache cg = fg.NewCache();
    std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
    ASSERT_TRUE(fc.Forward(ids, pos, cc, lc.data()).ok());
    auto s = fg.Forward(ids, pos, cg, lg.data());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_LT(RelDiff(lg, lc), 3e-2) << engine::ArchName(arch);
    EXPECT_EQ(cg.rows(), static_cast<int64_t>(ids.size()));
    EXPECT_EQ(cg.ByteSize(), cc.ByteSize() / 2);  // bf16 rows vs float rows
    const auto [lo, hi] = std::minmax_element(lc.begin(), lc.end());
    const float margin = 0.05f * (*hi - *lo);  // near ties bf16 may flip
    ExpectSameGreedyDecode(lc, lg, static_cast<int32_t>(ids.size()), 16, 3e-2,
                           [&](int32_t tok, int32_t p) {
                             SEMSHARE_STATUS_RETURN(fc.Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
                             return fg.Forward({&tok, 1}, {&p, 1}, cg, lg.data());
                           });
    // Greedy sampling on the device: the next token without copying the logits.
    {
      const int32_t tok = ArgmaxOf(lc), p = static_cast<int32_t>(ids.size()) + 16;
      engine::KvCache cc2 = cc.Copy();
      std::vector<float> l2(vocab);
      ASSERT_TRUE(fc.Forward({&tok, 1}, {&p, 1}, cc2, l2.data()).ok());
      auto next = fg.ForwardSample({&tok, 1}, {&p, 1}, cg, 0.0f, 0, 1.0f, 0.0f);
      ASSERT_TRUE(next.ok()) << next.status();
      EXPECT_TRUE(SameTokenOrNearTie(l2, *next, margin));
      cc = std::move(cc2);
    }
    // The device KV itself, against the CPU's (bf16 storage).
    engine::KvCache back;
    ASSERT_TRUE(cg.ToHost(&back).ok());
    for (int64_t l = 0; l < cc.n_layers(); ++l) {
      EXPECT_EQ(back.layer(l).pos, cc.layer(l).pos);
      EXPECT_LT(RelDiff(back.layer(l).k, cc.layer(l).k), 3e-2) << "layer " << l;
    }
    // Errors are statuses.
    const int32_t bad = static_cast<int32_t>(vocab), p0 = 1000;
    EXPECT_EQ(fg.Forward({&bad, 1}, {&p0, 1}, cg, lg.data()).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

// The selective path of SelectivePrefillSamePlanAndRetentionMatchCpu* below, for a RoPE style.
void CudaForwardTest::SelectiveParity(engine::RopeStyle style) {
  auto model = SmallLlama(seed_, style);
  const int64_t vocab = model->config.vocab_size;
  const auto ref_ids = RandomIds(300, vocab, seed_ + 1);
  const auto ids = EditedIds(ref_ids, vocab, seed_ + 2);
  auto dm = DeviceModel::Upload(*ctx_, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  CudaForward fg(*ctx_, **dm);
  engine::LlamaForward fc(*model, cpu_);
  // A longer full prefill first, so that the scratch is sized beyond the selective prompt (the
  // full prefill after the selective ones, at the end, checks the scratch survived their swaps).
  std::vector<int32_t> long_ids = ref_ids;
  long_ids.insert(long_ids.end(), ids.begin(), ids.end());
  std::vector<int32_t> long_pos(long_ids.size());
  std::iota(long_pos.begin(), long_pos.end(), 0);
  {
    DeviceKvCache warm = fg.NewCache();
    ASSERT_TRUE(fg.Forward(long_ids, long_pos, warm, nullptr).ok());
  }
  std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
  float margin = 0;

  // Two recompute schedules with the same plan (ParitySchedules says why their bounds differ).
  for (const ScheduleCase k : ParitySchedules()) {
    SCOPED_TRACE(::testing::Message() << "recompute_ratio " << k.recompute_ratio);
    engine::ReuseConfig cfg;
    cfg.hit_threshold = 0.0f;  // force a hit on the random model
    cfg.recompute_ratio = k.recompute_ratio;
    cfg.recompute_min_tokens = k.recompute_min_tokens;
    engine::ReusePrefiller pc(*model, cpu_, cfg);
    auto ref = pc.MakeReference(ref_ids);
    ASSERT_TRUE(ref.ok());
    engine::KvCache cc = pc.forward().NewCache();
    auto sc = pc.Prefill(ids, &*ref, &cc, lc.data());
    ASSERT_TRUE(sc.ok() && sc->hit);
    // The plan: PlanReuse of the CPU matcher's token match, as the CPU prefill makes it.
    const engine::TokenMatch match = pc.Match(pc.Sketch(ids), ref->sketch);

    engine::cuda::PinnedKv pinned;
    ASSERT_TRUE(pinned.From(ref->kv).ok());
    DeviceKvCache dref = fg.NewCache(), cg = fg.NewCache();
    ASSERT_TRUE(dref.StartUpload(pinned).ok());  // overlapped with layer 0 below
    engine::PrefillStats sg;
    auto s = fg.SelectivePrefill(ids, engine::PlanReuse(ids, ref_ids, match, cfg), &dref, cg,
                                 lg.data(), &sg);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(sg.hit);
    // Set sizes and retained row counts follow from counts alone, so they match exactly.
    EXPECT_EQ(sg.layer_computed, sc->layer_computed);
    EXPECT_EQ(sg.layer_rows, sc->layer_rows);
    EXPECT_EQ(sg.recomputed_tokens, sc->recomputed_tokens);
    EXPECT_LT(sg.recomputed_tokens, static_cast<int64_t>(ids.size()));  // the path is selective
    EXPECT_LT(RelDiff(lg, lc), k.bound);
    const auto [lo, hi] = std::minmax_element(lc.begin(), lc.end());
    margin = 0.05f * (*hi - *lo);  // near ties bf16 may flip (the snapkv check below)
    // Layer-0 deviations: fresh vs rearranged KV. A matched token's deviation is rounding alone
    // (~1e-6 of its row norm on the CPU, ~4e-3 with bf16 KV on the device) while replaced
    // tokens deviate by about the row norm itself, hence 5e-2 over the whole vector.
    ASSERT_EQ(sg.layer0_deviation.size(), sc->layer0_deviation.size());
    EXPECT_LT(RelDiff(sg.layer0_deviation, sc->layer0_deviation), 5e-2);
    for (int64_t l = 0; l < cc.n_layers(); ++l) {
      EXPECT_EQ(cg.layer(l).rows, cc.layer(l).rows());
      EXPECT_TRUE(std::is_sorted(cg.layer(l).host_pos.begin(), cg.layer(l).host_pos.end()));
    }
    EXPECT_EQ(sg.kv_bytes, cc.ByteSize() / 2);

    // The first token and 16 decode steps on the retained caches (rows differ per layer).
    ExpectSameGreedyDecode(lc, lg, static_cast<int32_t>(ids.size()), 16, k.bound,
                           [&](int32_t tok, int32_t p) {
                             SEMSHARE_STATUS_RETURN(fc.Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
                             return fg.Forward({&tok, 1}, {&p, 1}, cg, lg.data());
                           });
  }

  // Miss (no reference): every token at every layer, then retention (snapkv's path).
  engine::ReuseConfig snap;
  snap.mode = engine::PrefillMode::kSnapKv;
  engine::ReusePrefiller ps(*model, cpu_, snap);
  engine::KvCache cs = ps.forward().NewCache();
  DeviceKvCache gs = fg.NewCache();
  auto ss = ps.Prefill(ids, nullptr, &cs, lc.data());
  ASSERT_TRUE(ss.ok());
  engine::PrefillStats gst;
  ASSERT_TRUE(fg.SelectivePrefill(ids, engine::PlanNoReuse(static_cast<int64_t>(ids.size()), snap),
                                  nullptr, gs, lg.data(), &gst)
                  .ok());
  EXPECT_EQ(gst.layer_rows, ss->layer_rows);
  EXPECT_LT(gst.layer_rows.back(), static_cast<int64_t>(ids.size()));  // retention evicted
  // Which low-mass rows retention evicts can differ at bf16 near-ties: 5e-2 as above.
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  EXPECT_TRUE(SameTokenOrNearTie(lc, ArgmaxOf(lg), margin)) << "snapkv first token";

  // The selective path swaps its residual buffers; a later full prefill longer than the
  // selective prompt must still find room for all its rows (and match the CPU).
  engine::KvCache cl = fc.NewCache();
  DeviceKvCache gl = fg.NewCache();
  ASSERT_TRUE(fc.Forward(long_ids, long_pos, cl, lc.data()).ok());
  ASSERT_TRUE(fg.Forward(long_ids, long_pos, gl, lg.data()).ok());
  EXPECT_LT(RelDiff(lg, lc), 3e-2) << "full prefill after the selective path";
}

// Half-split RoPE pairs (HF checkpoints).
TEST_F(CudaForwardTest, SelectivePrefillSamePlanAndRetentionMatchCpu) {
  SelectiveParity(engine::RopeStyle::kHalfSplit);
}

// Adjacent RoPE pairs, as the GGUF loader gives llama models: the re-rotation of the reference's
// K rows (GatherRerotate) and the fresh K of the recomputed tokens must pair dimensions the
// same way the CPU does.
TEST_F(CudaForwardTest, SelectivePrefillSamePlanAndRetentionMatchCpuGgufLlamaAdjacentRope) {
  SelectiveParity(engine::RopeStyle::kAdjacent);
}

// head_dim 128 (the 8B shape) and a ~4k-token prompt: the flash kernel over 63 query blocks and
// 63 key tiles per block in one chunk, and again in 1024-token chunks (later chunks attend to
// the rows of earlier ones: m > n); then 16 decode steps, whose attention over ~4k rows takes the
// split-KV kernel and its combine (checked: this shape has a workspace). Both RoPE styles.
// A kHybridSelective plan (issue 15): rows [0, 120) copied from the reference, the selective
// path on the remainder attending over them, as the CPU executes the same plan
// (ReusePrefiller::PrefillPlan); then the same plan with a guard that always falls back (the
// remainder computed in full after the copied rows, still a hit).
TEST_F(CudaForwardTest, HybridSelectivePlanMatchesCpu) {
  auto model = SmallLlama(seed_, engine::RopeStyle::kAdjacent);
  const int64_t vocab = model->config.vocab_size;
  const auto ref_ids = RandomIds(300, vocab, seed_ + 1);
  constexpr int64_t kCopy = 120;
  // The reference's first kCopy tokens, then an edited, partly reordered rest.
  std::vector<int32_t> ids = EditedIds(ref_ids, vocab, seed_ + 2);
  std::copy_n(ref_ids.begin(), kCopy, ids.begin());
  const int64_t n = static_cast<int64_t>(ids.size());
  auto dm = DeviceModel::Upload(*ctx_, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  CudaForward fg(*ctx_, **dm);
  engine::LlamaForward fc(*model, cpu_);
  std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
  for (const bool fall_back : {false, true}) {
    SCOPED_TRACE(fall_back ? "guard falls back" : "selective remainder");
    engine::ReuseConfig cfg;
    cfg.hit_threshold = 0.0f;  // force a hit on the random model
    cfg.fallback_deviation = fall_back ? 1e-6f : 0.0f;
    cfg.recompute_min_tokens = 0;  // the remainder is 180 tokens: the paper's schedule on it
    engine::ReusePrefiller pc(*model, cpu_, cfg);
    auto ref = pc.MakeReference(ref_ids);
    ASSERT_TRUE(ref.ok());
    const engine::ReusePlan plan =
        engine::PlanSelective(pc.Match(pc.Sketch(ids), ref->sketch), cfg, kCopy);
    ASSERT_EQ(plan.kind, engine::ReuseKind::kHybridSelective);
    engine::KvCache cc = pc.forward().NewCache();
    auto sc = pc.PrefillPlan(ids, ref_ids, ref->kv, plan, &cc, lc.data());
    ASSERT_TRUE(sc.ok()) << sc.status();

    engine::cuda::PinnedKv pinned;
    ASSERT_TRUE(pinned.From(ref->kv).ok());
    DeviceKvCache dref = fg.NewCache(), cg = fg.NewCache();
    ASSERT_TRUE(dref.StartUpload(pinned).ok());
    engine::PrefillStats sg;
    auto s = fg.SelectivePrefill(ids, plan, &dref, cg, lg.data(), &sg);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(sg.hit);
    EXPECT_EQ(sg.fallback, fall_back);
    EXPECT_EQ(sg.fallback, sc->fallback);
    EXPECT_EQ(sg.copied_rows, kCopy);
    EXPECT_EQ(sg.copied_rows, sc->copied_rows);
    EXPECT_EQ(sg.layer_computed, sc->layer_computed);
    EXPECT_EQ(sg.layer_rows, sc->layer_rows);
    EXPECT_EQ(sg.recomputed_tokens, sc->recomputed_tokens);
    EXPECT_EQ(sg.reused_tokens, sc->reused_tokens);
    EXPECT_EQ(sg.layer_computed[0], n - kCopy);  // layer 0: the remainder only
    if (fall_back) {
      EXPECT_EQ(sg.recomputed_tokens, n - kCopy);
    } else {
      EXPECT_LT(sg.recomputed_tokens, n - kCopy);  // the remainder's path is selective
    }
    ASSERT_EQ(sg.layer0_deviation.size(), static_cast<size_t>(n - kCopy));
    EXPECT_LT(RelDiff(sg.layer0_deviation, sc->layer0_deviation), 5e-2);
    EXPECT_LT(RelDiff(lg, lc), 5e-2);
    // The copied rows are the reference's (bf16 on the device), and every layer lists its
    // positions in order from 0.
    engine::KvCache back;
    ASSERT_TRUE(cg.ToHost(&back).ok());
    const int64_t kvd = back.kv_dim();
    for (int64_t l = 0; l < back.n_layers(); ++l) {
      const auto& g = back.layer(l);
      ASSERT_GE(g.rows(), kCopy);
      EXPECT_EQ(g.rows(), cc.layer(l).rows()) << "layer " << l;
      for (int64_t i = 0; i < kCopy; ++i) ASSERT_EQ(g.pos[i], i) << "layer " << l;
      EXPECT_TRUE(std::is_sorted(g.pos.begin(), g.pos.end())) << "layer " << l;
      const std::vector<float> gk(g.k.begin(), g.k.begin() + kCopy * kvd);
      const std::vector<float> rk(ref->kv.layer(l).k.begin(),
                                  ref->kv.layer(l).k.begin() + kCopy * kvd);
      EXPECT_LT(RelDiff(gk, rk), 1e-2) << "layer " << l;
    }
    ExpectSameGreedyDecode(lc, lg, static_cast<int32_t>(n), 16, 5e-2, [&](int32_t tok, int32_t p) {
      SEMSHARE_STATUS_RETURN(fc.Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
      return fg.Forward({&tok, 1}, {&p, 1}, cg, lg.data());
    });
  }
  // A plan that copies rows needs the reference; a copy_prefix plan is the session's.
  engine::ReuseConfig cfg;
  engine::PrefillStats st;
  DeviceKvCache c1 = fg.NewCache();
  engine::ReusePlan bad = engine::PlanPrefixCopy(n, kCopy, cfg);
  EXPECT_EQ(fg.SelectivePrefill(ids, bad, nullptr, c1, nullptr, &st).code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(CudaForwardTest, Long4kPromptHeadDim128FlashPrefillAndSplitKvDecodeMatchCpu) {
  for (auto style : {engine::RopeStyle::kHalfSplit, engine::RopeStyle::kAdjacent}) {
    SCOPED_TRACE(style == engine::RopeStyle::kAdjacent ? "adjacent rope" : "half-split rope");
    auto model = Dim128Llama(seed_, style);
    const engine::ModelConfig& c = model->config;
    const int64_t vocab = c.vocab_size, n = 4000;
    auto dm = DeviceModel::Upload(*ctx_, *model);
    ASSERT_TRUE(dm.ok()) << dm.status();
    engine::LlamaForward fc(*model, cpu_);
    const auto ids = RandomIds(n, vocab, seed_ + 1);
    std::vector<int32_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    engine::KvCache cc = fc.NewCache();
    std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
    ASSERT_TRUE(fc.Forward(ids, pos, cc, lc.data()).ok());
    const std::vector<float> lc0 = lc;
    {  // 1024-token chunks first (the CPU cache is reused below, so it stays untouched here)
      CudaForward chunked(*ctx_, **dm, /*max_chunk=*/1024);
      DeviceKvCache cg = chunked.NewCache();
      const absl::Status s = chunked.Forward(ids, pos, cg, lg.data());
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_LT(RelDiff(lg, lc0), 3e-2) << "1024-token chunks";
    }
    CudaForward fg(*ctx_, **dm);
    DeviceKvCache cg = fg.NewCache();
    std::fill(lg.begin(), lg.end(), std::nanf(""));
    const absl::Status s = fg.Forward(ids, pos, cg, lg.data());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_LT(RelDiff(lg, lc0), 3e-2) << "one chunk";
    // The decode steps' attention shape splits the KV rows (else this test would not cover it).
    kernels::AttnShape decode;
    decode.n = 1;
    decode.m = n;
    decode.n_heads = c.n_heads;
    decode.n_kv_heads = c.n_kv_heads;
    decode.head_dim = c.head_dim;
    decode.q_stride = decode.out_stride = c.n_heads * c.head_dim;
    decode.kv_stride = c.n_kv_heads * c.head_dim;
    ASSERT_GT(kernels::GenericAttentionWorkspace(decode), 0);
    ExpectSameGreedyDecode(lc, lg, static_cast<int32_t>(n), 16, 3e-2, [&](int32_t tok, int32_t p) {
      SEMSHARE_STATUS_RETURN(fc.Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
      return fg.Forward({&tok, 1}, {&p, 1}, cg, lg.data());
    });
  }
}

// PinnedKv::FromDevice (what a store keeps after a GPU prefill): the device cache's rows and
// positions exactly (bf16 both sides), after work still queued on the compute stream; uploaded
// again (StartUpload) into another cache they come back bit for bit; a cache whose layers
// differ in rows (retention) is refused with InvalidArgument before any copy.
TEST_F(CudaForwardTest, PinnedKvFromDeviceRoundTrips) {
  auto model = SmallLlama(seed_);
  auto dm = DeviceModel::Upload(*ctx_, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  CudaForward fg(*ctx_, **dm);
  const auto ids = RandomIds(333, model->config.vocab_size, seed_ + 1);
  std::vector<int32_t> pos(ids.size());
  std::iota(pos.begin(), pos.end(), 0);
  DeviceKvCache cg = fg.NewCache();
  ASSERT_TRUE(fg.Forward(ids, pos, cg, nullptr).ok());  // no logits: no sync before FromDevice
  engine::cuda::PinnedKv pinned;
  ASSERT_TRUE(pinned.FromDevice(cg).ok());
  EXPECT_EQ(pinned.rows(), 333);
  EXPECT_EQ(pinned.n_layers(), cg.n_layers());
  EXPECT_EQ(pinned.ByteSize(), cg.ByteSize());
  engine::KvCache host;
  ASSERT_TRUE(cg.ToHost(&host).ok());
  const int64_t count = 333 * cg.kv_dim();
  for (int64_t l = 0; l < cg.n_layers(); ++l) {
    EXPECT_EQ(pinned.pos(l), host.layer(l).pos) << "layer " << l;
    const auto* k = static_cast<const bf16*>(pinned.k(l));
    const auto* v = static_cast<const bf16*>(pinned.v(l));
    EXPECT_EQ(FromBf16(std::vector<bf16>(k, k + count)), host.layer(l).k) << "layer " << l;
    EXPECT_EQ(FromBf16(std::vector<bf16>(v, v + count)), host.layer(l).v) << "layer " << l;
  }
  DeviceKvCache again = fg.NewCache();
  ASSERT_TRUE(again.StartUpload(pinned).ok());
  for (int64_t l = 0; l < again.n_layers(); ++l) ASSERT_TRUE(again.WaitLayer(l).ok());
  engine::KvCache back;
  ASSERT_TRUE(again.ToHost(&back).ok());
  for (int64_t l = 0; l < cg.n_layers(); ++l) {
    EXPECT_EQ(back.layer(l).pos, host.layer(l).pos);
    EXPECT_EQ(back.layer(l).k, host.layer(l).k) << "layer " << l;
    EXPECT_EQ(back.layer(l).v, host.layer(l).v) << "layer " << l;
  }
  // Ragged layers: refused, and the object then describes no reference.
  cg.layer(1).rows -= 7;
  cg.layer(1).host_pos.resize(cg.layer(1).rows);
  EXPECT_EQ(pinned.FromDevice(cg).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinned.rows(), 0);
}

TEST_F(CudaForwardTest, PoolAccountsExactly) {
  auto& pool = ctx_->pool();
  pool.ReleaseCache();
  const auto before = pool.Stats();  // the cuBLAS workspace only
  {
    auto a = pool.Allocate(1000);
    auto b = pool.Allocate(12345);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(pool.Stats().used, before.used + 1000 + 12345);
    EXPECT_GE(pool.Stats().peak, before.used + 13345);
  }
  EXPECT_EQ(pool.Stats().used, before.used);
  // Freed blocks stay cached (reserved, 256-byte granules) until ReleaseCache.
  EXPECT_EQ(pool.Stats().reserved, before.reserved + 1024 + 12544);
  pool.ReleaseCache();
  EXPECT_EQ(pool.Stats().reserved, before.reserved);
  auto huge = pool.Allocate(int64_t{1} << 50);  // far beyond any device: a status, no abort
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CudaForwardTest, RandomModelOfRealShapeRuns) {
  engine::ModelConfig c;
  c.n_layers = 2;
  c.d_model = 2048;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 64;
  c.d_ff = 8192;
  c.vocab_size = 128256;
  c.max_context = 131072;
  c.rope_dim = 64;
  c.rope_base = 500000.0f;
  c.rope_style = engine::RopeStyle::kHalfSplit;
  c.tied_embeddings = true;
  auto dm = DeviceModel::Random(*ctx_, c, 7);
  ASSERT_TRUE(dm.ok()) << dm.status();
  CudaForward fg(*ctx_, **dm);
  const auto ids = RandomIds(1000, c.vocab_size, seed_);
  std::vector<int32_t> pos(ids.size());
  std::iota(pos.begin(), pos.end(), 0);
  DeviceKvCache kv = fg.NewCache();
  std::vector<float> logits(c.vocab_size, std::nanf(""));
  ASSERT_TRUE(fg.Forward(ids, pos, kv, logits.data()).ok());
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

}  // namespace
}  // namespace semshare::testing
