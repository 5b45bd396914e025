// `semshare bench --suite reuse` (issue 3, item 7): KV reuse measured against full, prefix and
// SnapKV-style prefill on (reference, target) prompt pairs (tools/bench_pairs.h).
//
// Per pair: the reference is prefilled and stored first (not timed); then each mode prefills
// the target into a fresh cache and we record TTFT (prefill + picking the first token),
// speedup vs full, KV bytes after prefill and at peak, reused / recomputed tokens, similarity
// and hit. Quality: the greedy continuation from each mode's cache against full's (token-level
// ROUGE-L F1), and the teacher-forced perplexity of full's continuation under each mode's
// cache, as a ratio to full's own. Two ablations of the paper: the L2 deviation of the
// rearranged KV from the true KV with and without RoPE in the E-cache (rearranged here from the
// token match, the stored reference KV and the true target KV, exactly as DESIGN.md 4.4 defines
// it), and perplexity vs retention ratio rho for the constant / increasing / exponential
// schedules (snapkv and semshare). Output: a markdown table (medians over pairs), --json with
// every per-pair record, and --plots DIR (bench/plot_reuse.py run on the JSON).
//
// Beside the four modes, each pair is served as the server would serve it (issue 15, mode
// "served" in the records; tools/bench_reuse_hits.h): the reference is held in a real store, the
// target looked up with serving::HitRule (exact prefix first, the semantic index when the rule
// asks), classified exact / hybrid / semantic / miss, and prefilled through the CPU batch runner
// as the engine loop does (prefix rows copied, the rest in chunks; or the selective path). Its
// TTFT counts the lookup. Quality: the largest logit difference from full's prefill (relative to
// full's largest |logit|) and the perplexity ratio, as for the modes. Chat pairs' references are
// whole turns: the previous turn's prompt answered greedily by the model, prompt + answer stored.
//
// Timings are wall-clock on whatever else the machine is doing; --repeats takes the median.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/sampling.h"
#include "nlohmann/json.hpp"
#include "tools/bench_pairs.h"
#include "tools/bench_reuse_hits.h"
#include "tools/bench_reuse_report.h"
#include "tools/cli_args.h"
#include "tools/commands.h"
#include "tools/rouge.h"

extern char** environ;

namespace semshare::tools {
namespace {

namespace fs = std::filesystem;
using engine::KvCache;
using engine::PrefillMode;
using engine::ReuseConfig;
using engine::ReusePrefiller;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr PrefillMode kModes[] = {PrefillMode::kFull, PrefillMode::kPrefix, PrefillMode::kSnapKv,
                                  PrefillMode::kSemShare};

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// -log softmax(logits)[id], in double (the vocabulary is ~50k wide).
double Nll(std::span<const float> logits, int32_t id) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
  return std::log(sum) - static_cast<double>(logits[id] - mx);
}

struct Options {
  std::vector<int64_t> lengths;
  int64_t pairs_per_kind = 0, decode_tokens = 0, repeats = 1, ablation_pairs = 0;
  int64_t ablation_length = 0;
  std::vector<double> rhos;
  uint64_t seed = 1;
  std::string data, pairs_file, json, plots;
  ReuseConfig base;
  int32_t served_min_reuse_tokens = 0;  // the served path's semantic gate (the server's flag)
};

// Repo root: $SEMSHARE_SOURCE_DIR, the working directory, or two levels above the binary
// (build-*/tools/semshare), whichever holds bench/plot_reuse.py.
fs::path RepoRoot() {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("SEMSHARE_SOURCE_DIR")) candidates.emplace_back(env);
  candidates.push_back(fs::current_path());
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.parent_path().parent_path().parent_path());
  for (const fs::path& c : candidates) {
    if (fs::exists(c / "bench" / "plot_reuse.py", ec)) return c;
  }
  return fs::current_path();
}

// Runs argv (no shell), returns its exit status (127 when it cannot start).
int Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return 127;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// One mode's prefill of one target, and its quality figures.
struct ModeResult {
  engine::PrefillStats stats;
  double ttft_ms = 0;
  std::vector<int32_t> continuation;  // greedy, decode_tokens long
  double nll_of_full = 0;             // teacher-forced NLL of full's continuation (sum)
};

class PairRunner {
 public:
  PairRunner(const engine::Model& model, engine::Backend& backend, const Options& o)
      : model_(model), backend_(backend), o_(o), logits_(model.config.vocab_size) {}

  absl::StatusOr<ReusePrefiller*> Prefiller(const ReuseConfig& c) {
    const std::string key = ConfigKey(c);
    auto it = prefillers_.find(key);
    if (it != prefillers_.end()) return it->second.get();
    if (auto s = c.Validate(); !s.ok()) return s;
    auto p = std::make_unique<ReusePrefiller>(model_, backend_, c);
    return (prefillers_[key] = std::move(p)).get();
  }

  // Prefill (median TTFT over repeats; the last cache is kept) in `cache`, logits_ hold the
  // last token's logits afterwards.
  absl::StatusOr<ModeResult> Prefill(ReusePrefiller& p, std::span<const int32_t> ids,
                                     const engine::Reference* ref, KvCache* cache) {
    ModeResult r;
    std::vector<double> ttft;
    for (int64_t rep = 0; rep < o_.repeats; ++rep) {
      *cache = p.forward().NewCache();
      const auto t0 = Clock::now();
      auto stats = p.Prefill(ids, ref, cache, logits_.data());
      if (!stats.ok()) return stats.status();
      r.continuation.assign(1, engine::Argmax(logits_));  // the sampling step of TTFT
      ttft.push_back(Ms(t0));
      r.stats = *std::move(stats);
    }
    r.ttft_ms = Median(ttft);
    return r;
  }

  // Greedy continuation from `cache` (logits_ hold the prefill's logits, continuation[0] is
  // chosen). Returns the NLL of the chosen tokens (full's own perplexity).
  absl::StatusOr<double> Greedy(ReusePrefiller& p, KvCache& cache, std::vector<int32_t>& out) {
    double nll = Nll(logits_, out[0]);
    while (static_cast<int64_t>(out.size()) < o_.decode_tokens) {
      const int32_t id = out.back(), pos = cache.next_position();
      if (auto s = p.forward().Forward({&id, 1}, {&pos, 1}, cache, logits_.data()); !s.ok())
        return s;
      out.push_back(engine::Argmax(logits_));
      nll += Nll(logits_, out.back());
    }
    return nll;
  }

  // Greedy continuation (into `out`, whose first token is chosen) and the teacher-forced NLL
  // of `full` (full's continuation), from one prefilled `cache` whose prefill logits are
  // `first`. While the greedy tokens equal full's, both walks feed the same tokens, so they
  // share one cache; at the first difference the cache is copied and they go on apart. Saves
  // up to half the decode steps (each reads every weight: the bench's main cost).
  absl::StatusOr<double> GreedyAndForced(ReusePrefiller& p, KvCache& cache,
                                         std::span<const float> first,
                                         std::span<const int32_t> full, std::vector<int32_t>& out) {
    double nll = Nll(first, full[0]);
    KvCache forced;
    bool apart = out[0] != full[0];
    if (apart) forced = cache.Copy();
    auto step = [&](KvCache& c, int32_t id) {
      const int32_t pos = c.next_position();
      return p.forward().Forward({&id, 1}, {&pos, 1}, c, logits_.data());
    };
    for (size_t t = 1; t < full.size(); ++t) {
      if (auto s = step(cache, out[t - 1]); !s.ok()) return s;
      out.push_back(engine::Argmax(logits_));
      if (!apart) {
        nll += Nll(logits_, full[t]);  // same state as the forced walk
        if (out[t] != full[t]) {
          apart = true;
          forced = cache.Copy();
          // `forced` already holds token t-1; the forced walk's next input is full[t].
        }
        continue;
      }
      if (auto s = step(forced, full[t - 1]); !s.ok()) return s;
      nll += Nll(logits_, full[t]);
    }
    return nll;
  }

  // Teacher-forced NLL of `tokens` from `cache`, whose prefill logits are `first_logits`.
  absl::StatusOr<double> TeacherForced(ReusePrefiller& p, KvCache& cache,
                                       std::span<const float> first_logits,
                                       std::span<const int32_t> tokens) {
    double nll = Nll(first_logits, tokens[0]);
    for (size_t t = 1; t < tokens.size(); ++t) {
      const int32_t id = tokens[t - 1], pos = cache.next_position();
      if (auto s = p.forward().Forward({&id, 1}, {&pos, 1}, cache, logits_.data()); !s.ok())
        return s;
      nll += Nll(logits_, tokens[t]);
    }
    return nll;
  }

  std::vector<float>& logits() { return logits_; }

 private:
  static std::string ConfigKey(const ReuseConfig& c) {
    return absl::StrCat(engine::PrefillModeName(c.mode), "/", c.ecache_rope, "/",
                        engine::RetentionScheduleName(c.retention), "/", c.retention_rho);
  }

  const engine::Model& model_;
  engine::Backend& backend_;
  const Options& o_;
  std::vector<float> logits_;  // [vocab]
  std::map<std::string, std::unique_ptr<ReusePrefiller>> prefillers_;
};

// Ablation 1: the rearranged KV (DESIGN.md 4.4: K~ = Rot(i - pi(i)) K_R[pi(i)], V~ = V_R[pi(i)])
// from the E-cache match with or without RoPE, against the true KV of the target (`truth`,
// full prefill). Deviation per matched token and layer: ||K - K~||_2 + ||V - V~||_2.
Json KvDeviation(ReusePrefiller& p, const engine::Reference& ref, std::span<const int32_t> ids,
                 const KvCache& truth) {
  engine::TokenMatch match = p.Match(p.Sketch(ids), p.Sketch(ref.ids));
  engine::AlignExactRuns(ids, ref.ids, p.config().exact_run_tokens, &match);  // as PlanReuse
  const int64_t n = static_cast<int64_t>(ids.size()), kv_dim = truth.kv_dim();
  const auto& attn = p.forward().attention();
  std::vector<int32_t> rows, delta;
  double abs_shift = 0;
  int64_t to_first8 = 0, same_token = 0, same_context = 0;
  std::vector<uint8_t> ctx;  // per matched row: its token and the previous one equal the ref's
  for (int64_t i = 0; i < n; ++i) {
    if (match.ref_index[i] < 0) continue;
    const int32_t r = match.ref_index[i];
    const bool same = ids[i] == ref.ids[r];
    const bool c = same && i > 0 && r > 0 && ids[i - 1] == ref.ids[r - 1];
    same_token += same;
    same_context += c;
    ctx.push_back(c);
    rows.push_back(static_cast<int32_t>(i));
    delta.push_back(static_cast<int32_t>(i - match.ref_index[i]));
    abs_shift += std::abs(delta.back());
    to_first8 += match.ref_index[i] < 8;
  }
  const int64_t k_rows = static_cast<int64_t>(rows.size());
  std::vector<double> per_layer(truth.n_layers(), 0.0);
  double dev_ctx = 0, dev_noctx = 0;
  std::vector<float> k(k_rows * kv_dim);
  for (int64_t l = 0; l < truth.n_layers() && k_rows > 0; ++l) {
    const engine::LayerKv& t = truth.layer(l);
    const engine::LayerKv& r = ref.kv.layer(l);
    for (int64_t j = 0; j < k_rows; ++j) {
      const float* src = &r.k[static_cast<int64_t>(match.ref_index[rows[j]]) * kv_dim];
      std::copy(src, src + kv_dim, &k[j * kv_dim]);
    }
    p.forward().backend().Rope(k.data(), delta.data(), k_rows, attn.n_kv_heads, attn.head_dim,
                               p.forward().rope());
    double sum = 0;
    for (int64_t j = 0; j < k_rows; ++j) {
      const int64_t i = rows[j], pi = match.ref_index[i];
      double dk = 0, dv = 0;
      for (int64_t c = 0; c < kv_dim; ++c) {
        const double a = t.k[i * kv_dim + c] - k[j * kv_dim + c];
        const double b = t.v[i * kv_dim + c] - r.v[pi * kv_dim + c];
        dk += a * a;
        dv += b * b;
      }
      sum += std::sqrt(dk) + std::sqrt(dv);
      (ctx[j] ? dev_ctx : dev_noctx) += std::sqrt(dk) + std::sqrt(dv);
    }
    per_layer[l] = sum / k_rows;
  }
  double mean = 0;
  for (double d : per_layer) mean += d;
  mean /= std::max<size_t>(per_layer.size(), 1);
  return {{"ecache_rope", p.config().ecache_rope},
          {"similarity", match.similarity},
          {"matched_fraction", static_cast<double>(match.matched) / std::max<int64_t>(n, 1)},
          {"mean_abs_shift", k_rows ? abs_shift / k_rows : 0.0},
          {"fraction_mapped_to_first_8", k_rows ? static_cast<double>(to_first8) / k_rows : 0.0},
          {"same_token_fraction", k_rows ? static_cast<double>(same_token) / k_rows : 0.0},
          {"same_context_fraction", k_rows ? static_cast<double>(same_context) / k_rows : 0.0},
          {"deviation_mean_same_context",
           same_context ? dev_ctx / same_context / truth.n_layers() : 0.0},
          {"deviation_mean_other",
           k_rows - same_context ? dev_noctx / (k_rows - same_context) / truth.n_layers() : 0.0},
          {"deviation_mean", mean},
          {"deviation_layer0", per_layer.empty() ? 0.0 : per_layer[0]},
          {"deviation_per_layer", per_layer}};
}

// max |a - b| over max |b| (floored at 1e-6): how far a path's logits are from full's, on the
// scale of full's largest logit (tests/test_util.h MaxRelDiff, kGemmOrderRelBound).
double MaxRelDiff(std::span<const float> a, std::span<const float> b) {
  double scale = 1e-6, worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return a.size() == b.size() ? worst / scale : 1e30;
}

// Prompt ids as the server would see them (BOS when the model asks for it).
std::vector<int32_t> Encode(const engine::Model& model, const std::string& text) {
  std::vector<int32_t> ids;
  if (model.tokenizer->add_bos() && model.tokenizer->bos_id() >= 0)
    ids.push_back(model.tokenizer->bos_id());
  const auto body = model.tokenizer->Encode(text, /*parse_special=*/false);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

ReuseConfig WithMode(ReuseConfig c, PrefillMode m) {
  c.mode = m;
  return c;
}

// A chat pair's reference turn as the server stores it, and the next turn's prompt: the
// reference turn's prompt is prefilled and answered greedily (decode_tokens at most, stopping at
// the end of generation); the record holds the prompt and the answer tokens fed back (the last
// one sampled never is), the target is the conversation with the answer's text and the next
// question (what a client sends back).
absl::Status ChatTurn(PairRunner& runner, engine::Generator& generator, const Options& o,
                      const PromptPair& pair, engine::Reference* ref, std::vector<int32_t>* ids) {
  absl::StatusOr<std::vector<int32_t>> prompt = generator.TokenizeChat(pair.reference_messages);
  if (!prompt.ok()) return prompt.status();
  auto full = runner.Prefiller(WithMode(o.base, PrefillMode::kFull));
  if (!full.ok()) return full.status();
  KvCache cache = (*full)->forward().NewCache();
  if (auto st = (*full)->Prefill(*prompt, nullptr, &cache, runner.logits().data()); !st.ok())
    return st.status();
  engine::GenerateOptions go;
  go.max_tokens = static_cast<int32_t>(o.decode_tokens);
  const int64_t n = static_cast<int64_t>(prompt->size());
  absl::StatusOr<engine::GenerateResult> answer = generator.Decode(n, cache, runner.logits(), go);
  if (!answer.ok()) return answer.status();
  const int64_t fed = cache.rows() - n;
  if (fed < 0 || fed > static_cast<int64_t>(answer->tokens.size())) {
    return absl::InternalError("the answer's KV rows do not match its tokens");
  }
  ref->ids = *std::move(prompt);
  ref->ids.insert(ref->ids.end(), answer->tokens.begin(), answer->tokens.begin() + fed);
  ref->kv = std::move(cache);
  auto maker = runner.Prefiller(WithMode(o.base, PrefillMode::kSemShare));
  if (!maker.ok()) return maker.status();
  ref->sketch = (*maker)->Sketch(ref->ids);
  absl::StatusOr<std::vector<int32_t>> target =
      generator.TokenizeChat(ChatTargetMessages(pair, answer->text));
  if (!target.ok()) return target.status();
  *ids = *std::move(target);
  return absl::OkStatus();
}

// The served path on one pair (see the file comment): its record, mode "served".
absl::StatusOr<Json> RunServed(PairRunner& runner, ServedPath& served, const Options& o,
                               const engine::Reference& ref, std::span<const int32_t> ids,
                               std::span<const float> full_logits, const ModeResult& full,
                               double full_ppl) {
  engine::Reference held;
  held.ids = ref.ids;
  held.kv = ref.kv.Copy();
  held.sketch = ref.sketch;
  if (auto s = served.Hold(std::move(held)); !s.ok()) return s;
  std::vector<float> logits(full_logits.size());
  std::vector<double> ttft;
  ServedDecision d;
  ServedPrefill pre;
  std::vector<int32_t> cont;
  for (int64_t rep = 0; rep < o.repeats; ++rep) {
    pre = ServedPrefill{};
    const auto t0 = Clock::now();
    absl::StatusOr<ServedDecision> dec = served.Decide(ids);
    if (!dec.ok()) return dec.status();
    d = *std::move(dec);
    absl::StatusOr<ServedPrefill> p = served.Prefill(d, ids, logits.data());
    if (!p.ok()) return p.status();
    pre = *std::move(p);
    cont.assign(1, engine::Argmax(logits));  // the sampling step of TTFT
    ttft.push_back(Ms(t0));
  }
  const double ttft_ms = Median(ttft);
  auto fwd = runner.Prefiller(WithMode(o.base, PrefillMode::kFull));
  if (!fwd.ok()) return fwd.status();
  auto nll = runner.GreedyAndForced(**fwd, pre.kv, logits, full.continuation, cont);
  if (!nll.ok()) return nll.status();
  const int64_t n = static_cast<int64_t>(ids.size());
  const double tokens = static_cast<double>(full.continuation.size());
  const double ppl = std::exp(*nll / tokens);
  const engine::PrefillStats& st = pre.stats;
  const bool semantic = d.hit.kind == serving::HitKind::kSemantic;
  return Json{{"mode", "served"},
              {"hit_kind", serving::HitKindName(d.hit.kind)},
              // The engine::ReusePlan that ran (a hybrid's "copy-prefix" or "hybrid-selective").
              {"plan", engine::ReuseKindName(pre.stats.plan)},
              {"copied_rows", pre.stats.copied_rows},
              {"remainder_fallback", pre.stats.fallback},
              {"target_tokens", n},
              {"reference_tokens", static_cast<int64_t>(ref.ids.size())},
              {"prefix_tokens", d.prefix_tokens},
              {"exact_rows", d.hit.exact_rows},
              {"prefix_fraction", static_cast<double>(d.hit.exact_rows) / n},
              {"semantic_lookup", d.semantic_lookup},
              {"candidates", d.candidates},
              // The best semantic candidate's similarity (a miss's too); -1 when none was scored.
              {"semantic_similarity", d.similarity},
              {"lookup_ms", d.lookup_ms},
              {"ttft_ms", ttft_ms},
              {"prefill_ms", pre.prefill_ms},
              {"match_ms", semantic ? st.match_ms : 0.0},
              {"speedup", full.ttft_ms / ttft_ms},
              {"kv_bytes", st.kv_bytes},
              {"kv_bytes_peak", st.kv_bytes_peak},
              {"kv_ratio", static_cast<double>(st.kv_bytes) / full.stats.kv_bytes},
              {"kv_peak_ratio", static_cast<double>(st.kv_bytes_peak) / full.stats.kv_bytes_peak},
              {"reused_tokens", st.reused_tokens},
              {"recomputed_tokens", st.recomputed_tokens},
              {"layer_computed", st.layer_computed},
              {"layer_rows", st.layer_rows},
              {"similarity", semantic ? static_cast<double>(d.similarity)
                                      : static_cast<double>(d.hit.exact_rows) / n},
              {"hit", d.hit.kind != serving::HitKind::kMiss},
              {"max_rel_logit_diff", MaxRelDiff(logits, full_logits)},
              {"rouge_l", RougeLScore(cont, full.continuation).f1},
              {"ppl", ppl},
              {"ppl_ratio", ppl / full_ppl}};
}

// Everything measured on one pair; appends to the records and ablation arrays.
absl::Status RunPair(const engine::Model& model, PairRunner& runner, engine::Generator& generator,
                     ServedPath& served, const Options& o, const PromptPair& pair, Json& records,
                     Json& ablation_ecache, Json& ablation_retention, bool ablate) {
  auto maker = runner.Prefiller(WithMode(o.base, PrefillMode::kSemShare));
  if (!maker.ok()) return maker.status();
  absl::StatusOr<engine::Reference> ref;
  std::vector<int32_t> ids;
  if (pair.kind == PairKind::kChat) {
    ref = engine::Reference{};
    if (auto s = ChatTurn(runner, generator, o, pair, &*ref, &ids); !s.ok()) return s;
  } else {
    ref = (*maker)->MakeReference(Encode(model, pair.reference));
    if (!ref.ok()) return ref.status();
    ids = Encode(model, pair.target);
  }
  const std::vector<int32_t>& ref_ids = ref->ids;

  const int64_t n = static_cast<int64_t>(ids.size());
  std::map<PrefillMode, ModeResult> results;
  KvCache full_cache;
  std::vector<float> full_logits;  // full prefill's last-token logits
  double full_nll = 0;
  for (PrefillMode mode : kModes) {
    auto p = runner.Prefiller(WithMode(o.base, mode));
    if (!p.ok()) return p.status();
    KvCache cache;
    auto r = runner.Prefill(**p, ids, &*ref, &cache);
    if (!r.ok()) return r.status();
    if (mode == PrefillMode::kFull) {
      full_logits = runner.logits();
      auto nll = runner.Greedy(**p, cache, r->continuation);
      if (!nll.ok()) return nll.status();
      full_nll = r->nll_of_full = *nll;
      full_cache = std::move(cache);
    } else {
      const std::vector<float> first = runner.logits();
      auto nll = runner.GreedyAndForced(**p, cache, first, results[PrefillMode::kFull].continuation,
                                        r->continuation);
      if (!nll.ok()) return nll.status();
      r->nll_of_full = *nll;
    }
    results[mode] = *std::move(r);
  }
  const ModeResult& full = results[PrefillMode::kFull];
  const double tokens = static_cast<double>(full.continuation.size());
  const double full_ppl = std::exp(full_nll / tokens);
  for (PrefillMode mode : kModes) {
    const ModeResult& r = results[mode];
    const double ppl = std::exp(r.nll_of_full / tokens);
    records.push_back(
        {{"kind", PairKindName(pair.kind)},
         {"length", pair.length},  // user pairs: 0 (as given; see target_tokens)
         {"pair", pair.index},
         {"mode", engine::PrefillModeName(mode)},
         {"target_tokens", n},
         {"reference_tokens", static_cast<int64_t>(ref_ids.size())},
         {"ttft_ms", r.ttft_ms},
         {"prefill_ms", r.stats.prefill_ms},
         {"match_ms", r.stats.match_ms},
         {"speedup", full.ttft_ms / r.ttft_ms},
         {"kv_bytes", r.stats.kv_bytes},
         {"kv_bytes_peak", r.stats.kv_bytes_peak},
         {"kv_ratio", static_cast<double>(r.stats.kv_bytes) / full.stats.kv_bytes},
         {"kv_peak_ratio", static_cast<double>(r.stats.kv_bytes_peak) / full.stats.kv_bytes_peak},
         {"reused_tokens", r.stats.reused_tokens},
         {"recomputed_tokens", r.stats.recomputed_tokens},
         {"layer_computed", r.stats.layer_computed},
         {"layer_rows", r.stats.layer_rows},
         {"similarity", r.stats.similarity},
         {"hit", r.stats.hit},
         {"fallback", r.stats.fallback},  // the guard judged the match poor (full prefill)
         {"guard_deviation", r.stats.guard_deviation},
         {"rouge_l", RougeLScore(r.continuation, full.continuation).f1},
         {"ppl", ppl},
         {"ppl_ratio", ppl / full_ppl}});
  }
  absl::StatusOr<Json> srv = RunServed(runner, served, o, *ref, ids, full_logits, full, full_ppl);
  if (!srv.ok()) return srv.status();
  Json rec = {{"kind", PairKindName(pair.kind)}, {"length", pair.length}, {"pair", pair.index}};
  rec.update(*srv);
  records.push_back(std::move(rec));
  if (!ablate) return absl::OkStatus();

  // Ablation 1: E-cache with and without RoPE.
  for (bool rope : {true, false}) {
    ReuseConfig c = WithMode(o.base, PrefillMode::kSemShare);
    c.ecache_rope = rope;
    auto p = runner.Prefiller(c);
    if (!p.ok()) return p.status();
    Json j = KvDeviation(**p, *ref, ids, full_cache);
    j["kind"] = PairKindName(pair.kind);
    j["length"] = pair.length;
    j["pair"] = pair.index;
    ablation_ecache.push_back(std::move(j));
  }
  // Ablation 2: perplexity of full's continuation vs retention ratio and schedule.
  for (PrefillMode mode : {PrefillMode::kSnapKv, PrefillMode::kSemShare}) {
    for (auto sched : {engine::RetentionSchedule::kConstant, engine::RetentionSchedule::kIncreasing,
                       engine::RetentionSchedule::kExponential}) {
      for (double rho : o.rhos) {
        ReuseConfig c = WithMode(o.base, mode);
        c.retention = sched;
        c.retention_rho = static_cast<float>(rho);
        auto p = runner.Prefiller(c);
        if (!p.ok()) return p.status();
        KvCache cache;
        auto r = runner.Prefill(**p, ids, &*ref, &cache);
        if (!r.ok()) return r.status();
        const std::vector<float> first = runner.logits();
        auto nll = runner.TeacherForced(**p, cache, first, full.continuation);
        if (!nll.ok()) return nll.status();
        ablation_retention.push_back(
            {{"kind", PairKindName(pair.kind)},
             {"length", pair.length},
             {"pair", pair.index},
             {"mode", engine::PrefillModeName(mode)},
             {"schedule", engine::RetentionScheduleName(sched)},
             {"rho", rho},
             {"kv_ratio", static_cast<double>(r->stats.kv_bytes) / full.stats.kv_bytes},
             {"ppl_ratio", std::exp(*nll / tokens) / full_ppl}});
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

int BenchReuseCommand(int argc, char** argv) {
  static const std::vector<FlagSpec> specs = {
      {"model",
       "a .gguf file or a Hugging Face model directory (default: $SEMSHARE_MODEL, else the "
       "installed default model)"},
      {"suite", "reuse", false, false, "reuse"},
      {"data",
       "the paraphrase corpus file (MRPC format), or a data dir holding paraphrase/ (default: "
       "data/paraphrase/paraphrase_pairs.txt in the repository)"},
      {"pairs", "JSON lines {\"reference\": ..., \"target\": ...} to use instead of the corpus"},
      {"lengths", "comma-separated target lengths in tokens", false, false, "512,1024,2048,4096"},
      {"kinds", "comma-separated pair kinds: paraphrase, reorder, repeat, chat", false, false,
       "paraphrase,reorder,chat"},
      {"pairs-per-kind", "pairs of each kind per length", false, false, "4"},
      {"decode-tokens", "greedy tokens compared against full's output", false, false, "128"},
      {"repeats", "prefills per mode and pair (median TTFT)", false, false, "1"},
      {"seed", "pair-building seed", false, false, "1"},
      {"ablation-pairs",
       "pairs per kind at --ablation-length (user pairs: the first ones) that also run the "
       "ablations",
       false, false, "2"},
      {"ablation-length", "target length of the ablation pairs (0: none)", false, false, "2048"},
      {"rhos", "retention ratios of the schedule ablation", false, false, "0.3,0.5,0.7,0.9"},
      {"quick",
       "2 pairs per kind at 1k and 2k tokens, 32 decode tokens, ablations on 1 paraphrase pair "
       "at 1k with rhos 0.5,0.9",
       true},
      {"recompute-ratio", "ReuseConfig.recompute_ratio"},
      {"alpha", "ReuseConfig.alpha"},
      {"fallback-deviation", "ReuseConfig.fallback_deviation (0: no fallback guard)"},
      {"threshold", "ReuseConfig.hit_threshold"},
      {"min-reuse-tokens",
       "the served path's semantic gate (serving::HitRule; the server's --min-reuse-tokens "
       "default)",
       false, false, "960"},
      {"hybrid-selective-min-tokens",
       "ReuseConfig.hybrid_selective_min_tokens: a remainder after an exact prefix at least this "
       "long that matches the reference takes the selective path (0: never)"},
      {"recompute-min-tokens",
       "ReuseConfig.recompute_min_tokens: no layer recomputes fewer tokens (0: the paper's "
       "schedule alone)"},
      {"run-start-tokens",
       "ReuseConfig.run_start_tokens: the first N tokens of every run of rearranged rows "
       "recomputed at every layer and never evicted (0: none)"},
      {"retention-min-rows",
       "ReuseConfig.retention_min_rows: retention keeps at least this many rows per layer "
       "(prompts up to it keep every row)"},
      {"exact-run-tokens",
       "ReuseConfig.exact_run_tokens: stretches of at least N tokens shared verbatim with the "
       "reference map onto one occurrence each (AlignExactRuns; 0: the LSH's match as it is)"},
      {"retention", "ReuseConfig.retention: none|exponential|constant|increasing"},
      {"rho", "ReuseConfig.retention_rho"},
      {"gamma", "ReuseConfig.retention_gamma"},
      {"window", "ReuseConfig.window"},
      {"no-ecache-rope", "ReuseConfig.ecache_rope = false", true},
      {"threads", "CPU threads (0 = all cores)", false, false, "0"},
      {"json", "write the summary and every per-pair record to this JSON file"},
      {"plots", "write PNG plots to this directory (runs bench/plot_reuse.py)"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare bench --suite reuse: %.*s\n", static_cast<int>(msg.size()),
                 msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(Args::Help("semshare bench --suite reuse [--quick] [--json F] [--plots DIR]", specs)
                   .c_str(),
               stdout);
    return 0;
  }
  Options o;
  const bool quick = args->Bool("quick");
  auto pick = [&](const char* flag, const char* quick_value) {
    return quick && !args->Has(flag) ? std::string(quick_value) : args->Str(flag);
  };
  for (absl::string_view part : absl::StrSplit(pick("lengths", "1024,2048"), ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 16) return fail("--lengths must be integers >= 16", 2);
    o.lengths.push_back(v);
  }
  for (absl::string_view part : absl::StrSplit(pick("rhos", "0.5,0.9"), ',')) {
    double v = 0;
    if (!absl::SimpleAtod(part, &v) || !(v > 0 && v <= 1))
      return fail("--rhos must be in (0, 1]", 2);
    o.rhos.push_back(v);
  }
  std::vector<PairKind> kinds;
  for (absl::string_view kind : absl::StrSplit(args->Str("kinds"), ',')) {
    if (kind == "paraphrase") {
      kinds.push_back(PairKind::kParaphrase);
    } else if (kind == "reorder") {
      kinds.push_back(PairKind::kReorder);
    } else if (kind == "repeat") {
      kinds.push_back(PairKind::kRepeat);
    } else if (kind == "chat") {
      kinds.push_back(PairKind::kChat);
    } else {
      return fail(absl::StrCat("--kinds: unknown kind '", kind,
                               "' (one of paraphrase, reorder, repeat, chat)"),
                  2);
    }
  }
  struct IntFlag {
    const char* name;
    const char* quick_value;
    int64_t min;
    int64_t* out;
  };
  int64_t seed = 0, threads = 0;
  for (const IntFlag& f :
       std::initializer_list<IntFlag>{{"pairs-per-kind", "2", 1, &o.pairs_per_kind},
                                      {"decode-tokens", "32", 1, &o.decode_tokens},
                                      {"repeats", "1", 1, &o.repeats},
                                      {"seed", "1", 0, &seed},
                                      {"ablation-pairs", "1", 0, &o.ablation_pairs},
                                      {"ablation-length", "1024", 0, &o.ablation_length},
                                      {"threads", "0", 0, &threads}}) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(pick(f.name, f.quick_value), &v) || v < f.min)
      return fail(absl::StrCat("--", f.name, " must be an integer >= ", f.min), 2);
    *f.out = v;
  }
  o.seed = static_cast<uint64_t>(seed);
  ReuseConfig& b = o.base;
  struct FloatFlag {
    const char* name;
    float* out;
  };
  for (const FloatFlag& f :
       {FloatFlag{"recompute-ratio", &b.recompute_ratio}, FloatFlag{"alpha", &b.alpha},
        FloatFlag{"threshold", &b.hit_threshold}, FloatFlag{"rho", &b.retention_rho},
        FloatFlag{"gamma", &b.retention_gamma},
        FloatFlag{"fallback-deviation", &b.fallback_deviation}}) {
    if (!args->Has(f.name)) continue;
    auto v = args->Double(f.name);
    if (!v.ok()) return fail(v.status().message(), 2);
    *f.out = static_cast<float>(*v);
  }
  {
    auto v = args->Int("min-reuse-tokens");
    if (!v.ok() || *v < 0 || *v > (int64_t{1} << 30))
      return fail("--min-reuse-tokens must be an integer >= 0", 2);
    o.served_min_reuse_tokens = static_cast<int32_t>(*v);
  }
  if (args->Has("hybrid-selective-min-tokens")) {
    auto v = args->Int("hybrid-selective-min-tokens");
    if (!v.ok() || *v < 0 || *v > (int64_t{1} << 30))
      return fail("--hybrid-selective-min-tokens must be an integer >= 0", 2);
    b.hybrid_selective_min_tokens = static_cast<int32_t>(*v);
  }
  struct CountFlag {
    const char* name;
    int32_t* out;
  };
  for (const CountFlag& f : {CountFlag{"recompute-min-tokens", &b.recompute_min_tokens},
                             CountFlag{"run-start-tokens", &b.run_start_tokens},
                             CountFlag{"exact-run-tokens", &b.exact_run_tokens},
                             CountFlag{"retention-min-rows", &b.retention_min_rows}}) {
    if (!args->Has(f.name)) continue;
    auto v = args->Int(f.name);
    if (!v.ok() || *v < 0 || *v > (int64_t{1} << 30))
      return fail(absl::StrCat("--", f.name, " must be an integer >= 0"), 2);
    *f.out = static_cast<int32_t>(*v);
  }
  if (args->Has("window")) {
    auto v = args->Int("window");
    if (!v.ok()) return fail(v.status().message(), 2);
    b.window = static_cast<int32_t>(*v);
  }
  if (args->Has("retention")) {
    auto s = engine::ParseRetentionSchedule(args->Str("retention"));
    if (!s.ok()) return fail(s.status().message(), 2);
    b.retention = *s;
  }
  if (args->Bool("no-ecache-rope")) b.ecache_rope = false;
  if (auto s = b.Validate(); !s.ok()) return fail(s.message(), 2);
  o.json = args->Str("json");
  o.plots = args->Str("plots");
  SetThreads(threads);

  // Pairs (before loading the model's weights is wasted on a bad path).
  const fs::path root = RepoRoot();
  std::vector<MrpcPair> corpus;
  std::vector<PromptPair> user_pairs;
  if (args->Has("pairs")) {
    auto p = LoadUserPairs(args->Str("pairs"));
    if (!p.ok()) return fail(p.status().message(), 2);
    user_pairs = *std::move(p);
  } else {
    const std::string data = CorpusPath(args->Str("data"));
    auto c = LoadMrpc(data);
    if (!c.ok()) return fail(absl::StrCat(c.status().message(), " (set --data)"), 2);
    corpus = *std::move(c);
  }
  double load_ms = 0;
  auto model = LoadModelForCli(args->Str("model"), &load_ms);
  if (!model.ok()) return fail(model.status().message(), 1);
  const engine::Model& m = **model;
  std::vector<PromptPair> pairs = std::move(user_pairs);
  if (pairs.empty()) {
    const TokenCounter count = [&](std::string_view t) {
      return static_cast<int64_t>(m.tokenizer->Encode(t, false).size()) +
             (m.tokenizer->add_bos() ? 1 : 0);
    };
    engine::CpuBackend tokenize_backend;
    const engine::Generator tokenizer(m, tokenize_backend);
    const ChatCounter count_chat =
        [&](std::span<const engine::ChatMessage> messages) -> absl::StatusOr<int64_t> {
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer.TokenizeChat(messages);
      if (!ids.ok()) return ids.status();
      return static_cast<int64_t>(ids->size());
    };
    for (int64_t len : o.lengths) {
      PairOptions po;
      po.target_tokens = len;
      po.pairs = o.pairs_per_kind;
      po.seed = o.seed + static_cast<uint64_t>(len);
      for (PairKind kind : kinds) {
        absl::StatusOr<std::vector<PromptPair>> built;
        switch (kind) {
          case PairKind::kParaphrase:
            built = BuildParaphrasePairs(corpus, po, count);
            break;
          case PairKind::kReorder:
            built = BuildReorderPairs(corpus, po, count);
            break;
          case PairKind::kRepeat:
            built = BuildRepeatPairs(corpus, po, count);
            break;
          case PairKind::kChat:
            built = BuildChatPairs(corpus, po, count_chat);
            break;
          case PairKind::kUser:
            break;
        }
        if (!built.ok()) return fail(built.status().message(), 2);
        pairs.insert(pairs.end(), built->begin(), built->end());
      }
    }
  }
  std::fprintf(stderr, "model %s loaded in %.0f ms; %zu pairs\n", m.config.name.c_str(), load_ms,
               pairs.size());

  engine::CpuBackend backend;
  PairRunner runner(m, backend, o);
  engine::Generator generator(m, backend);
  ServedOptions so;
  so.serving.reuse = o.base;
  so.serving.reuse.mode = PrefillMode::kSemShare;
  so.serving.reuse.min_reuse_tokens = o.served_min_reuse_tokens;
  absl::StatusOr<std::unique_ptr<ServedPath>> served = ServedPath::Create(m, so);
  if (!served.ok()) return fail(served.status().message(), 1);
  Json records = Json::array(), ecache = Json::array(), retention = Json::array();
  std::map<std::string, int64_t> ablated;  // kind -> ablation pairs run
  {
    // Warm-up (untimed): the first prefill pays for thread start-up and first-touch page
    // faults, which would otherwise land on the first pair's full-mode TTFT.
    auto p = runner.Prefiller(WithMode(o.base, PrefillMode::kFull));
    if (!p.ok()) return fail(p.status().message(), 2);
    KvCache cache;
    absl::StatusOr<std::vector<int32_t>> warm =
        pairs.front().kind == PairKind::kChat
            ? generator.TokenizeChat(pairs.front().reference_messages)
            : absl::StatusOr<std::vector<int32_t>>(Encode(m, pairs.front().target));
    if (!warm.ok()) return fail(warm.status().message(), 1);
    if (auto r = runner.Prefill(**p, *warm, nullptr, &cache); !r.ok())
      return fail(r.status().message(), 1);
    // The served path's runner too (a miss: chunked full prefill).
    if (auto r = (*served)->Prefill(ServedDecision{}, *warm, runner.logits().data()); !r.ok())
      return fail(r.status().message(), 1);
  }
  const auto t_all = Clock::now();
  for (const PromptPair& pair : pairs) {
    const std::string kind = PairKindName(pair.kind);
    // --quick ablates one paraphrase pair only (the ablations cost ~3x a pair's measurements);
    // chat pairs are not ablated (the ablations study the selective path's matching).
    const bool ablate = ablated[kind] < o.ablation_pairs && pair.kind != PairKind::kChat &&
                        !(quick && pair.kind != PairKind::kParaphrase) &&
                        (pair.kind == PairKind::kUser ||
                         (o.ablation_length > 0 && pair.length == o.ablation_length));
    ablated[kind] += ablate;
    const auto t0 = Clock::now();
    if (auto s =
            RunPair(m, runner, generator, **served, o, pair, records, ecache, retention, ablate);
        !s.ok())
      return fail(absl::StrCat(kind, " pair ", pair.index, " @", pair.length, ": ", s.message()),
                  1);
    std::fprintf(stderr, "  %s pair %lld @%lld tokens%s: %.1f s\n", kind.c_str(),
                 static_cast<long long>(pair.index), static_cast<long long>(pair.length),
                 ablate ? " (+ablations)" : "", Ms(t0) / 1000);
  }
  if (o.ablation_pairs > 0 && ecache.empty()) {
    std::fprintf(stderr, "note: no pair at --ablation-length %lld, so no ablations were run\n",
                 static_cast<long long>(o.ablation_length));
  }
  const Json summary = Summarize(records);
  const Json hit_shares = SummarizeHits(records);
  std::printf("semshare bench --suite reuse: model %s, %zu pairs, %lld decode tokens, %.0f s\n",
              m.config.name.c_str(), pairs.size(), static_cast<long long>(o.decode_tokens),
              Ms(t_all) / 1000);
  PrintTables(summary, ecache, retention);
  PrintHitTable(hit_shares);

  std::string json_path = o.json;
  if (json_path.empty() && !o.plots.empty())
    json_path = (fs::path(o.plots) / "reuse.json").string();
  if (!o.plots.empty()) {
    std::error_code ec;
    fs::create_directories(o.plots, ec);
    if (ec) return fail(absl::StrCat("cannot create ", o.plots, ": ", ec.message()), 2);
  }
  if (!json_path.empty()) {
    const Json j = {{"suite", "reuse"},
                    {"model", m.config.name},
                    {"fingerprint", m.fingerprint},
                    {"threads", threads},
                    {"decode_tokens", o.decode_tokens},
                    {"repeats", o.repeats},
                    {"seed", seed},
                    {"quick", quick},
                    {"config",
                     {{"recompute_ratio", b.recompute_ratio},
                      {"alpha", b.alpha},
                      {"hit_threshold", b.hit_threshold},
                      {"window", b.window},
                      {"sink", b.sink},
                      {"recompute_min_tokens", b.recompute_min_tokens},
                      {"run_start_tokens", b.run_start_tokens},
                      {"exact_run_tokens", b.exact_run_tokens},
                      {"retention_min_rows", b.retention_min_rows},
                      {"ecache_rope", b.ecache_rope},
                      {"retention", engine::RetentionScheduleName(b.retention)},
                      {"retention_rho", b.retention_rho},
                      {"retention_gamma", b.retention_gamma}}},
                    {"served",
                     {{"min_reuse_tokens", so.serving.reuse.min_reuse_tokens},
                      {"hit_threshold", so.serving.reuse.hit_threshold},
                      {"lookup_candidates", so.serving.lookup_candidates},
                      {"chunk", so.chunk}}},
                    {"summary", summary},
                    {"hit_shares", hit_shares},
                    {"records", records},
                    {"ablation_ecache", ecache},
                    {"ablation_retention", retention}};
    std::ofstream out(json_path);
    out << j.dump(2) << "\n";
    if (!out) return fail(absl::StrCat("cannot write ", json_path), 2);
  }
  if (!o.plots.empty()) {
    const char* py_env = std::getenv("SEMSHARE_PYTHON");
    std::string py = py_env ? py_env : (root / ".venv" / "bin" / "python").string();
    std::error_code ec;
    if (!py_env && !fs::exists(py, ec)) py = "python3";
    const int rc =
        Spawn({py, (root / "bench" / "plot_reuse.py").string(), json_path, "--out", o.plots});
    if (rc != 0) return fail(absl::StrCat("plot script failed (exit ", rc, ")"), 1);
  }
  return 0;
}

}  // namespace semshare::tools
