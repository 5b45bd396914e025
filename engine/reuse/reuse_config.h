// Every knob of KV reuse (SemShareKV, arXiv 2509.24832; DESIGN.md section 4) in one struct.
// Defaults are starting points that `semshare bench --suite reuse` tunes and justifies
// (docs/benchmarks.md).
#ifndef SEMSHARE_ENGINE_REUSE_REUSE_CONFIG_H_
#define SEMSHARE_ENGINE_REUSE_REUSE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace semshare::engine {

// How a prompt is prefilled.
enum class PrefillMode {
  kFull,      // compute every token (the baseline)
  kPrefix,    // reuse the exact longest common token prefix of a reference (vLLM/SGLang style)
  kSnapKv,    // full prefill, then retention (KV eviction by last-window attention)
  kSemShare,  // token-level LSH match + rearranged reference KV + selective recompute + retention
};
const char* PrefillModeName(PrefillMode m);
absl::StatusOr<PrefillMode> ParsePrefillMode(const std::string& name);

// How the per-layer KV budget changes with depth (retention ablations).
enum class RetentionSchedule {
  kNone,         // keep every row
  kExponential,  // B_l = max(b_min, ceil(n * rho * gamma^l)): fewer rows deeper (the paper's)
  kConstant,     // B_l = max(b_min, ceil(n * rho))
  kIncreasing,   // B_l = max(b_min, ceil(n * rho * gamma^(L-1-l))): more rows deeper
};
const char* RetentionScheduleName(RetentionSchedule s);
absl::StatusOr<RetentionSchedule> ParseRetentionSchedule(const std::string& name);

struct ReuseConfig {
  PrefillMode mode = PrefillMode::kSemShare;

  // E-cache: input-embedding rows rotated by RoPE over the embedding dimension at each token's
  // position. Off = the ablation that shows many tokens collapsing onto the first positions.
  // The base is far above the model's 1e4: with 576 rotated dims at 1e4 the same token 30
  // positions away already looks like another token (paraphrases scored 0.26, reordered
  // passages kept their token for 16% of tokens); at 1e16 a few fast pairs still separate
  // nearby occurrences while moved passages match (0.91 same-id) and paraphrases reach 0.81
  // (tests/token_matcher_test.cc, docs/benchmarks.md).
  bool ecache_rope = true;
  float ecache_rope_base = 1e16f;

  // Token-level SimHash LSH: `lsh_bands` tables, each keyed by `lsh_bits_per_band` sign bits of
  // random hyperplane projections (seeded by lsh_seed, so codes are stable and storable).
  int32_t lsh_bands = 16;
  int32_t lsh_bits_per_band = 8;
  uint64_t lsh_seed = 0x5e5a4e2025ull;
  // Candidates examined per target token (the best by cosine wins); 0 = all in its buckets.
  int32_t max_candidates = 32;

  // Prompt similarity = mean matched cosine (unmatched = 0); a hit needs >= hit_threshold.
  float hit_threshold = 0.8f;
  // Prompts shorter than this skip lookup (matching costs more than it saves below it).
  int32_t min_reuse_tokens = 64;

  // Exact reuse: a hit whose prompt equals the reference token for token except for at most
  // `window` trailing tokens (a repeated prompt, or one extended by a short suffix) copies the
  // common prefix's KV, which is exactly what a full prefill computes for it (causality), and
  // computes the last max(window, suffix) tokens without retention: the same logits and greedy
  // text as a full prefill, for less work than the selective path (which computes every token
  // at layer 0). Off = the ablation that sends repeats through the selective path.
  bool exact_reuse = true;
  // Exact runs first (AlignExactRuns, token_matcher.h): before a selective plan is made, every
  // stretch of at least this many tokens that the prompt shares verbatim with the reference is
  // mapped onto one verbatim occurrence of it, token for token, rather than each token onto the
  // occurrence of its id that the LSH preferred (often another sentence's). A reference row
  // carries its context from layer 1 on, so the aligned rows are the ones whose reused KV is
  // right. 4 (default), at the same speedup: median perplexity ratio 1.326 -> 1.130 at 1k
  // tokens and 1.106 -> 1.040 at 2k on 8 MRPC-built pairs per length, 1.283 -> 1.097 and
  // 1.448 -> 1.112 on 4 of the shipped corpus's; 2 and 3 measured as 4; a neighbour-run
  // extension measured the same on MRPC and worse on the shipped corpus's reordered passages
  // (1.891 / 1.167 against 1.458 / 1.007) and was replaced by this (docs/benchmarks.md, "Exact
  // runs first"). 0 = the LSH's match as it is.
  int32_t exact_run_tokens = 4;

  // Hybrid with the selective path on the remainder (ReusePlan kHybridSelective,
  // engine/reuse/reuse_plan.h): a hit whose prompt shares an exact prefix [0, lcp) with the
  // reference and whose remainder [lcp, n) is at least this many tokens and matches the
  // reference (mean matched cosine over the remainder >= hit_threshold) copies the prefix rows
  // (never recomputed nor evicted) and runs the selective path on the remainder only, attending
  // over the copied rows. A shorter remainder is computed in full after the copied rows (the
  // hit rule's hybrid) or, on a semantic hit, the whole prompt takes the selective path.
  // 0 = never, the default: on 2.2k-token prompts sharing a 1.3k-token exact prefix with a
  // reordered 0.9k-token remainder it cut the served TTFT 5.4x (3.3 s -> 0.61 s) but moved the
  // perplexity ratio from 1.000 (the remainder computed in full) to 1.05-1.24, and on a
  // semantic hit with a 0.7k prefix it gained 1.5x for 1.31 against 1.28 (docs/benchmarks.md,
  // "Hybrid with the selective path on the remainder"): the exact remainder is the safe default.
  int32_t hybrid_selective_min_tokens = 0;

  // Selective prefill: layer 0 computes all tokens; layer 1 recomputes the top
  // `recompute_ratio` by KV deviation plus forced tokens; each deeper layer keeps the top
  // ceil(alpha * |S|) of the previous set (forced tokens always kept).
  float recompute_ratio = 0.4f;
  float alpha = 0.8f;
  // Length-aware floor of that schedule: no layer recomputes fewer than
  // min(n, recompute_min_tokens) tokens (RecomputeKeep in reuse_plan.h). A fixed count is a
  // larger share of a short prompt (19% of 1k tokens at every layer for 192, 9% of 2k, 5% of
  // 4k, where the paper's schedule reaches it only past layer 10) and a bounded cost on a long
  // one. 192 (default since 2026-12-06, with exact runs first): on 16 MRPC-built pairs per
  // length the median perplexity ratio went 1.134 -> 1.047 at 1k tokens (speedup 6.6x -> 3.7x)
  // and stayed 1.001 -> 1.000 at 2k (7.7x -> 5.6x); on 4 of the shipped corpus's 1.097 -> 1.068
  // and 1.187 -> 1.067; in an 8-pair sweep 128 left 1k at 1.069, and 256 and 384 gained little
  // on 192 for 3.1x / 2.4x (docs/benchmarks.md, "A recompute floor"). 0 = the paper's schedule.
  int32_t recompute_min_tokens = 192;
  // Run starts (EPIC / CacheBlend: the loss of spliced KV concentrates on the first tokens of
  // each spliced chunk, which were computed as the start of another context): the first
  // `run_start_tokens` tokens of every run of rearranged rows (a stretch gathered from
  // consecutive reference rows; ReusePlan::forced) are forced like the sink and window:
  // recomputed at every layer and never evicted. 0 = none (the paper's schedule), the default:
  // on the matcher's match the median run is one token, so k = 2 already recomputed 84-93% of
  // the tokens at every layer (speedup ~1x); with runs re-aligned (a neighbour-run extension
  // that exact_run_tokens replaced), runs of reordered passages are 10-20 tokens, yet forcing
  // the first 1-2 tokens of each barely moved their perplexity ratio (MRPC 1k median 1.154 ->
  // 1.140 for k = 2 on runs of >= 4 tokens, at 5.1x instead of 7.2x); the loss is not at the
  // run starts for this model (docs/benchmarks.md, "Run starts recomputed").
  int32_t run_start_tokens = 0;

  // Fallback guard (the paper leaves adaptive thresholds open): after layer 0 of a selective
  // hit, the mean over the prompt of each token's layer-0 KV deviation (||K - K~|| + ||V - V~||,
  // its fresh K/V against its rearranged reference row; 0 for a token matched to its own id)
  // measures how poorly the match fits. Above `fallback_deviation` the prefill goes on as a full
  // prefill (every token at every layer, every row kept: the KV and logits of a miss) and
  // PrefillStats::fallback says so. The scale is the model's KV norm; 2.5 for SmolLM2-135M:
  // paraphrased and reordered bench pairs score 0.28-1.6, a reference of unrelated text 7.4
  // (docs/benchmarks.md). It catches poor matches, not the subtler loss of a good match's
  // reused deep layers. 0 = never fall back.
  float fallback_deviation = 2.5f;
  int32_t window = 32;  // last tokens: always recomputed, and the queries that score retention
  int32_t sink = 4;     // first tokens: always recomputed and never evicted

  // Retention (semshare and snapkv modes).
  RetentionSchedule retention = RetentionSchedule::kExponential;
  float retention_rho = 0.9f;  // fraction of rows kept at layer 0
  // Per-layer decay. 0.965 brings KV after prefill to 0.57x full at 2k tokens with the same
  // perplexity ratio as 0.98 (0.69x) on the MRPC pairs (docs/benchmarks.md).
  float retention_gamma = 0.965f;
  // Length-aware floor of the budget: every layer keeps at least min(n, retention_min_rows)
  // rows, so prompts up to that length are not trimmed and the share kept grows as prompts
  // shrink (RetentionBudget in retention.h). 1024: at ~1k tokens the 0.57x budget alone cost
  // perplexity ratios up to 6.7 on the bench pairs (snapkv); at 2k the deep layers keep 1024
  // rows instead of ~650 (KV after prefill ~0.61x instead of 0.57x). 2048 (default since exact
  // runs first made the reuse itself good enough at 2k for retention to dominate the loss):
  // with 1024, one of 8 MRPC pairs at 2k lost 1.68x in perplexity ratio to retention alone
  // (snapkv 2.44x); keeping every row of prompts up to 2k took the median from 1.040 to 1.001
  // (9 of 12 pairs of both corpora better, 3 worse) at the same speedup, for KV after prefill
  // 1.0x instead of 0.61x at 2k (docs/benchmarks.md, "Exact runs first").
  int32_t retention_min_rows = 2048;

  // InvalidArgument naming the first knob out of range.
  absl::Status Validate() const;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_REUSE_CONFIG_H_
