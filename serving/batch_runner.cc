#include "serving/batch_runner.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/llama_forward.h"
#ifdef SEMSHARE_HAVE_CUDA
#include "engine/cuda/batch_forward.h"
#include "engine/cuda/cuda_serving.h"
#include "engine/cuda/paged_kv.h"
#endif

namespace semshare::serving {
namespace {

class CpuSeq final : public SeqKv {
 public:
  explicit CpuSeq(engine::KvCache cache) : cache(std::move(cache)) {}
  int64_t rows() const override {
    int64_t r = 0;
    for (int64_t l = 0; l < cache.n_layers(); ++l) r = std::max(r, cache.layer(l).rows());
    return r;
  }
  int64_t bytes() const override { return cache.ByteSize(); }
  int32_t next_position() const override { return cache.next_position(); }

  engine::KvCache cache;
};

class CpuBatchRunner final : public BatchRunner {
 public:
  CpuBatchRunner(const engine::Model& model, std::unique_ptr<engine::Backend> backend,
                 const engine::ReuseConfig& reuse)
      : model_(model), backend_(std::move(backend)), prefiller_(model, *backend_, reuse) {}

  std::string_view backend() const override { return backend_->name(); }
  const engine::Model& model() const override { return model_; }

  absl::StatusOr<std::unique_ptr<SeqKv>> NewSeq(int64_t rows) override {
    engine::KvCache cache = prefiller_.forward().NewCache();
    cache.Reserve(rows);
    return std::make_unique<CpuSeq>(std::move(cache));
  }

  absl::Status Forward(std::span<const Item> items) override {
    chunks_.clear();
    for (const Item& it : items) {
      chunks_.push_back(
          engine::SeqChunk{it.ids, it.pos, &static_cast<CpuSeq*>(it.seq)->cache, it.logits});
    }
    return prefiller_.forward().ForwardBatch(chunks_);
  }

  absl::StatusOr<engine::PrefillStats> PrefillHit(SeqKv& seq, std::span<const int32_t> ids,
                                                  std::span<const int32_t> ref_ids,
                                                  const engine::KvCache& ref_kv,
                                                  const engine::ReusePlan& plan, float* logits,
                                                  std::function<bool()> interrupt) override {
    engine::LlamaForward& fwd = prefiller_.forward();
    fwd.set_interrupt(std::move(interrupt));
    absl::StatusOr<engine::PrefillStats> st = prefiller_.PrefillPlan(
        ids, ref_ids, ref_kv, plan, &static_cast<CpuSeq&>(seq).cache, logits);
    fwd.set_interrupt(nullptr);
    return st;
  }

  absl::Status CopyPrefix(SeqKv& seq, const engine::KvCache& src, int64_t rows) override {
    engine::KvCache& c = static_cast<CpuSeq&>(seq).cache;
    if (c.rows() != 0 || src.n_layers() != c.n_layers() || src.kv_dim() != c.kv_dim()) {
      return absl::InvalidArgumentError("prefix copy: an empty sequence of the reference's shape");
    }
    for (int64_t l = 0; l < src.n_layers(); ++l) {
      if (src.layer(l).rows() < rows) {
        return absl::InvalidArgumentError("prefix copy: the reference holds fewer rows");
      }
    }
    c.AssignPrefix(src, rows);
    return absl::OkStatus();
  }

  absl::StatusOr<engine::KvCache> TakeKv(SeqKv& seq) override {
    engine::KvCache& c = static_cast<CpuSeq&>(seq).cache;
    engine::KvCache out = std::move(c);
    c = prefiller_.forward().NewCache();
    return out;
  }

  int64_t max_chunk() const override { return std::numeric_limits<int32_t>::max(); }
  int64_t row_bytes() const override {
    const engine::ModelConfig& c = model_.config;
    return c.n_layers * c.n_kv_heads * c.head_dim * 2 * static_cast<int64_t>(sizeof(float));
  }

 private:
  const engine::Model& model_;
  std::unique_ptr<engine::Backend> backend_;
  engine::ReusePrefiller prefiller_;
  std::vector<engine::SeqChunk> chunks_;
};

#ifdef SEMSHARE_HAVE_CUDA
class CudaSeq final : public SeqKv {
 public:
  explicit CudaSeq(engine::cuda::PagedKvPool& pool) : seq(pool) {}
  int64_t rows() const override { return seq.rows(); }
  int64_t bytes() const override { return seq.bytes(); }
  int32_t next_position() const override { return seq.next_position(); }

  engine::cuda::PagedSeq seq;
};

class CudaBatchRunner final : public BatchRunner {
 public:
  // The session lends its context (stream, cuBLAS handle, memory pool: the runtime's memory
  // figures count the pages with it) and runs reuse hits.
  CudaBatchRunner(const engine::Model& model,
                  std::unique_ptr<engine::cuda::CudaServingSession> session,
                  std::unique_ptr<engine::cuda::PagedKvPool> pool,
                  const engine::cuda::DeviceModel& weights)
      : model_(model),
        hit_(std::move(session)),
        pool_(std::move(pool)),
        fwd_(hit_->context(), weights, *pool_) {}

  std::string_view backend() const override { return "cuda"; }
  const engine::Model& model() const override { return model_; }

  // No pages yet: they come as rows do (Forward), so the loop's row budget is the pool's.
  absl::StatusOr<std::unique_ptr<SeqKv>> NewSeq(int64_t) override {
    return std::make_unique<CudaSeq>(*pool_);
  }

  absl::Status Forward(std::span<const Item> items) override {
    items_.clear();
    for (const Item& it : items) {
      items_.push_back(engine::cuda::BatchForward::Item{&static_cast<CudaSeq*>(it.seq)->seq, it.ids,
                                                        it.pos, it.logits});
    }
    return fwd_.Forward(items_);
  }

  // The hit runs on a device session (the ReusePrefiller rule as CudaServingSession applies
  // it: exact reuse, or selective prefill and retention, with its resident reference tier),
  // then its rows move into the sequence's pages.
  absl::StatusOr<engine::PrefillStats> PrefillHit(SeqKv& seq, std::span<const int32_t> ids,
                                                  std::span<const int32_t> ref_ids,
                                                  const engine::KvCache& ref_kv,
                                                  const engine::ReusePlan& plan, float* logits,
                                                  std::function<bool()> interrupt) override {
    if (auto s = hit_->Begin(static_cast<int64_t>(ids.size())); !s.ok()) return s;
    hit_->SetInterrupt(std::move(interrupt));
    absl::StatusOr<engine::PrefillStats> st = hit_->PrefillPlan(ids, ref_ids, ref_kv, plan, logits);
    hit_->SetInterrupt(nullptr);
    if (!st.ok()) return st;
    absl::Status s = fwd_.AdoptDevice(static_cast<CudaSeq&>(seq).seq, hit_->cache());
    (void)hit_->Begin(0);  // its rows are in the pages now (capacity kept for the next hit)
    if (!s.ok()) return s;
    return st;
  }

  absl::Status CopyPrefix(SeqKv& seq, const engine::KvCache& src, int64_t rows) override {
    return fwd_.CopyFromHost(static_cast<CudaSeq&>(seq).seq, src, rows);
  }

  absl::StatusOr<engine::KvCache> TakeKv(SeqKv& seq) override {
    engine::cuda::PagedSeq& s = static_cast<CudaSeq&>(seq).seq;
    engine::KvCache out;
    if (auto st = fwd_.ToHost(s, &out); !st.ok()) return st;
    s.Clear();
    return out;
  }

  int64_t max_chunk() const override { return std::numeric_limits<int32_t>::max(); }
  int64_t row_bytes() const override { return CudaRowBytes(model_.config); }

  static int64_t CudaRowBytes(const engine::ModelConfig& c) {
    return c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;  // BF16 K and V on the device
  }

 private:
  const engine::Model& model_;
  // Destroyed in reverse: the forward, the pool (its sequences are gone by then: the loop
  // finishes them before its runner goes; the pages return to the session's memory pool), then
  // the session and its context.
  std::unique_ptr<engine::cuda::CudaServingSession> hit_;
  std::unique_ptr<engine::cuda::PagedKvPool> pool_;
  engine::cuda::BatchForward fwd_;
  std::vector<engine::cuda::BatchForward::Item> items_;
};
#endif  // SEMSHARE_HAVE_CUDA

}  // namespace

std::unique_ptr<BatchRunner> NewCpuBatchRunner(const engine::Model& model,
                                               std::unique_ptr<engine::Backend> backend,
                                               const engine::ReuseConfig& reuse) {
  return std::make_unique<CpuBatchRunner>(model, std::move(backend), reuse);
}

absl::StatusOr<std::unique_ptr<BatchRunner>> NewCudaBatchRunner(const engine::Model& model,
                                                                engine::ServingRuntime& runtime,
                                                                int64_t* kv_cache_bytes,
                                                                int64_t max_batch_tokens,
                                                                int32_t max_num_seqs) {
#ifdef SEMSHARE_HAVE_CUDA
  namespace ec = engine::cuda;
  auto* rt = dynamic_cast<ec::CudaServingRuntime*>(&runtime);
  if (rt == nullptr) {
    return absl::InvalidArgumentError("the CUDA batch runner needs a CUDA serving runtime");
  }
  absl::StatusOr<std::unique_ptr<engine::ServingSession>> made = rt->NewSession();
  if (!made.ok()) return made.status();
  std::unique_ptr<ec::CudaServingSession> session(
      static_cast<ec::CudaServingSession*>(made->release()));
  ec::CudaContext& ctx = session->context();
  const engine::ModelConfig& c = model.config;
  const int64_t row = CudaBatchRunner::CudaRowBytes(c);
  const int64_t seqs = std::max<int32_t>(max_num_seqs, 1);
  if (*kv_cache_bytes <= 0) {
    absl::StatusOr<int64_t> free_b = ec::DeviceFreeBytes(ctx);
    if (!free_b.ok()) return free_b.status();
    const int64_t scratch =
        ec::BatchForward::ScratchBytes(c, std::max<int64_t>(max_batch_tokens, seqs), seqs);
    // The pool takes the pages that fit in 90% of what is free less the scratch; the loop's
    // budget is its rows less one partial page per sequence.
    const int64_t target = static_cast<int64_t>(0.9 * static_cast<double>(*free_b)) - scratch;
    const int64_t rows =
        ec::PagedKvPool::BlocksWithin(c.n_layers, c.n_kv_heads * c.head_dim, target) *
            ec::PagedKvPool::kBlockRows -
        seqs * (ec::PagedKvPool::kBlockRows - 1);
    if (rows < ec::PagedKvPool::kBlockRows) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the device has ", *free_b,
                       " bytes free after the weights: too little for a KV cache "
                       "and an iteration's scratch (",
                       scratch, " bytes at --max-batch-tokens ", max_batch_tokens,
                       "); use a smaller model or --max-batch-tokens, or a larger device"));
    }
    *kv_cache_bytes = rows * row;
  }
  // The loop's budget in rows plus one partial page per sequence.
  const int64_t pool_bytes =
      (*kv_cache_bytes / row + seqs * (ec::PagedKvPool::kBlockRows - 1)) * row;
  absl::StatusOr<std::unique_ptr<ec::PagedKvPool>> pool =
      ec::PagedKvPool::Create(ctx, c.n_layers, c.n_kv_heads * c.head_dim, pool_bytes);
  if (!pool.ok()) return pool.status();
  return std::unique_ptr<BatchRunner>(
      std::make_unique<CudaBatchRunner>(model, std::move(session), *std::move(pool), rt->model()));
#else
  (void)model;
  (void)runtime;
  (void)kv_cache_bytes;
  (void)max_batch_tokens;
  (void)max_num_seqs;
  return absl::UnimplementedError(
      "the CUDA batch runner: this build has no CUDA (configure with -DSEMSHARE_CUDA=ON)");
#endif
}

}  // namespace semshare::serving
