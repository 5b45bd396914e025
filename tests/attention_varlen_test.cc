// The batched forward's fused steps give the same bits as the ops they replace:
// - CpuBackend::AttentionVarlen (all sequences of an iteration in one pool job) against one
//   CpuBackend::Attention call per sequence, on a mix that takes every path (a 300-row prefill
//   chunk on the flash kernel, one- to four-row decodes on the per-(row, head) kernel, 5..15-row
//   chunks and shapes the flash kernel declines on the GEMM path), GQA groups 1..4, a sliding
//   window, queries that see nothing, with pools of 1, 2 and 3 threads;
// - RopeQk and AddRmsNorm against Rope twice and Add + RmsNorm;
// - LlamaForward::ForwardBatch on CpuBackend against the same calls on a backend that forwards
//   the plain ops to a CpuBackend and keeps Backend's default AttentionVarlen (a loop of
//   Attention), RopeQk and AddRmsNorm: logits and KV rows equal bit for bit.
// Exact equality is the contract (engine/backend.h): the fused steps run the same kernels in the
// same order per output element, so there is no tolerance to derive.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/flash_attention.h"
#include "engine/cpu/thread_pool.h"
#include "engine/llama_forward.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

using semshare::testing::RandomVector;

// Bitwise equality of two float arrays, naming the first differing element.
void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << "first difference at " << i << " of " << got.size() << ": " << got[i]
                    << " vs " << want[i];
      return;
    }
  }
}

// Inputs must be non-trivial: finite everywhere, and not all zero.
void ExpectNonTrivial(const std::vector<float>& v) {
  size_t nonzero = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    nonzero += x != 0.0f ? 1 : 0;
  }
  EXPECT_GT(nonzero, v.size() / 2);
}

// One sequence of a test batch: n query rows over its own m kv rows.
struct SeqSpec {
  int64_t n, m;
  int32_t q_first;  // position of the first query; kv rows at positions 0..m-1 (times k_step)
  int32_t k_step;
};

struct SeqData {
  std::vector<float> k, v;
  std::vector<int32_t> k_pos;
};

// Restores a default pool of the machine's size when a test changes it.
class PoolSize {
 public:
  explicit PoolSize(int threads) { ThreadPool::SetDefaultThreads(threads); }
  ~PoolSize() {
    ThreadPool::SetDefaultThreads(static_cast<int>(std::thread::hardware_concurrency()));
  }
};

TEST(AttentionVarlenTest, EqualsOneAttentionCallPerSequenceBitForBit) {
  struct Shape {
    int64_t nh, nkv, hd, window;
  };
  const Shape shapes[] = {
      {9, 3, 64, 0},   // SmolLM2-135M's heads
      {9, 3, 64, 50},  // ... with a sliding window
      {8, 2, 128, 0},  // group 4, hd 128
      {4, 4, 16, 0},   // group 1
      {6, 2, 8, 0},    // hd 8: the flash kernel declines, 16+ rows take the GEMM path
  };
  // An iteration of the engine loop: a prefill chunk after a prefix, decodes over caches of
  // different lengths, short chunks, an empty entry, queries before every key.
  const SeqSpec specs[] = {
      {1, 300, 299, 1}, {300, 460, 160, 1}, {1, 77, 76, 1},   {3, 120, 117, 1},
      {0, 10, 10, 1},   {9, 60, 51, 1},     {16, 16, 0, 1},   {1, 1, 0, 1},
      {4, 40, 36, 1},   {2, 50, -10, 1},    {1, 200, 398, 2}, {23, 90, 67, 1},
  };
  for (int threads : {1, 2, 3}) {
    PoolSize pool(threads);
    for (const Shape& sh : shapes) {
      SCOPED_TRACE(::testing::Message() << "threads " << threads << " nh=" << sh.nh << " nkv="
                                        << sh.nkv << " hd=" << sh.hd << " window=" << sh.window);
      const AttentionParams p{sh.nh, sh.nkv, sh.hd, 1.0f / std::sqrt(static_cast<float>(sh.hd)),
                              sh.window};
      const int64_t row = sh.nh * sh.hd, kv_row = sh.nkv * sh.hd;
      uint64_t seed = 1000;
      std::vector<SeqData> data;
      std::vector<AttentionSeq> seqs;
      std::vector<int32_t> q_pos;
      int64_t rows = 0;
      for (const SeqSpec& s : specs) {
        SeqData d;
        d.k = RandomVector(s.m * kv_row, seed++);
        d.v = RandomVector(s.m * kv_row, seed++);
        d.k_pos.resize(s.m);
        for (int64_t j = 0; j < s.m; ++j) d.k_pos[j] = static_cast<int32_t>(j * s.k_step);
        for (int64_t i = 0; i < s.n; ++i) q_pos.push_back(s.q_first + static_cast<int32_t>(i));
        data.push_back(std::move(d));
        seqs.push_back(AttentionSeq{rows, s.n, nullptr, nullptr, nullptr, s.m});
        rows += s.n;
      }
      for (size_t i = 0; i < seqs.size(); ++i) {
        seqs[i].k = data[i].k.data();
        seqs[i].v = data[i].v.data();
        seqs[i].k_pos = data[i].k_pos.data();
      }
      const std::vector<float> q = RandomVector(rows * row, seed++, 2.0f);

      CpuBackend alone;
      std::vector<float> want(rows * row, -7.0f);
      for (const AttentionSeq& s : seqs) {
        if (s.n == 0) continue;
        alone.Attention(q.data() + s.q_begin * row, q_pos.data() + s.q_begin, s.n, s.k, s.v,
                        s.k_pos, s.m, p, want.data() + s.q_begin * row);
      }
      ExpectNonTrivial(want);

      CpuBackend batched;
      std::vector<float> got(rows * row, std::numeric_limits<float>::quiet_NaN());
      batched.AttentionVarlen(q.data(), q_pos.data(), seqs, p, got.data());
      ExpectSameBits(got, want);

      // Again on the same backend with subsets in another order (scratch reused, fewer
      // sequences; one decode row alone is split into one item per head): rows of the dropped
      // sequences stay untouched.
      for (const std::vector<size_t>& subset :
           {std::vector<size_t>{3, 1, 0, 11}, std::vector<size_t>{2}}) {
        std::vector<AttentionSeq> some;
        std::vector<float> again(rows * row, 5.0f), want_some(rows * row, 5.0f);
        for (size_t i : subset) {
          some.push_back(seqs[i]);
          std::copy_n(want.begin() + seqs[i].q_begin * row, seqs[i].n * row,
                      want_some.begin() + seqs[i].q_begin * row);
        }
        batched.AttentionVarlen(q.data(), q_pos.data(), some, p, again.data());
        ExpectSameBits(again, want_some);
      }
    }
  }
}

TEST(AttentionVarlenTest, FusedRopeAndAddNormEqualTheirOps) {
  CpuBackend be;
  const int64_t n = 37, d = 100, nh = 6, nkv = 2, hd = 32;
  for (RopeStyle style : {RopeStyle::kAdjacent, RopeStyle::kHalfSplit}) {
    SCOPED_TRACE(style == RopeStyle::kAdjacent ? "adjacent" : "half-split");
    std::vector<float> inv_freq(12);  // rope_dim 24 < head_dim: the last 8 dims stay
    for (size_t k = 0; k < inv_freq.size(); ++k) {
      inv_freq[k] = std::pow(10000.0f, -2.0f * static_cast<float>(k) / 24.0f);
    }
    const RopeParams rope{style, 24, inv_freq.data()};
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(3 * i + 1000);
    const std::vector<float> q0 = RandomVector(n * nh * hd, 1), k0 = RandomVector(n * nkv * hd, 2);
    std::vector<float> q1 = q0, k1 = k0, q2 = q0, k2 = k0;
    be.Rope(q1.data(), pos.data(), n, nh, hd, rope);
    be.Rope(k1.data(), pos.data(), n, nkv, hd, rope);
    be.RopeQk(q2.data(), nh, k2.data(), nkv, pos.data(), n, hd, rope);
    ExpectSameBits(q2, q1);
    ExpectSameBits(k2, k1);
    EXPECT_NE(q1, q0);  // the rotation did something
  }
  const std::vector<float> x0 = RandomVector(n * d, 3), y0 = RandomVector(n * d, 4),
                           gamma = RandomVector(d, 5);
  std::vector<float> x1 = x0, x2 = x0, out1(n * d), out2 = y0;
  be.Add(x1.data(), y0.data(), n * d);
  be.RmsNorm(x1.data(), gamma.data(), n, d, 1e-5f, out1.data());
  be.AddRmsNorm(x2.data(), out2.data(), gamma.data(), n, d, 1e-5f, out2.data());  // y aliases out
  ExpectSameBits(x2, x1);
  ExpectSameBits(out2, out1);
  ExpectNonTrivial(out1);
}

// The required ops forwarded to a CpuBackend; AttentionVarlen, RopeQk and AddRmsNorm stay
// Backend's defaults (one Attention per sequence, two Ropes, Add then RmsNorm).
class PlainOps final : public Backend {
 public:
  std::string_view name() const override { return "plain-ops"; }
  void MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) override {
    cpu_.MatMul(x, n, w, bias, y);
  }
  void RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
               float* y) override {
    cpu_.RmsNorm(x, gamma, n, d, eps, y);
  }
  void Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
            const RopeParams& rope) override {
    cpu_.Rope(x, pos, n, heads, head_dim, rope);
  }
  void Attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                 const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out) override {
    ++attention_calls;
    cpu_.Attention(q, q_pos, n, k, v, k_pos, m, p, out);
  }
  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override {
    cpu_.SwiGlu(gate, up, count, out);
  }
  void Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) override {
    cpu_.Embed(table, ids, n, out);
  }
  void GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                  float* dst) override {
    cpu_.GatherRows(src, row_len, idx, n, dst);
  }
  void Add(float* x, const float* y, int64_t count) override { cpu_.Add(x, y, count); }
  void AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                     const int32_t* k_pos, int64_t m, const AttentionParams& p,
                     float* mass) override {
    cpu_.AttentionMass(q, q_pos, n, k, k_pos, m, p, mass);
  }
  void RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) override {
    cpu_.RowDistance(a, b, n, dim, out);
  }

  int64_t attention_calls = 0;

 private:
  CpuBackend cpu_;
};

std::unique_ptr<Model> SmallModel(Arch arch, int64_t head_dim) {
  auto m = std::make_unique<Model>();
  ModelConfig& c = m->config;
  c.arch = arch;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = head_dim;
  c.d_model = 96;
  c.d_ff = 160;
  c.vocab_size = 97;
  c.max_context = 4096;
  c.rope_dim = head_dim;
  c.rope_style = RopeStyle::kHalfSplit;
  c.rope_base = 10000.0f;
  c.qkv_bias = arch == Arch::kQwen2;
  c.sliding_window = arch == Arch::kMistral ? 21 : 0;
  semshare::testing::RandomWeights(*m, 77, 0.2f);
  return m;
}

std::vector<int32_t> Range(int64_t n, int32_t start) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(AttentionVarlenTest, ForwardBatchEqualsDefaultOpsBitForBit) {
  for (Arch arch : {Arch::kLlama, Arch::kQwen2, Arch::kMistral}) {
    for (int64_t hd : {int64_t{16}, int64_t{8}}) {  // 8: no flash kernel
      SCOPED_TRACE(::testing::Message() << "arch " << static_cast<int>(arch) << " hd " << hd);
      auto model = SmallModel(arch, hd);
      const int32_t vocab = static_cast<int32_t>(model->config.vocab_size);
      CpuBackend cpu;
      PlainOps plain;
      LlamaForward fused(*model, cpu), reference(*model, plain);
      // Per sequence: tokens already in the cache, then this iteration's rows (a 40-token
      // prompt, a 9-token chunk, decodes, a 3-token step, one wanting no logits).
      const std::vector<int64_t> head_len = {0, 19, 31, 7, 64, 12, 3, 50};
      const std::vector<int64_t> step_len = {40, 9, 1, 1, 1, 3, 1, 17};
      const size_t seqs = head_len.size();
      std::vector<KvCache> ca, cb;
      std::vector<std::vector<int32_t>> ids(seqs), pos(seqs);
      for (size_t s = 0; s < seqs; ++s) {
        std::vector<int32_t> all(head_len[s] + step_len[s]);
        for (size_t i = 0; i < all.size(); ++i) {
          all[i] = static_cast<int32_t>((i * 31 + s * 7 + 3) % vocab);
        }
        ca.push_back(fused.NewCache());
        cb.push_back(reference.NewCache());
        if (head_len[s] > 0) {
          const std::vector<int32_t> head(all.begin(), all.begin() + head_len[s]);
          ASSERT_TRUE(fused.Forward(head, Range(head_len[s], 0), ca[s], nullptr).ok());
          ASSERT_TRUE(reference.Forward(head, Range(head_len[s], 0), cb[s], nullptr).ok());
        }
        ids[s].assign(all.begin() + head_len[s], all.end());
        pos[s] = Range(step_len[s], static_cast<int32_t>(head_len[s]));
      }
      // Two iterations: the batch above, then one decode token for every sequence.
      for (int iter = 0; iter < 2; ++iter) {
        std::vector<std::vector<float>> la(seqs, std::vector<float>(vocab, -1.0f)),
            lb(seqs, std::vector<float>(vocab, -2.0f));
        std::vector<SeqChunk> a, b;
        for (size_t s = 0; s < seqs; ++s) {
          float* want_a = s == 3 ? nullptr : la[s].data();
          float* want_b = s == 3 ? nullptr : lb[s].data();
          a.push_back(SeqChunk{ids[s], pos[s], &ca[s], want_a});
          b.push_back(SeqChunk{ids[s], pos[s], &cb[s], want_b});
        }
        const int64_t calls_before = plain.attention_calls;
        ASSERT_TRUE(fused.ForwardBatch(a).ok());
        ASSERT_TRUE(reference.ForwardBatch(b).ok());
        // The reference really ran one Attention per sequence and layer.
        EXPECT_EQ(plain.attention_calls - calls_before,
                  static_cast<int64_t>(seqs) * model->config.n_layers);
        for (size_t s = 0; s < seqs; ++s) {
          SCOPED_TRACE(::testing::Message() << "iteration " << iter << " sequence " << s);
          if (s != 3) {
            ExpectNonTrivial(la[s]);
            ExpectSameBits(la[s], lb[s]);
          }
          for (int64_t l = 0; l < model->config.n_layers; ++l) {
            ExpectSameBits(ca[s].layer(l).k, cb[s].layer(l).k);
            ExpectSameBits(ca[s].layer(l).v, cb[s].layer(l).v);
          }
          ids[s] = {static_cast<int32_t>((s * 13 + iter + 5) % vocab)};
          pos[s] = {static_cast<int32_t>(ca[s].next_position())};
        }
      }
    }
  }
}

}  // namespace
}  // namespace semshare::engine
