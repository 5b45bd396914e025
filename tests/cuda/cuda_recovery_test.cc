// Out of device memory must fail one request, not the process (issue 17): DevicePool's failure
// injection (InjectFailures, SEMSHARE_CUDA_FAIL_ALLOC) makes the Nth allocation from now fail,
// and each test walks that failure over every allocation of a request, then checks that the
// same objects serve the next request correctly:
//   - the pool: EnsureSize keeps the old block while asking for the new one, so a failed grow
//     leaves the buffer usable or empty, never dangling; injection counts (no device needed);
//   - CudaForward: a prefill that fails part way through Reserve must not leave reserved_ naming
//     scratch it does not hold (a smaller request after it launched on null scratch: an
//     illegal address, a sticky error for every context in the process);
//   - DeviceKvCache::StartUpload: a failure part way leaves an empty cache (no stale host_pos);
//   - CudaServingSession: misses and hits (selective and exact reuse) failing at every
//     allocation of a fresh session's first request, each followed by the same request on that
//     session, whose logits must equal a session's that never failed.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_forward.h"
#include "engine/cuda/cuda_serving.h"
#include "engine/llama_forward.h"
#include "engine/reuse/reuse_prefill.h"
#include "tests/cuda/cuda_model_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace semshare::testing {
namespace {

using engine::cuda::CudaForward;
using engine::cuda::DeviceBuffer;
using engine::cuda::DeviceKvCache;
using engine::cuda::DeviceModel;
using engine::cuda::DevicePool;

class RecoveryTest : public CudaTest {};

// The injection's counting needs no device: the injected calls fail before any CUDA call, the
// others reach cudaMalloc (which fails here without a device, or succeeds with one).
TEST(DevicePoolInjectionTest, CountsAllocateCallsAndDisarms) {
  DevicePool pool;
  pool.InjectFailures(/*after=*/1, /*count=*/2);
  auto empty = pool.Allocate(0);  // not counted
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto first = pool.Allocate(1024);  // the one let through
  EXPECT_EQ(pool.injected_failures(), 0);
  for (int i = 0; i < 2; ++i) {
    auto b = pool.Allocate(1024);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(b.status().message().find("injected"), std::string::npos) << b.status();
  }
  EXPECT_EQ(pool.injected_failures(), 2);
  auto after = pool.Allocate(1024);  // disarmed again
  if (!after.ok()) {
    EXPECT_EQ(after.status().message().find("injected"), std::string::npos) << after.status();
  }
  EXPECT_EQ(pool.injected_failures(), 2);
}

TEST_F(RecoveryTest, EnsureSizeKeepsOrEmptiesTheBufferNeverDangles) {
  DevicePool& pool = ctx_->pool();
  auto b = pool.Allocate(1 << 20);
  ASSERT_TRUE(b.ok()) << b.status();
  DeviceBuffer buf = std::move(*b);
  const int64_t used = pool.Stats().used;
  // One refused allocation: the grow asks again after releasing the old block, and succeeds.
  pool.InjectFailures(0, 1);
  ASSERT_TRUE(pool.EnsureSize(buf, 4 << 20).ok());
  EXPECT_EQ(buf.bytes(), 4 << 20);
  EXPECT_FALSE(buf.empty());
  EXPECT_EQ(pool.injected_failures(), 1);
  EXPECT_EQ(pool.Stats().used, used + (3 << 20));
  // Both refused: an error, and the buffer empty (not a pointer into a freed block).
  pool.InjectFailures(0, 2);
  const absl::Status s = pool.EnsureSize(buf, 16 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(buf.empty());
  EXPECT_EQ(buf.bytes(), 0);
  EXPECT_EQ(pool.Stats().used, used - (1 << 20));
  // And the pool serves again.
  ASSERT_TRUE(pool.EnsureSize(buf, 16 << 20).ok());
  EXPECT_EQ(cudaMemsetAsync(buf.data(), 0, buf.bytes(), stream()), cudaSuccess);
  EXPECT_TRUE(ctx_->Sync().ok());
}

// Every allocation point of a long prefill fails in turn; after each, a shorter prefill (fewer
// rows than the failed one's, more than the warm-up's, and fewer than the warm-up's) on the
// same CudaForward must match the CPU.
TEST_F(RecoveryTest, ForwardRecoversFromAFailureAtEveryAllocation) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  auto dm = DeviceModel::Upload(*ctx_, *model);
  ASSERT_TRUE(dm.ok()) << dm.status();
  CudaForward fg(*ctx_, **dm);
  engine::CpuBackend cpu;
  engine::LlamaForward fc(*model, cpu);
  auto cpu_logits = [&](const std::vector<int32_t>& ids) {
    std::vector<int32_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    engine::KvCache kv = fc.NewCache();
    std::vector<float> l(vocab);
    EXPECT_TRUE(fc.Forward(ids, pos, kv, l.data()).ok());
    return l;
  };
  auto gpu_forward = [&](const std::vector<int32_t>& ids, std::vector<float>* logits) {
    std::vector<int32_t> pos(ids.size());
    std::iota(pos.begin(), pos.end(), 0);
    DeviceKvCache kv = fg.NewCache();
    logits->assign(vocab, std::nanf(""));
    return fg.Forward(ids, pos, kv, logits->data());
  };
  const auto warm = RandomIds(96, vocab, seed_ + 1);
  const auto longer = RandomIds(400, vocab, seed_ + 2);
  const auto mid = RandomIds(200, vocab, seed_ + 3);
  const auto small = RandomIds(40, vocab, seed_ + 4);
  const auto ref_mid = cpu_logits(mid), ref_small = cpu_logits(small);
  std::vector<float> lg;
  ASSERT_TRUE(gpu_forward(warm, &lg).ok());
  int failures = 0;
  for (int64_t after = 0; after < 64; ++after) {
    SCOPED_TRACE(::testing::Message() << "allocation " << after << " refused");
    ctx_->pool().ReleaseCache();  // every grow reaches cudaMalloc... or the injection
    ctx_->pool().InjectFailures(after, 2);
    const absl::Status s = gpu_forward(longer, &lg);
    const bool injected = ctx_->pool().injected_failures() > failures;
    ctx_->pool().InjectFailures(0, 0);
    if (!injected) {
      ASSERT_TRUE(s.ok()) << s;  // past the last allocation: done
      break;
    }
    failures = static_cast<int>(ctx_->pool().injected_failures());
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    ASSERT_TRUE(gpu_forward(small, &lg).ok());
    EXPECT_LT(RelDiff(lg, ref_small), 3e-2);
    ASSERT_TRUE(gpu_forward(mid, &lg).ok());
    EXPECT_LT(RelDiff(lg, ref_mid), 3e-2);
    ASSERT_TRUE(ctx_->Check("after recovery").ok());
  }
  EXPECT_GT(failures, 0);
}

// StartUpload failing part way (the capacity for layer 1 refused) leaves the cache empty: rows 0
// and no host positions of the previous contents in any layer.
TEST_F(RecoveryTest, StartUploadFailureLeavesAnEmptyCache) {
  const int64_t layers = 3, kvd = 64;
  engine::KvCache old(layers, kvd), ref(layers, kvd);
  for (int64_t l = 0; l < layers; ++l) {
    old.layer(l).pos.resize(50);
    std::iota(old.layer(l).pos.begin(), old.layer(l).pos.end(), 0);
    old.layer(l).k = Uniform(50 * kvd, seed_ + l);
    old.layer(l).v = Uniform(50 * kvd, seed_ + 10 + l);
    ref.layer(l).pos.resize(80);
    std::iota(ref.layer(l).pos.begin(), ref.layer(l).pos.end(), 0);
    ref.layer(l).k = Uniform(80 * kvd, seed_ + 20 + l);
    ref.layer(l).v = Uniform(80 * kvd, seed_ + 30 + l);
  }
  engine::cuda::PinnedKv pinned;
  ASSERT_TRUE(pinned.From(ref).ok());
  for (int64_t after : {0, 3, 7}) {  // layer 0's K, layer 1's K, layer 2's V
    SCOPED_TRACE(::testing::Message() << "allocation " << after << " refused");
    DeviceKvCache kv(*ctx_, layers, kvd);
    ASSERT_TRUE(kv.FromHost(old).ok());
    ASSERT_EQ(kv.next_position(), 50);
    ctx_->pool().InjectFailures(after, 1);
    const absl::Status s = kv.StartUpload(pinned);
    ctx_->pool().InjectFailures(0, 0);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_EQ(kv.rows(), 0);
    EXPECT_EQ(kv.next_position(), 0);
    EXPECT_EQ(kv.ByteSize(), 0);
    for (int64_t l = 0; l < layers; ++l) {
      EXPECT_EQ(kv.layer(l).rows, 0) << "layer " << l;
      EXPECT_TRUE(kv.layer(l).host_pos.empty()) << "layer " << l;
    }
    // The same cache takes the upload once memory is there.
    ASSERT_TRUE(kv.StartUpload(pinned).ok());
    for (int64_t l = 0; l < layers; ++l) ASSERT_TRUE(kv.WaitLayer(l).ok());
    engine::KvCache back;
    ASSERT_TRUE(kv.ToHost(&back).ok());
    for (int64_t l = 0; l < layers; ++l) {
      EXPECT_EQ(back.layer(l).pos, ref.layer(l).pos);
      EXPECT_EQ(back.layer(l).k, Bf16Values(ref.layer(l).k)) << "layer " << l;
      EXPECT_EQ(back.layer(l).v, Bf16Values(ref.layer(l).v)) << "layer " << l;
    }
  }
}

// A serving session's requests (miss, selective hit, exact-reuse hit) failing at every
// allocation in turn: each failure is a status, and the same request run again on the same
// session gives the logits of a session that never failed.
TEST_F(RecoveryTest, ServingSessionServesAfterAFailureAtEveryAllocation) {
  auto model = SmallLlama(seed_);
  const int64_t vocab = model->config.vocab_size;
  engine::ReuseConfig cfg;
  cfg.hit_threshold = 0.0f;
  engine::CpuBackend cpu;
  engine::ReusePrefiller pc(*model, cpu, cfg);
  auto runtime = engine::MakeServingRuntime("cuda", *model, cfg, {});
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  auto clean = (*runtime)->NewSession();
  ASSERT_TRUE(clean.ok()) << clean.status();

  const auto ref_ids = RandomIds(256, vocab, seed_ + 1);
  const auto ids = EditedIds(ref_ids, vocab, seed_ + 2);
  auto ref = pc.MakeReference(ref_ids);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const engine::TokenMatch match = pc.Match(pc.Sketch(ids), ref->sketch);
  const engine::TokenMatch self = pc.Match(ref->sketch, ref->sketch);
  enum Kind { kMiss, kHit, kRepeat };
  auto run = [&](engine::ServingSession& s, Kind kind, std::vector<float>* logits) {
    logits->assign(vocab, std::nanf(""));
    SEMSHARE_STATUS_RETURN(s.Begin(300));
    if (kind == kMiss) return s.PrefillFull(ids, logits->data());
    const auto& q = kind == kHit ? ids : ref_ids;
    auto st = s.PrefillHit(q, ref_ids, ref->kv, kind == kHit ? match : self, logits->data());
    if (!st.ok()) return st.status();
    SEMSHARE_STATUS_RETURN(s.Step(q[0], logits->data()));  // and a decode step after it
    return absl::OkStatus();
  };
  for (Kind kind : {kMiss, kHit, kRepeat}) {
    std::vector<float> want, got;
    ASSERT_TRUE(run(**clean, kind, &want).ok());
    bool walked = false;
    for (int64_t after = 0; after < 128 && !walked; ++after) {
      SCOPED_TRACE(::testing::Message()
                   << "request kind " << kind << ", allocation " << after << " refused");
      // A fresh session each time, so that its first request allocates everything and the
      // failure lands on allocation `after` of that request.
      auto fresh = (*runtime)->NewSession();
      ASSERT_TRUE(fresh.ok()) << fresh.status();
      auto* g = dynamic_cast<engine::cuda::CudaServingSession*>(fresh->get());
      ASSERT_NE(g, nullptr);
      DevicePool& pool = g->context().pool();
      pool.InjectFailures(after, 2);
      const absl::Status s = run(*g, kind, &got);
      walked = pool.injected_failures() == 0;  // past the request's last allocation
      pool.InjectFailures(0, 0);
      if (walked) {
        ASSERT_TRUE(s.ok()) << s;
      } else {
        EXPECT_FALSE(s.ok());
        const absl::Status again = run(*g, kind, &got);
        ASSERT_TRUE(again.ok()) << again;
      }
      EXPECT_LT(RelDiff(got, want), 1e-3);
      ASSERT_TRUE(g->context().Check("after recovery").ok());
    }
    EXPECT_TRUE(walked) << "more than 128 allocations in one request?";
  }
}

}  // namespace
}  // namespace semshare::testing
