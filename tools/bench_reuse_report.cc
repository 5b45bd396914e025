#include "tools/bench_reuse_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
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
  std::vector<std::string> modes;
  for (PrefillMode mode : kModes) modes.push_back(engine::PrefillModeName(mode));
  for (const Json& r : records) {
    if (r["mode"] == "served") {
      modes.push_back("served");
      break;
    }
  }
  for (const auto& [kind, length] : groups) {
    for (const std::string& name : modes) {
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

Json SummarizeHits(const Json& records) {
  std::vector<std::pair<std::string, int64_t>> groups;  // (kind, length), then ("all", length)
  std::vector<int64_t> lengths;
  for (const Json& r : records) {
    if (r["mode"] != "served") continue;
    std::pair<std::string, int64_t> g{r["kind"], r["length"]};
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
    if (std::find(lengths.begin(), lengths.end(), g.second) == lengths.end())
      lengths.push_back(g.second);
  }
  for (int64_t length : lengths) groups.push_back({"all", length});
  Json out = Json::array();
  for (const auto& [kind, length] : groups) {
    auto match = [&](const Json& r) {
      return r["mode"] == "served" && r["length"] == length && (kind == "all" || r["kind"] == kind);
    };
    // Exact copies only: a hybrid whose remainder took the selective path (plan
    // "hybrid-selective", ReuseConfig::hybrid_selective_min_tokens) is lossy by design.
    auto lossy = [](const Json& r) { return r.value("plan", "") == "hybrid-selective"; };
    auto copied = [&](const Json& r) {
      return match(r) && (r["hit_kind"] == "exact" || r["hit_kind"] == "hybrid") && !lossy(r);
    };
    auto full = [&](const Json& r) {
      return r["mode"] == "full" && r["length"] == length && (kind == "all" || r["kind"] == kind);
    };
    int64_t pairs = 0;
    std::map<std::string, int64_t> by_kind;
    double worst_diff = std::nan("");
    int64_t hybrid_selective = 0;
    for (const Json& r : records) {
      if (!match(r)) continue;
      ++pairs;
      ++by_kind[r["hit_kind"].get<std::string>()];
      hybrid_selective += lossy(r) ? 1 : 0;
      if (copied(r)) {
        const double d = r["max_rel_logit_diff"].get<double>();
        worst_diff = std::isnan(worst_diff) ? d : std::max(worst_diff, d);
      }
    }
    Json s = {{"kind", kind}, {"length", length}, {"pairs", pairs}};
    for (const char* k : {"exact", "hybrid", "semantic", "miss"}) {
      s[std::string(k) + "_share"] = pairs ? static_cast<double>(by_kind[k]) / pairs : 0.0;
    }
    // Hits (hybrid or semantic) whose plan was the hybrid with the selective remainder.
    s["hybrid_selective_share"] =
        pairs ? static_cast<double>(hybrid_selective) / static_cast<double>(pairs) : 0.0;
    s["target_tokens"] = MedianOf(records, match, "target_tokens");
    s["prefix_fraction"] = MedianOf(records, match, "prefix_fraction");
    s["ttft_ms"] = MedianOf(records, match, "ttft_ms");
    s["full_ttft_ms"] = MedianOf(records, full, "ttft_ms");
    s["speedup"] = MedianOf(records, match, "speedup");
    s["copied_speedup"] = MedianOf(records, copied, "speedup");
    s["copied_max_rel_logit_diff"] = worst_diff;
    s["copied_ppl_ratio"] = MedianOf(records, copied, "ppl_ratio");
    s["ppl_ratio"] = MedianOf(records, match, "ppl_ratio");
    out.push_back(std::move(s));
  }
  return out;
}

void PrintHitTable(const Json& hit_shares) {
  if (hit_shares.empty()) return;
  std::printf(
      "\nServed path (the server's hit rule, serving::HitRule): share of exact / hybrid / "
      "semantic / miss per length, TTFT (lookup included) vs full, and exact/hybrid quality\n\n"
      "| kind | length | pairs | tokens | exact | hybrid | semantic | miss | prefix copied | "
      "served TTFT ms | full TTFT ms | speedup | exact/hybrid speedup | max rel logit diff | "
      "ppl/full |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto pct = [](const Json& s, const char* f) { return 100 * s[f].get<double>(); };
  // A figure, or "–" when there is none (NaN; JSON null once written).
  auto fig = [](const Json& v, const char* format) {
    if (!v.is_number() || std::isnan(v.get<double>())) return std::string("–");
    char buf[64];
    std::snprintf(buf, sizeof(buf), format, v.get<double>());
    return std::string(buf);
  };
  for (const Json& s : hit_shares) {
    std::printf(
        "| %s | %lld | %lld | %.0f | %.0f%% | %.0f%% | %.0f%% | %.0f%% | %.1f%% | %.1f | %.1f | "
        "%.2fx | %s | %s | %.3f |\n",
        s["kind"].get<std::string>().c_str(), static_cast<long long>(s["length"].get<int64_t>()),
        static_cast<long long>(s["pairs"].get<int64_t>()), s["target_tokens"].get<double>(),
        pct(s, "exact_share"), pct(s, "hybrid_share"), pct(s, "semantic_share"),
        pct(s, "miss_share"), pct(s, "prefix_fraction"), s["ttft_ms"].get<double>(),
        s["full_ttft_ms"].get<double>(), s["speedup"].get<double>(),
        fig(s["copied_speedup"], "%.2fx").c_str(),
        fig(s["copied_max_rel_logit_diff"], "%.2e").c_str(), s["ppl_ratio"].get<double>());
  }
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
