// Continuous batching on the device (issue 14): kernels/paged_attention.cuh against a float64
// host reference; engine/cuda/batch_forward.h (one batched forward over a paged KV pool) through
// serving's CudaBatchRunner against each sequence run alone through CudaForward and against
// CpuBatchRunner; the pool's all-or-nothing page reservation; copies in and out of the pages.
//
// Bounds:
//  - Paged attention, float output: the inputs are bf16 values on both sides, so only the
//    kernel's float accumulation and __expf (a few ulp over the score range here) differ from
//    the float64 reference: 1e-4 relative L2. Bf16 output adds one rounding (<= 2^-9 relative
//    per element): 5e-3.
//  - Logits of the 3-layer random model: 3e-2 relative L2, the device-vs-CPU bound of
//    tests/cuda/cuda_backend_test.cc and cuda_forward_test.cc. Derivation: every bf16 rounding
//    on the path (the normalised GEMM operands, q/k/v, the attention output, the MLP
//    activation: ~5 per layer, <= 2^-9 ~ 2e-3 relative each) perturbs a unit-scale residual
//    stream; 3 layers of ~5 independent roundings give ~sqrt(15) * 2e-3 ~ 8e-3, and the logits
//    GEMM over d_model = 256 with the final norm adds about as much again, so 3e-2 leaves ~2x
//    headroom. Batched vs alone on the device differ by the same kind of roundings, not by
//    fewer: the GEMMs run at a different M (another cuBLAS kernel, another accumulation order,
//    so a bf16 rounding of h or the activation can flip by one ulp), and prefill chunks of 16+
//    queries alone take FlashPrefill (P rounded to bf16) where the batch takes the paged kernel
//    (P in float). So the same 3e-2 bound holds for both comparisons.
//  - Greedy tokens: equal, or a near tie (within 5% of the reference logits' range) that one
//    bf16 rounding may flip (cuda_model_util.h's SameTokenOrNearTie).
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backend_factory.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/batch_forward.h"
#include "engine/cuda/cuda_forward.h"
#include "engine/cuda/device_kv.h"
#include "engine/cuda/device_model.h"
#include "engine/cuda/paged_kv.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"
#include "kernels/paged_attention.cuh"
#include "serving/batch_runner.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"

namespace semshare::testing {
namespace {

namespace ec = engine::cuda;
namespace k = kernels;

// ---- the paged attention kernel ----

struct AttnCase {
  int64_t heads, kv_heads, head_dim, window;
};

class PagedAttentionTest : public CudaTest {};

// Sequences of 1, 15, 16, 17, 33 and 600 rows (page boundaries on both sides, one long enough
// to split the KV) with gapped ascending positions, their pages in a shuffled order; query rows
// a decode row, short chunks and a 16-row chunk; one query placed before all of its sequence's
// rows (sees nothing: zeros).
TEST_F(PagedAttentionTest, MatchesFloat64ReferenceOnOddShapes) {
  const std::vector<AttnCase> cases = {
      {6, 2, 80, 0},    // GQA 3, head_dim not a multiple of 32 (idle lanes)
      {4, 4, 32, 0},    // MHA, one dim per lane
      {12, 2, 256, 0},  // GQA 6 > the 4 heads a block holds at head_dim 256: two slices
      {8, 2, 64, 37},   // sliding window
  };
  constexpr int64_t kB = 16;
  const std::vector<int64_t> rows = {1, 15, 16, 17, 33, 600};
  const std::vector<int64_t> queries = {1, 3, 16, 1, 5, 2};
  const int64_t n_seqs = static_cast<int64_t>(rows.size());
  std::mt19937_64 rng(seed_);
  for (const AttnCase& ac : cases) {
    SCOPED_TRACE(::testing::Message() << "heads " << ac.heads << "/" << ac.kv_heads << " dim "
                                      << ac.head_dim << " window " << ac.window);
    const int64_t D = ac.head_dim, kv_stride = ac.kv_heads * D + 8, q_stride = ac.heads * D + 4;
    const int64_t out_stride = ac.heads * D;
    // Pages: a shuffled assignment with spare pages that no table names.
    int64_t pages = 3;
    for (int64_t r : rows) pages += (r + kB - 1) / kB;
    std::vector<int32_t> perm(pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> tables, toff(n_seqs), srows(n_seqs);
    std::vector<std::vector<int32_t>> kpos(n_seqs);
    int64_t next_page = 0;
    std::vector<int32_t> pos_pages(pages * kB, -1);
    for (int64_t s = 0; s < n_seqs; ++s) {
      toff[s] = static_cast<int32_t>(tables.size());
      srows[s] = static_cast<int32_t>(rows[s]);
      for (int64_t b = 0; b < (rows[s] + kB - 1) / kB; ++b) tables.push_back(perm[next_page++]);
      int32_t p = s == 1 ? 5 : 0;  // sequence 1 starts at 5: a query at 2 sees nothing
      for (int64_t j = 0; j < rows[s]; ++j) {
        kpos[s].push_back(p);
        pos_pages[tables[toff[s] + j / kB] * kB + j % kB] = p;
        p += 1 + static_cast<int32_t>((j % 7 == 6) ? s % 3 : 0);  // gaps (retention-like)
      }
    }
    const std::vector<float> kf = Bf16Values(Uniform(pages * kB * kv_stride, rng()));
    const std::vector<float> vf = Bf16Values(Uniform(pages * kB * kv_stride, rng()));
    // Queries: the last `queries[s]` positions of each sequence (a chunk ending at its last
    // row), plus the blind query.
    std::vector<int32_t> q_seq, q_pos;
    for (int64_t s = 0; s < n_seqs; ++s) {
      for (int64_t i = std::max<int64_t>(0, rows[s] - queries[s]); i < rows[s]; ++i) {
        q_seq.push_back(static_cast<int32_t>(s));
        q_pos.push_back(kpos[s][i]);
      }
    }
    q_seq.push_back(1);
    q_pos.push_back(2);
    const int64_t n = static_cast<int64_t>(q_seq.size());
    const std::vector<float> qf = Bf16Values(Uniform(n * q_stride, rng()));
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));

    // float64 reference.
    std::vector<double> ref(n * out_stride, 0.0);
    const int64_t group = ac.heads / ac.kv_heads;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t s = q_seq[i];
      for (int64_t h = 0; h < ac.heads; ++h) {
        const int64_t kvh = h / group;
        std::vector<double> sc;
        std::vector<int64_t> slot;
        for (int64_t j = 0; j < rows[s]; ++j) {
          const int32_t kp = kpos[s][j];
          if (kp > q_pos[i] || (ac.window > 0 && q_pos[i] - kp >= ac.window)) continue;
          const int64_t sl = tables[toff[s] + j / kB] * kB + j % kB;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<double>(qf[i * q_stride + h * D + d]) *
                   kf[sl * kv_stride + kvh * D + d];
          }
          sc.push_back(dot * scale);
          slot.push_back(sl);
        }
        if (sc.empty()) continue;
        const double mx = *std::max_element(sc.begin(), sc.end());
        double sum = 0;
        for (double& x : sc) sum += x = std::exp(x - mx);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (size_t t = 0; t < sc.size(); ++t) o += sc[t] * vf[slot[t] * kv_stride + kvh * D + d];
          ref[i * out_stride + h * D + d] = o / sum;
        }
      }
    }
    ASSERT_GT(std::inner_product(ref.begin(), ref.end(), ref.begin(), 0.0), 0.0);

    k::PagedAttnShape sh;
    sh.n = n;
    sh.n_seqs = n_seqs;
    sh.max_rows = *std::max_element(rows.begin(), rows.end());
    sh.n_heads = ac.heads;
    sh.n_kv_heads = ac.kv_heads;
    sh.head_dim = D;
    sh.block_size = kB;
    sh.q_stride = q_stride;
    sh.kv_stride = kv_stride;
    sh.out_stride = out_stride;
    sh.scale = scale;
    sh.window = ac.window;
    auto qd = Up(ToBf16(qf));
    auto kd = Up(ToBf16(kf));
    auto vd = Up(ToBf16(vf));
    auto pd = Up(pos_pages);
    auto td = Up(tables);
    auto od = Up(toff);
    auto rd = Up(srows);
    auto qsd = Up(q_seq);
    auto qpd = Up(q_pos);
    const int64_t ws_bytes = k::PagedAttentionWorkspace(sh);
    auto ws = Up(std::vector<char>(std::max<int64_t>(ws_bytes, 1)));
    if (ac.head_dim == 80) {
      EXPECT_GT(ws_bytes, 0) << "the 600-row sequence should split the KV";
    }
    // With the workspace (splits when the shape asks for them) and without (one split), float
    // and bf16 out.
    for (const bool use_ws : {true, false}) {
      auto out = Poisoned<float>(n * out_stride);
      ASSERT_EQ(k::PagedAttention<float>(
                    qd.data(), qpd.as<int32_t>(), qsd.as<int32_t>(), kd.data(), vd.data(),
                    pd.as<int32_t>(), td.as<int32_t>(), od.as<int32_t>(), rd.as<int32_t>(), sh,
                    out.as<float>(), use_ws ? ws.data() : nullptr, use_ws ? ws_bytes : 0, stream()),
                cudaSuccess);
      const std::vector<float> got = Down<float>(out, n * out_stride);
      EXPECT_LT(RelErr(got, ref), 1e-4) << "workspace " << use_ws;
      // The blind query (last row) attends to nothing: zeros.
      for (int64_t c = 0; c < out_stride; ++c) EXPECT_EQ(got[(n - 1) * out_stride + c], 0.0f);
    }
    auto outb = Poisoned<bf16>(n * out_stride);
    ASSERT_EQ(k::PagedAttention<bf16>(qd.data(), qpd.as<int32_t>(), qsd.as<int32_t>(), kd.data(),
                                      vd.data(), pd.as<int32_t>(), td.as<int32_t>(),
                                      od.as<int32_t>(), rd.as<int32_t>(), sh, outb.as<bf16>(),
                                      ws.data(), ws_bytes, stream()),
              cudaSuccess);
    EXPECT_LT(RelErr(DownBf16(outb, n * out_stride), ref), 5e-3);
  }
}

TEST_F(PagedAttentionTest, RejectsUnsupportedShapes) {
  k::PagedAttnShape sh;
  sh.n = 1;
  sh.n_seqs = 1;
  sh.n_heads = 6;
  sh.n_kv_heads = 4;  // not a divisor
  sh.head_dim = 64;
  sh.block_size = 16;
  sh.q_stride = sh.out_stride = 6 * 64;
  sh.kv_stride = 4 * 64;
  EXPECT_EQ(k::PagedAttention<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, sh, static_cast<float*>(nullptr), nullptr, 0,
                                     stream()),
            cudaErrorInvalidValue);
  sh.n_kv_heads = 2;
  sh.head_dim = 320;  // > 256
  sh.q_stride = sh.out_stride = 6 * 320;
  sh.kv_stride = 2 * 320;
  EXPECT_EQ(k::PagedAttention<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, sh, static_cast<float*>(nullptr), nullptr, 0,
                                     stream()),
            cudaErrorInvalidValue);
}

// ---- pool sizing (host only: runs without a device) ----

// The default KV budget takes the most pages whose buffers, rounded up to the device pool's
// size classes (up to 1/8 more), fit what is free: one page more must not fit.
TEST(PagedKvPoolSizing, BlocksWithinIsTheMostThatFit) {
  const int64_t layers = 32, kv_dim = 1024;  // the 8B shape
  const int64_t half = layers * ec::PagedKvPool::kBlockRows * kv_dim * 2;
  const int64_t pos = layers * ec::PagedKvPool::kBlockRows * 4;
  auto size = [&](int64_t b) {
    return 2 * ec::DevicePool::RoundUp(b * half) + ec::DevicePool::RoundUp(b * pos);
  };
  for (const int64_t bytes : {int64_t{0}, 3 * half, int64_t{1} << 30, int64_t{70} << 30,
                              int64_t{124} << 30, (int64_t{124} << 30) + 12345}) {
    const int64_t b = ec::PagedKvPool::BlocksWithin(layers, kv_dim, bytes);
    SCOPED_TRACE(::testing::Message() << bytes << " bytes: " << b << " pages");
    if (b > 0) {
      EXPECT_LE(size(b), bytes);
    }
    EXPECT_GT(size(b + 1), bytes);
    // Never less than 7/8 of what the bytes hold without rounding (size classes waste < 1/8).
    EXPECT_GE(b, bytes / (2 * half + pos) * 7 / 8);
  }
}

// ---- the batched forward over the pool ----

constexpr double kLogitBound = 3e-2;

float Margin(const std::vector<float>& ref) {
  const auto [lo, hi] = std::minmax_element(ref.begin(), ref.end());
  return 0.05f * (*hi - *lo);
}

class BatchForwardTest : public GpuTest {};

// 16 sequences of 1..300 prompt tokens, each prefilled in chunks of its own size (so most
// iterations mix prefill chunks with decode rows), then 6 greedy decode steps, all through ONE
// CudaBatchRunner::Forward per iteration; the same items through CpuBatchRunner and each
// sequence alone through CudaForward. Every logits row within kLogitBound of both, every greedy
// token equal (or a near tie); then the pool is whole again: a single prompt as long as the
// pool's every row fits, and one row more is RESOURCE_EXHAUSTED.
TEST_F(BatchForwardTest, SixteenMixedSequencesMatchAloneAndCpu) {
  const auto model = SmallLlama(seed_);
  const engine::ModelConfig& c = model->config;
  const engine::ReuseConfig reuse;
  auto runtime = engine::MakeServingRuntime("cuda", *model, reuse, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  const std::vector<int64_t> lengths = {1,  2,   5,   15,  16,  17,  31,  47,
                                        64, 100, 128, 150, 199, 256, 299, 300};
  constexpr int kDecode = 6;
  const int64_t n_seqs = static_cast<int64_t>(lengths.size());
  const int64_t row_bytes = c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;
  int64_t need_rows = 0;
  for (int64_t len : lengths) need_rows += len + kDecode;
  int64_t kv_bytes = need_rows * row_bytes;
  auto runner =
      serving::NewCudaBatchRunner(*model, **runtime, &kv_bytes, 512, static_cast<int32_t>(n_seqs));
  ASSERT_TRUE(runner.ok()) << runner.status();
  EXPECT_EQ(kv_bytes, need_rows * row_bytes);  // an explicit budget is kept
  EXPECT_EQ((*runner)->row_bytes(), row_bytes);
  auto cpu_backend = engine::MakeBackend("cpu");
  ASSERT_TRUE(cpu_backend.ok());
  auto cpu = serving::NewCpuBatchRunner(*model, *std::move(cpu_backend), reuse);

  auto ctx = ec::CudaContext::Create(0);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto dm = ec::DeviceModel::Upload(**ctx, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  ec::CudaForward alone(**ctx, **dm);

  struct Seq {
    std::vector<int32_t> tokens, pos;
    int64_t done = 0;    // tokens in the KV
    int64_t prompt = 0;  // prompt length
    int64_t chunk = 0;   // prefill chunk size
    int decoded = 0;     // decode steps run
    std::unique_ptr<serving::SeqKv> gpu, cpu;
    std::unique_ptr<ec::DeviceKvCache> one;
    std::vector<float> lg, lc, la;  // logits: batched, CPU, alone
  };
  std::vector<Seq> seqs(n_seqs);
  for (int64_t i = 0; i < n_seqs; ++i) {
    Seq& s = seqs[i];
    s.prompt = lengths[i];
    s.tokens = RandomIds(s.prompt, c.vocab_size, seed_ + 1 + i);
    s.chunk = 7 + (i * 29) % 64;  // 7..70: chunks end inside and on page boundaries
    auto g = (*runner)->NewSeq(s.prompt + kDecode);
    ASSERT_TRUE(g.ok()) << g.status();
    s.gpu = *std::move(g);
    auto h = cpu->NewSeq(s.prompt + kDecode);
    ASSERT_TRUE(h.ok()) << h.status();
    s.cpu = *std::move(h);
    s.one = std::make_unique<ec::DeviceKvCache>(**ctx, c.n_layers, c.n_kv_heads * c.head_dim);
    s.lg.resize(c.vocab_size);
    s.lc.resize(c.vocab_size);
    s.la.resize(c.vocab_size);
  }
  int iterations = 0, compared = 0, mixed = 0;
  for (;;) {
    std::vector<serving::BatchRunner::Item> gi, ci;
    std::vector<Seq*> in;
    // A different item order each iteration (the batch must not depend on it).
    for (int64_t k = 0; k < n_seqs; ++k) {
      Seq& s = seqs[(k + iterations) % n_seqs];
      if (s.decoded == kDecode) continue;
      const bool prefill = s.done < s.prompt;
      const int64_t len = prefill ? std::min(s.chunk, s.prompt - s.done) : 1;
      const bool logits = !prefill || s.done + len == s.prompt;
      s.pos.resize(s.tokens.size());
      std::iota(s.pos.begin(), s.pos.end(), 0);
      const std::span<const int32_t> ids = std::span<const int32_t>(s.tokens).subspan(s.done, len);
      const std::span<const int32_t> pos = std::span<const int32_t>(s.pos).subspan(s.done, len);
      gi.push_back({s.gpu.get(), ids, pos, logits ? s.lg.data() : nullptr});
      ci.push_back({s.cpu.get(), ids, pos, logits ? s.lc.data() : nullptr});
      in.push_back(&s);
    }
    if (in.empty()) break;
    ++iterations;
    bool has_prefill = false, has_decode = false;
    for (const Seq* s : in) (s->done < s->prompt ? has_prefill : has_decode) = true;
    mixed += has_prefill && has_decode;
    ASSERT_TRUE((*runner)->Forward(gi).ok()) << "iteration " << iterations;
    ASSERT_TRUE(cpu->Forward(ci).ok()) << "iteration " << iterations;
    for (size_t k = 0; k < in.size(); ++k) {
      Seq& s = *in[k];
      const absl::Status st = alone.Forward(gi[k].ids, gi[k].pos, *s.one,
                                            gi[k].logits != nullptr ? s.la.data() : nullptr);
      ASSERT_TRUE(st.ok()) << st;
      const bool was_decode = s.done >= s.prompt;
      s.done += static_cast<int64_t>(gi[k].ids.size());
      EXPECT_EQ(s.gpu->rows(), s.done);
      EXPECT_EQ(s.gpu->next_position(), s.done);
      if (gi[k].logits == nullptr) continue;
      ++compared;
      EXPECT_LT(RelDiff(s.lg, s.la), kLogitBound) << "sequence of " << s.prompt << " at " << s.done;
      EXPECT_LT(RelDiff(s.lg, s.lc), kLogitBound) << "sequence of " << s.prompt << " at " << s.done;
      const int32_t want = ArgmaxOf(s.la);
      EXPECT_TRUE(SameTokenOrNearTie(s.la, ArgmaxOf(s.lg), Margin(s.la)))
          << "greedy token, sequence of " << s.prompt << " at " << s.done;
      EXPECT_TRUE(SameTokenOrNearTie(s.lc, ArgmaxOf(s.lg), Margin(s.lc)))
          << "greedy token vs CPU, sequence of " << s.prompt << " at " << s.done;
      if (was_decode) ++s.decoded;
      if (s.decoded < kDecode) s.tokens.push_back(want);  // teacher-forced on every side
    }
  }
  EXPECT_EQ(compared, n_seqs * (kDecode + 1));
  EXPECT_GT(mixed, 0) << "no iteration mixed prefill chunks with decode rows";
  std::printf("%d iterations, %d of them mixed prefill and decode\n", iterations, mixed);

  // KV bytes and the rows handed back match the sequence alone.
  for (Seq& s : seqs) EXPECT_EQ(s.gpu->bytes(), s.done * row_bytes);
  {
    Seq& s = seqs.back();
    auto kv = (*runner)->TakeKv(*s.gpu);
    ASSERT_TRUE(kv.ok()) << kv.status();
    engine::KvCache ref;
    ASSERT_TRUE(s.one->ToHost(&ref).ok());
    ASSERT_EQ(kv->n_layers(), ref.n_layers());
    for (int64_t l = 0; l < ref.n_layers(); ++l) {
      EXPECT_EQ(kv->layer(l).pos, ref.layer(l).pos);
      EXPECT_LT(RelErr(kv->layer(l).k, ref.layer(l).k), kLogitBound) << "layer " << l;
      EXPECT_LT(RelErr(kv->layer(l).v, ref.layer(l).v), kLogitBound) << "layer " << l;
    }
    EXPECT_EQ(s.gpu->rows(), 0);  // taken
    EXPECT_EQ(s.gpu->bytes(), 0);
  }
  // Every page back: the pool's whole capacity (the budget plus one partial page per sequence,
  // serving/batch_runner.h) holds one prompt again, and not one row more.
  for (Seq& s : seqs) s.gpu.reset();
  const int64_t cap_rows = (need_rows + n_seqs * (ec::PagedKvPool::kBlockRows - 1)) /
                           ec::PagedKvPool::kBlockRows * ec::PagedKvPool::kBlockRows;
  ASSERT_LE(cap_rows + 1, c.max_context);
  auto big = (*runner)->NewSeq(cap_rows);
  ASSERT_TRUE(big.ok());
  std::vector<int32_t> ids = RandomIds(cap_rows + 1, c.vocab_size, seed_ + 99), pos(cap_rows + 1);
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<float> logits(c.vocab_size);
  const serving::BatchRunner::Item whole{big->get(), std::span<const int32_t>(ids).first(cap_rows),
                                         std::span<const int32_t>(pos).first(cap_rows),
                                         logits.data()};
  ASSERT_TRUE((*runner)->Forward({&whole, 1}).ok()) << "the pool did not get every page back";
  const serving::BatchRunner::Item one_more{big->get(), std::span<const int32_t>(ids).last(1),
                                            std::span<const int32_t>(pos).last(1), logits.data()};
  const absl::Status full = (*runner)->Forward({&one_more, 1});
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_EQ((*big)->rows(), cap_rows);
}

// The pool's reservation is all or nothing, and what a refused batch held is intact: the same
// batch minus the overflow then runs and matches CudaForward alone. Then copies in and out of
// the pages (host prefix, device adoption, download) are exact, and ForwardGreedy picks the
// logits' argmax. Every page returns when the sequences go.
TEST_F(BatchForwardTest, ExhaustionChangesNothingAndCopiesAreExact) {
  const auto model = SmallLlama(seed_);
  const engine::ModelConfig& c = model->config;
  const int64_t kvd = c.n_kv_heads * c.head_dim;
  auto ctx = ec::CudaContext::Create(0);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto dm = ec::DeviceModel::Upload(**ctx, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  const int64_t page = 2 * c.n_layers * ec::PagedKvPool::kBlockRows * kvd * 2;
  auto pool = ec::PagedKvPool::Create(**ctx, c.n_layers, kvd, 5 * page);
  ASSERT_TRUE(pool.ok()) << pool.status();
  ASSERT_EQ((*pool)->num_blocks(), 5);
  ec::BatchForward bf(**ctx, **dm, **pool);
  ec::CudaForward alone(**ctx, **dm);

  const std::vector<int32_t> ids = RandomIds(60, c.vocab_size, seed_ + 7);
  std::vector<int32_t> pos(60);
  std::iota(pos.begin(), pos.end(), 0);
  auto span = [&](int64_t a, int64_t n) { return std::span<const int32_t>(ids).subspan(a, n); };
  auto pspan = [&](int64_t a, int64_t n) { return std::span<const int32_t>(pos).subspan(a, n); };
  std::vector<float> la(c.vocab_size), lb(c.vocab_size), ref(c.vocab_size);
  {
    ec::PagedSeq a(**pool), b(**pool);
    // a: 20 rows (2 pages), b: 10 rows (1 page); 2 free.
    const ec::BatchForward::Item first[] = {{&a, span(0, 20), pspan(0, 20), nullptr},
                                            {&b, span(0, 10), pspan(0, 10), nullptr}};
    ASSERT_TRUE(bf.Forward(first).ok());
    EXPECT_EQ((*pool)->free_blocks(), 2);
    // a + 1 row (no new page) and b + 40 rows (50 rows: 3 more pages > 2 free): refused.
    const ec::BatchForward::Item over[] = {{&a, span(20, 1), pspan(20, 1), la.data()},
                                           {&b, span(10, 40), pspan(10, 40), lb.data()}};
    const absl::Status st = bf.Forward(over);
    EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
    EXPECT_EQ((*pool)->free_blocks(), 2);
    EXPECT_EQ(a.blocks().size(), 2u);
    EXPECT_EQ(b.blocks().size(), 1u);
    EXPECT_EQ(a.rows(), 20);
    EXPECT_EQ(b.rows(), 10);
    EXPECT_EQ(a.next_position(), 20);
    // The batch that fits (b + 22 rows: 32 rows, 1 more page) runs, and a's logits are those
    // of the sequence alone: the refused batch touched nothing.
    const ec::BatchForward::Item fits[] = {{&a, span(20, 1), pspan(20, 1), la.data()},
                                           {&b, span(10, 22), pspan(10, 22), lb.data()}};
    ASSERT_TRUE(bf.Forward(fits).ok());
    EXPECT_EQ((*pool)->free_blocks(), 1);
    ec::DeviceKvCache one(**ctx, c.n_layers, kvd);
    ASSERT_TRUE(alone.Forward(span(0, 21), pspan(0, 21), one, ref.data()).ok());
    EXPECT_LT(RelDiff(la, ref), kLogitBound);
    EXPECT_TRUE(SameTokenOrNearTie(ref, ArgmaxOf(la), Margin(ref)));

    // Greedy on the device: the argmax of the logits the same step gives on the host.
    ec::DeviceKvCache one_b(**ctx, c.n_layers, kvd);
    ASSERT_TRUE(alone.Forward(span(0, 32), pspan(0, 32), one_b, nullptr).ok());
    std::vector<int32_t> toks(2);
    const ec::BatchForward::Item greedy[] = {{&a, span(21, 1), pspan(21, 1), nullptr},
                                             {&b, span(32, 1), pspan(32, 1), nullptr}};
    ASSERT_TRUE(bf.ForwardGreedy(greedy, toks).ok());
    ASSERT_TRUE(alone.Forward(span(21, 1), pspan(21, 1), one, ref.data()).ok());
    EXPECT_TRUE(SameTokenOrNearTie(ref, toks[0], Margin(ref)));
    ASSERT_TRUE(alone.Forward(span(32, 1), pspan(32, 1), one_b, ref.data()).ok());
    EXPECT_TRUE(SameTokenOrNearTie(ref, toks[1], Margin(ref)));

    // Now a: 22 rows (2 pages), b: 33 rows (3 pages), nothing free.
    EXPECT_EQ((*pool)->free_blocks(), 0);
    // Download, a host prefix copied into a new sequence, and its download: exact (bf16 ->
    // float -> bf16 is the identity).
    engine::KvCache host;
    ASSERT_TRUE(bf.ToHost(a, &host).ok());
    ASSERT_EQ(host.layer(0).rows(), 22);
    b.Clear();
    EXPECT_EQ((*pool)->free_blocks(), 3);
    ec::PagedSeq p(**pool);
    EXPECT_TRUE(absl::IsInvalidArgument(bf.CopyFromHost(p, host, 23)));  // more than it holds
    ASSERT_TRUE(bf.CopyFromHost(p, host, 13).ok());
    EXPECT_EQ(p.rows(), 13);
    EXPECT_EQ(p.next_position(), 13);
    engine::KvCache back;
    ASSERT_TRUE(bf.ToHost(p, &back).ok());
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const engine::LayerKv& s = host.layer(l);
      EXPECT_EQ(back.layer(l).k, std::vector<float>(s.k.begin(), s.k.begin() + 13 * kvd));
      EXPECT_EQ(back.layer(l).v, std::vector<float>(s.v.begin(), s.v.begin() + 13 * kvd));
      EXPECT_EQ(back.layer(l).pos, std::vector<int32_t>(s.pos.begin(), s.pos.begin() + 13));
    }
    // b's 33 rows computed alone need 3 pages, 2 are free: the adoption is refused whole.
    ec::PagedSeq q(**pool);
    EXPECT_TRUE(absl::IsResourceExhausted(bf.AdoptDevice(q, one_b)));
    EXPECT_EQ(q.rows(), 0);
    EXPECT_EQ((*pool)->free_blocks(), 2);
    a.Clear();
    ASSERT_TRUE(bf.AdoptDevice(q, one_b).ok());
    EXPECT_EQ(q.rows(), 33);
    EXPECT_EQ(q.next_position(), 33);
    engine::KvCache adopted, direct;
    ASSERT_TRUE(bf.ToHost(q, &adopted).ok());
    ASSERT_TRUE(one_b.ToHost(&direct).ok());
    for (int64_t l = 0; l < c.n_layers; ++l) {
      EXPECT_EQ(adopted.layer(l).k, direct.layer(l).k);
      EXPECT_EQ(adopted.layer(l).v, direct.layer(l).v);
      EXPECT_EQ(adopted.layer(l).pos, direct.layer(l).pos);
    }
    // The adopted rows continue like the sequence alone.
    std::vector<float> lq(c.vocab_size);
    const ec::BatchForward::Item next[] = {{&q, span(33, 1), pspan(33, 1), lq.data()}};
    ASSERT_TRUE(bf.Forward(next).ok());
    ASSERT_TRUE(alone.Forward(span(33, 1), pspan(33, 1), one_b, ref.data()).ok());
    EXPECT_LT(RelDiff(lq, ref), kLogitBound);
  }
  EXPECT_EQ((*pool)->used_bytes(), 0);
  EXPECT_EQ((*pool)->free_blocks(), (*pool)->num_blocks());
}

// The server's hit path: a selective plan WITH retention (the floor retention_min_rows lowered so
// that 300 tokens are trimmed: layers 1 and 2 keep fewer rows than layer 0, so the pages hold a
// different row count per layer) run by CudaBatchRunner::PrefillHit (CudaForward's Retain, the
// adoption of the trimmed device cache into the pages), then decoded in batches beside a plain
// sequence's prefill and decode, against CpuBatchRunner doing the same. No other CUDA test sets
// the floor below its default 2048, so without this one retention on the device (AttentionMass,
// SelectTopK of the kept rows, CompactRows, the host position mapping) never runs in a test.
// Bounds: 5e-2 on the logits, as ParitySchedules' second case: the rows retention evicts are the
// lowest attention masses, computed from bf16 K on the device and float K on the CPU, so rows
// whose masses are within that rounding of the cut may be kept on one side and evicted on the
// other; such rows carry the least attention, and moving one moves the logits a little. So up
// to 20% of the evicted rows may differ between the sides' kept positions (a wrong mapping of
// the kept rows would differ in most of them).
TEST_F(BatchForwardTest, SelectiveHitWithRetentionAdoptedAndDecodedMatchesCpu) {
  const auto model = SmallLlama(seed_);
  const engine::ModelConfig& c = model->config;
  const int64_t vocab = c.vocab_size;
  engine::ReuseConfig cfg;
  cfg.recompute_ratio = 0.0f;  // ParitySchedules' first case: the same sets on both sides
  cfg.recompute_min_tokens = 0;
  cfg.retention_min_rows = 0;     // budgets ceil(300 * 0.9 * 0.965^l): retention trims
  cfg.fallback_deviation = 0.0f;  // no guard: the path stays selective on the random model
  const std::vector<int32_t> ref_ids = RandomIds(300, vocab, seed_ + 1);
  const std::vector<int32_t> ids = EditedIds(ref_ids, vocab, seed_ + 2);
  const int64_t n = static_cast<int64_t>(ids.size());
  engine::CpuBackend be;
  engine::ReusePrefiller pc(*model, be, cfg);
  auto ref = pc.MakeReference(ref_ids);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const engine::ReusePlan plan =
      engine::PlanReuse(ids, ref_ids, pc.Match(pc.Sketch(ids), ref->sketch), cfg);
  ASSERT_EQ(plan.kind, engine::ReuseKind::kSelective);
  ASSERT_TRUE(plan.Retains());

  auto runtime = engine::MakeServingRuntime("cuda", *model, cfg, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  const int64_t row_bytes = c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;
  int64_t kv_bytes = 1024 * row_bytes;
  auto gpu = serving::NewCudaBatchRunner(*model, **runtime, &kv_bytes, 256, 4);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  auto cpu_backend = engine::MakeBackend("cpu");
  ASSERT_TRUE(cpu_backend.ok());
  auto cpu = serving::NewCpuBatchRunner(*model, *std::move(cpu_backend), cfg);

  auto gs = (*gpu)->NewSeq(n + 16), go = (*gpu)->NewSeq(64);
  auto cs = cpu->NewSeq(n + 16), co = cpu->NewSeq(64);
  ASSERT_TRUE(gs.ok() && go.ok() && cs.ok() && co.ok());
  std::vector<float> lg(vocab, std::nanf("")), lc(vocab), og(vocab, std::nanf("")), oc(vocab);
  auto sg = (*gpu)->PrefillHit(**gs, ids, ref_ids, ref->kv, plan, lg.data(), {});
  ASSERT_TRUE(sg.ok()) << sg.status();
  auto sc = cpu->PrefillHit(**cs, ids, ref_ids, ref->kv, plan, lc.data(), {});
  ASSERT_TRUE(sc.ok()) << sc.status();
  EXPECT_TRUE(sg->hit);
  EXPECT_FALSE(sg->fallback);
  // Retained row counts follow from counts alone: equal, and fewer than n in the deeper layers.
  EXPECT_EQ(sg->layer_rows, sc->layer_rows);
  ASSERT_EQ(static_cast<int64_t>(sg->layer_rows.size()), c.n_layers);
  EXPECT_LT(sg->layer_rows.back(), n) << "retention evicted nothing: the test lost its subject";
  EXPECT_EQ((*gs)->rows(), n);  // the table is sized for layer 0, which keeps every row
  EXPECT_EQ((*gs)->next_position(), n);
  EXPECT_EQ((*gs)->bytes(), (*cs)->bytes() / 2);  // bf16 rows vs float rows
  EXPECT_LT((*gs)->bytes(), n * row_bytes);
  EXPECT_LT(RelDiff(lg, lc), 5e-2);
  const auto [lo, hi] = std::minmax_element(lc.begin(), lc.end());
  const float margin = 0.05f * (*hi - *lo);
  EXPECT_TRUE(SameTokenOrNearTie(lc, ArgmaxOf(lg), margin)) << "first token";

  // Decode the trimmed sequence in batches with a plain one: its 40-token prompt in the first
  // iteration (a prefill chunk beside the decode row), then both decoding. Teacher-forced with
  // the CPU's greedy tokens.
  const std::vector<int32_t> other = RandomIds(40, vocab, seed_ + 3);
  std::vector<int32_t> other_pos(other.size());
  std::iota(other_pos.begin(), other_pos.end(), 0);
  int32_t tok = ArgmaxOf(lc), pos = static_cast<int32_t>(n);
  int32_t otok = 0, opos = static_cast<int32_t>(other.size());
  for (int step = 0; step < 8; ++step) {
    SCOPED_TRACE(::testing::Message() << "decode step " << step);
    std::vector<serving::BatchRunner::Item> gi, ci;
    gi.push_back({gs->get(), {&tok, 1}, {&pos, 1}, lg.data()});
    ci.push_back({cs->get(), {&tok, 1}, {&pos, 1}, lc.data()});
    if (step == 0) {
      gi.push_back({go->get(), other, other_pos, og.data()});
      ci.push_back({co->get(), other, other_pos, oc.data()});
    } else {
      gi.push_back({go->get(), {&otok, 1}, {&opos, 1}, og.data()});
      ci.push_back({co->get(), {&otok, 1}, {&opos, 1}, oc.data()});
    }
    const absl::Status st = (*gpu)->Forward(gi);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(cpu->Forward(ci).ok());
    EXPECT_LT(RelDiff(lg, lc), 5e-2) << "the retained sequence";
    EXPECT_TRUE(SameTokenOrNearTie(lc, ArgmaxOf(lg), margin)) << "the retained sequence";
    EXPECT_LT(RelDiff(og, oc), kLogitBound) << "the plain sequence";
    if (step > 0) ++opos;
    tok = ArgmaxOf(lc);
    ++pos;
    otok = ArgmaxOf(oc);
  }
  EXPECT_EQ((*gs)->rows(), n + 8);
  EXPECT_EQ((*gs)->next_position(), n + 8);
  EXPECT_EQ((*gs)->bytes(), (*cs)->bytes() / 2);

  // The KV handed back for publishing: per layer the same row counts, ascending positions that
  // agree but for near-tie rows at the retention cut, K/V within the bound.
  auto kg = (*gpu)->TakeKv(**gs);
  ASSERT_TRUE(kg.ok()) << kg.status();
  auto kc = cpu->TakeKv(**cs);
  ASSERT_TRUE(kc.ok()) << kc.status();
  ASSERT_EQ(kg->n_layers(), kc->n_layers());
  for (int64_t l = 0; l < kc->n_layers(); ++l) {
    SCOPED_TRACE(::testing::Message() << "layer " << l);
    const engine::LayerKv& a = kg->layer(l);
    const engine::LayerKv& b = kc->layer(l);
    ASSERT_EQ(a.rows(), b.rows());
    EXPECT_TRUE(std::is_sorted(a.pos.begin(), a.pos.end()));
    EXPECT_EQ(a.pos.back(), static_cast<int32_t>(n + 7));
    std::vector<int32_t> only;
    std::set_symmetric_difference(a.pos.begin(), a.pos.end(), b.pos.begin(), b.pos.end(),
                                  std::back_inserter(only));
    const int64_t evicted = n + 8 - b.rows();
    EXPECT_LE(static_cast<int64_t>(only.size()), 2 * std::max<int64_t>(2, evicted / 5));
    if (only.empty()) {
      EXPECT_LT(RelErr(a.k, b.k), 3e-2);
      EXPECT_LT(RelErr(a.v, b.v), 3e-2);
    }
  }
  EXPECT_EQ((*gs)->rows(), 0);
  EXPECT_EQ((*gs)->bytes(), 0);
}

}  // namespace
}  // namespace semshare::testing
