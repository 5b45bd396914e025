// `semshare generate`: load a model, generate a completion for one prompt on the CPU backend,
// stream the text to stdout and print timings to stderr (or as JSON with --json FILE).
#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/strings/str_format.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"model",
       "a .gguf file or a Hugging Face model directory (default: $SEMSHARE_MODEL, else the "
       "installed default model)"},
      {"prompt", "the prompt text"},
      {"chat", "wrap the prompt as a user message in the model's chat template", true},
      {"system", "system message for --chat"},
      {"max-tokens", "new tokens at most", false, false, "128"},
      {"temperature", "0 = greedy", false, false, "0"},
      {"top-k", "0 = off", false, false, "0"},
      {"top-p", "nucleus mass in (0, 1]", false, false, "1"},
      {"seed", "sampling seed", false, false, "0"},
      {"stop", "stop string (repeatable)", false, true},
      {"threads", "CPU threads (0 = all cores)", false, false, "0"},
      {"json", "also write the result and timings to this JSON file"},
      {"quiet", "print only the generated text", true},
      {"help", "show this help", true},
  };
  return specs;
}

}  // namespace

int GenerateCommand(int argc, char** argv) {
  const std::string usage = "semshare generate --model M --prompt P [--chat] [--max-tokens N] ...";
  auto args = Args::Parse(Specs(), argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "semshare generate: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  if (args->Bool("help")) {
    std::fputs(Args::Help(usage, Specs()).c_str(), stdout);
    return 0;
  }
  if (!args->Has("prompt")) {
    std::fprintf(stderr, "semshare generate: --prompt is required\n");
    return 2;
  }
  engine::GenerateOptions opt;
  auto max_tokens = args->Int("max-tokens");
  auto temperature = args->Double("temperature");
  auto top_k = args->Int("top-k");
  auto top_p = args->Double("top-p");
  auto seed = args->Int("seed");
  auto threads = args->Int("threads");
  for (const absl::Status& s : {max_tokens.status(), temperature.status(), top_k.status(),
                                top_p.status(), seed.status(), threads.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "semshare generate: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  opt.max_tokens = static_cast<int32_t>(*max_tokens);
  opt.sampling.temperature = static_cast<float>(*temperature);
  opt.sampling.top_k = static_cast<int32_t>(*top_k);
  opt.sampling.top_p = static_cast<float>(*top_p);
  opt.sampling.seed = static_cast<uint64_t>(*seed);
  opt.stop = args->All("stop");
  SetThreads(*threads);
  const bool quiet = args->Bool("quiet");

  double load_ms = 0;
  auto model = LoadModelForCli(args->Str("model"), &load_ms);
  if (!model.ok()) {
    std::fprintf(stderr, "semshare generate: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  engine::CpuBackend backend;
  engine::Generator gen(**model, backend);
  std::vector<int32_t> ids;
  if (args->Bool("chat")) {
    std::vector<engine::ChatMessage> msgs;
    if (args->Has("system")) msgs.push_back({"system", args->Str("system")});
    msgs.push_back({"user", args->Str("prompt")});
    auto chat_ids = gen.TokenizeChat(msgs);
    if (!chat_ids.ok()) {
      std::fprintf(stderr, "semshare generate: %s\n",
                   std::string(chat_ids.status().message()).c_str());
      return 1;
    }
    ids = std::move(*chat_ids);
  } else {
    ids = gen.TokenizePrompt(args->Str("prompt"));
  }
  auto result = gen.Generate(ids, opt, [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);  // the text ends before the timings on stderr
  if (!result.ok()) {
    std::fprintf(stderr, "semshare generate: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  const engine::GenerateTimings& t = result->timings;
  const double prefill_tps = result->prompt_tokens / (t.prefill_ms / 1000.0);
  const int64_t n_gen = static_cast<int64_t>(result->tokens.size());
  const double decode_tps = n_gen > 1 && t.decode_ms > 0 ? (n_gen - 1) / (t.decode_ms / 1000.0) : 0;
  if (!quiet) {
    std::fprintf(stderr,
                 "model %s (%s, fingerprint %s)\n"
                 "load %.0f ms | prompt %lld tokens | prefill %.1f tokens/s | TTFT %.1f ms | "
                 "generated %lld tokens | decode %.1f tokens/s | finish %s\n",
                 (*model)->config.name.c_str(), engine::ArchName((*model)->config.arch),
                 (*model)->fingerprint.c_str(), load_ms,
                 static_cast<long long>(result->prompt_tokens), prefill_tps, t.ttft_ms,
                 static_cast<long long>(n_gen), decode_tps,
                 engine::FinishReasonName(result->finish));
  }
  if (args->Has("json")) {
    nlohmann::json j = {{"text", result->text},
                        {"tokens", result->tokens},
                        {"finish_reason", engine::FinishReasonName(result->finish)},
                        {"prompt_tokens", result->prompt_tokens},
                        {"completion_tokens", n_gen},
                        {"load_ms", load_ms},
                        {"prefill_ms", t.prefill_ms},
                        {"ttft_ms", t.ttft_ms},
                        {"decode_ms", t.decode_ms},
                        {"total_ms", t.total_ms},
                        {"prefill_tokens_per_s", prefill_tps},
                        {"decode_tokens_per_s", decode_tps}};
    std::ofstream(args->Str("json")) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace semshare::tools
