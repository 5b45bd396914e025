// Shared helpers for the C++ tests: seeded random data and small random-weight models.
#ifndef SEMSHARE_TESTS_TEST_UTIL_H_
#define SEMSHARE_TESTS_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/llama_forward.h"
#include "engine/model/default_model.h"
#include "engine/model/model.h"

namespace semshare::testing {

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline engine::Matrix RandomMatrix(int64_t rows, int64_t cols, uint64_t seed, float scale) {
  return engine::Matrix{rows, cols, RandomVector(static_cast<size_t>(rows * cols), seed, scale)};
}

// Seeded random weights for m's config: embeddings uniform +-1, norm gains 1 +- 0.1, every
// other matrix (and the qwen2 biases) uniform +-scale. Replaces any weights m had.
inline void RandomWeights(engine::Model& m, uint64_t seed, float scale) {
  const engine::ModelConfig& c = m.config;
  const float s = scale;
  engine::ModelWeights& w = m.weights;
  w.tok_embd = RandomMatrix(c.vocab_size, c.d_model, seed++, 1.0f);
  w.out_norm = RandomMatrix(1, c.d_model, seed++, 0.1f);
  for (float& x : w.out_norm.data) x += 1.0f;
  w.lm_head = RandomMatrix(c.vocab_size, c.d_model, seed++, s);
  const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
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
    if (c.qkv_bias) {
      lw.bq = RandomMatrix(1, qd, seed++, s);
      lw.bk = RandomMatrix(1, kvd, seed++, s);
      lw.bv = RandomMatrix(1, kvd, seed++, s);
    }
    w.layers.push_back(std::move(lw));
  }
}

// A small random-weight Llama-family model (no tokenizer) for forward-pass tests.
inline std::unique_ptr<engine::Model> TinyModel(engine::Arch arch, engine::RopeStyle style,
                                                uint64_t seed) {
  auto m = std::make_unique<engine::Model>();
  engine::ModelConfig& c = m->config;
  c.arch = arch;
  c.n_layers = 3;
  c.d_model = 48;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_ff = 80;
  c.vocab_size = 97;
  c.max_context = 4096;
  c.rope_dim = 8;
  c.rope_style = style;
  c.rope_base = 10000.0f;
  c.qkv_bias = arch == engine::Arch::kQwen2;
  c.sliding_window = arch == engine::Arch::kMistral ? 7 : 0;
  RandomWeights(*m, seed, 0.2f);
  return m;
}

// The model the tests load: $SEMSHARE_MODEL, else the default model scripts/setup installs
// (engine/model/default_model.h). A test that loads it fails with a message naming the path.
inline std::string DefaultModelPath() { return engine::ResolveModelPath(""); }

// The paraphrase corpus shipped in the repository (data/paraphrase/README.md): 775 pairs, 588
// of them paraphrases (label 1), in the MRPC train file's format.
inline constexpr size_t kCorpusPairs = 775;
inline constexpr size_t kCorpusParaphrases = 588;

// One pair of the paraphrase corpus.
struct MrpcPair {
  int label = 0;
  std::string first, second;
};

// $SEMSHARE_SOURCE_DIR/data/paraphrase/paraphrase_pairs.txt (ctest sets the variable).
inline std::string CorpusPath() {
  const char* src = std::getenv("SEMSHARE_SOURCE_DIR");
  return std::string(src == nullptr ? "." : src) + "/data/paraphrase/paraphrase_pairs.txt";
}

// The corpus: utf-8-sig, CRLF, header line, tab-separated
// "Quality  #1 ID  #2 ID  #1 String  #2 String", no quoting (MRPC's format). A line without
// five fields is an error, not skipped.
inline std::vector<MrpcPair> ReadMrpc(std::string* error) {
  const std::string path = CorpusPath();
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = "cannot open " + path + " (SEMSHARE_SOURCE_DIR is set by ctest)";
    return {};
  }
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
  std::vector<MrpcPair> pairs;
  bool header = true;
  for (absl::string_view line : absl::StrSplit(text, "\r\n", absl::SkipEmpty())) {
    if (header) {
      header = false;
      continue;
    }
    std::vector<std::string> cols = absl::StrSplit(line, '\t');
    if (cols.size() != 5 || (cols[0] != "0" && cols[0] != "1")) {
      *error = path + ": line " + std::to_string(pairs.size() + 2) + " is not a corpus row";
      return {};
    }
    pairs.push_back({cols[0] == "1" ? 1 : 0, cols[3], cols[4]});
  }
  return pairs;
}

// The default model, loaded once per test binary and kept for its lifetime; null (with a
// message in *error naming the path) when it does not load.
inline const engine::Model* DefaultModel(std::string* error) {
  static std::string load_error;
  static const engine::Model* model = []() -> const engine::Model* {
    const std::string path = DefaultModelPath();
    if (path.empty()) {
      load_error = "no model path (set SEMSHARE_MODEL or run scripts/setup)";
      return nullptr;
    }
    auto m = engine::LoadModel(path);
    if (!m.ok()) {
      load_error = path + ": " + std::string(m.status().message()) +
                   " (run scripts/setup, or set SEMSHARE_MODEL)";
      return nullptr;
    }
    return std::move(*m).release();
  }();
  *error = load_error;
  return model;
}

// `count` sentences of the label-1 (paraphrase) pairs of the shipped corpus, from the `skip`-th
// such pair on: the first sentence of each, or the second. *error as ReadMrpc's.
inline std::vector<std::string> ParaphraseSentences(bool second, size_t count, size_t skip,
                                                    std::string* error) {
  std::vector<std::string> out;
  for (const MrpcPair& p : ReadMrpc(error)) {
    if (p.label != 1) continue;
    if (skip > 0) {
      --skip;
      continue;
    }
    out.push_back(second ? p.second : p.first);
    if (out.size() == count) break;
  }
  return out;
}

// The last position's logits of a full prefill of ids (positions 0..n-1) on the CPU backend:
// the reference the reuse tests compare against.
inline std::vector<float> FullPrefillLogits(const engine::Model& model,
                                            const std::vector<int32_t>& ids) {
  engine::CpuBackend be;
  engine::LlamaForward f(model, be);
  engine::KvCache cache = f.NewCache();
  std::vector<int32_t> pos(ids.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i);
  std::vector<float> logits(static_cast<size_t>(model.config.vocab_size));
  const absl::Status st = f.Forward(ids, pos, cache, logits.data());
  if (!st.ok()) logits.assign(logits.size(), std::nanf(""));  // fails any comparison
  return logits;
}

// Logits of the same tokens computed through GEMMs of other shapes (a 32-row window against a
// 600-row chunk, a batch of 16 sequences against one alone) differ by float summation order
// only: OpenBLAS picks kernels and splits the inner dimension by shape. Seen on SmolLM2-135M:
// 2.1e-6 of the largest |logit| on float32 weights with OPENBLAS_CORETYPE=Haswell, 1.03e-5 on
// its Q4_1 weights kept quantized (dequantised tiles, engine/cpu/quant_matmul.h). 1e-4 leaves
// 10x margin; a wrong row, position or mask moves logits by 1e-2 or more.
inline constexpr double kGemmOrderRelBound = 1e-4;

// max |a - b| over max |b| (floored at 1e-6).
inline double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1e-6, worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return a.size() == b.size() ? worst / scale : 1e30;
}

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_TEST_UTIL_H_
