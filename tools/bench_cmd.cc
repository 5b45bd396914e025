// `semshare bench --suite forward`: CPU forward-pass throughput beside its floor.
// For each prompt length it runs a full prefill (median of --repeats) and reports tokens/s
// next to the floor = the model's FLOPs for that prefill / the sgemm rate OpenBLAS reaches on
// this machine, measured in the same run. Decode tokens/s is measured after a 512-token
// prefill (decode@512) and from an empty context (decode@0, llama-bench's tg); batched decode
// ("decode xB") as the engine loop runs B streams, one row each per ForwardBatch; and resident
// memory after the runs. Results go to stdout as a table and to --json FILE.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/quant_dot.h"
#include "engine/cpu/quant_matmul.h"
#include "engine/cpu/tile_matmul.h"
#include "engine/llama_forward.h"
#include "engine/sampling.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct MemoryUsage {
  int64_t rss_bytes = 0;   // VmRSS
  int64_t peak_bytes = 0;  // VmHWM
};

// This process' resident and peak resident memory (/proc/self/status; zeros elsewhere).
MemoryUsage ReadMemoryUsage() {
  MemoryUsage m;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %lld kB", &kb) == 1) m.rss_bytes = kb * 1024;
    if (std::sscanf(line.c_str(), "VmHWM: %lld kB", &kb) == 1) m.peak_bytes = kb * 1024;
  }
  return m;
}

// Median GFLOP/s of C[m,n] = A[m,k] B[n,k]^T (the layout of our projections).
double SgemmGflops(int64_t m, int64_t n, int64_t k, int repeats) {
  std::vector<float> a(m * k, 0.01f), b(n * k, 0.02f), c(m * n);
  std::vector<double> rates;
  for (int r = 0; r < repeats + 1; ++r) {
    const auto t0 = Clock::now();
    engine::Gemm(engine::GemmB::kTransposed, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f,
                 c.data(), n);
    const double s = Seconds(t0);
    if (r > 0) rates.push_back(2.0 * m * n * k / s / 1e9);  // first run warms up
  }
  return Median(rates);
}

// Useful FLOPs of prefilling n tokens from position 0 (causal attention counts only visible
// keys; logits for the last token only).
double PrefillFlops(const engine::ModelConfig& c, int64_t n) {
  const double d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const double linear = 2.0 * n * (d * qd + 2 * d * kvd + qd * d + 3 * d * c.d_ff);
  const double attn = 4.0 * qd * (static_cast<double>(n) * (n + 1) / 2);
  return c.n_layers * (linear + attn) + 2.0 * d * c.vocab_size;
}

// FLOPs of one decode step at context length ctx (the new token attends to ctx + 1 rows).
double DecodeFlops(const engine::ModelConfig& c, int64_t ctx) {
  const double d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const double linear = 2.0 * (d * qd + 2 * d * kvd + qd * d + 3 * d * c.d_ff);
  return c.n_layers * (linear + 4.0 * qd * (ctx + 1)) + 2.0 * d * c.vocab_size;
}

}  // namespace

int BenchCudaCommand(int argc, char** argv);  // tools/bench_cuda.cc

int BenchCommand(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {  // --suite reuse has its own flags (tools/bench_reuse.cc)
    const std::string a = argv[i];
    if (a == "--suite=reuse" ||
        (a == "--suite" && i + 1 < argc && std::string(argv[i + 1]) == "reuse"))
      return BenchReuseCommand(argc, argv);
    if (a == "--suite=store" ||
        (a == "--suite" && i + 1 < argc && std::string(argv[i + 1]) == "store"))
      return BenchStoreCommand(argc, argv);
    if (a == "--suite=matcher" ||
        (a == "--suite" && i + 1 < argc && std::string(argv[i + 1]) == "matcher"))
      return BenchMatcherCommand(argc, argv);
    if (a == "--suite=cuda" || a == "--backend=cuda" ||
        ((a == "--suite" || a == "--backend") && i + 1 < argc &&
         std::string(argv[i + 1]) == "cuda"))
      return BenchCudaCommand(argc, argv);
  }
  static const std::vector<FlagSpec> specs = {
      {"model",
       "a .gguf file or a Hugging Face model directory (default: $SEMSHARE_MODEL, else the "
       "installed default model)"},
      {"suite", "what to measure: forward, reuse, store, matcher, cuda (= --backend cuda)", false,
       false, "forward"},
      {"lengths", "comma-separated prompt lengths", false, false, "512,2048,4096"},
      {"decode-tokens", "tokens to decode after a 512-token prefill", false, false, "64"},
      {"repeats", "runs per measurement (median reported)", false, false, "3"},
      {"threads", "CPU threads (0 = all cores)", false, false, "0"},
      {"matmul", "CPU projections: quant (quantized-activation kernels for few rows) or float",
       false, false, "quant"},
      {"batch-streams",
       "comma-separated stream counts for batched decode (each stream one row per iteration "
       "over its own 256-token context, as the engine loop runs them), e.g. 1,4,16,64; measured "
       "after the resident-memory reading",
       false, false, ""},
      {"json", "write the results to this JSON file"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare bench: %.*s\n", static_cast<int>(msg.size()), msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(
        Args::Help("semshare bench --suite forward [--lengths 512,2048] [--json F]", specs).c_str(),
        stdout);
    return 0;
  }
  if (args->Str("suite") != "forward")
    return fail("unknown --suite (available: forward, reuse, store, matcher, cuda)", 2);
  std::vector<int64_t> lengths, streams;
  for (absl::string_view part : absl::StrSplit(args->Str("lengths"), ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) return fail("--lengths must be positive integers", 2);
    lengths.push_back(v);
  }
  for (absl::string_view part :
       absl::StrSplit(args->Str("batch-streams"), ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1 || v > 1024) {
      return fail("--batch-streams must be integers in [1, 1024]", 2);
    }
    streams.push_back(v);
  }
  auto repeats = args->Int("repeats");
  auto decode_tokens = args->Int("decode-tokens");
  auto threads = args->Int("threads");
  if (!repeats.ok() || *repeats < 1) return fail("--repeats must be a positive integer", 2);
  if (!decode_tokens.ok() || *decode_tokens < 1) return fail("--decode-tokens must be >= 1", 2);
  if (!threads.ok()) return fail(threads.status().message(), 2);
  SetThreads(*threads);

  double load_ms = 0;
  auto model = LoadModelForCli(args->Str("model"), &load_ms);
  if (!model.ok()) return fail(model.status().message(), 1);
  const engine::ModelConfig& c = (*model)->config;
  const std::string matmul = args->Str("matmul");
  if (matmul != "float" && matmul != "quant") return fail("--matmul must be quant or float", 2);
  engine::CpuBackend backend(matmul == "quant" ? engine::MatMulPrecision::kQuantizedActivations
                                               : engine::MatMulPrecision::kFloat);
  engine::LlamaForward fwd(**model, backend);

  // The sgemm rate: a large square problem (the machine's practical peak) and the model's own
  // largest projection shape at 2048 tokens.
  const double peak = SgemmGflops(2048, 2048, 2048, static_cast<int>(*repeats));
  const double model_shape = SgemmGflops(2048, c.d_ff, c.d_model, static_cast<int>(*repeats));
  const double floor_rate = std::max(peak, model_shape);
  std::printf("model %s: %lld layers, d_model %lld, %lld heads (%lld kv), d_ff %lld\n",
              c.name.c_str(), static_cast<long long>(c.n_layers), static_cast<long long>(c.d_model),
              static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
              static_cast<long long>(c.d_ff));
  std::printf("sgemm (engine/cpu/gemm.h): %.1f GFLOP/s (2048^3), %.1f GFLOP/s (2048x%lldx%lld)\n",
              peak, model_shape, static_cast<long long>(c.d_ff), static_cast<long long>(c.d_model));
  const std::string kernels = absl::StrCat(
      "int8 dot ", std::string(engine::DotIsaName(engine::BestDotIsa())), " (1..",
      engine::kTileMinRows - 1, " rows), tile ", engine::TileMatMulIsaName(), " (",
      engine::kTileMinRows, "..", engine::kTileMaxRows, " rows), dequantised tiles + sgemm (more)");
  std::printf("quantized matmul: %s\n", kernels.c_str());
  std::printf("\n| phase | tokens | median s | tokens/s | GFLOP | floor s | time/floor |\n");
  std::printf("|---|---|---|---|---|---|---|\n");

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<float> logits(c.vocab_size);
  nlohmann::json results = nlohmann::json::array();
  auto report = [&](const std::string& phase, int64_t tokens, double secs, double flops) {
    const double floor_s = flops / (floor_rate * 1e9);
    std::printf("| %s | %lld | %.3f | %.1f | %.1f | %.3f | %.2fx |\n", phase.c_str(),
                static_cast<long long>(tokens), secs, tokens / secs, flops / 1e9, floor_s,
                secs / floor_s);
    results.push_back({{"phase", phase},
                       {"tokens", tokens},
                       {"median_seconds", secs},
                       {"tokens_per_second", tokens / secs},
                       {"gflop", flops / 1e9},
                       {"floor_seconds", floor_s},
                       {"ratio_to_floor", secs / floor_s}});
  };
  for (int64_t n : lengths) {
    std::vector<int32_t> ids(n), pos(n);
    for (int64_t i = 0; i < n; ++i) {
      ids[i] = tok(rng);
      pos[i] = static_cast<int32_t>(i);
    }
    std::vector<double> times;
    for (int64_t r = 0; r < *repeats; ++r) {
      engine::KvCache cache = fwd.NewCache();
      const auto t0 = Clock::now();
      if (auto s = fwd.Forward(ids, pos, cache, logits.data()); !s.ok())
        return fail(s.message(), 1);
      times.push_back(Seconds(t0));
    }
    report("prefill", n, Median(times), PrefillFlops(c, n));
  }
  {
    const int64_t ctx = 512;
    std::vector<int32_t> ids(ctx), pos(ctx);
    for (int64_t i = 0; i < ctx; ++i) {
      ids[i] = tok(rng);
      pos[i] = static_cast<int32_t>(i);
    }
    std::vector<double> times;
    double flops = 0;
    for (int64_t r = 0; r < *repeats; ++r) {
      engine::KvCache cache = fwd.NewCache();
      if (auto s = fwd.Forward(ids, pos, cache, logits.data()); !s.ok())
        return fail(s.message(), 1);
      flops = 0;
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < *decode_tokens; ++i) {
        const int32_t id = engine::Argmax(logits);
        const int32_t p = cache.next_position();
        flops += DecodeFlops(c, p);
        if (auto s = fwd.Forward({&id, 1}, {&p, 1}, cache, logits.data()); !s.ok()) {
          return fail(s.message(), 1);
        }
      }
      times.push_back(Seconds(t0));
    }
    report("decode@512", *decode_tokens, Median(times), flops);
  }
  {
    // llama-bench's tg: decode from an empty context (one token in, one out, N times).
    std::vector<double> times;
    double flops = 0;
    for (int64_t r = 0; r < *repeats; ++r) {
      engine::KvCache cache = fwd.NewCache();
      int32_t id = tok(rng);
      flops = 0;
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < *decode_tokens; ++i) {
        const int32_t p = static_cast<int32_t>(i);
        flops += DecodeFlops(c, p);
        if (auto s = fwd.Forward({&id, 1}, {&p, 1}, cache, logits.data()); !s.ok()) {
          return fail(s.message(), 1);
        }
        id = engine::Argmax(logits);
      }
      times.push_back(Seconds(t0));
    }
    report("decode@0", *decode_tokens, Median(times), flops);
  }
  // Resident memory after the runs above (weights as mapped pages, KV, scratch): what a server
  // with this model holds after warm-up, less its own buffers.
  const MemoryUsage mem = ReadMemoryUsage();
  std::printf("\nweights %.1f MiB as stored (%s); resident %.1f MiB, peak %.1f MiB\n",
              (*model)->weights.ByteSize() / 1048576.0, matmul.c_str(), mem.rss_bytes / 1048576.0,
              mem.peak_bytes / 1048576.0);
  // Batched decode, as the engine loop runs it: B sequences, each with its own 256-token
  // context, one row each per iteration through ForwardBatch (one GEMM over the B rows,
  // attention per sequence). Output tokens/s = B * steps / time.
  if (!streams.empty()) {
    std::printf("\n| phase | tokens | median s | tokens/s | GFLOP | floor s | time/floor |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
  }
  for (int64_t b : streams) {
    const int64_t ctx = 256, steps = std::max<int64_t>(8, *decode_tokens / 4);
    std::vector<engine::KvCache> caches;
    std::vector<std::vector<float>> out(b, std::vector<float>(c.vocab_size));
    std::vector<int32_t> ids(ctx), pos(ctx), next(b), at(b);
    for (int64_t s = 0; s < b; ++s) {
      for (int64_t i = 0; i < ctx; ++i) {
        ids[i] = tok(rng);
        pos[i] = static_cast<int32_t>(i);
      }
      caches.push_back(fwd.NewCache());
      if (auto st = fwd.Forward(ids, pos, caches.back(), out[s].data()); !st.ok())
        return fail(st.message(), 1);
    }
    std::vector<double> times;
    double flops = 0;
    for (int64_t r = 0; r < *repeats; ++r) {
      flops = 0;
      const auto t0 = Clock::now();
      for (int64_t step = 0; step < steps; ++step) {
        std::vector<engine::SeqChunk> chunks(b);
        for (int64_t s = 0; s < b; ++s) {
          next[s] = engine::Argmax(out[s]);
          at[s] = caches[s].next_position();
          flops += DecodeFlops(c, at[s]);
          chunks[s] = {{&next[s], 1}, {&at[s], 1}, &caches[s], out[s].data()};
        }
        if (auto st = fwd.ForwardBatch(chunks); !st.ok()) return fail(st.message(), 1);
      }
      times.push_back(Seconds(t0));
    }
    report(absl::StrCat("decode x", b), b * steps, Median(times), flops);
  }
  if (args->Has("json")) {
    nlohmann::json j = {{"suite", "forward"},
                        {"model", c.name},
                        {"fingerprint", (*model)->fingerprint},
                        {"threads", *threads},
                        {"repeats", *repeats},
                        {"sgemm_gflops_2048cubed", peak},
                        {"sgemm_gflops_model_shape", model_shape},
                        {"floor_gflops", floor_rate},
                        {"matmul", matmul},
                        {"quantized_matmul_kernels", kernels},
                        {"weight_bytes", (*model)->weights.ByteSize()},
                        {"rss_bytes", mem.rss_bytes},
                        {"peak_rss_bytes", mem.peak_bytes},
                        {"results", results}};
    std::ofstream(args->Str("json")) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace semshare::tools
