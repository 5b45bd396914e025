// `semshare bench --suite matcher`: the CPU TokenMatcher's cost at a model's embedding size,
// with no model file: a seeded random embedding table [vocab, dim] (Gaussian), a reference of
// --tokens random ids and a target that differs in every 10th token. Times Sketch of the
// target and Match against the reference's sketch (the two steps a lookup pays per prompt and
// per candidate), median of --repeats after one warm-up, under the default ReuseConfig (LSH
// 16 bands x 8 bits, cap 32 candidates). This figure is why the GPU path matches on the device
// (engine/cuda/device_matcher.h): at dim 4096 and 5k tokens the CPU matcher costs more than a
// whole H200 prefill of the 8B shape.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/token_matcher.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {

int BenchMatcherCommand(int argc, char** argv) {
  static const std::vector<FlagSpec> specs = {
      {"suite", "matcher", false, false, "matcher"},
      {"dim", "embedding dimension (4096: Llama-3.1-8B; 576: SmolLM2-135M)", false, false, "4096"},
      {"vocab", "rows of the random embedding table", false, false, "32000"},
      {"tokens", "reference and target length", false, false, "5000"},
      {"repeats", "timed runs (median reported) after one warm-up", false, false, "3"},
      {"threads", "OpenBLAS threads for the sketch GEMM (0 = all cores)", false, false, "0"},
      {"json", "write the results to this JSON file"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare bench --suite matcher: %.*s\n", static_cast<int>(msg.size()),
                 msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(
        Args::Help("semshare bench --suite matcher [--dim 4096] [--tokens 5000] [--json F]", specs)
            .c_str(),
        stdout);
    return 0;
  }
  auto dim = args->Int("dim");
  auto vocab = args->Int("vocab");
  auto tokens = args->Int("tokens");
  auto repeats = args->Int("repeats");
  auto threads = args->Int("threads");
  if (!dim.ok() || *dim < 2) return fail("--dim must be an integer >= 2", 2);
  if (!vocab.ok() || *vocab < 2) return fail("--vocab must be an integer >= 2", 2);
  if (!tokens.ok() || *tokens < 1) return fail("--tokens must be a positive integer", 2);
  if (!repeats.ok() || *repeats < 1) return fail("--repeats must be a positive integer", 2);
  if (!threads.ok()) return fail(threads.status().message(), 2);
  SetThreads(*threads);

  engine::Matrix emb;
  emb.rows = *vocab;
  emb.cols = *dim;
  emb.data.resize(static_cast<size_t>(*vocab * *dim));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& x : emb.data) x = normal(rng);
  const engine::ReuseConfig cfg;
  const engine::TokenMatcher matcher(emb, cfg);
  std::vector<int32_t> ref(static_cast<size_t>(*tokens)), target;
  for (int32_t& x : ref) x = static_cast<int32_t>(rng() % *vocab);
  target = ref;
  for (size_t i = 0; i < target.size(); i += 10) target[i] = static_cast<int32_t>(rng() % *vocab);
  const engine::TokenSketch ref_sketch = matcher.Sketch(ref);

  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  std::vector<double> sketch_ms, match_ms;
  float similarity = 0;
  for (int64_t r = 0; r <= *repeats; ++r) {
    const auto t0 = Clock::now();
    const engine::TokenSketch s = matcher.Sketch(target);
    const auto t1 = Clock::now();
    const engine::TokenMatch m = matcher.Match(s, ref_sketch);
    const auto t2 = Clock::now();
    similarity = m.similarity;
    if (r == 0) continue;  // warm-up
    sketch_ms.push_back(ms(t0, t1));
    match_ms.push_back(ms(t1, t2));
  }
  const double sk = Median(sketch_ms), mt = Median(match_ms);
  std::printf(
      "| dim | vocab | tokens | sketch ms | match ms | total ms | similarity |\n"
      "|---|---|---|---|---|---|---|\n"
      "| %lld | %lld | %lld | %.1f | %.1f | %.1f | %.3f |\n",
      static_cast<long long>(*dim), static_cast<long long>(*vocab), static_cast<long long>(*tokens),
      sk, mt, sk + mt, similarity);
  if (args->Has("json")) {
    const std::time_t now = std::time(nullptr);
    char utc[32];
    std::strftime(utc, sizeof(utc), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    const nlohmann::json j = {{"suite", "matcher"},
                              {"date_utc", utc},
                              {"dim", *dim},
                              {"vocab", *vocab},
                              {"tokens", *tokens},
                              {"lsh_bands", cfg.lsh_bands},
                              {"lsh_bits_per_band", cfg.lsh_bits_per_band},
                              {"max_candidates", cfg.max_candidates},
                              {"sketch_ms", sketch_ms},
                              {"match_ms", match_ms},
                              {"sketch_ms_median", sk},
                              {"match_ms_median", mt},
                              {"similarity", similarity}};
    std::ofstream out(args->Str("json"));
    out << j.dump(2) << "\n";
    if (!out) return fail(absl::StrCat("cannot write ", args->Str("json")), 1);
  }
  return 0;
}

}  // namespace semshare::tools
