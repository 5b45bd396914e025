#include "serving/batch_runner.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/llama_forward.h"

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
                                                  const engine::TokenMatch& match, float* logits,
                                                  std::function<bool()> interrupt) override {
    engine::LlamaForward& fwd = prefiller_.forward();
    fwd.set_interrupt(std::move(interrupt));
    absl::StatusOr<engine::PrefillStats> st = prefiller_.PrefillHit(
        ids, ref_ids, ref_kv, match, &static_cast<CpuSeq&>(seq).cache, logits);
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

// Sessions are costly to make (streams, cuBLAS handle, scratch): a finished sequence's
// session goes back to a free list for the next one.
class SessionPool {
 public:
  explicit SessionPool(engine::ServingRuntime& runtime) : runtime_(runtime) {}
  absl::StatusOr<std::unique_ptr<engine::ServingSession>> Get() {
    if (!free_.empty()) {
      std::unique_ptr<engine::ServingSession> s = std::move(free_.back());
      free_.pop_back();
      return s;
    }
    return runtime_.NewSession();
  }
  void Put(std::unique_ptr<engine::ServingSession> s) { free_.push_back(std::move(s)); }

 private:
  engine::ServingRuntime& runtime_;
  std::vector<std::unique_ptr<engine::ServingSession>> free_;
};

class SessionSeq final : public SeqKv {
 public:
  SessionSeq(SessionPool* pool, std::unique_ptr<engine::ServingSession> session)
      : pool(pool), session(std::move(session)) {}
  ~SessionSeq() override {
    if (session != nullptr) {
      (void)session->Begin(0);  // drops the KV
      pool->Put(std::move(session));
    }
  }
  int64_t rows() const override { return rows_; }
  int64_t bytes() const override { return session->KvBytes(); }
  int32_t next_position() const override { return next_; }

  SessionPool* pool;
  std::unique_ptr<engine::ServingSession> session;
  int64_t rows_ = 0;
  int32_t next_ = 0;
};

class SessionBatchRunner final : public BatchRunner {
 public:
  SessionBatchRunner(const engine::Model& model, engine::ServingRuntime& runtime)
      : model_(model), pool_(runtime) {}

  std::string_view backend() const override { return "cuda"; }
  const engine::Model& model() const override { return model_; }

  absl::StatusOr<std::unique_ptr<SeqKv>> NewSeq(int64_t rows) override {
    absl::StatusOr<std::unique_ptr<engine::ServingSession>> s = pool_.Get();
    if (!s.ok()) return s.status();
    if (auto st = (*s)->Begin(rows); !st.ok()) {
      pool_.Put(*std::move(s));
      return st;
    }
    return std::make_unique<SessionSeq>(&pool_, *std::move(s));
  }

  absl::Status Forward(std::span<const Item> items) override {
    for (const Item& it : items) {
      auto& seq = static_cast<SessionSeq&>(*it.seq);
      if (it.pos.empty() || it.pos.front() != seq.next_) {
        return absl::InvalidArgumentError("device forward: a chunk must continue its sequence");
      }
      if (seq.next_ == 0) {
        if (auto s = seq.session->PrefillFull(it.ids, it.logits); !s.ok()) return s;
      } else {
        // Decode: one token per step (several only if a caller chunked a prompt, which
        // max_chunk() == 0 rules out; kept correct all the same).
        for (size_t i = 0; i < it.ids.size(); ++i) {
          if (auto s = seq.session->Step(it.ids[i], logit_scratch(it, i)); !s.ok()) return s;
        }
      }
      seq.next_ = it.pos.back() + 1;
      seq.rows_ += static_cast<int64_t>(it.ids.size());
    }
    return absl::OkStatus();
  }

  absl::StatusOr<engine::PrefillStats> PrefillHit(SeqKv& seq, std::span<const int32_t> ids,
                                                  std::span<const int32_t> ref_ids,
                                                  const engine::KvCache& ref_kv,
                                                  const engine::TokenMatch& match, float* logits,
                                                  std::function<bool()> interrupt) override {
    auto& s = static_cast<SessionSeq&>(seq);
    s.session->SetInterrupt(std::move(interrupt));
    absl::StatusOr<engine::PrefillStats> st =
        s.session->PrefillHit(ids, ref_ids, ref_kv, match, logits);
    s.session->SetInterrupt(nullptr);
    if (st.ok()) {
      s.next_ = static_cast<int32_t>(ids.size());
      s.rows_ = 0;
      for (int64_t r : st->layer_rows) s.rows_ = std::max(s.rows_, r);
      if (s.rows_ == 0) s.rows_ = static_cast<int64_t>(ids.size());
    }
    return st;
  }

  absl::Status CopyPrefix(SeqKv&, const engine::KvCache&, int64_t) override {
    return absl::UnimplementedError("exact-prefix copies are not implemented on the device yet");
  }

  absl::StatusOr<engine::KvCache> TakeKv(SeqKv& seq) override {
    auto& s = static_cast<SessionSeq&>(seq);
    s.rows_ = 0;
    s.next_ = 0;
    return s.session->TakeKv();
  }

  int64_t max_chunk() const override { return 0; }
  int64_t row_bytes() const override {
    const engine::ModelConfig& c = model_.config;
    return c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;  // BF16 K and V on the device
  }

 private:
  // Logits of every token but the last of a multi-token decode item are not wanted.
  float* logit_scratch(const Item& it, size_t i) {
    if (i + 1 == it.ids.size()) return it.logits != nullptr ? it.logits : scratch();
    return scratch();
  }
  float* scratch() {
    scratch_.resize(model_.config.vocab_size);
    return scratch_.data();
  }

  const engine::Model& model_;
  SessionPool pool_;
  std::vector<float> scratch_;
};

}  // namespace

std::unique_ptr<BatchRunner> NewCpuBatchRunner(const engine::Model& model,
                                               std::unique_ptr<engine::Backend> backend,
                                               const engine::ReuseConfig& reuse) {
  return std::make_unique<CpuBatchRunner>(model, std::move(backend), reuse);
}

std::unique_ptr<BatchRunner> NewSessionBatchRunner(const engine::Model& model,
                                                   engine::ServingRuntime& runtime) {
  return std::make_unique<SessionBatchRunner>(model, runtime);
}

}  // namespace semshare::serving
