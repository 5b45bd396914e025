#include "tools/bench_reuse_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/reuse/reuse_config.h"
#include "tools/commands.h"

namespace semshare::tools {
namespace {

using Json = nlohmann::json;
using engine::PrefillMode;

constexpr PrefillMode kModes[] = {PrefillMode::kFull, PrefillMode::kPrefix, PrefillMode::kSnapKv,
                                  PrefillMode::kSemShare};

}  // namespace

double MedianOf(const Json& records, const std::function<bool(const Json&)>& match,
                const char* field) {
  std::vector<double> v;
  for (const Json& r : records) {
    if (match(r)) v.push_back(r[field].get<double>());
  }
  return Median(v);
}

Json Summarize(const Json& records) {
  Json summary = Json::array();
  std::vector<std::pair<std::string, int64_t>> groups;  // (kind, length) in first-seen order
  for (const Json& r : records) {
    std::pair<std::string, int64_t> g{r["kind"], r["length"]};
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  for (const auto& [kind, length] : groups) {
    for (PrefillMode mode : kModes) {
      const std::string name = engine::PrefillModeName(mode);
      auto match = [&](const Json& r) {
        return r["kind"] == kind && r["length"] == length && r["mode"] == name;
      };
      int64_t pairs = 0, hits = 0;
      for (const Json& r : records) {
        if (!match(r)) continue;
        ++pairs;
        hits += r["hit"].get<bool>();
      }
      Json s = {{"kind", kind}, {"length", length}, {"mode", name}, {"pairs", pairs}};
      for (const char* f : {"target_tokens", "ttft_ms", "speedup", "kv_bytes", "kv_ratio",
                            "kv_bytes_peak", "kv_peak_ratio", "reused_tokens", "recomputed_tokens",
                            "similarity", "rouge_l", "ppl_ratio"}) {
        s[f] = MedianOf(records, match, f);
      }
      s["hit_rate"] = pairs ? static_cast<double>(hits) / pairs : 0.0;
      summary.push_back(std::move(s));
    }
  }
  return summary;
}

void PrintTables(const Json& summary, const Json& ecache, const Json& retention) {
  std::printf(
      "\n| kind | length | mode | pairs | tokens | TTFT ms | speedup | KV MB | KV/full | peak "
      "MB | reused | recomputed | similarity | hit | ROUGE-L | ppl/full |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Json& s : summary) {
    std::printf(
        "| %s | %lld | %s | %lld | %.0f | %.1f | %.2fx | %.1f | %.2f | %.1f | %.0f | %.0f | "
        "%.3f | %.0f%% | %.3f | %.3f |\n",
        s["kind"].get<std::string>().c_str(), static_cast<long long>(s["length"].get<int64_t>()),
        s["mode"].get<std::string>().c_str(), static_cast<long long>(s["pairs"].get<int64_t>()),
        s["target_tokens"].get<double>(), s["ttft_ms"].get<double>(), s["speedup"].get<double>(),
        s["kv_bytes"].get<double>() / 1e6, s["kv_ratio"].get<double>(),
        s["kv_bytes_peak"].get<double>() / 1e6, s["reused_tokens"].get<double>(),
        s["recomputed_tokens"].get<double>(), s["similarity"].get<double>(),
        100 * s["hit_rate"].get<double>(), s["rouge_l"].get<double>(),
        s["ppl_ratio"].get<double>());
  }
  if (!ecache.empty()) {
    std::printf(
        "\nAblation: rearranged KV vs true KV (mean over matched tokens of ||dK||+||dV||)\n\n"
        "| E-cache RoPE | pairs | deviation (all layers) | deviation (layer 0) | similarity | "
        "matched | mapped to first 8 | mean shift |\n|---|---|---|---|---|---|---|---|\n");
    for (bool rope : {true, false}) {
      auto match = [&](const Json& r) { return r["ecache_rope"] == rope; };
      int64_t pairs = 0;
      for (const Json& r : ecache) pairs += match(r);
      std::printf("| %s | %lld | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f |\n", rope ? "on" : "off",
                  static_cast<long long>(pairs), MedianOf(ecache, match, "deviation_mean"),
                  MedianOf(ecache, match, "deviation_layer0"),
                  MedianOf(ecache, match, "similarity"),
                  MedianOf(ecache, match, "matched_fraction"),
                  MedianOf(ecache, match, "fraction_mapped_to_first_8"),
                  MedianOf(ecache, match, "mean_abs_shift"));
    }
  }
  if (!retention.empty()) {
    std::printf(
        "\nAblation: perplexity of full's continuation vs retention ratio (median ppl/full, "
        "KV/full)\n\n| mode | schedule | rho | ppl/full | KV/full |\n|---|---|---|---|---|\n");
    std::vector<std::tuple<std::string, std::string, double>> keys;
    for (const Json& r : retention) {
      std::tuple<std::string, std::string, double> k{r["mode"], r["schedule"], r["rho"]};
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
    for (const auto& [mode, sched, rho] : keys) {
      auto match = [&](const Json& r) {
        return r["mode"] == mode && r["schedule"] == sched && r["rho"] == rho;
      };
      std::printf("| %s | %s | %.2f | %.3f | %.2f |\n", mode.c_str(), sched.c_str(), rho,
                  MedianOf(retention, match, "ppl_ratio"), MedianOf(retention, match, "kv_ratio"));
    }
  }
}

}  // namespace semshare::tools
