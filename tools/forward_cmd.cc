// `semshare forward`: the oracle hook. Runs given token ids through the model and writes the
// last position's logits (raw float32) plus N greedy continuation tokens (JSON on stdout), so
// tests/oracle can compare us with an independent reference without our tokenizer involved.
// --matmul float (the default) computes every projection in float32 on the exactly dequantised
// weights, the model math the float64 reference checks; --matmul quant runs the serving path
// (quantized-activation dot kernels for decode, engine/cpu/quant_matmul.h), which
// tests/oracle/quant_oracle_test.py checks against its derived bound.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>

#include "absl/strings/string_view.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/llama_forward.h"
#include "engine/sampling.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {

int ForwardCommand(int argc, char** argv) {
  static const std::vector<FlagSpec> specs = {
      {"model",
       "a .gguf file or a Hugging Face model directory (default: $SEMSHARE_MODEL, else the "
       "installed default model)"},
      {"ids-file", "JSON array of prompt token ids (no BOS added)"},
      {"greedy", "greedy tokens to generate after the prompt", false, false, "0"},
      {"logits-out", "write the last prompt position's logits here (raw float32)"},
      {"threads", "CPU threads (0 = all cores)", false, false, "0"},
      {"matmul", "quant (the serving kernels) or float (exact weights, float32)", false, false,
       "float"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare forward: %.*s\n", static_cast<int>(msg.size()), msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(
        Args::Help("semshare forward --model M --ids-file F [--greedy N] [--logits-out L]", specs)
            .c_str(),
        stdout);
    return 0;
  }
  auto greedy = args->Int("greedy");
  auto threads = args->Int("threads");
  if (!greedy.ok()) return fail(greedy.status().message(), 2);
  if (!threads.ok()) return fail(threads.status().message(), 2);
  SetThreads(*threads);
  std::vector<int32_t> ids;
  {
    std::ifstream in(args->Str("ids-file"));
    if (!in) return fail("cannot read --ids-file", 2);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!j.is_array() || j.empty()) return fail("--ids-file must hold a non-empty JSON array", 2);
    for (const auto& e : j) {
      if (!e.is_number_integer()) return fail("--ids-file must hold integers", 2);
      ids.push_back(e.get<int32_t>());
    }
  }
  double load_ms = 0;
  auto model = LoadModelForCli(args->Str("model"), &load_ms);
  if (!model.ok()) return fail(model.status().message(), 1);
  const std::string matmul = args->Str("matmul");
  if (matmul != "float" && matmul != "quant") return fail("--matmul must be quant or float", 2);
  engine::CpuBackend backend(matmul == "quant" ? engine::MatMulPrecision::kQuantizedActivations
                                               : engine::MatMulPrecision::kFloat);
  engine::LlamaForward fwd(**model, backend);
  engine::KvCache cache = fwd.NewCache();
  std::vector<int32_t> pos(ids.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i);
  const int64_t vocab = (*model)->config.vocab_size;
  std::vector<float> logits(vocab);
  if (auto s = fwd.Forward(ids, pos, cache, logits.data()); !s.ok()) return fail(s.message(), 1);
  if (args->Has("logits-out")) {
    std::ofstream out(args->Str("logits-out"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(logits.data()), vocab * sizeof(float));
    if (!out) return fail("cannot write --logits-out", 1);
  }
  std::vector<int32_t> gen;
  std::vector<double> margins;  // top-2 logit gap each greedy token was chosen with
  std::vector<float> step_logits = logits;
  for (int64_t i = 0; i < *greedy; ++i) {
    const int32_t id = engine::Argmax(step_logits);
    gen.push_back(id);
    float second = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < vocab; ++t) {
      if (t != id) second = std::max(second, step_logits[t]);
    }
    margins.push_back(static_cast<double>(step_logits[id]) - second);
    if (i + 1 == *greedy) break;
    const int32_t p = cache.next_position();
    if (auto s = fwd.Forward({&id, 1}, {&p, 1}, cache, step_logits.data()); !s.ok()) {
      return fail(s.message(), 1);
    }
  }
  nlohmann::json j = {{"vocab_size", vocab},
                      {"greedy", gen},
                      {"margins", margins},
                      {"fingerprint", (*model)->fingerprint}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace semshare::tools
