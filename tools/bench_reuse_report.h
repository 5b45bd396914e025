// Tables and summaries of `semshare bench --suite reuse` (tools/bench_reuse.cc): medians over
// pairs per (kind, length, mode), and the markdown tables printed on stdout. Records are the
// JSON objects bench_reuse.cc writes (fields documented there and in docs/benchmarks.md).
#ifndef SEMSHARE_TOOLS_BENCH_REUSE_REPORT_H_
#define SEMSHARE_TOOLS_BENCH_REUSE_REPORT_H_

#include <functional>

#include "nlohmann/json.hpp"

namespace semshare::tools {

// Median of `field` over the records for which `match` holds (NaN when none).
double MedianOf(const nlohmann::json& records,
                const std::function<bool(const nlohmann::json&)>& match, const char* field);

// One object per (kind, length) in first-seen order x mode (full, prefix, snapkv, semshare, and
// served when recorded): pairs, hit_rate and the median of every numeric per-pair figure.
nlohmann::json Summarize(const nlohmann::json& records);

// The served path's hits (records of mode "served"): one object per (kind, length) in
// first-seen order, then one per length over every kind (kind "all"): pairs, the share of
// exact / hybrid / semantic / miss, medians of target tokens, copied-prefix fraction, served and
// full TTFT and speedup (per pair, served vs full), the medians of the speedup over the
// exact/hybrid pairs alone, and their quality: the largest max_rel_logit_diff and the median
// ppl_ratio (NaN when there are none).
nlohmann::json SummarizeHits(const nlohmann::json& records);

// The main table, then the two ablation tables when their arrays are non-empty.
void PrintTables(const nlohmann::json& summary, const nlohmann::json& ecache,
                 const nlohmann::json& retention);
// The hit-share table (SummarizeHits' objects); nothing when empty.
void PrintHitTable(const nlohmann::json& hit_shares);

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_BENCH_REUSE_REPORT_H_
