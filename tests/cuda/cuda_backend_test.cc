// CudaBackend (host-pointer Backend on the GPU) against CpuBackend: every op with fresh random
// inputs and odd shapes, then the unchanged engine (LlamaForward; ReusePrefiller with a
// semshare hit and retention; 16 decode steps after each, tokens and logits) on both backends.
// Bounds: float ops 1e-5/1e-4; ops with bf16 operands (MatMul, Attention, Embed) 1e-2 (bf16 keeps 8
// significant bits: relative rounding <= 2^-9 per operand); logits after a 3-layer forward 3e-2
// (bf16 rounding at every projection compounds over the layers).
#include "engine/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <numeric>

#include "engine/backend_factory.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cublas_loader.h"
#include "engine/llama_forward.h"
#include "engine/reuse/reuse_prefill.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/random_blocks.h"
#include "tests/test_util.h"

namespace semshare::testing {
namespace {

using engine::AttentionParams;
using engine::CpuBackend;
using engine::Matrix;

class CudaBackendTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto b = engine::cuda::CudaBackend::Create(0);
    ASSERT_TRUE(b.ok()) << b.status();
    gpu_ = std::move(*b);
  }
  void TearDown() override {
    if (gpu_ != nullptr) {
      EXPECT_TRUE(gpu_->status().ok()) << gpu_->status();
    }
    GpuTest::TearDown();
  }
  std::vector<float> Nan(size_t n) { return std::vector<float>(n, std::nanf("")); }

  CpuBackend cpu_;
  std::unique_ptr<engine::cuda::CudaBackend> gpu_;
};

// cuBLAS is opened on first use (engine/cuda/cublas_loader.h), not linked: it loads, with every
// entry point the backend calls, on a machine with the toolkit and no GPU too.
TEST(CublasLoaderTest, OpensCublasOnDemandWithEveryEntryPoint) {
  auto api = engine::cuda::LoadCublas();
  ASSERT_TRUE(api.ok()) << api.status();
  const engine::cuda::CublasApi& a = **api;
  for (const void* f :
       {reinterpret_cast<const void*>(a.create), reinterpret_cast<const void*>(a.destroy),
        reinterpret_cast<const void*>(a.set_stream), reinterpret_cast<const void*>(a.set_workspace),
        reinterpret_cast<const void*>(a.get_math_mode),
        reinterpret_cast<const void*>(a.set_math_mode), reinterpret_cast<const void*>(a.gemm_ex),
        reinterpret_cast<const void*>(a.sgemm)}) {
    EXPECT_NE(f, nullptr);
  }
  EXPECT_EQ(*engine::cuda::LoadCublas(), *api) << "loaded once";
}

TEST(BackendFactoryTest, NamesAndErrors) {
  EXPECT_TRUE(engine::MakeBackend("cpu").ok());
  EXPECT_EQ(engine::MakeBackend("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  auto cuda = engine::MakeBackend("cuda");
  if (engine::cuda::DeviceCount() == 0) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);  // never aborts
  } else {
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ((*cuda)->name(), "cuda");
  }
}

TEST_F(CudaBackendTest, OpsMatchCpu) {
  const int64_t n = 19, in = 77, out = 45;
  const Matrix w = RandomMatrix(out, in, seed_, 0.3f), bias = RandomMatrix(1, out, seed_ + 1, 0.3f);
  const auto x = RandomVector(n * in, seed_ + 2);
  auto y_cpu = Nan(n * out), y_gpu = Nan(n * out);
  cpu_.MatMul(x.data(), n, w, bias, y_cpu.data());
  gpu_->MatMul(x.data(), n, w, bias, y_gpu.data());
  EXPECT_LT(RelDiff(y_gpu, y_cpu), 1e-2) << "MatMul (bf16 operands)";

  auto r_cpu = Nan(n * in), r_gpu = Nan(n * in);
  const auto g = RandomVector(in, seed_ + 3);
  cpu_.RmsNorm(x.data(), g.data(), n, in, 1e-5f, r_cpu.data());
  gpu_->RmsNorm(x.data(), g.data(), n, in, 1e-5f, r_gpu.data());
  EXPECT_LT(RelDiff(r_gpu, r_cpu), 1e-5) << "RmsNorm";

  for (auto style : {engine::RopeStyle::kAdjacent, engine::RopeStyle::kHalfSplit}) {
    const int64_t heads = 3, hd = 16;
    std::vector<float> inv(hd / 2);
    for (int64_t i = 0; i < hd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
    const engine::RopeParams rp{style, hd, inv.data()};
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i * 397 - 50);
    auto a = RandomVector(n * heads * hd, seed_ + 4), b = a;
    cpu_.Rope(a.data(), pos.data(), n, heads, hd, rp);
    gpu_->Rope(b.data(), pos.data(), n, heads, hd, rp);
    EXPECT_LT(RelDiff(b, a), 1e-5) << "Rope";
  }

  {
    const int64_t m = 57, heads = 4, kvh = 2, hd = 64;
    const AttentionParams p{heads, kvh, hd, 0.125f, 0};
    std::vector<int32_t> kp(m), qp(n);
    std::iota(kp.begin(), kp.end(), 0);
    for (int64_t i = 0; i < n; ++i) qp[i] = static_cast<int32_t>(m - n + i);
    const auto q = RandomVector(n * heads * hd, seed_ + 5),
               kk = RandomVector(m * kvh * hd, seed_ + 6),
               v = RandomVector(m * kvh * hd, seed_ + 7);
    auto o_cpu = Nan(n * heads * hd), o_gpu = Nan(n * heads * hd);
    cpu_.Attention(q.data(), qp.data(), n, kk.data(), v.data(), kp.data(), m, p, o_cpu.data());
    gpu_->Attention(q.data(), qp.data(), n, kk.data(), v.data(), kp.data(), m, p, o_gpu.data());
    EXPECT_LT(RelDiff(o_gpu, o_cpu), 1e-2) << "Attention (bf16 q/k/v, flash path)";
    auto m_cpu = Nan(m), m_gpu = Nan(m);
    cpu_.AttentionMass(q.data(), qp.data(), n, kk.data(), kp.data(), m, p, m_cpu.data());
    gpu_->AttentionMass(q.data(), qp.data(), n, kk.data(), kp.data(), m, p, m_gpu.data());
    EXPECT_LT(RelDiff(m_gpu, m_cpu), 1e-4) << "AttentionMass";
  }

  const auto gate = RandomVector(n * 33, seed_ + 8, 3.0f), up = RandomVector(n * 33, seed_ + 9);
  auto s_cpu = Nan(n * 33), s_gpu = Nan(n * 33);
  cpu_.SwiGlu(gate.data(), up.data(), n * 33, s_cpu.data());
  gpu_->SwiGlu(gate.data(), up.data(), n * 33, s_gpu.data());
  EXPECT_LT(RelDiff(s_gpu, s_cpu), 1e-5) << "SwiGlu";

  const Matrix table = RandomMatrix(50, 31, seed_ + 10, 1.0f);
  const std::vector<int32_t> ids = {3, 0, 49, 7, 7};
  auto e_cpu = Nan(5 * 31), e_gpu = Nan(5 * 31);
  cpu_.Embed(table, ids.data(), 5, e_cpu.data());
  gpu_->Embed(table, ids.data(), 5, e_gpu.data());
  EXPECT_LT(RelDiff(e_gpu, e_cpu), 4e-3) << "Embed (bf16 table)";

  auto gr_cpu = Nan(5 * 31), gr_gpu = Nan(5 * 31);
  cpu_.GatherRows(table.data.data(), 31, ids.data(), 5, gr_cpu.data());
  gpu_->GatherRows(table.data.data(), 31, ids.data(), 5, gr_gpu.data());
  EXPECT_EQ(gr_gpu, gr_cpu) << "GatherRows";

  auto add_cpu = x, add_gpu = x;
  cpu_.Add(add_cpu.data(), x.data(), n * in);
  gpu_->Add(add_gpu.data(), x.data(), n * in);
  EXPECT_EQ(add_gpu, add_cpu) << "Add";

  auto d_cpu = Nan(n), d_gpu = Nan(n);
  const auto x2 = RandomVector(n * in, seed_ + 11);
  cpu_.RowDistance(x.data(), x2.data(), n, in, d_cpu.data());
  gpu_->RowDistance(x.data(), x2.data(), n, in, d_gpu.data());
  EXPECT_LT(RelDiff(d_gpu, d_cpu), 1e-5) << "RowDistance";
}

// Weights kept in ggml blocks (the CPU backend's default since GGUF files stay quantized) are
// dequantised on upload: the GPU product matches the CPU's float product of the exactly
// dequantised weights within the bf16 bound, and a second call reuses the cached upload.
TEST_F(CudaBackendTest, QuantizedWeightsMatchCpu) {
  const int64_t n = 5, in = 256, out = 33;
  for (engine::GgmlType type : {engine::GgmlType::kQ4_1, engine::GgmlType::kQ8_0,
                                engine::GgmlType::kQ4_K, engine::GgmlType::kQ6_K}) {
    const auto blocks = RandomBlocks(type, out, in, seed_ + static_cast<uint64_t>(type));
    Matrix w;
    ASSERT_TRUE(engine::MakeBlockMatrix(type, out, in, blocks.data(), nullptr, &w).ok());
    const Matrix wf = engine::ToFloatMatrix(w);
    const auto x = RandomVector(n * in, seed_ + 7);
    auto y_cpu = Nan(n * out), y_gpu = Nan(n * out);
    cpu_.MatMul(x.data(), n, wf, Matrix{}, y_cpu.data());
    gpu_->MatMul(x.data(), n, w, Matrix{}, y_gpu.data());
    EXPECT_LT(RelDiff(y_gpu, y_cpu), 1e-2) << "type " << static_cast<int>(type);
    const int64_t held = gpu_->weight_bytes();
    gpu_->MatMul(x.data(), n, w, Matrix{}, y_gpu.data());
    EXPECT_EQ(gpu_->weight_bytes(), held) << "the second call must reuse the upload";
  }
}

TEST_F(CudaBackendTest, EngineRunsUnchangedOnTheGpu) {
  for (auto arch : {engine::Arch::kLlama, engine::Arch::kQwen2, engine::Arch::kMistral}) {
    auto model = arch == engine::Arch::kLlama
                     ? SmallLlama(seed_)
                     : TinyModel(arch, engine::RopeStyle::kHalfSplit, seed_);
    const int64_t vocab = model->config.vocab_size;
    const auto ids = RandomIds(150, vocab, seed_ + 1);
    std::vector<int32_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    engine::LlamaForward fc(*model, cpu_), fg(*model, *gpu_);
    engine::KvCache cc = fc.NewCache(), cg = fg.NewCache();
    std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
    ASSERT_TRUE(fc.Forward(ids, pos, cc, lc.data()).ok());
    ASSERT_TRUE(fg.Forward(ids, pos, cg, lg.data()).ok());
    ASSERT_TRUE(gpu_->status().ok()) << gpu_->status();
    EXPECT_LT(RelDiff(lg, lc), 3e-2) << engine::ArchName(arch);
    ExpectSameGreedyDecode(lc, lg, static_cast<int32_t>(ids.size()), 16, 3e-2,
                           [&](int32_t tok, int32_t p) {
                             SEMSHARE_STATUS_RETURN(fc.Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
                             SEMSHARE_STATUS_RETURN(fg.Forward({&tok, 1}, {&p, 1}, cg, lg.data()));
                             return gpu_->status();
                           });
  }
}

TEST_F(CudaBackendTest, SelectivePrefillWithRetentionMatchesCpu) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  const auto ref_ids = RandomIds(300, vocab, seed_ + 1);
  const auto ids = EditedIds(ref_ids, vocab, seed_ + 2);
  // Two recompute schedules with the same plan (ParitySchedules says why their bounds differ).
  for (const ScheduleCase k : ParitySchedules()) {
    SCOPED_TRACE(::testing::Message() << "recompute_ratio " << k.recompute_ratio);
    engine::ReuseConfig cfg;
    cfg.hit_threshold = 0.0f;  // force a hit on the random model
    cfg.recompute_ratio = k.recompute_ratio;
    cfg.recompute_min_tokens = k.recompute_min_tokens;
    engine::ReusePrefiller pc(*model, cpu_, cfg), pg(*model, *gpu_, cfg);
    auto rc = pc.MakeReference(ref_ids);
    auto rg = pg.MakeReference(ref_ids);
    ASSERT_TRUE(rc.ok() && rg.ok());
    engine::KvCache cc = pc.forward().NewCache(), cg = pg.forward().NewCache();
    std::vector<float> lc(vocab), lg(vocab, std::nanf(""));
    auto sc = pc.Prefill(ids, &*rc, &cc, lc.data());
    auto sg = pg.Prefill(ids, &*rg, &cg, lg.data());
    ASSERT_TRUE(sc.ok() && sg.ok());
    ASSERT_TRUE(gpu_->status().ok()) << gpu_->status();
    EXPECT_TRUE(sg->hit);
    // Set sizes and retained row counts follow from counts alone, so they match exactly.
    EXPECT_EQ(sg->layer_computed, sc->layer_computed);
    EXPECT_EQ(sg->layer_rows, sc->layer_rows);
    EXPECT_LT(sg->recomputed_tokens, static_cast<int64_t>(ids.size()));  // selective
    EXPECT_LT(RelDiff(lg, lc), k.bound);
    // The first token and 16 decode steps on the retained caches.
    ExpectSameGreedyDecode(
        lc, lg, static_cast<int32_t>(ids.size()), 16, k.bound, [&](int32_t tok, int32_t p) {
          SEMSHARE_STATUS_RETURN(pc.forward().Forward({&tok, 1}, {&p, 1}, cc, lc.data()));
          SEMSHARE_STATUS_RETURN(pg.forward().Forward({&tok, 1}, {&p, 1}, cg, lg.data()));
          return gpu_->status();
        });
  }
}

}  // namespace
}  // namespace semshare::testing
