// `semshare bench --suite cuda` (or `--backend cuda`): the CUDA engine on Llama-3.1-8B and
// Llama-3.2-1B shapes with seeded random BF16 weights generated on the device (no model file).
// Reports, per shape:
//   - the measured cuBLAS BF16 GEMM rate (8192^3), the MFU denominator;
//   - full prefill at --lengths: median seconds, tokens/s, model FLOP utilisation (model FLOPs
//     / time / measured GEMM rate), GPU memory in use after prefill (pool, KV alive) and peak;
//   - a semshare hit at --hit-lengths (a target sharing most tokens with a stored reference):
//     TTFT = matching (DeviceMatcher: the target's sketch and its match against the stored
//     reference's sketch, on the GPU as the server does) + reference KV transfer from pinned host
//     memory (started before the matching, which it overlaps, and waited for layer by layer) +
//     selective prefill with the default recompute schedule and retention + logits, beside the full
//     prefill of the same target; KV bytes after prefill, hit / full;
//   - batched decode (continuous batching, issue 14) at --decode-streams (default 1, 16, 64) on
//     --decode-shapes (default 8b): engine/cuda/batch_forward.h, the engine half of the server's
//     CudaBatchRunner (its serving half needs a host Model, which a random device model has
//     not), over a paged KV pool; every stream first prefilled with --decode-context tokens,
//     then one batched forward per iteration with one row per stream, timed per iteration;
//     decode tokens/s = streams / median iteration, in two forms: the next tokens chosen on
//     the device (greedy: only ids cross PCIe) and every stream's logits to the host (what the
//     server's host sampling pays). The memory roofline: bytes an iteration must read (weights
//     less the embedding table, of which only the rows of the tokens are read when the output
//     head is separate, plus every stream's KV rows) over the measured device-to-device copy
//     bandwidth (a 1 GiB cudaMemcpy: 2 bytes moved per byte copied); the fraction reported is
//     that floor over the measured iteration time (issue 14's target: >= 60% at 64 streams).
// Table to stdout (summary last), everything to --json. Timings: CUDA events on the compute
// stream (recorded before the timed work is queued and after it, elapsed device time, so the
// host work inside a measurement counts as the stream waits for it); median of --repeats after a
// warm-up. Break-even: the prompt length where the hit's TTFT equals full prefill's, interpolated
// between the hit lengths.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/commands.h"

#ifdef SEMSHARE_HAVE_CUDA
#include <cuda_bf16.h>

#include "absl/strings/str_format.h"
#include "engine/cuda/batch_forward.h"
#include "engine/cuda/cuda_forward.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_matcher.h"
#include "engine/cuda/paged_kv.h"
#include "engine/reuse/token_matcher.h"
#include "kernels/swiglu.cuh"
#endif

namespace semshare::tools {

#ifndef SEMSHARE_HAVE_CUDA
int BenchCudaCommand(int, char**) {
  std::fprintf(stderr,
               "semshare bench --suite cuda: this build has no CUDA backend "
               "(configure with -DSEMSHARE_CUDA=ON where nvcc exists)\n");
  return 1;
}
#else
namespace {

using Clock = std::chrono::steady_clock;
namespace ec = ::semshare::engine::cuda;

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Device time between Start() and Stop() on one stream, from a pair of CUDA events.
class StreamTimer {
 public:
  explicit StreamTimer(cudaStream_t stream) : stream_(stream) {}
  ~StreamTimer() {
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
  }
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;

  absl::Status Start() {
    if (start_ == nullptr) SEMSHARE_CUDA_RETURN(cudaEventCreate(&start_));
    if (stop_ == nullptr) SEMSHARE_CUDA_RETURN(cudaEventCreate(&stop_));
    SEMSHARE_CUDA_RETURN(cudaEventRecord(start_, stream_));
    return absl::OkStatus();
  }
  // Seconds since Start(); waits for the stream to reach this point.
  absl::StatusOr<double> Stop() {
    SEMSHARE_CUDA_RETURN(cudaEventRecord(stop_, stream_));
    SEMSHARE_CUDA_RETURN(cudaEventSynchronize(stop_));
    float ms = 0;
    SEMSHARE_CUDA_RETURN(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

#define SEMSHARE_BENCH_ASSIGN(lhs, expr)                \
  {                                                     \
    auto semshare_v_ = (expr);                          \
    if (!semshare_v_.ok()) return semshare_v_.status(); \
    lhs = *semshare_v_;                                 \
  }

engine::ModelConfig Shape(const std::string& name) {
  engine::ModelConfig c;
  c.arch = engine::Arch::kLlama;
  c.rope_style = engine::RopeStyle::kHalfSplit;
  c.rope_base = 500000.0f;
  c.rms_eps = 1e-5f;
  c.vocab_size = 128256;
  c.max_context = 131072;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.rope_scaling.type = engine::RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = name == "8b" ? 8.0f : 32.0f;
  if (name == "8b") {
    c.name = "Llama-3.1-8B shape (random bf16)";
    c.n_layers = 32;
    c.d_model = 4096;
    c.head_dim = 128;
    c.d_ff = 14336;
  } else {
    c.name = "Llama-3.2-1B shape (random bf16)";
    c.n_layers = 16;
    c.d_model = 2048;
    c.head_dim = 64;
    c.d_ff = 8192;
    c.tied_embeddings = true;
  }
  c.rope_dim = c.head_dim;
  return c;
}

// Model FLOPs of a causal prefill of n tokens (projections, attention, the last token's logits).
double PrefillFlops(const engine::ModelConfig& c, int64_t n) {
  const double d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const double linear = 2.0 * n * (d * qd + 2 * d * kvd + qd * d + 3 * d * c.d_ff);
  const double attn = 4.0 * qd * (static_cast<double>(n) * (n + 1) / 2);
  return c.n_layers * (linear + attn) + 2.0 * d * c.vocab_size;
}

// Median TFLOP/s of an 8192^3 bf16 GEMM (bf16 out, float accumulation) through the context's
// cuBLAS handle on random inputs: batches of 5 back-to-back GEMMs timed with CUDA events.
absl::StatusOr<double> GemmTflops(ec::CudaContext& ctx, int repeats) {
  const int64_t n = 8192;
  auto a = ctx.pool().Allocate(n * n * 2), b = ctx.pool().Allocate(n * n * 2),
       y = ctx.pool().Allocate(n * n * 2);
  if (!a.ok() || !b.ok() || !y.ok()) return absl::ResourceExhaustedError("gemm buffers");
  SEMSHARE_CUDA_RETURN(kernels::FillRandom<__nv_bfloat16>(a->as<__nv_bfloat16>(), n * n, 1, 1.0f,
                                                          0.0f, ctx.stream()));
  SEMSHARE_CUDA_RETURN(kernels::FillRandom<__nv_bfloat16>(b->as<__nv_bfloat16>(), n * n, 2, 1.0f,
                                                          0.0f, ctx.stream()));
  constexpr int kBatch = 5;
  StreamTimer timer(ctx.stream());
  std::vector<double> t;
  for (int r = 0; r < repeats + 1; ++r) {  // the first batch warms up (clocks, heuristics)
    SEMSHARE_STATUS_RETURN(timer.Start());
    for (int i = 0; i < kBatch; ++i) {
      SEMSHARE_STATUS_RETURN(ctx.Gemm(a->data(), n, n, b->data(), n, n, y->data(), n, true, 1, 0));
    }
    double s = 0;
    SEMSHARE_BENCH_ASSIGN(s, timer.Stop());
    if (r > 0) t.push_back(s / kBatch);
  }
  return 2.0 * n * n * n / Median(t) / 1e12;
}

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& i : ids) i = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// A paraphrase-like target: a span moved and ~10% of tokens replaced.
std::vector<int32_t> Edited(const std::vector<int32_t>& ref, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(ref);
  std::rotate(t.begin(), t.begin() + t.size() / 3, t.begin() + t.size() / 2);
  std::mt19937_64 rng(seed);
  for (auto& x : t) {
    if (rng() % 10 == 0) x = static_cast<int32_t>(rng() % vocab);
  }
  return t;
}

std::vector<int32_t> Iota(int64_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

double Gib(int64_t b) { return static_cast<double>(b) / (1 << 30); }

absl::Status RunShape(ec::CudaContext& ctx, const std::string& shape,
                      const std::vector<int64_t>& lengths, const std::vector<int64_t>& hit_lengths,
                      int repeats, double gemm_tflops, nlohmann::json* out,
                      std::vector<std::string>* summary) {
  const engine::ModelConfig c = Shape(shape);
  auto dm = ec::DeviceModel::Random(ctx, c, 42);
  if (!dm.ok()) return dm.status();
  const int64_t max_len = std::max(*std::max_element(lengths.begin(), lengths.end()),
                                   *std::max_element(hit_lengths.begin(), hit_lengths.end()));
  ec::CudaForward fwd(ctx, **dm, max_len);
  StreamTimer timer(ctx.stream());
  std::vector<float> logits(c.vocab_size);
  std::printf("\n%s: weights %.2f GiB on the device\n", c.name.c_str(), Gib((*dm)->ByteSize()));
  std::printf(
      "| phase | tokens | median ms | tokens/s | TFLOP/s | MFU | GPU mem after GiB | "
      "peak GiB |\n|---|---|---|---|---|---|---|---|\n");
  nlohmann::json js = {{"shape", shape}, {"name", c.name}, {"weight_bytes", (*dm)->ByteSize()}};
  // Full prefill.
  for (int64_t n : lengths) {
    const auto ids = RandomIds(n, c.vocab_size, 7 + n);
    const auto pos = Iota(n);
    std::vector<double> t;
    int64_t used = 0, peak = 0;
    for (int r = 0; r < repeats + 1; ++r) {
      ec::DeviceKvCache kv = fwd.NewCache();
      SEMSHARE_STATUS_RETURN(ctx.Sync());
      ctx.pool().ResetPeak();
      SEMSHARE_STATUS_RETURN(timer.Start());
      SEMSHARE_STATUS_RETURN(fwd.Forward(ids, pos, kv, logits.data()));  // logits on the host
      double s = 0;
      SEMSHARE_BENCH_ASSIGN(s, timer.Stop());
      if (r > 0) t.push_back(s);  // the first run warms up (cuBLAS heuristics, scratch)
      used = ctx.pool().Stats().used;
      peak = ctx.pool().Stats().peak;
    }
    const double med = Median(t), tflops = PrefillFlops(c, n) / med / 1e12;
    std::printf("| full prefill | %lld | %.2f | %.0f | %.1f | %.1f%% | %.2f | %.2f |\n",
                static_cast<long long>(n), med * 1e3, n / med, tflops, 100 * tflops / gemm_tflops,
                Gib(used), Gib(peak));
    js["full"].push_back({{"tokens", n},
                          {"median_s", med},
                          {"tokens_per_s", n / med},
                          {"tflops", tflops},
                          {"mfu", tflops / gemm_tflops},
                          {"gpu_used_after_bytes", used},
                          {"gpu_peak_bytes", peak}});
    summary->push_back(absl::StrFormat(
        "%s full %lld: %.1f ms, %.0f tokens/s, MFU %.1f%%, GPU memory %.2f GiB after, %.2f peak",
        shape, static_cast<long long>(n), med * 1e3, n / med, 100 * tflops / gemm_tflops, Gib(used),
        Gib(peak)));
  }
  // Hits. The token matcher on the device, over the model's BF16 embeddings (the CPU
  // TokenMatcher takes ~270 ms for 5k tokens at dim 4096 on 2 cores, `semshare bench --suite
  // matcher`: more than a full prefill).
  engine::ReuseConfig cfg;   // defaults: the recompute schedule and retention under test
  cfg.hit_threshold = 0.0f;  // random weights: count every match as a hit
  absl::StatusOr<std::unique_ptr<ec::DeviceMatcher> > made =
      ec::DeviceMatcher::Create(ctx, (*dm)->tok_embd.data(), c.vocab_size, c.d_model, cfg);
  if (!made.ok()) return made.status();
  ec::DeviceMatcher& matcher = **made;
  std::vector<std::pair<int64_t, double> > speedups;  // (tokens, full / hit)
  std::printf(
      "\n| hit | tokens | match ms | hit TTFT ms | full TTFT ms | speedup | "
      "KV hit/full | recomputed | GPU peak GiB hit/full |\n"
      "|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t n : hit_lengths) {
    const auto ref_ids = RandomIds(n, c.vocab_size, 1000 + n);
    const auto ids = Edited(ref_ids, c.vocab_size, 2000 + n);
    const auto pos = Iota(n);
    // The stored reference: its KV (pinned host, bf16) and sketch.
    ec::PinnedKv pinned;
    {
      ec::DeviceKvCache ref_kv = fwd.NewCache();
      SEMSHARE_STATUS_RETURN(fwd.Forward(ref_ids, pos, ref_kv, nullptr));
      SEMSHARE_STATUS_RETURN(pinned.FromDevice(ref_kv));
    }
    absl::StatusOr<ec::DeviceSketch> ref_sketch = matcher.Sketch(ref_ids);
    if (!ref_sketch.ok()) return ref_sketch.status();
    std::vector<double> t_hit, t_full, t_match;
    int64_t kv_hit = 0, kv_full = 0, peak_hit = 0, peak_full = 0, recomputed = 0;
    for (int r = 0; r < repeats + 1; ++r) {
      {
        ec::DeviceKvCache kv = fwd.NewCache();
        SEMSHARE_STATUS_RETURN(ctx.Sync());
        ctx.pool().ResetPeak();
        SEMSHARE_STATUS_RETURN(timer.Start());
        SEMSHARE_STATUS_RETURN(fwd.Forward(ids, pos, kv, logits.data()));
        double s = 0;
        SEMSHARE_BENCH_ASSIGN(s, timer.Stop());
        if (r > 0) t_full.push_back(s);
        kv_full = kv.ByteSize();
        peak_full = ctx.pool().Stats().peak;
      }
      ec::DeviceKvCache ref_dev = fwd.NewCache(), kv = fwd.NewCache();
      SEMSHARE_STATUS_RETURN(ctx.Sync());
      ctx.pool().ResetPeak();
      // TTFT from the prompt's arrival (the reference already chosen by the store lookup):
      // the reference KV transfer starts on the copy stream, the token matching runs on the
      // compute stream meanwhile (its result comes to the host: the plan sizes the launches),
      // then the selective prefill to host logits.
      SEMSHARE_STATUS_RETURN(timer.Start());
      SEMSHARE_STATUS_RETURN(ref_dev.StartUpload(pinned));
      const auto t0 = Clock::now();
      absl::StatusOr<ec::DeviceSketch> target = matcher.Sketch(ids);
      if (!target.ok()) return target.status();
      absl::StatusOr<engine::TokenMatch> matched = matcher.Match(*target, *ref_sketch);
      if (!matched.ok()) return matched.status();
      const engine::TokenMatch& match = *matched;
      const double match_s = Seconds(t0);
      engine::PrefillStats st;
      SEMSHARE_STATUS_RETURN(fwd.SelectivePrefill(ids, engine::PlanReuse(ids, ref_ids, match, cfg),
                                                  &ref_dev, kv, logits.data(), &st));
      double s = 0;
      SEMSHARE_BENCH_ASSIGN(s, timer.Stop());
      if (r > 0) {
        t_hit.push_back(s);
        t_match.push_back(match_s);
      }
      kv_hit = kv.ByteSize();
      peak_hit = ctx.pool().Stats().peak;
      recomputed = st.recomputed_tokens;
    }
    const double h = Median(t_hit), f = Median(t_full), m = Median(t_match);
    std::printf("| hit | %lld | %.2f | %.2f | %.2f | %.2fx | %.3f | %lld | %.2f / %.2f |\n",
                static_cast<long long>(n), m * 1e3, h * 1e3, f * 1e3, f / h,
                static_cast<double>(kv_hit) / kv_full, static_cast<long long>(recomputed),
                Gib(peak_hit), Gib(peak_full));
    js["hit"].push_back({{"tokens", n},
                         {"match_s", m},
                         {"hit_ttft_s", h},
                         {"full_ttft_s", f},
                         {"speedup", f / h},
                         {"kv_hit_bytes", kv_hit},
                         {"kv_full_bytes", kv_full},
                         {"recomputed_tokens", recomputed},
                         {"gpu_peak_hit_bytes", peak_hit},
                         {"gpu_peak_full_bytes", peak_full},
                         {"reference_transfer_bytes", pinned.ByteSize()}});
    speedups.push_back({n, f / h});
    summary->push_back(
        absl::StrFormat("%s hit %lld: TTFT %.1f ms (match %.1f) vs full %.1f ms (%.2fx), KV "
                        "%.2fx",
                        shape, static_cast<long long>(n), h * 1e3, m * 1e3, f * 1e3, f / h,
                        static_cast<double>(kv_hit) / kv_full));
  }
  // Break-even prompt length: where full / hit crosses 1, interpolated linearly between the
  // measured lengths (reported as a bound when every length is on one side).
  std::sort(speedups.begin(), speedups.end());
  std::string be = "not bracketed";
  if (!speedups.empty() && speedups.front().second >= 1.0) {
    be = absl::StrFormat("<= %lld tokens", static_cast<long long>(speedups.front().first));
  } else if (!speedups.empty() && speedups.back().second < 1.0) {
    be = absl::StrFormat("> %lld tokens", static_cast<long long>(speedups.back().first));
  }
  for (size_t i = 1; i < speedups.size(); ++i) {
    const auto [n0, s0] = speedups[i - 1];
    const auto [n1, s1] = speedups[i];
    if (s0 < 1.0 && s1 >= 1.0) {
      const double t = (1.0 - s0) / (s1 - s0);
      be = absl::StrFormat("~%.0f tokens", static_cast<double>(n0) + t * (n1 - n0));
      break;
    }
  }
  std::printf("break-even prompt length (hit TTFT = full TTFT): %s\n", be.c_str());
  js["break_even"] = be;
  summary->push_back(absl::StrFormat("%s break-even: %s", shape, be));
  out->push_back(js);
  return absl::OkStatus();
}

// Median device-to-device copy bandwidth, bytes moved (read + written) per second, of a 1 GiB
// cudaMemcpyAsync on the compute stream.
absl::StatusOr<double> CopyBandwidth(ec::CudaContext& ctx, int repeats) {
  const int64_t bytes = int64_t{1} << 30;
  auto a = ctx.pool().Allocate(bytes), b = ctx.pool().Allocate(bytes);
  if (!a.ok() || !b.ok()) return absl::ResourceExhaustedError("copy bandwidth buffers (2 GiB)");
  SEMSHARE_CUDA_RETURN(cudaMemsetAsync(a->data(), 1, bytes, ctx.stream()));
  StreamTimer timer(ctx.stream());
  std::vector<double> t;
  for (int r = 0; r < repeats + 1; ++r) {
    SEMSHARE_STATUS_RETURN(timer.Start());
    SEMSHARE_CUDA_RETURN(
        cudaMemcpyAsync(b->data(), a->data(), bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
    double s = 0;
    SEMSHARE_BENCH_ASSIGN(s, timer.Stop());
    if (r > 0) t.push_back(s);
  }
  return 2.0 * static_cast<double>(bytes) / Median(t);
}

struct DecodeOptions {
  std::vector<int64_t> streams;
  int64_t context = 512;  // prompt tokens per stream before the timed decode
  int steps = 32;         // timed iterations per stream count and form
};

absl::Status RunDecode(ec::CudaContext& ctx, const std::string& shape, const DecodeOptions& o,
                       double copy_bw, nlohmann::json* out, std::vector<std::string>* summary) {
  const engine::ModelConfig c = Shape(shape);
  auto dm = ec::DeviceModel::Random(ctx, c, 42);
  if (!dm.ok()) return dm.status();
  const int64_t kvd = c.n_kv_heads * c.head_dim;
  const int64_t row_bytes = c.n_layers * kvd * 2 * 2;
  // Bytes of weights one decode iteration reads: all but the embedding table when the output
  // head is its own matrix (the table's few token rows are negligible).
  const int64_t weight_read =
      (*dm)->ByteSize() - ((*dm)->lm_head.empty() ? 0 : (*dm)->tok_embd.bytes());
  const int64_t max_streams = *std::max_element(o.streams.begin(), o.streams.end());
  constexpr int kWarm = 2;
  // Both forms decode kWarm + steps tokens per stream after the context.
  const int64_t rows_per_stream = o.context + 2 * (kWarm + o.steps) + 1;
  auto pool = ec::PagedKvPool::Create(
      ctx, c.n_layers, kvd, (max_streams * rows_per_stream + max_streams * 16) * row_bytes);
  if (!pool.ok()) return pool.status();
  ec::BatchForward bf(ctx, **dm, **pool);
  StreamTimer timer(ctx.stream());
  std::printf(
      "\n%s, batched decode after %lld context tokens per stream (weights read per "
      "iteration %.2f GiB, copy bandwidth %.0f GB/s)\n",
      c.name.c_str(), static_cast<long long>(o.context), Gib(weight_read), copy_bw / 1e9);
  std::printf(
      "| streams | next token | median iteration ms | decode tokens/s | KV read GiB | "
      "roofline ms | roofline fraction |\n|---|---|---|---|---|---|---|\n");
  nlohmann::json js = {{"shape", shape},
                       {"name", c.name},
                       {"weight_bytes", (*dm)->ByteSize()},
                       {"weight_bytes_read_per_iteration", weight_read},
                       {"copy_bandwidth_bytes_per_s", copy_bw},
                       {"context", o.context},
                       {"steps", o.steps}};
  for (int64_t n_streams : o.streams) {
    std::vector<std::unique_ptr<ec::PagedSeq> > seqs;
    std::vector<std::vector<int32_t> > ids(n_streams), pos(n_streams);
    for (int64_t s = 0; s < n_streams; ++s) {
      seqs.push_back(std::make_unique<ec::PagedSeq>(**pool));
      ids[s] = RandomIds(o.context + 1, c.vocab_size, 3000 + s);
      pos[s] = Iota(rows_per_stream);
    }
    // Prefill the contexts, batched up to ~8k rows per forward.
    std::vector<ec::BatchForward::Item> items;
    int64_t rows = 0;
    for (int64_t s = 0; s < n_streams; ++s) {
      items.push_back({seqs[s].get(), std::span<const int32_t>(ids[s]).first(o.context),
                       std::span<const int32_t>(pos[s]).first(o.context), nullptr});
      rows += o.context;
      if (rows >= 8192 || s + 1 == n_streams) {
        SEMSHARE_STATUS_RETURN(bf.Forward(items));
        items.clear();
        rows = 0;
      }
    }
    std::vector<int32_t> next(n_streams);
    for (int64_t s = 0; s < n_streams; ++s) next[s] = ids[s][o.context];
    std::vector<float> logits(n_streams * c.vocab_size);
    for (const bool greedy : {true, false}) {
      std::vector<double> t, frac;
      double kv_read_med = 0;
      for (int it = 0; it < kWarm + o.steps; ++it) {
        items.clear();
        int64_t kv_rows = 0;
        for (int64_t s = 0; s < n_streams; ++s) {
          const int32_t p = seqs[s]->next_position();
          items.push_back({seqs[s].get(), std::span<const int32_t>(&next[s], 1),
                           std::span<const int32_t>(pos[s]).subspan(p, 1),
                           greedy ? nullptr : logits.data() + s * c.vocab_size});
          kv_rows += p + 1;
        }
        SEMSHARE_STATUS_RETURN(timer.Start());
        if (greedy) {
          SEMSHARE_STATUS_RETURN(bf.ForwardGreedy(items, next));
        } else {
          SEMSHARE_STATUS_RETURN(bf.Forward(items));
          for (int64_t s = 0; s < n_streams; ++s) {  // greedy on the host, outside the timing
            const float* l = logits.data() + s * c.vocab_size;
            next[s] = static_cast<int32_t>(std::max_element(l, l + c.vocab_size) - l);
          }
        }
        double sec = 0;
        SEMSHARE_BENCH_ASSIGN(sec, timer.Stop());
        if (it < kWarm) continue;
        const double bytes = static_cast<double>(weight_read + kv_rows * row_bytes);
        t.push_back(sec);
        frac.push_back(bytes / copy_bw / sec);
        if (it == kWarm + o.steps / 2) kv_read_med = static_cast<double>(kv_rows * row_bytes);
      }
      const double med = Median(t), f = Median(frac);
      const double floor_s = (weight_read + kv_read_med) / copy_bw;
      const char* form = greedy ? "device greedy" : "logits to host";
      std::printf("| %lld | %s | %.2f | %.0f | %.2f | %.2f | %.1f%% |\n",
                  static_cast<long long>(n_streams), form, med * 1e3, n_streams / med,
                  Gib(static_cast<int64_t>(kv_read_med)), floor_s * 1e3, 100 * f);
      js["decode"].push_back({{"streams", n_streams},
                              {"next_token", greedy ? "device_greedy" : "host_logits"},
                              {"median_iteration_s", med},
                              {"decode_tokens_per_s", n_streams / med},
                              {"kv_bytes_read_per_iteration", kv_read_med},
                              {"roofline_fraction", f}});
      summary->push_back(absl::StrFormat(
          "%s decode %lld streams (%s): %.0f tokens/s, %.2f ms/iteration, %.1f%% of the memory "
          "roofline",
          shape, static_cast<long long>(n_streams), form, n_streams / med, med * 1e3, 100 * f));
    }
    seqs.clear();  // pages back for the next stream count
    if ((*pool)->used_bytes() != 0) return absl::InternalError("decode bench: pages not returned");
  }
  out->push_back(js);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t> > ParseList(const std::string& s) {
  std::vector<int64_t> v;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int64_t x = 0;
    if (!absl::SimpleAtoi(part, &x) || x < 1) {
      return absl::InvalidArgumentError("lengths must be positive integers");
    }
    v.push_back(x);
  }
  return v;
}

}  // namespace

int BenchCudaCommand(int argc, char** argv) {
  static const std::vector<FlagSpec> specs = {
      {"suite", "cuda", false, false, "cuda"},
      {"backend", "cuda", false, false, "cuda"},
      {"shapes", "comma-separated: 8b, 1b", false, false, "1b,8b"},
      {"lengths", "full-prefill lengths", false, false, "1024,4096,8192"},
      {"hit-lengths", "hit TTFT lengths", false, false, "256,512,1024,2048,5120"},
      {"repeats", "timed runs per measurement (median; one warm-up first)", false, false, "5"},
      {"parts", "comma-separated: prefill (full prefill and hits), decode", false, false,
       "prefill,decode"},
      {"decode-shapes", "shapes of the batched-decode part: 8b, 1b", false, false, "8b"},
      {"decode-streams", "batched-decode stream counts", false, false, "1,16,64"},
      {"decode-context", "context tokens per stream before decoding", false, false, "512"},
      {"decode-steps", "timed decode iterations (median)", false, false, "32"},
      {"device", "CUDA device ordinal", false, false, "0"},
      {"json", "write the results to this JSON file"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare bench --suite cuda: %.*s\n", static_cast<int>(msg.size()),
                 msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(Args::Help("semshare bench --suite cuda [--shapes 1b,8b] [--json F]", specs).c_str(),
               stdout);
    return 0;
  }
  auto lengths = ParseList(args->Str("lengths"));
  auto hits = ParseList(args->Str("hit-lengths"));
  auto repeats = args->Int("repeats");
  auto device = args->Int("device");
  if (!lengths.ok() || !hits.ok()) return fail("--lengths/--hit-lengths: positive integers", 2);
  if (!repeats.ok() || *repeats < 1) return fail("--repeats must be >= 1", 2);
  if (!device.ok()) return fail(device.status().message(), 2);
  bool run_prefill = false, run_decode = false;
  for (absl::string_view p : absl::StrSplit(args->Str("parts"), ',')) {
    if (p == "prefill") {
      run_prefill = true;
    } else if (p == "decode") {
      run_decode = true;
    } else {
      return fail("--parts: prefill, decode", 2);
    }
  }
  DecodeOptions dec;
  {
    auto streams = ParseList(args->Str("decode-streams"));
    auto context = args->Int("decode-context");
    auto steps = args->Int("decode-steps");
    if (!streams.ok()) return fail("--decode-streams: positive integers", 2);
    if (!context.ok() || *context < 1) return fail("--decode-context must be >= 1", 2);
    if (!steps.ok() || *steps < 1) return fail("--decode-steps must be >= 1", 2);
    dec.streams = *streams;
    dec.context = *context;
    dec.steps = static_cast<int>(*steps);
  }
  auto ctx = ec::CudaContext::Create(static_cast<int>(*device));
  if (!ctx.ok()) return fail(ctx.status().message(), 1);
  auto gemm = GemmTflops(**ctx, 10);
  if (!gemm.ok()) return fail(gemm.status().message(), 1);
  std::printf("device %s: cuBLAS bf16 GEMM 8192^3 %.1f TFLOP/s (median of 10)\n",
              (*ctx)->device_name().c_str(), *gemm);
  nlohmann::json results = nlohmann::json::array(), decode = nlohmann::json::array();
  std::vector<std::string> summary;
  double copy_bw = 0;
  if (run_decode) {
    auto bw = CopyBandwidth(**ctx, 10);
    if (!bw.ok()) return fail(bw.status().message(), 1);
    copy_bw = *bw;
    (*ctx)->pool().ReleaseCache();
    std::printf(
        "device-to-device copy: %.0f GB/s (1 GiB cudaMemcpy, bytes read + written, "
        "median of 10)\n",
        copy_bw / 1e9);
  }
  for (absl::string_view s : absl::StrSplit(args->Str("shapes"), ',')) {
    if (!run_prefill) break;
    const std::string shape(s);
    if (shape != "8b" && shape != "1b") return fail("--shapes: 8b or 1b", 2);
    if (auto st = RunShape(**ctx, shape, *lengths, *hits, static_cast<int>(*repeats), *gemm,
                           &results, &summary);
        !st.ok()) {
      return fail(st.message(), 1);
    }
    (*ctx)->pool().ReleaseCache();
  }
  for (absl::string_view s : absl::StrSplit(args->Str("decode-shapes"), ',')) {
    if (!run_decode) break;
    const std::string shape(s);
    if (shape != "8b" && shape != "1b") return fail("--decode-shapes: 8b or 1b", 2);
    if (auto st = RunDecode(**ctx, shape, dec, copy_bw, &decode, &summary); !st.ok()) {
      return fail(st.message(), 1);
    }
    (*ctx)->pool().ReleaseCache();
  }
  if (!args->Str("json").empty()) {
    nlohmann::json j = {{"suite", "cuda"},
                        {"device", (*ctx)->device_name()},
                        {"gemm_tflops", *gemm},
                        {"timing", "CUDA events, median of --repeats after one warm-up"},
                        {"copy_bandwidth_bytes_per_s", copy_bw},
                        {"shapes", results},
                        {"decode", decode}};
    std::ofstream f(args->Str("json"));
    f << j.dump(2) << "\n";
    if (!f) return fail(absl::StrCat("cannot write ", args->Str("json")), 1);
  }
  std::printf("\nsummary\n");
  for (const std::string& s : summary) std::printf("  %s\n", s.c_str());
  return 0;
}
#endif  // SEMSHARE_HAVE_CUDA

}  // namespace semshare::tools
