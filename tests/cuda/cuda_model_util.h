// Small random-weight models and prompts shared by the CUDA end-to-end tests.
#ifndef SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_
#define SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_status.h"  // SEMSHARE_STATUS_RETURN for advance lambdas
#include "engine/model/model.h"
#include "engine/reuse/reuse_config.h"
#include "tests/test_util.h"

namespace semshare::testing {

// Llama-shaped, head_dim 64 so prefill takes the flash kernel (>= 16 queries); GQA 4:2. RoPE
// half-split (HF checkpoints) by default; kAdjacent is what the GGUF loader gives llama models
// (llama.cpp permuted the Q/K rows for adjacent pairs).
inline std::unique_ptr<engine::Model> SmallLlama(
    uint64_t seed, engine::RopeStyle style = engine::RopeStyle::kHalfSplit) {
  auto m = TinyModel(engine::Arch::kLlama, style, seed);
  engine::ModelConfig& c = m->config;
  c.n_layers = 3;
  c.d_model = 256;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.rope_dim = 64;
  c.d_ff = 384;
  c.vocab_size = 211;
  c.rope_base = 500000.0f;
  RandomWeights(*m, seed, 0.08f);
  return m;
}

// Llama-shaped with the 8B model's head_dim 128 (GQA 4:2, two layers) and room for ~4k-token
// prompts: prefill takes the flash kernel at head_dim 128 over many key tiles, and decode over
// that many rows splits the KV (flash-decoding: few query blocks, long context).
inline std::unique_ptr<engine::Model> Dim128Llama(uint64_t seed, engine::RopeStyle style) {
  auto m = TinyModel(engine::Arch::kLlama, style, seed);
  engine::ModelConfig& c = m->config;
  c.n_layers = 2;
  c.d_model = 512;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 128;
  c.rope_dim = 128;
  c.d_ff = 768;
  c.vocab_size = 257;
  c.max_context = 8192;
  c.rope_base = 500000.0f;
  RandomWeights(*m, seed, 0.06f);
  return m;
}

inline std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& i : ids) i = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// A target that shares most tokens with `ref`: a span moved to the front and ~10% replaced.
inline std::vector<int32_t> EditedIds(const std::vector<int32_t>& ref, int64_t vocab,
                                      uint64_t seed) {
  std::vector<int32_t> t(ref);
  std::rotate(t.begin(), t.begin() + t.size() / 3, t.begin() + t.size() / 2);
  std::mt19937_64 rng(seed);
  for (auto& x : t) {
    if (rng() % 10 == 0) x = static_cast<int32_t>(rng() % vocab);
  }
  return t;
}

// The two recompute schedules the selective-prefill parity tests run with the same plan on both
// sides, each with its logits bound. recompute_ratio 0 and no floor: every layer past 0
// recomputes the forced tokens alone (sink, window, unmatched), so both sides recompute the same
// sets by construction and the full-prefill bound 3e-2 applies. The default schedule (its ratio
// and its recompute_min_tokens floor) fills the rest of its room with
// the matched tokens of highest layer-0 deviation, which for a token matched to its own id is
// rounding alone (float on the CPU, bf16 on the device): which of those are recomputed differs,
// and a swapped token moves the logits a little, hence 5e-2.
struct ScheduleCase {
  float recompute_ratio;
  int32_t recompute_min_tokens;
  double bound;
};
inline std::vector<ScheduleCase> ParitySchedules() {
  const engine::ReuseConfig d;
  return {{0.0f, 0, 3e-2}, {d.recompute_ratio, d.recompute_min_tokens, 5e-2}};
}

// Relative L2 distance of two float vectors.
inline double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return 1e30;
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline int32_t ArgmaxOf(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// The greedy continuation on both sides, compared token by token and logits by logits: first
// the tokens of the current logits (lc: CPU, lg: device), then `steps` decode steps, each
// teacher-forced with the CPU's greedy token (so one near-tie flip cannot derail the rest):
// advance(tok, pos) runs that token at `pos` on both sides, rewriting lc and lg, and returns
// the first error (SEMSHARE_STATUS_RETURN helps). Logits within `bound`; tokens equal or a near tie
// (5% of the first CPU logits' range: bf16 rounding may flip those).
template <typename Advance>
void ExpectSameGreedyDecode(std::vector<float>& lc, std::vector<float>& lg, int32_t first_pos,
                            int steps, double bound, Advance advance);

// True when `got` picks the reference's argmax, or a token the reference scores within
// `margin` of its max (a near tie that bf16 rounding may legitimately flip).
inline bool SameTokenOrNearTie(const std::vector<float>& ref, int32_t got, float margin) {
  const int32_t want = ArgmaxOf(ref);
  return got == want || ref[want] - ref[got] < margin;
}

template <typename Advance>
void ExpectSameGreedyDecode(std::vector<float>& lc, std::vector<float>& lg, int32_t first_pos,
                            int steps, double bound, Advance advance) {
  const auto [lo, hi] = std::minmax_element(lc.begin(), lc.end());
  const float margin = 0.05f * (*hi - *lo);
  EXPECT_TRUE(SameTokenOrNearTie(lc, ArgmaxOf(lg), margin)) << "first token";
  for (int step = 0; step < steps; ++step) {
    const int32_t tok = ArgmaxOf(lc);
    const absl::Status s = advance(tok, first_pos + step);
    ASSERT_TRUE(s.ok()) << "decode step " << step << ": " << s;
    EXPECT_LT(RelDiff(lg, lc), bound) << "decode step " << step;
    EXPECT_TRUE(SameTokenOrNearTie(lc, ArgmaxOf(lg), margin)) << "decode step " << step;
  }
}

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_
