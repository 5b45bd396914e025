// The forward pass on small random-weight models: the KV cache gives the same logits as
// recomputing (prefill + decode == longer prefill), chunking does not change results, the two
// RoPE pairings agree once Q/K rows are permuted the way llama.cpp's converter does, and bad
// calls fail with a Status. Tolerance 2e-4 relative to the logit scale: float32 with sums
// reordered by chunking (a few hundred terms per dot product, 3 layers), far below the O(1)
// change that a wrong position, mask or cache row causes.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "engine/cpu/cpu_backend.h"
#include "engine/llama_forward.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

std::vector<int32_t> Iota(int64_t n, int32_t start = 0) {
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<int32_t>(i);
  return v;
}

std::vector<int32_t> Ids(int64_t n, int32_t vocab) {
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 37 + 11) % vocab);
  return v;
}

double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1e-6, worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return worst / scale;
}

std::vector<float> Prefill(const Model& m, int64_t chunk, const std::vector<int32_t>& ids) {
  CpuBackend be;
  LlamaForward f(m, be, chunk);
  KvCache cache = f.NewCache();
  std::vector<float> logits(m.config.vocab_size);
  EXPECT_TRUE(f.Forward(ids, Iota(ids.size()), cache, logits.data()).ok());
  EXPECT_EQ(cache.rows(), static_cast<int64_t>(ids.size()));
  return logits;
}

class ForwardArchTest : public ::testing::TestWithParam<Arch> {};

TEST_P(ForwardArchTest, DecodeWithCacheEqualsLongerPrefill) {
  auto m = semshare::testing::TinyModel(GetParam(), RopeStyle::kHalfSplit, 100);
  const std::vector<int32_t> ids = Ids(23, 97);
  CpuBackend be;
  LlamaForward f(*m, be);
  KvCache cache = f.NewCache();
  std::vector<float> logits(97);
  std::vector<int32_t> head(ids.begin(), ids.end() - 3);
  ASSERT_TRUE(f.Forward(head, Iota(head.size()), cache, logits.data()).ok());
  for (int i = 3; i > 0; --i) {  // three single-token decode steps
    const int32_t id = ids[ids.size() - i];
    const int32_t p = cache.next_position();
    ASSERT_TRUE(f.Forward({&id, 1}, {&p, 1}, cache, logits.data()).ok());
  }
  const std::vector<float> full = Prefill(*m, 512, ids);
  EXPECT_LE(MaxRelDiff(logits, full), 2e-4);
  // Non-trivial: a different last token changes the logits by far more than the tolerance.
  std::vector<int32_t> other = ids;
  other.back() = (other.back() + 1) % 97;
  EXPECT_GT(MaxRelDiff(Prefill(*m, 512, other), full), 1e-2);
}

TEST_P(ForwardArchTest, ChunkingDoesNotChangeLogits) {
  auto m = semshare::testing::TinyModel(GetParam(), RopeStyle::kAdjacent, 200);
  const std::vector<int32_t> ids = Ids(40, 97);
  EXPECT_LE(MaxRelDiff(Prefill(*m, 7, ids), Prefill(*m, 512, ids)), 2e-4);
}

// The interrupt (set by the server to "cancelled or past the deadline") stops a prefill
// between chunks with CANCELLED; cleared, the same object runs normally again.
// A GGUF file's attention.sliding_window is read as is (the HF loader already refused a negative
// one): a negative window is refused at load, not passed to the attention kernels.
TEST(ForwardTest, NegativeSlidingWindowIsRefusedAtLoad) {
  auto m = semshare::testing::TinyModel(Arch::kMistral, RopeStyle::kHalfSplit, 5);
  EXPECT_TRUE(m->config.Validate().ok());
  m->config.sliding_window = -3;
  const absl::Status s = m->config.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sliding_window = -3"), std::string::npos) << s;
}

TEST(ForwardTest, InterruptStopsBetweenChunks) {
  auto m = semshare::testing::TinyModel(Arch::kLlama, RopeStyle::kAdjacent, 210);
  CpuBackend be;
  LlamaForward f(*m, be, /*max_chunk=*/8);
  const std::vector<int32_t> ids = Ids(40, 97);
  std::vector<int32_t> pos(ids.size());
  std::iota(pos.begin(), pos.end(), 0);
  int checks = 0;
  f.set_interrupt([&] { return ++checks > 2; });  // two chunks pass, the third stops
  KvCache cache = f.NewCache();
  std::vector<float> logits(m->config.vocab_size);
  const absl::Status s = f.Forward(ids, pos, cache, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(checks, 3);
  EXPECT_EQ(cache.rows(), 16);
  f.set_interrupt(nullptr);
  KvCache fresh = f.NewCache();
  EXPECT_TRUE(f.Forward(ids, pos, fresh, logits.data()).ok());
  EXPECT_EQ(fresh.rows(), 40);
}

// A batch of sequences at different stages (a fresh prompt, a prompt's second chunk, decode
// steps over caches of different lengths, one with no logits wanted) gives each sequence the
// logits and KV rows it gets alone: attention never reads another sequence's rows.
TEST_P(ForwardArchTest, BatchOfSequencesEqualsEachAlone) {
  auto m = semshare::testing::TinyModel(GetParam(), RopeStyle::kHalfSplit, 700);
  const int32_t vocab = 97;
  CpuBackend be;
  LlamaForward alone(*m, be), batched(*m, be);
  // Four sequences: heads already in their caches, then this iteration's tokens.
  const std::vector<int64_t> head_len = {0, 19, 7, 31};
  const std::vector<int64_t> step_len = {13, 5, 1, 1};
  std::vector<KvCache> a, b;
  std::vector<std::vector<int32_t>> ids(4), pos(4);
  for (int s = 0; s < 4; ++s) {
    const std::vector<int32_t> all = Ids(head_len[s] + step_len[s] + 3 * s, vocab);
    a.push_back(alone.NewCache());
    b.push_back(batched.NewCache());
    if (head_len[s] > 0) {
      const std::vector<int32_t> head(all.begin(), all.begin() + head_len[s]);
      ASSERT_TRUE(alone.Forward(head, Iota(head_len[s]), a[s], nullptr).ok());
      ASSERT_TRUE(batched.Forward(head, Iota(head_len[s]), b[s], nullptr).ok());
    }
    ids[s].assign(all.begin() + head_len[s], all.begin() + head_len[s] + step_len[s]);
    pos[s] = Iota(step_len[s], static_cast<int32_t>(head_len[s]));
  }
  std::vector<std::vector<float>> la(4, std::vector<float>(vocab)),
      lb(4, std::vector<float>(vocab, -1.0f));
  std::vector<SeqChunk> chunks;
  for (int s = 0; s < 4; ++s) {
    ASSERT_TRUE(alone.Forward(ids[s], pos[s], a[s], la[s].data()).ok());
    chunks.push_back(SeqChunk{ids[s], pos[s], &b[s], s == 1 ? nullptr : lb[s].data()});
  }
  ASSERT_TRUE(batched.ForwardBatch(chunks).ok());
  for (int s = 0; s < 4; ++s) {
    SCOPED_TRACE(s);
    ASSERT_EQ(b[s].rows(), a[s].rows());
    EXPECT_EQ(b[s].layer(1).pos, a[s].layer(1).pos);
    if (s == 1) {
      EXPECT_EQ(lb[s], std::vector<float>(vocab, -1.0f));  // not wanted, not written
      continue;
    }
    EXPECT_LE(MaxRelDiff(lb[s], la[s]), 2e-4);
  }
  // The KV rows the batch appended are each sequence's own.
  std::vector<float> ka(a[3].layer(2).k.end() - 16, a[3].layer(2).k.end());
  std::vector<float> kb(b[3].layer(2).k.end() - 16, b[3].layer(2).k.end());
  EXPECT_LE(MaxRelDiff(kb, ka), 2e-4);
  // Two chunks on one cache, and a bad chunk, are refused before anything runs.
  const int64_t rows_before = b[0].rows();
  const std::vector<int32_t> one = {3};
  const std::vector<int32_t> p0 = {static_cast<int32_t>(b[0].next_position())};
  const std::vector<SeqChunk> twice = {SeqChunk{one, p0, &b[0], nullptr},
                                       SeqChunk{one, p0, &b[0], nullptr}};
  EXPECT_EQ(batched.ForwardBatch(twice).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad = {vocab};
  const std::vector<SeqChunk> with_bad = {SeqChunk{one, p0, &b[0], nullptr},
                                          SeqChunk{bad, p0, &b[2], nullptr}};
  EXPECT_EQ(batched.ForwardBatch(with_bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b[0].rows(), rows_before);
}

INSTANTIATE_TEST_SUITE_P(Archs, ForwardArchTest,
                         ::testing::Values(Arch::kLlama, Arch::kQwen2, Arch::kMistral));

// llama.cpp's converter permutes each head's Q/K rows from half-split order to interleaved
// order: new row (2k + j) = old row (j * hd/2 + k) for j in {0,1}. With that permutation,
// adjacent-pair RoPE computes exactly what half-split RoPE computes on the original rows.
TEST(ForwardTest, AdjacentRopeOnPermutedWeightsEqualsHalfSplit) {
  auto hf = semshare::testing::TinyModel(Arch::kLlama, RopeStyle::kHalfSplit, 300);
  auto gg = semshare::testing::TinyModel(Arch::kLlama, RopeStyle::kAdjacent, 300);
  const int64_t hd = hf->config.head_dim, d = hf->config.d_model;
  auto permute = [&](const Matrix& w, int64_t heads) {
    Matrix out = w;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t k = 0; k < hd / 2; ++k) {
        for (int64_t j = 0; j < 2; ++j) {
          std::copy_n(w.row(h * hd + j * hd / 2 + k), d,
                      out.data.data() + (h * hd + 2 * k + j) * d);
        }
      }
    }
    return out;
  };
  for (int64_t l = 0; l < hf->config.n_layers; ++l) {
    gg->weights.layers[l].wq = permute(hf->weights.layers[l].wq, hf->config.n_heads);
    gg->weights.layers[l].wk = permute(hf->weights.layers[l].wk, hf->config.n_kv_heads);
  }
  const std::vector<int32_t> ids = Ids(30, 97);
  EXPECT_LE(MaxRelDiff(Prefill(*gg, 512, ids), Prefill(*hf, 512, ids)), 2e-4);
  // And without the permutation the two differ: the test can tell the pairings apart.
  auto unpermuted = semshare::testing::TinyModel(Arch::kLlama, RopeStyle::kAdjacent, 300);
  EXPECT_GT(MaxRelDiff(Prefill(*unpermuted, 512, ids), Prefill(*hf, 512, ids)), 1e-2);
}

TEST(ForwardTest, RejectsBadIdsPositionsAndCaches) {
  auto m = semshare::testing::TinyModel(Arch::kLlama, RopeStyle::kAdjacent, 400);
  CpuBackend be;
  LlamaForward f(*m, be);
  KvCache cache = f.NewCache();
  std::vector<float> logits(97);
  std::vector<int32_t> bad_id = {1, 97};
  EXPECT_EQ(f.Forward(bad_id, Iota(2), cache, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> ok = {1, 2};
  std::vector<int32_t> backwards = {5, 4};
  EXPECT_EQ(f.Forward(ok, backwards, cache, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(f.Forward(ok, Iota(2), cache, logits.data()).ok());
  // Positions must continue after the cache.
  EXPECT_EQ(f.Forward(ok, Iota(2), cache, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  KvCache wrong(2, 16);
  EXPECT_EQ(f.Forward(ok, Iota(2), wrong, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.Forward({}, {}, cache, logits.data()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace semshare::engine
