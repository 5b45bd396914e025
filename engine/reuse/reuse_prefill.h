// Prefill in one of the four modes (full, prefix, snapkv, semshare) against an optional
// reference, so benchmarks compare like with like (DESIGN.md section 4).
//
// semshare: match target tokens to the reference (TokenMatcher), then execute the hit's
// ReusePlan (reuse_plan.h; the plan decides, this file only executes): copy an exact prefix, or
// rearrange the reference's per-layer KV to the target's order (keys re-rotated by the position
// delta; rotations compose), compute layer 0 for every token the plan computes and measure each
// token's KV deviation, then recompute only the plan's shrinking set of tokens in deeper
// layers, attending over the mixed KV (and the copied rows); last, retention trims each layer's
// rows to the plan's depth-decaying budget.
#ifndef SEMSHARE_ENGINE_REUSE_REUSE_PREFILL_H_
#define SEMSHARE_ENGINE_REUSE_REUSE_PREFILL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/llama_forward.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::engine {

// A prompt whose full, untrimmed KV is kept for reuse.
struct Reference {
  std::vector<int32_t> ids;  // [m]
  KvCache kv;                // every layer holds rows for positions 0..m-1
  TokenSketch sketch;        // E-cache + LSH codes of ids
};

struct PrefillStats {
  PrefillMode mode = PrefillMode::kFull;
  bool hit = false;         // a reference was used
  float similarity = 0.0f;  // semshare: mean matched cosine; prefix: prefix fraction
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;            // tokens whose deeper-layer KV came from the reference
  int64_t recomputed_tokens = 0;        // tokens computed beyond layer 0 (all of them for full)
  std::vector<int64_t> layer_computed;  // [n_layers] tokens computed at each layer
  std::vector<int64_t> layer_rows;      // [n_layers] KV rows kept after retention
  int64_t kv_bytes = 0;                 // KV held after prefill (after retention)
  int64_t kv_bytes_peak = 0;  // most KV held at once during prefill (incl. the rearranged copy)
  // semshare hits: per target token computed at layer 0 (all n; a kHybridSelective plan's
  // n - copied_rows remainder), ||K - K~|| + ||V - V~|| at layer 0 (fresh vs rearranged
  // reference KV); the rearrangement-quality ablation reads it. Empty otherwise.
  std::vector<float> layer0_deviation;  // [n] (or [n - copied_rows])
  // [n] the token matcher's match (hits): matched reference token, -1 unmatched. As matched,
  // before PlanReuse's AlignExactRuns: the rows the prefill gathered are the plan's (src).
  std::vector<int32_t> ref_index;
  // Selective hits: the mean of layer0_deviation, which the fallback guard compares with
  // ReuseConfig::fallback_deviation. fallback: the guard judged the match poor and the prefill
  // went on as a full one (hit = false, reused_tokens = 0, every row kept); the server counts it
  // as a miss. A kHybridSelective plan's fallback computes the remainder in full after its
  // copied rows instead (hit stays true, reused_tokens = copied_rows, every row kept).
  float guard_deviation = 0.0f;
  bool fallback = false;
  // Hits: the plan that ran (ReusePlan::kind) and the rows it copied exactly from the
  // reference (kCopyPrefix, kHybridSelective), included in reused_tokens.
  ReuseKind plan = ReuseKind::kNone;
  int64_t copied_rows = 0;
  double match_ms = 0;    // sketch + token matching
  double prefill_ms = 0;  // everything, match included
};

// The row counts of a prefill that copied the first `rows` of its n rows from a reference and
// computed the rest at every layer, keeping all n (prefix baseline and exact reuse, CPU and
// CUDA sessions alike).
void SetPrefixCopyStats(int64_t n, int64_t rows, int64_t n_layers, PrefillStats* st);

// InvalidArgument unless `match` covers the n prompt tokens and names only reference rows
// below m.
absl::Status CheckMatch(const TokenMatch& match, int64_t n, int64_t m);
// InvalidArgument unless `plan` is a hit's (a kind other than kNone) for n prompt tokens
// against a reference of m rows: rows it copies and rearranged rows it names below m, the last
// token left to compute, its config valid.
absl::Status CheckPlan(const ReusePlan& plan, int64_t n, int64_t m);
// InvalidArgument unless ref_kv is shaped [n_layers, kv_dim] and every layer holds one row per
// reference token (an untrimmed reference, as MakeReference and a published miss make it).
absl::Status CheckReference(std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                            int64_t n_layers, int64_t kv_dim);

class ReusePrefiller {
 public:
  // Borrows model and backend. Not thread-safe (scratch buffers), one per worker.
  ReusePrefiller(const Model& model, Backend& backend, const ReuseConfig& config);

  // Full prefill of ids at positions 0..m-1 into a Reference (its sketch included).
  absl::StatusOr<Reference> MakeReference(std::span<const int32_t> ids);

  // Prefills ids at positions 0..n-1 into `cache` (which must be empty and shaped for the
  // model) in config.mode, using `reference` when the mode reuses one and it is given (null or
  // a miss falls back to full prefill, plus retention for semshare/snapkv). Writes the last
  // token's logits to logits[vocab].
  absl::StatusOr<PrefillStats> Prefill(std::span<const int32_t> ids, const Reference* reference,
                                       KvCache* cache, float* logits);

  // A semshare hit whose match the caller computed and judged (e.g. the server, which ranks
  // store candidates and applies a per-request threshold): against the reference's ids and KV
  // (read in place: a store record's, never copied) with `match` (from Match(Sketch(ids),
  // Sketch(ref_ids))), exact reuse when it applies, else selective prefill and retention.
  // Stats as Prefill's (hit = true, similarity = match.similarity, match_ms = 0).
  absl::StatusOr<PrefillStats> PrefillHit(std::span<const int32_t> ids,
                                          std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                                          const TokenMatch& match, KvCache* cache, float* logits);

  // The same with the plan made already (the serving pipeline makes it once per hit, from its
  // match or its exact prefix, and the engine loop carries it here): `plan` (its config
  // included, which governs the schedule) executed against the reference, checked by
  // CheckPlan. Stats as PrefillHit's, similarity = the plan's remainder_similarity (1 for a
  // prefix copy) and no ref_index.
  absl::StatusOr<PrefillStats> PrefillPlan(std::span<const int32_t> ids,
                                           std::span<const int32_t> ref_ids, const KvCache& ref_kv,
                                           const ReusePlan& plan, KvCache* cache, float* logits);

  // The sketch/match step alone (what a lookup pays), for ranking candidates.
  TokenSketch Sketch(std::span<const int32_t> ids) const { return matcher_.Sketch(ids); }
  TokenMatch Match(const TokenSketch& target, const TokenSketch& reference) const {
    return matcher_.Match(target, reference);
  }

  const ReuseConfig& config() const { return config_; }
  LlamaForward& forward() { return forward_; }

 private:
  // InvalidArgument unless ids are in the vocabulary, non-empty, and the cache empty and shaped.
  absl::Status CheckPrefillArgs(std::span<const int32_t> ids, const KvCache& cache) const;
  void FinishStats(const KvCache& cache, PrefillStats* st) const;
  // Copies the first `rows` rows of `ref_kv` (checked by CheckReference) into the empty
  // `cache` and computes the rest of ids at positions rows..n-1 (prefix mode, exact reuse).
  absl::Status PrefixPrefill(std::span<const int32_t> ids, const KvCache& ref_kv, int64_t rows,
                             KvCache* cache, float* logits, PrefillStats* st);
  // A hit's plan (arguments checked) executed: kCopyPrefix by PrefixPrefill, a rearranging
  // kind by SelectivePrefill.
  absl::Status RunPlan(std::span<const int32_t> ids, const ReusePlan& plan, const KvCache& ref_kv,
                       KvCache* cache, float* logits, PrefillStats* st);

  // snapkv and semshare: layer-by-layer prefill of the tokens `plan` computes (kNone: all of
  // them, no reference; a rearranging kind: a shrinking set, with ref_kv), attending over the
  // mixed KV; retention per layer as the plan says.
  absl::Status SelectivePrefill(std::span<const int32_t> ids, const ReusePlan& plan,
                                const KvCache* ref_kv, KvCache* cache, float* logits,
                                PrefillStats* stats);

  const Model& model_;
  Backend& backend_;
  ReuseConfig config_;
  TokenMatcher matcher_;
  LlamaForward forward_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_REUSE_PREFILL_H_
