// Small random-weight models and prompts shared by the CUDA end-to-end tests.
#ifndef SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_
#define SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "engine/model.h"
#include "tests/test_util.h"

namespace semshare::testing {

// Llama-shaped, head_dim 64 so prefill takes the flash kernel (>= 16 queries); GQA 4:2.
inline std::unique_ptr<engine::Model> SmallLlama(uint64_t seed) {
  auto m = TinyModel(engine::Arch::kLlama, engine::RopeStyle::kHalfSplit, seed);
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
  engine::ModelWeights& w = m->weights;
  const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const float s = 0.08f;
  w.tok_embd = RandomMatrix(c.vocab_size, c.d_model, seed++, 1.0f);
  w.out_norm = RandomMatrix(1, c.d_model, seed++, 0.1f);
  for (float& x : w.out_norm.data) x += 1.0f;
  w.lm_head = RandomMatrix(c.vocab_size, c.d_model, seed++, s);
  w.layers.clear();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    engine::LayerWeights lw;
    lw.attn_norm = RandomMatrix(1, c.d_model, seed++, 0.1f);
    lw.ffn_norm = RandomMatrix(1, c.d_model, seed++, 0.1f);
    for (float& x : lw.attn_norm.data) x += 1.0f;
    for (float& x : lw.ffn_norm.data) x += 1.0f;
    lw.wq = RandomMatrix(qd, c.d_model, seed++, s);
    lw.wk = RandomMatrix(kvd, c.d_model, seed++, s);
    lw.wv = RandomMatrix(kvd, c.d_model, seed++, s);
    lw.wo = RandomMatrix(c.d_model, qd, seed++, s);
    lw.w_gate = RandomMatrix(c.d_ff, c.d_model, seed++, s);
    lw.w_up = RandomMatrix(c.d_ff, c.d_model, seed++, s);
    lw.w_down = RandomMatrix(c.d_model, c.d_ff, seed++, s);
    w.layers.push_back(std::move(lw));
  }
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

// True when `got` picks the reference's argmax, or a token the reference scores within
// `margin` of its max (a near tie that bf16 rounding may legitimately flip).
inline bool SameTokenOrNearTie(const std::vector<float>& ref, int32_t got, float margin) {
  const int32_t want = ArgmaxOf(ref);
  return got == want || ref[want] - ref[got] < margin;
}

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_CUDA_CUDA_MODEL_UTIL_H_
