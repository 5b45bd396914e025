// `semshare loadgen`: drives a semshare-server with `--concurrency` client threads for
// `--duration-s` seconds, each sending GenerateStream (or Generate with --unary) calls with
// prompts taken in turn from --prompts (one per line; "\n" in a line is a newline). Closed loop
// by default (each thread sends its next request when the last one ends); --rate R makes it an
// open loop of R requests/s over all threads. A RESOURCE_EXHAUSTED answer makes that thread
// back off 50 ms, as a well-behaved client would.
//
// TTFT is measured at the client: call start to the first streamed message (for --unary, to the
// response). Requests that start in the first --warmup-s seconds are excluded from the
// percentiles but counted. With --server-pid, the server's resident memory (VmRSS) is sampled
// every second. Results print as a summary and, with --json FILE, as JSON including per-window
// figures (--window-s) for plots of TTFT and memory over time.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "semshare/v1/semshare.grpc.pb.h"
#include "tools/commands.h"
#include "tools/grpc_client.h"

namespace semshare::tools {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<FlagSpec> Specs() {
  std::vector<FlagSpec> specs = ConnectionFlags();
  const std::vector<FlagSpec> more = {
      {"prompts", "one prompt per line ('\\n' is a newline, '\\\\' a backslash)"},
      {"concurrency", "client threads (streams in flight at most)", false, false, "8"},
      {"duration-s", "seconds to send requests", false, false, "30"},
      {"rate", "requests per second over all threads (0 = closed loop)", false, false, "0"},
      {"max-tokens", "new tokens per request", false, false, "16"},
      {"chat", "send prompts as user messages (chat template)", true},
      {"cache-policy", "auto | bypass | no-publish", false, false, "auto"},
      {"unary", "use Generate instead of GenerateStream", true},
      {"warmup-s", "requests starting earlier are left out of the percentiles", false, false, "0"},
      {"window-s", "width of the per-window figures in the JSON", false, false, "10"},
      {"server-pid", "sample this process' resident memory every second"},
      {"json", "write the results as JSON to this file"},
      {"help", "show this help", true},
  };
  specs.insert(specs.end(), more.begin(), more.end());
  return specs;
}

struct Sample {
  double start_s = 0;  // since the run began
  double ttft_ms = -1;
  double total_ms = 0;
  grpc::StatusCode code = grpc::StatusCode::OK;
  int64_t completion_tokens = 0;
  std::string cache_result;
};

struct RssSample {
  double t_s;
  int64_t rss_bytes;
};

int64_t ReadRss(int64_t pid) {
  std::ifstream in(absl::StrFormat("/proc/%d/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stoll(line.substr(6)) * 1024;  // kB
    }
  }
  return -1;
}

// "\n" -> newline, "\\" -> backslash; any other backslash stays as it is.
std::string Unescape(const std::string& line) {
  std::string out;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\' && i + 1 < line.size() && (line[i + 1] == 'n' || line[i + 1] == '\\')) {
      out += line[i + 1] == 'n' ? '\n' : '\\';
      ++i;
    } else {
      out += line[i];
    }
  }
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

Sample OneCall(const Connection& conn, v1::SemShare::Stub& stub, const v1::GenerateRequest& req,
               bool unary, Clock::time_point run_start) {
  Sample s;
  const auto t0 = Clock::now();
  s.start_s = std::chrono::duration<double>(t0 - run_start).count();
  auto ms_since = [&] {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  };
  auto ctx = conn.NewContext();
  grpc::Status status;
  if (unary) {
    v1::GenerateResponse resp;
    status = stub.Generate(ctx.get(), req, &resp);
    s.ttft_ms = ms_since();
    s.completion_tokens = resp.usage().completion_tokens();
    s.cache_result = resp.cache().result();
  } else {
    auto reader = stub.GenerateStream(ctx.get(), req);
    v1::GenerateStreamResponse msg;
    while (reader->Read(&msg)) {
      if (s.ttft_ms < 0) s.ttft_ms = ms_since();
      if (msg.done()) {
        s.completion_tokens = msg.usage().completion_tokens();
        s.cache_result = msg.cache().result();
      }
    }
    status = reader->Finish();
  }
  s.total_ms = ms_since();
  s.code = status.error_code();
  return s;
}

}  // namespace

int LoadgenCommand(int argc, char** argv) {
  const std::string usage =
      "semshare loadgen --target HOST:PORT --prompts FILE [--concurrency N] [--duration-s S] "
      "[--rate R] [--json OUT]";
  absl::StatusOr<Args> args = Args::Parse(Specs(), argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "semshare loadgen: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  if (args->Bool("help")) {
    std::fputs(Args::Help(usage, Specs()).c_str(), stdout);
    return 0;
  }
  absl::StatusOr<int64_t> concurrency = args->Int("concurrency"),
                          max_tokens = args->Int("max-tokens");
  absl::StatusOr<double> duration = args->Double("duration-s"), rate = args->Double("rate"),
                         warmup = args->Double("warmup-s"), window = args->Double("window-s");
  for (const absl::Status& s : {concurrency.status(), max_tokens.status(), duration.status(),
                                rate.status(), warmup.status(), window.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "semshare loadgen: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (*concurrency < 1 || *duration <= 0 || *rate < 0 || *window <= 0) {
    std::fprintf(stderr,
                 "semshare loadgen: --concurrency >= 1, --duration-s > 0, --rate >= 0 and "
                 "--window-s > 0 please\n");
    return 2;
  }
  std::vector<std::string> prompts;
  {
    std::ifstream in(args->Str("prompts"));
    if (!in) {
      std::fprintf(stderr, "semshare loadgen: cannot read --prompts '%s'\n",
                   args->Str("prompts").c_str());
      return 2;
    }
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) prompts.push_back(Unescape(line));
    }
  }
  if (prompts.empty()) {
    std::fprintf(stderr, "semshare loadgen: --prompts holds no prompt\n");
    return 2;
  }
  absl::StatusOr<Connection> conn = Connect(*args);
  if (!conn.ok()) {
    std::fprintf(stderr, "semshare loadgen: %s\n", std::string(conn.status().message()).c_str());
    return 2;
  }
  const bool unary = args->Bool("unary"), chat = args->Bool("chat");
  const std::string policy = args->Str("cache-policy");
  v1::CachePolicy cache_policy = v1::CACHE_POLICY_AUTO;
  if (policy == "bypass") cache_policy = v1::CACHE_POLICY_BYPASS;
  if (policy == "no-publish") cache_policy = v1::CACHE_POLICY_NO_PUBLISH;

  const auto run_start = Clock::now();
  const auto run_end = run_start + std::chrono::microseconds(static_cast<int64_t>(*duration * 1e6));
  std::atomic<int64_t> next_prompt{0};
  std::atomic<int64_t> next_slot_us{0};  // open loop: start time of the next request
  const int64_t interval_us = *rate > 0 ? static_cast<int64_t>(1e6 / *rate) : 0;
  std::mutex mu;
  std::vector<Sample> samples;
  std::vector<RssSample> rss;

  std::atomic<bool> done{false};
  std::thread rss_thread;
  if (args->Has("server-pid")) {
    absl::StatusOr<int64_t> pid = args->Int("server-pid");
    if (pid.ok()) {
      rss_thread = std::thread([&, pid = *pid] {
        while (!done) {
          const int64_t r = ReadRss(pid);
          const double t = std::chrono::duration<double>(Clock::now() - run_start).count();
          {
            std::lock_guard<std::mutex> lock(mu);
            rss.push_back({t, r});
          }
          for (int i = 0; i < 10 && !done; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
        }
      });
    }
  }

  std::vector<std::thread> threads;
  for (int64_t t = 0; t < *concurrency; ++t) {
    threads.emplace_back([&] {
      auto stub = v1::SemShare::NewStub(conn->channel);
      std::vector<Sample> mine;
      while (Clock::now() < run_end) {
        if (interval_us > 0) {
          const int64_t slot = next_slot_us.fetch_add(interval_us);
          const auto at = run_start + std::chrono::microseconds(slot);
          if (at >= run_end) break;
          std::this_thread::sleep_until(at);
        }
        v1::GenerateRequest req;
        const std::string& p = prompts[next_prompt.fetch_add(1) % prompts.size()];
        if (chat) {
          v1::ChatMessage* m = req.mutable_messages()->add_messages();
          m->set_role("user");
          m->set_content(p);
        } else {
          req.set_prompt(p);
        }
        req.mutable_sampling()->set_max_tokens(static_cast<int32_t>(*max_tokens));
        req.set_cache_policy(cache_policy);
        mine.push_back(OneCall(*conn, *stub, req, unary, run_start));
        if (mine.back().code == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      samples.insert(samples.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& t : threads) t.join();
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - run_start).count();
  done = true;
  if (rss_thread.joinable()) rss_thread.join();

  // Summary.
  std::map<std::string, int64_t> by_code, by_cache;
  std::vector<double> ttft, total;
  int64_t tokens = 0, ok = 0;
  for (const Sample& s : samples) {
    by_code[CodeName(s.code)]++;
    if (s.code != grpc::StatusCode::OK) continue;
    ++ok;
    tokens += s.completion_tokens;
    by_cache[s.cache_result.empty() ? "unknown" : s.cache_result]++;
    if (s.start_s >= *warmup) {
      ttft.push_back(s.ttft_ms);
      total.push_back(s.total_ms);
    }
  }
  std::sort(samples.begin(), samples.end(),
            [](const Sample& a, const Sample& b) { return a.start_s < b.start_s; });
  nlohmann::json windows = nlohmann::json::array();
  for (double w0 = 0; w0 < elapsed_s; w0 += *window) {
    std::vector<double> wt;
    int64_t n = 0, errors = 0;
    for (const Sample& s : samples) {
      if (s.start_s < w0 || s.start_s >= w0 + *window) continue;
      ++n;
      if (s.code == grpc::StatusCode::OK) {
        wt.push_back(s.ttft_ms);
      } else {
        ++errors;
      }
    }
    int64_t rss_max = -1;
    for (const RssSample& r : rss) {
      if (r.t_s >= w0 && r.t_s < w0 + *window) rss_max = std::max(rss_max, r.rss_bytes);
    }
    windows.push_back({{"start_s", w0},
                       {"requests", n},
                       {"errors", errors},
                       {"ttft_ms_p50", Percentile(wt, 0.5)},
                       {"ttft_ms_p99", Percentile(wt, 0.99)},
                       {"rss_bytes_max", rss_max}});
  }
  nlohmann::json j = {
      {"target", args->Str("target")},
      {"concurrency", *concurrency},
      {"duration_s", *duration},
      {"elapsed_s", elapsed_s},
      {"rate", *rate},
      {"mode", unary ? "unary" : "stream"},
      {"max_tokens", *max_tokens},
      {"prompts", prompts.size()},
      {"warmup_s", *warmup},
      {"requests", samples.size()},
      {"ok", ok},
      {"codes", by_code},
      {"cache", by_cache},
      {"ttft_ms",
       {{"p50", Percentile(ttft, 0.5)},
        {"p90", Percentile(ttft, 0.9)},
        {"p99", Percentile(ttft, 0.99)},
        {"n", ttft.size()}}},
      {"latency_ms", {{"p50", Percentile(total, 0.5)}, {"p99", Percentile(total, 0.99)}}},
      {"tokens_per_s", static_cast<double>(tokens) / elapsed_s},
      {"requests_per_s", static_cast<double>(ok) / elapsed_s},
      {"windows", windows},
  };
  nlohmann::json rss_json = nlohmann::json::array();
  for (const RssSample& r : rss) rss_json.push_back({{"t_s", r.t_s}, {"rss_bytes", r.rss_bytes}});
  j["rss"] = rss_json;

  std::printf("loadgen: %zu requests in %.1f s (%.2f ok/s), %lld ok\n", samples.size(), elapsed_s,
              static_cast<double>(ok) / elapsed_s, static_cast<long long>(ok));
  for (const auto& [code, n] : by_code) {
    std::printf("  %-20s %lld\n", code.c_str(), static_cast<long long>(n));
  }
  std::printf("  TTFT ms  p50 %.1f  p90 %.1f  p99 %.1f  (%zu requests after warm-up)\n",
              Percentile(ttft, 0.5), Percentile(ttft, 0.9), Percentile(ttft, 0.99), ttft.size());
  std::printf("  tokens/s %.1f", static_cast<double>(tokens) / elapsed_s);
  for (const auto& [res, n] : by_cache) {
    std::printf("  %s %lld", res.c_str(), static_cast<long long>(n));
  }
  std::printf("\n");
  if (!rss.empty()) {
    std::printf("  server RSS MB: first %.1f  last %.1f  max %.1f\n", rss.front().rss_bytes / 1e6,
                rss.back().rss_bytes / 1e6,
                std::max_element(
                    rss.begin(), rss.end(),
                    [](auto& a, auto& b) {
                      return a.rss_bytes < b.rss_bytes;
                    })->rss_bytes /
                    1e6);
  }
  if (args->Has("json")) {
    std::ofstream out(args->Str("json"));
    out << j.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "semshare loadgen: cannot write %s\n", args->Str("json").c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace semshare::tools
