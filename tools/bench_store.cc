// `semshare bench --suite store`: the reference store's performance (issue 4).
//
// 1. Lookup latency against 10 / 1,000 / 100,000 references in each tier (memory, disk, Redis
//    standalone on loopback), k = 4. Prompts are real text: the MRPC sentences
//    (data/paraphrase, or --data) tokenized by the model's tokenizer (only the tokenizer is
//    used). Reference r is a chat instruction, then the first sentences of pairs drawn from a
//    generator seeded by r, then a closing question, cut to --tokens tokens (2,048); its
//    query is the same wrapper around the second sentences (the human paraphrases) of the same
//    pairs in a shuffled order, cut to the same length. So references are distinct passages
//    (two of them share ~1 of their ~75 sentences), and a query shares its reference's topic
//    but few of its word sequences. References carry no KV (the index cost does not depend on
//    it).
//    Timed per query, separately:
//      features  = PromptFeatures(ids): the sorted distinct token ids (tokenizing is not
//                  included: the server has the ids already);
//      lookup    = MinHasher::Compute(features) + Tier::Lookup(ns, signature, 4): what
//                  ReferenceStore::Lookup does for one tier, the "store lookup"
//                  (features are computed before it, so they are not inside it);
//      signature = the MinHasher::Compute part of lookup;
//      lookup CPU = the thread CPU time of lookup (wall time minus preemption: the machine
//                  is shared, and a 2-core box with other builds running preempts for ~4 ms).
//    The query set is timed --repeats times after one fill; the tables give the median over
//    the repeats of each repeat's p50 and p99 (the machine is shared and noisy).
// 2. Publish and fetch throughput to Redis on loopback: RedisTier::Put / Get of full-size
//    records (2,048 tokens x 30 layers x kv_dim 192 f32, SmolLM2-135M's shape: ~95 MB, chunk
//    values ~11.8 MB) beside `redis-benchmark -t set,get -d <chunk value size>` against the same
//    server, in the same run (median of --repeats runs). Fetch includes reassembly and full
//    codec verification. The MB/s figures are medians over the records.
// 3. Exact-prefix lookup latency (issue 15): ReferenceStore::LookupPrefix with the memory tier
//    alone (one shard per hardware thread) holding --prefix-refs records of each
//    --prefix-tokens length (the reference prompts above: all share the chat instruction's first
//    blocks, as a system prompt would); each query is a next turn, a stored record's ids plus
//    64 tokens, so the answer must be that record, all of it. Timed per query: the whole
//    LookupPrefix (chain hashes, every shard's probes, Get, the id comparison) and PrefixChain
//    alone; medians over --repeats of each repeat's p50 and p99.
// Redis servers are started here (tests/redis_harness.h) on free loopback ports and killed at
// the end. Results: markdown tables on stdout and --json FILE.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cache_store/codec.h"
#include "cache_store/disk_tier.h"
#include "cache_store/memory_tier.h"
#include "cache_store/prompt_features.h"
#include "cache_store/redis_tier.h"
#include "cache_store/reference_store.h"
#include "engine/model/model.h"
#include "nlohmann/json.hpp"
#include "tests/redis_harness.h"
#include "tools/bench_pairs.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using store::Namespace;
using store::Record;
using store::RecordHandle;

const Namespace kNs{"bench", "bench-fingerprint"};

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * v.size())) - 1);
  return v[i];
}
// CPU time of the calling thread (ms): unlike wall time, it excludes the time the thread
// waited preempted by other processes on the shared machine.
double ThreadCpuMs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Tokenized MRPC sentences and the wrapper, and the prompts built from them (see the top).
class Corpus {
 public:
  Corpus(const std::vector<MrpcPair>& pairs, const engine::Tokenizer& tok) {
    for (const MrpcPair& p : pairs) {
      first_.push_back(tok.Encode(p.sentence1, false));
      second_.push_back(tok.Encode(p.sentence2, false));
    }
    head_ = tok.Encode(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Summarize the following news sentences in one short paragraph.\n\n",
        true);
    tail_ = tok.Encode("<|im_end|>\n<|im_start|>assistant\n", true);
    newline_ = tok.Encode("\n", false);
  }
  size_t size() const { return first_.size(); }

  // Reference `r` (paraphrase = false) or its query (true), `tokens` long.
  std::vector<int32_t> Prompt(uint64_t r, int64_t tokens, bool paraphrase) const {
    const int64_t body_len = std::max<int64_t>(
        0, tokens - static_cast<int64_t>(head_.size()) - static_cast<int64_t>(tail_.size()));
    std::mt19937_64 rng(0x5eed0000 + r);
    std::vector<size_t> order;  // the reference's pairs, then spares for a short query
    int64_t len = 0;
    while (len < body_len) {
      order.push_back(rng() % first_.size());
      len += static_cast<int64_t>(first_[order.back()].size() + newline_.size());
    }
    std::vector<int32_t> ids = head_;
    if (paraphrase) {
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
    }
    const auto& side = paraphrase ? second_ : first_;
    for (size_t i = 0; static_cast<int64_t>(ids.size() - head_.size()) < body_len; ++i) {
      if (i == order.size()) order.push_back(rng() % first_.size());
      ids.insert(ids.end(), side[order[i]].begin(), side[order[i]].end());
      ids.insert(ids.end(), newline_.begin(), newline_.end());
    }
    ids.resize(head_.size() + body_len);
    ids.insert(ids.end(), tail_.begin(), tail_.end());
    return ids;
  }

 private:
  std::vector<std::vector<int32_t>> first_, second_;
  std::vector<int32_t> head_, tail_, newline_;
};

// A reference with no KV (index benchmarks).
RecordHandle IndexRecord(std::vector<int32_t> ids) {
  Record r;
  r.ns = kNs;
  r.features = store::PromptFeatures(ids);
  r.ids = std::move(ids);
  r.id = store::RecordId(r.ns, r.ids);
  r.kv = engine::KvCache(1, 1);
  r.created_ms = r.last_used_ms = store::NowUnixMs();
  return std::make_shared<const Record>(std::move(r));
}

// A full-size reference: n tokens, `layers` x kv_dim f32 K and V.
RecordHandle FullRecord(uint64_t seed, int64_t n, int64_t layers, int64_t kv_dim,
                        const Corpus& corpus) {
  Record r;
  r.ns = kNs;
  r.ids = corpus.Prompt(seed, n, false);
  r.features = store::PromptFeatures(r.ids);
  r.id = store::RecordId(r.ns, r.ids);
  r.kv = engine::KvCache(layers, kv_dim);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> d(0, 1);
  for (int64_t l = 0; l < layers; ++l) {
    engine::LayerKv& L = r.kv.layer(l);
    L.pos.resize(n);
    for (int64_t i = 0; i < n; ++i) L.pos[i] = static_cast<int32_t>(i);
    L.k.resize(n * kv_dim);
    L.v.resize(n * kv_dim);
    for (float& x : L.k) x = d(rng);
    for (float& x : L.v) x = d(rng);
  }
  r.created_ms = r.last_used_ms = store::NowUnixMs();
  return std::make_shared<const Record>(std::move(r));
}

struct PrefixResult {
  int64_t tokens = 0, refs = 0, queries = 0, repeats = 0;
  double p50_us = 0, p99_us = 0, chain_p50_us = 0;  // medians over the repeats
  double exact = 0;  // fraction of queries answered with their record and all its tokens
};

// Fills a memory-only store with `refs` records of `tokens` tokens, then times LookupPrefix of
// `queries` next-turn prompts `repeats` times (see the top, item 3).
absl::StatusOr<PrefixResult> BenchPrefix(int64_t tokens, int64_t refs, int64_t queries,
                                         int64_t repeats, const Corpus& corpus) {
  store::StoreOptions o;
  o.memory_byte_budget = int64_t{64} << 30;
  absl::StatusOr<std::unique_ptr<store::ReferenceStore>> st = store::ReferenceStore::Open(o);
  if (!st.ok()) return st.status();
  for (int64_t i = 0; i < refs; ++i) {
    RecordHandle r = IndexRecord(corpus.Prompt(i, tokens, false));
    if (!(*st)->Publish(r)) {  // queue full: wait for the writer
      (*st)->Flush();
      if (!(*st)->Publish(std::move(r))) return absl::InternalError("publish refused");
    }
  }
  (*st)->Flush();
  PrefixResult res{tokens, refs, queries, repeats};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<uint64_t> want;
  for (int64_t q = 0; q < queries; ++q) {
    const int64_t target = (q * 7919) % refs;
    std::vector<int32_t> p = corpus.Prompt(target, tokens, false);
    want.push_back(store::RecordId(kNs, p));
    const std::vector<int32_t> next = corpus.Prompt(refs + q, 64, true);
    p.insert(p.end(), next.begin(), next.end());
    prompts.push_back(std::move(p));
  }
  std::vector<double> p50s, p99s, chain50s;
  int64_t exact = 0;
  for (int64_t rep = 0; rep < repeats; ++rep) {
    std::vector<double> lat, chain_lat;
    for (int64_t q = 0; q < queries; ++q) {
      auto t0 = Clock::now();
      const std::vector<uint64_t> chain = store::PrefixChain(kNs, prompts[q]);
      chain_lat.push_back(Ms(t0) * 1e3);
      t0 = Clock::now();
      absl::StatusOr<store::PrefixMatch> m = (*st)->LookupPrefix(kNs, prompts[q]);
      lat.push_back(Ms(t0) * 1e3);
      if (rep == 0) exact += m.ok() && m->id == want[q] && m->tokens == tokens;
    }
    p50s.push_back(Pct(lat, 0.5));
    p99s.push_back(Pct(lat, 0.99));
    chain50s.push_back(Pct(chain_lat, 0.5));
  }
  res.p50_us = Median(p50s);
  res.p99_us = Median(p99s);
  res.chain_p50_us = Median(chain50s);
  res.exact = queries ? static_cast<double>(exact) / queries : 0;
  return res;
}

struct LookupResult {
  std::string tier;
  int64_t refs = 0, queries = 0, repeats = 0;
  // Medians over the repeats of each repeat's percentile.
  double p50 = 0, p99 = 0, sig_p50 = 0, feat_p50 = 0, feat_p99 = 0;
  double cpu_p50 = 0, cpu_p99 = 0;  // thread CPU time of the lookup
  double fill_s = 0, recall = 0, features = 0;
};

// Fills `tier` with `n` references (in parallel), then times `queries` lookups `repeats` times.
absl::StatusOr<LookupResult> BenchLookup(const std::string& name, store::Tier& tier, int64_t n,
                                         int64_t queries, int64_t repeats, int64_t tokens,
                                         int threads, const Corpus& corpus,
                                         const store::MinHasher& hasher) {
  LookupResult res{name, n, std::min(queries, n), repeats};
  const auto t0 = Clock::now();
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  absl::Status first;
  std::mutex mu;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < n && !failed.load();) {
        absl::Status s = tier.Put(IndexRecord(corpus.Prompt(i, tokens, false)));
        if (!s.ok()) {
          std::lock_guard<std::mutex> l(mu);
          first = s;
          failed = true;
        }
      }
    });
  }
  for (std::thread& t : pool) t.join();
  if (failed) return first;
  res.fill_s = Ms(t0) / 1000;
  // Queries and the ids they should find, built before any timing.
  std::vector<std::vector<int32_t>> query_ids;
  std::vector<uint64_t> want;
  for (int64_t q = 0; q < res.queries; ++q) {
    const int64_t target = (q * 7919) % n;  // spread over the stored prompts
    want.push_back(store::RecordId(kNs, corpus.Prompt(target, tokens, false)));
    query_ids.push_back(corpus.Prompt(target, tokens, true));
  }
  std::vector<double> p50s, p99s, sig50s, feat50s, feat99s, cpu50s, cpu99s;
  int64_t found = 0, nfeatures = 0;
  for (int64_t rep = 0; rep < repeats; ++rep) {
    std::vector<double> lat, sig_lat, feat_lat, cpu_lat;
    for (int64_t q = 0; q < res.queries; ++q) {
      auto t1 = Clock::now();
      const std::vector<uint64_t> f = store::PromptFeatures(query_ids[q]);
      feat_lat.push_back(Ms(t1));
      const double cpu0 = ThreadCpuMs();
      t1 = Clock::now();
      const store::Signature sig = hasher.Compute(f);
      sig_lat.push_back(Ms(t1));
      absl::StatusOr<std::vector<store::Candidate>> c = tier.Lookup(kNs, sig, 4);
      lat.push_back(Ms(t1));
      cpu_lat.push_back(ThreadCpuMs() - cpu0);
      if (!c.ok()) return c.status();
      if (rep == 0) {
        nfeatures += static_cast<int64_t>(f.size());
        for (const store::Candidate& cand : *c) found += cand.id == want[q];
      }
    }
    p50s.push_back(Pct(lat, 0.5));
    p99s.push_back(Pct(lat, 0.99));
    sig50s.push_back(Pct(sig_lat, 0.5));
    feat50s.push_back(Pct(feat_lat, 0.5));
    feat99s.push_back(Pct(feat_lat, 0.99));
    cpu50s.push_back(Pct(cpu_lat, 0.5));
    cpu99s.push_back(Pct(cpu_lat, 0.99));
  }
  res.cpu_p50 = Median(cpu50s);
  res.cpu_p99 = Median(cpu99s);
  res.p50 = Median(p50s);
  res.p99 = Median(p99s);
  res.sig_p50 = Median(sig50s);
  res.feat_p50 = Median(feat50s);
  res.feat_p99 = Median(feat99s);
  res.recall = res.queries ? static_cast<double>(found) / res.queries : 0;
  res.features = res.queries ? static_cast<double>(nfeatures) / res.queries : 0;
  return res;
}

std::vector<int64_t> ParseSizes(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(p, &v) || v < 1) return {};
    out.push_back(v);
  }
  return out;
}

// redis-benchmark's requests/s for SET and GET of `bytes`-byte values (--csv output).
absl::StatusOr<std::pair<double, double>> RedisBenchmark(int port, int64_t bytes, int64_t n) {
  const std::string bin = testing::FindOnPath("redis-benchmark");
  if (bin.empty())
    return absl::FailedPreconditionError("redis-benchmark not found (scripts/setup)");
  int rc = 0;
  const std::string out =
      testing::Shell(absl::StrCat(bin, " -h 127.0.0.1 -p ", port, " -t set,get -d ", bytes, " -n ",
                                  n, " -c 1 --csv"),
                     &rc);
  double set = 0, get = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    if (f.size() < 2) continue;
    for (std::string& x : f) x.erase(std::remove(x.begin(), x.end(), '"'), x.end());
    double v = 0;
    if (!absl::SimpleAtod(f[1], &v)) continue;
    if (f[0] == "SET") set = v;
    if (f[0] == "GET") get = v;
  }
  if (rc != 0 || set <= 0 || get <= 0) {
    return absl::InternalError(absl::StrCat("redis-benchmark failed: ", out));
  }
  return std::make_pair(set, get);
}

}  // namespace

int BenchStoreCommand(int argc, char** argv) {
  static const std::vector<FlagSpec> specs = {
      {"model",
       "a .gguf file or a Hugging Face model directory (default: $SEMSHARE_MODEL, else the "
       "installed default model; tokenizer)"},
      {"data",
       "the paraphrase corpus file (MRPC format), or a data dir holding paraphrase/ (default: "
       "data/paraphrase/paraphrase_pairs.txt in the repository)"},
      {"suite", "store", false, false, "store"},
      {"quick", "every tier at 10,1000; 100 queries; 2 repeats; 3 full records", true},
      {"memory-sizes", "references in the memory tier", false, false, "10,1000,100000"},
      {"disk-sizes", "references in the disk tier", false, false, "10,1000,100000"},
      {"redis-sizes", "references in the Redis tier", false, false, "10,1000,100000"},
      {"queries", "lookups per repeat and size", false, false, "300"},
      {"repeats", "times the query set is timed per size (medians reported)", false, false, "3"},
      {"tokens", "prompt length in tokens", false, false, "2048"},
      {"records", "full-size records for the Redis throughput test", false, false, "6"},
      {"layers", "layers of a full-size record", false, false, "30"},
      {"kv-dim", "kv_dim of a full-size record", false, false, "192"},
      {"threads", "threads filling the tiers", false, false, "2"},
      {"prefix-tokens", "record lengths of the exact-prefix lookup", false, false, "1024,4096"},
      {"prefix-refs", "records in the memory tier for the exact-prefix lookup", false, false,
       "1000"},
      {"json", "write the results to this JSON file"},
      {"help", "show this help", true},
  };
  auto fail = [](absl::string_view msg, int code) {
    std::fprintf(stderr, "semshare bench --suite store: %.*s\n", static_cast<int>(msg.size()),
                 msg.data());
    return code;
  };
  auto args = Args::Parse(specs, argc, argv);
  if (!args.ok()) return fail(args.status().message(), 2);
  if (args->Bool("help")) {
    std::fputs(Args::Help("semshare bench --suite store [--quick] [--json F]", specs).c_str(),
               stdout);
    return 0;
  }
  const bool quick = args->Bool("quick");
  std::vector<int64_t> mem_sizes = ParseSizes(quick ? "10,1000" : args->Str("memory-sizes"));
  std::vector<int64_t> disk_sizes = ParseSizes(quick ? "10,1000" : args->Str("disk-sizes"));
  std::vector<int64_t> redis_sizes = ParseSizes(quick ? "10,1000" : args->Str("redis-sizes"));
  auto queries = args->Int("queries"), tokens = args->Int("tokens"), records = args->Int("records");
  auto layers = args->Int("layers"), kv_dim = args->Int("kv-dim"), threads = args->Int("threads");
  auto repeats = args->Int("repeats");
  if (mem_sizes.empty() || disk_sizes.empty() || redis_sizes.empty())
    return fail("sizes must be comma-separated positive integers", 2);
  for (auto* v : {&queries, &tokens, &records, &layers, &kv_dim, &threads, &repeats}) {
    if (!v->ok() || **v < 1) return fail("numeric flags must be positive integers", 2);
  }
  const int64_t n_queries = quick ? 100 : *queries;
  const int64_t n_records = quick ? 3 : *records;
  const int64_t n_repeats = quick ? 2 : *repeats;
  if (absl::Status s = testing::RequireRedisBinaries(); !s.ok()) return fail(s.message(), 1);
  const std::string data = CorpusPath(args->Str("data"));
  auto mrpc = LoadMrpc(data);
  if (!mrpc.ok()) return fail(absl::StrCat(mrpc.status().message(), " (set --data)"), 2);
  double load_ms = 0;
  auto model = LoadModelForCli(args->Str("model"), &load_ms);
  if (!model.ok()) return fail(model.status().message(), 1);
  const Corpus corpus(*mrpc, *(*model)->tokenizer);
  model->reset();  // only the tokenizer was needed

  const store::IndexConfig index;
  const store::MinHasher hasher(index);
  nlohmann::json lookups = nlohmann::json::array();
  std::vector<LookupResult> rows;
  auto run = [&](const std::string& name, store::Tier& tier, int64_t n) -> bool {
    std::fprintf(stderr, "[store bench] %s: %lld references...\n", name.c_str(),
                 static_cast<long long>(n));
    absl::StatusOr<LookupResult> r = BenchLookup(name, tier, n, n_queries, n_repeats, *tokens,
                                                 static_cast<int>(*threads), corpus, hasher);
    if (!r.ok()) {
      std::fprintf(stderr, "%s at %lld: %s\n", name.c_str(), static_cast<long long>(n),
                   std::string(r.status().message()).c_str());
      return false;
    }
    rows.push_back(*r);
    lookups.push_back({{"tier", r->tier},
                       {"references", r->refs},
                       {"queries", r->queries},
                       {"repeats", r->repeats},
                       {"lookup_p50_ms", r->p50},
                       {"lookup_p99_ms", r->p99},
                       {"lookup_cpu_p50_ms", r->cpu_p50},
                       {"lookup_cpu_p99_ms", r->cpu_p99},
                       {"signature_p50_ms", r->sig_p50},
                       {"features_p50_ms", r->feat_p50},
                       {"features_p99_ms", r->feat_p99},
                       {"features_per_query", r->features},
                       {"fill_seconds", r->fill_s},
                       {"recall_at_4", r->recall}});
    return true;
  };
  for (int64_t n : mem_sizes) {
    auto mem = store::MemoryTier::Create({0, int64_t{64} << 30, index});
    if (!mem.ok()) return fail(mem.status().message(), 1);
    if (!run("memory", **mem, n)) return 1;
  }
  std::vector<PrefixResult> prefix_rows;
  nlohmann::json prefix_json = nlohmann::json::array();
  const std::vector<int64_t> prefix_tokens = ParseSizes(args->Str("prefix-tokens"));
  absl::StatusOr<int64_t> prefix_refs = args->Int("prefix-refs");
  if (prefix_tokens.empty() || !prefix_refs.ok() || *prefix_refs < 1) {
    return fail("--prefix-tokens and --prefix-refs must be positive integers", 2);
  }
  for (int64_t t : prefix_tokens) {
    std::fprintf(stderr, "[store bench] exact prefix: %lld records of %lld tokens...\n",
                 static_cast<long long>(*prefix_refs), static_cast<long long>(t));
    absl::StatusOr<PrefixResult> r = BenchPrefix(t, *prefix_refs, n_queries, n_repeats, corpus);
    if (!r.ok()) return fail(r.status().message(), 1);
    prefix_rows.push_back(*r);
    prefix_json.push_back({{"prompt_tokens", r->tokens},
                           {"records", r->refs},
                           {"queries", r->queries},
                           {"repeats", r->repeats},
                           {"lookup_p50_us", r->p50_us},
                           {"lookup_p99_us", r->p99_us},
                           {"chain_p50_us", r->chain_p50_us},
                           {"exact_hit_rate", r->exact}});
  }
  for (int64_t n : disk_sizes) {
    char tmpl[] = "/tmp/semshare-bench-disk-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return fail("mkdtemp failed", 1);
    bool ok = false;
    {
      auto disk = store::DiskTier::Open({tmpl, int64_t{64} << 30, index});
      ok = disk.ok() && run("disk", **disk, n);
    }
    std::error_code ec;
    fs::remove_all(tmpl, ec);
    if (!ok) return 1;
  }
  auto server = testing::RedisServer::Start(false);
  if (!server.ok()) return fail(server.status().message(), 1);
  // The append-only file (the harness's durability for kill tests) would measure disk fsyncs.
  (void)(*server)->Command({"CONFIG", "SET", "appendonly", "no"});
  store::RedisTierOptions ro;
  ro.client.url = "redis://" + (*server)->addr();
  ro.client.command_timeout_ms = 30000;
  ro.index = index;
  for (int64_t n : redis_sizes) {
    ro.key_prefix = absl::StrCat("lookup", n);
    auto tier = store::RedisTier::Create(ro);
    if (!tier.ok()) return fail(tier.status().message(), 1);
    if (!run("redis", **tier, n)) return 1;
    (void)(*server)->Command({"FLUSHALL"});  // faster than Clear() at 100,000 records
  }

  // Throughput: full-size records.
  std::fprintf(stderr, "[store bench] redis throughput: %lld records...\n",
               static_cast<long long>(n_records));
  ro.key_prefix = "throughput";
  auto tier = store::RedisTier::Create(ro);
  if (!tier.ok()) return fail(tier.status().message(), 1);
  std::vector<double> put_mbs_v, get_mbs_v, put_ms_v, get_ms_v;
  int64_t bytes = 0, chunk_bytes = 0;
  for (int64_t i = 0; i < n_records; ++i) {
    RecordHandle rec = FullRecord(77 + i, *tokens, *layers, *kv_dim, corpus);
    const int64_t enc = static_cast<int64_t>(store::EncodeRecord(*rec)->size());
    auto t0 = Clock::now();
    if (absl::Status s = (*tier)->Put(rec); !s.ok()) return fail(s.message(), 1);
    put_ms_v.push_back(Ms(t0));
    const uint64_t id = rec->id;
    rec.reset();
    t0 = Clock::now();
    absl::StatusOr<RecordHandle> got = (*tier)->Get(id);
    get_ms_v.push_back(Ms(t0));
    if (!got.ok()) return fail(got.status().message(), 1);
    bytes += enc;
    put_mbs_v.push_back(enc / 1e3 / put_ms_v.back());
    get_mbs_v.push_back(enc / 1e3 / get_ms_v.back());
    auto len = (*server)->Command({"STRLEN", (*tier)->ChunkKey(id, 0)});
    if (len.ok()) chunk_bytes = std::stoll(*len);
  }
  (void)(*tier)->Clear();
  const double mb = bytes / 1e6;
  const double put_mbs = Median(put_mbs_v), get_mbs = Median(get_mbs_v);
  const int64_t bench_n = std::max<int64_t>(20, 4 * n_records * ((*tokens + 255) / 256));
  std::vector<double> rb_set, rb_get;
  for (int64_t rep = 0; rep < n_repeats; ++rep) {
    auto rb = RedisBenchmark((*server)->port(), chunk_bytes, bench_n);
    if (!rb.ok()) return fail(rb.status().message(), 1);
    rb_set.push_back(rb->first);
    rb_get.push_back(rb->second);
  }
  const double set_rps = Median(rb_set), get_rps = Median(rb_get);
  const double set_mbs = set_rps * chunk_bytes / 1e6, get_rb_mbs = get_rps * chunk_bytes / 1e6;

  std::printf(
      "\n### Prompt lookup (%lld-token prompts, k = 4; lookup = signature + tier query, "
      "features outside it; medians of %lld repeats)\n\n",
      static_cast<long long>(*tokens), static_cast<long long>(n_repeats));
  std::printf(
      "| tier | references | queries | lookup p50 ms | lookup p99 ms | lookup CPU p50 / p99 ms | "
      "signature p50 ms | features p50 / p99 ms | recall@4 | fill s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const LookupResult& r : rows) {
    std::printf(
        "| %s | %lld | %lld | %.3f | %.3f | %.3f / %.3f | %.3f | %.3f / %.3f | %.2f | %.1f |\n",
        r.tier.c_str(), static_cast<long long>(r.refs), static_cast<long long>(r.queries), r.p50,
        r.p99, r.cpu_p50, r.cpu_p99, r.sig_p50, r.feat_p50, r.feat_p99, r.recall, r.fill_s);
  }
  std::printf(
      "\n### Redis throughput on loopback (records of %lld tokens x %lld layers x kv_dim "
      "%lld f32, %.1f MB each; chunk values %.2f MB; medians)\n\n",
      static_cast<long long>(*tokens), static_cast<long long>(*layers),
      static_cast<long long>(*kv_dim), mb / n_records, chunk_bytes / 1e6);
  std::printf("| operation | MB/s | per op |\n|---|---|---|\n");
  std::printf("| semshare publish (RedisTier::Put) | %.0f | %.1f ms / record |\n", put_mbs,
              Median(put_ms_v));
  std::printf("| semshare fetch (RedisTier::Get, verified) | %.0f | %.1f ms / record |\n", get_mbs,
              Median(get_ms_v));
  std::printf("| redis-benchmark SET -d %lld -c 1 | %.0f | %.0f req/s |\n",
              static_cast<long long>(chunk_bytes), set_mbs, set_rps);
  std::printf("| redis-benchmark GET -d %lld -c 1 | %.0f | %.0f req/s |\n",
              static_cast<long long>(chunk_bytes), get_rb_mbs, get_rps);
  std::printf(
      "\n### Exact-prefix lookup (ReferenceStore::LookupPrefix, memory tier; query = a stored "
      "record + 64 tokens; medians of %lld repeats)\n\n",
      static_cast<long long>(n_repeats));
  std::printf(
      "| record tokens | records | queries | lookup p50 us | lookup p99 us | chain hashes p50 us "
      "| exact hits |\n|---|---|---|---|---|---|---|\n");
  for (const PrefixResult& r : prefix_rows) {
    std::printf("| %lld | %lld | %lld | %.1f | %.1f | %.1f | %.2f |\n",
                static_cast<long long>(r.tokens), static_cast<long long>(r.refs),
                static_cast<long long>(r.queries), r.p50_us, r.p99_us, r.chain_p50_us, r.exact);
  }
  if (args->Has("json")) {
    const std::time_t now = std::time(nullptr);
    char utc[32];
    std::strftime(utc, sizeof(utc), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    nlohmann::json j = {{"suite", "store"},
                        {"date_utc", utc},
                        {"quick", quick},
                        {"prompt_tokens", *tokens},
                        {"corpus", data},
                        {"index",
                         {{"bands", index.bands},
                          {"rows", index.rows},
                          {"max_bucket_visit", index.max_bucket_visit},
                          {"max_scored", index.max_scored}}},
                        {"lookups", lookups},
                        {"redis_throughput",
                         {{"records", n_records},
                          {"record_bytes", bytes / n_records},
                          {"chunk_value_bytes", chunk_bytes},
                          {"publish_mb_per_s_median", put_mbs},
                          {"fetch_mb_per_s_median", get_mbs},
                          {"publish_ms_per_record", put_ms_v},
                          {"fetch_ms_per_record", get_ms_v},
                          {"redis_benchmark_set_mb_per_s_median", set_mbs},
                          {"redis_benchmark_get_mb_per_s_median", get_rb_mbs},
                          {"redis_benchmark_requests", bench_n},
                          {"redis_benchmark_runs", n_repeats}}},
                        {"prefix_lookups", prefix_json}};
    std::ofstream out(args->Str("json"));
    out << j.dump(2) << "\n";
    if (!out) return fail(absl::StrCat("cannot write ", args->Str("json")), 1);
  }
  return 0;
}

}  // namespace semshare::tools
