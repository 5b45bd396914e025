// `semshare bench --suite store`: the reference store's performance (issue 4).
//
// 1. Lookup latency (signature + tier query, k = 4) against 10 / 1,000 / 100,000 references in
//    the memory tier, and at the sizes that fit a few minutes in the disk and Redis tiers, for
//    2,048-token prompts. The model is not needed: prompts are synthetic but have the form of
//    PromptFeatures (token ids from a Zipf(1.1) law over a 49,152-token vocabulary, plus 16
//    bands of 8-bit bucket keys per distinct token, the default ReuseConfig LSH shape), so
//    common tokens make unrelated prompts collide as real ones do. Each query is a stored
//    prompt with 20% of its tokens replaced and the rest shuffled; recall@4 says whether the
//    lookup still finds it. References carry no KV here (lookup cost does not depend on it).
// 2. Publish and fetch throughput to Redis on loopback: RedisTier::Put / Get of full-size
//    records (2,048 tokens x 30 layers x kv_dim 192 f32, SmolLM2-135M's shape: ~95 MB, chunk
//    values ~11.8 MB) beside `redis-benchmark -t set,get -d <chunk value size>` against the same
//    server, in the same run. Fetch includes reassembly and full codec verification.
// Redis servers are started here (tests/redis_harness.h) on free loopback ports and killed at
// the end. Results: markdown tables on stdout and --json FILE.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cache_store/codec.h"
#include "cache_store/disk_tier.h"
#include "cache_store/memory_tier.h"
#include "cache_store/prompt_features.h"
#include "cache_store/redis_tier.h"
#include "nlohmann/json.hpp"
#include "tests/redis_harness.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace semshare::tools {
namespace {

using Clock = std::chrono::steady_clock;
using store::Namespace;
using store::Record;
using store::RecordHandle;

constexpr int64_t kVocab = 49152;
constexpr int kBands = 16;
const Namespace kNs{"bench", "synthetic-fingerprint"};

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * v.size())) - 1);
  return v[i];
}

uint64_t Mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class PromptGen {
 public:
  PromptGen() : cdf_(kVocab), perm_(kVocab) {
    double s = 0;
    for (int64_t r = 0; r < kVocab; ++r) cdf_[r] = s += 1.0 / std::pow(r + 1.0, 1.1);
    for (double& c : cdf_) c /= s;
    for (int64_t i = 0; i < kVocab; ++i) perm_[i] = static_cast<int32_t>(i);
    std::shuffle(perm_.begin(), perm_.end(), std::mt19937_64(7));
  }
  std::vector<int32_t> Prompt(uint64_t seed, int64_t n) const {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0, 1);
    std::vector<int32_t> ids(n);
    for (int32_t& t : ids) t = Token(u(rng));
    return ids;
  }
  // 20% of the tokens replaced, then shuffled.
  std::vector<int32_t> Variant(std::vector<int32_t> ids, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0, 1);
    for (int32_t& t : ids) {
      if (u(rng) < 0.2) t = Token(u(rng));
    }
    std::shuffle(ids.begin(), ids.end(), rng);
    return ids;
  }
  // The PromptFeatures form: ids, and per distinct token 16 band keys of 8 bits (a token's
  // keys are a fixed function of it, as SimHash codes of its embedding are).
  static std::vector<uint64_t> Features(const std::vector<int32_t>& ids) {
    std::vector<int32_t> distinct = ids;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    // Emitted in sorted order (ids, then the tagged keys by band and code): no sort needed.
    std::vector<std::array<bool, 256>> seen(kBands);
    for (int32_t t : distinct) {
      const uint64_t h = Mix(static_cast<uint64_t>(t));
      for (int b = 0; b < kBands; ++b) seen[b][(Mix(h + b) >> 56) & 0xff] = true;
    }
    std::vector<uint64_t> f(distinct.begin(), distinct.end());
    for (int b = 0; b < kBands; ++b) {
      for (uint64_t code = 0; code < 256; ++code) {
        if (seen[b][code]) {
          f.push_back(store::kBucketFeatureTag | (static_cast<uint64_t>(b) << 32) | code);
        }
      }
    }
    f.shrink_to_fit();  // records keep it: 100,000 of them
    return f;
  }

 private:
  int32_t Token(double x) const {
    const size_t r = std::lower_bound(cdf_.begin(), cdf_.end(), x) - cdf_.begin();
    return perm_[std::min<size_t>(r, kVocab - 1)];
  }
  std::vector<double> cdf_;
  std::vector<int32_t> perm_;
};

// A reference with no KV (index benchmarks).
RecordHandle IndexRecord(std::vector<int32_t> ids) {
  Record r;
  r.ns = kNs;
  r.features = PromptGen::Features(ids);
  r.ids = std::move(ids);
  r.id = store::RecordId(r.ns, r.ids);
  r.kv = engine::KvCache(1, 1);
  r.created_ms = r.last_used_ms = store::NowUnixMs();
  return std::make_shared<const Record>(std::move(r));
}

// A full-size reference: n tokens, `layers` x kv_dim f32 K and V.
RecordHandle FullRecord(uint64_t seed, int64_t n, int64_t layers, int64_t kv_dim,
                        const PromptGen& gen) {
  Record r;
  r.ns = kNs;
  r.ids = gen.Prompt(seed, n);
  r.features = PromptGen::Features(r.ids);
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

struct LookupResult {
  std::string tier;
  int64_t refs = 0, queries = 0;
  double p50 = 0, p99 = 0, sig_p50 = 0, fill_s = 0, recall = 0;
};

// Fills `tier` with `n` references (in parallel), then times `queries` lookups.
absl::StatusOr<LookupResult> BenchLookup(const std::string& name, store::Tier& tier, int64_t n,
                                         int64_t queries, int64_t tokens, int threads,
                                         const PromptGen& gen, const store::MinHasher& hasher) {
  LookupResult res{name, n, std::min(queries, n)};
  const auto t0 = Clock::now();
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  absl::Status first;
  std::mutex mu;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < n && !failed.load();) {
        absl::Status s = tier.Put(IndexRecord(gen.Prompt(1000 + i, tokens)));
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
  std::vector<double> lat, sig_lat;
  int64_t found = 0;
  for (int64_t q = 0; q < res.queries; ++q) {
    const int64_t target = (q * 7919) % n;  // spread over the stored prompts
    const std::vector<int32_t> original = gen.Prompt(1000 + target, tokens);
    const uint64_t want = store::RecordId(kNs, original);
    const std::vector<uint64_t> f = PromptGen::Features(gen.Variant(original, 99 + q));
    const auto t1 = Clock::now();
    const store::Signature sig = hasher.Compute(f);
    sig_lat.push_back(Ms(t1));
    absl::StatusOr<std::vector<store::Candidate>> c = tier.Lookup(kNs, sig, 4);
    lat.push_back(Ms(t1));
    if (!c.ok()) return c.status();
    for (const store::Candidate& cand : *c) found += cand.id == want;
  }
  res.p50 = Pct(lat, 0.5);
  res.p99 = Pct(lat, 0.99);
  res.sig_p50 = Pct(sig_lat, 0.5);
  res.recall = res.queries ? static_cast<double>(found) / res.queries : 0;
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
      {"suite", "store", false, false, "store"},
      {"quick", "memory 10,1000,100000; disk and Redis 10,1000; 100 queries; 3 full records", true},
      {"memory-sizes", "references in the memory tier", false, false, "10,1000,100000"},
      {"disk-sizes", "references in the disk tier", false, false, "10,1000,10000"},
      {"redis-sizes", "references in the Redis tier", false, false, "10,1000,10000"},
      {"queries", "lookups timed per size", false, false, "300"},
      {"tokens", "prompt length in tokens", false, false, "2048"},
      {"records", "full-size records for the Redis throughput test", false, false, "6"},
      {"layers", "layers of a full-size record", false, false, "30"},
      {"kv-dim", "kv_dim of a full-size record", false, false, "192"},
      {"threads", "threads filling the tiers", false, false, "2"},
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
  std::vector<int64_t> mem_sizes = ParseSizes(args->Str("memory-sizes"));
  std::vector<int64_t> disk_sizes = ParseSizes(quick ? "10,1000" : args->Str("disk-sizes"));
  std::vector<int64_t> redis_sizes = ParseSizes(quick ? "10,1000" : args->Str("redis-sizes"));
  auto queries = args->Int("queries"), tokens = args->Int("tokens"), records = args->Int("records");
  auto layers = args->Int("layers"), kv_dim = args->Int("kv-dim"), threads = args->Int("threads");
  if (mem_sizes.empty() || disk_sizes.empty() || redis_sizes.empty())
    return fail("sizes must be comma-separated positive integers", 2);
  for (auto* v : {&queries, &tokens, &records, &layers, &kv_dim, &threads}) {
    if (!v->ok() || **v < 1) return fail("numeric flags must be positive integers", 2);
  }
  const int64_t n_queries = quick ? 100 : *queries;
  const int64_t n_records = quick ? 3 : *records;
  if (absl::Status s = testing::RequireRedisBinaries(); !s.ok()) return fail(s.message(), 1);

  const PromptGen gen;
  const store::IndexConfig index;
  const store::MinHasher hasher(index);
  nlohmann::json lookups = nlohmann::json::array();
  std::vector<LookupResult> rows;
  auto run = [&](const std::string& name, store::Tier& tier, int64_t n) -> bool {
    std::fprintf(stderr, "[store bench] %s: %lld references...\n", name.c_str(),
                 static_cast<long long>(n));
    absl::StatusOr<LookupResult> r =
        BenchLookup(name, tier, n, n_queries, *tokens, static_cast<int>(*threads), gen, hasher);
    if (!r.ok()) {
      std::fprintf(stderr, "%s at %lld: %s\n", name.c_str(), static_cast<long long>(n),
                   std::string(r.status().message()).c_str());
      return false;
    }
    rows.push_back(*r);
    lookups.push_back({{"tier", r->tier},
                       {"references", r->refs},
                       {"queries", r->queries},
                       {"lookup_p50_ms", r->p50},
                       {"lookup_p99_ms", r->p99},
                       {"signature_p50_ms", r->sig_p50},
                       {"fill_seconds", r->fill_s},
                       {"recall_at_4", r->recall}});
    return true;
  };
  for (int64_t n : mem_sizes) {
    auto mem = store::MemoryTier::Create({0, int64_t{64} << 30, index});
    if (!mem.ok()) return fail(mem.status().message(), 1);
    if (!run("memory", **mem, n)) return 1;
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
    std::filesystem::remove_all(tmpl, ec);
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
    (void)(*tier)->Clear();
  }

  // Throughput: full-size records.
  std::fprintf(stderr, "[store bench] redis throughput: %lld records...\n",
               static_cast<long long>(n_records));
  ro.key_prefix = "throughput";
  auto tier = store::RedisTier::Create(ro);
  if (!tier.ok()) return fail(tier.status().message(), 1);
  double put_ms = 0, get_ms = 0;
  int64_t bytes = 0, chunk_bytes = 0;
  for (int64_t i = 0; i < n_records; ++i) {
    RecordHandle rec = FullRecord(77 + i, *tokens, *layers, *kv_dim, gen);
    const int64_t enc = static_cast<int64_t>(store::EncodeRecord(*rec)->size());
    auto t0 = Clock::now();
    if (absl::Status s = (*tier)->Put(rec); !s.ok()) return fail(s.message(), 1);
    put_ms += Ms(t0);
    const uint64_t id = rec->id;
    rec.reset();
    t0 = Clock::now();
    absl::StatusOr<RecordHandle> got = (*tier)->Get(id);
    get_ms += Ms(t0);
    if (!got.ok()) return fail(got.status().message(), 1);
    bytes += enc;
    auto len = (*server)->Command({"STRLEN", (*tier)->ChunkKey(id, 0)});
    if (len.ok()) chunk_bytes = std::stoll(*len);
  }
  (void)(*tier)->Clear();
  const double mb = bytes / 1e6;
  const double put_mbs = mb / (put_ms / 1000), get_mbs = mb / (get_ms / 1000);
  const int64_t bench_n = std::max<int64_t>(20, 4 * n_records * ((*tokens + 255) / 256));
  auto rb = RedisBenchmark((*server)->port(), chunk_bytes, bench_n);
  if (!rb.ok()) return fail(rb.status().message(), 1);
  const double set_mbs = rb->first * chunk_bytes / 1e6, get_rb_mbs = rb->second * chunk_bytes / 1e6;

  std::printf("\n### Prompt lookup (%lld-token prompts, k = 4; signature + tier query)\n\n",
              static_cast<long long>(*tokens));
  std::printf(
      "| tier | references | queries | p50 ms | p99 ms | signature p50 ms | recall@4 | fill s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const LookupResult& r : rows) {
    std::printf("| %s | %lld | %lld | %.3f | %.3f | %.3f | %.2f | %.1f |\n", r.tier.c_str(),
                static_cast<long long>(r.refs), static_cast<long long>(r.queries), r.p50, r.p99,
                r.sig_p50, r.recall, r.fill_s);
  }
  std::printf(
      "\n### Redis throughput on loopback (records of %lld tokens x %lld layers x kv_dim "
      "%lld f32, %.1f MB each; chunk values %.2f MB)\n\n",
      static_cast<long long>(*tokens), static_cast<long long>(*layers),
      static_cast<long long>(*kv_dim), mb / n_records, chunk_bytes / 1e6);
  std::printf("| operation | MB/s | per op |\n|---|---|---|\n");
  std::printf("| semshare publish (RedisTier::Put) | %.0f | %.1f ms / record |\n", put_mbs,
              put_ms / n_records);
  std::printf("| semshare fetch (RedisTier::Get, verified) | %.0f | %.1f ms / record |\n", get_mbs,
              get_ms / n_records);
  std::printf("| redis-benchmark SET -d %lld -c 1 | %.0f | %.0f req/s |\n",
              static_cast<long long>(chunk_bytes), set_mbs, rb->first);
  std::printf("| redis-benchmark GET -d %lld -c 1 | %.0f | %.0f req/s |\n",
              static_cast<long long>(chunk_bytes), get_rb_mbs, rb->second);
  if (args->Has("json")) {
    nlohmann::json j = {{"suite", "store"},
                        {"quick", quick},
                        {"prompt_tokens", *tokens},
                        {"lookups", lookups},
                        {"redis_throughput",
                         {{"records", n_records},
                          {"record_bytes", bytes / n_records},
                          {"chunk_value_bytes", chunk_bytes},
                          {"publish_mb_per_s", put_mbs},
                          {"fetch_mb_per_s", get_mbs},
                          {"redis_benchmark_set_mb_per_s", set_mbs},
                          {"redis_benchmark_get_mb_per_s", get_rb_mbs},
                          {"redis_benchmark_requests", bench_n}}}};
    std::ofstream(args->Str("json")) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace semshare::tools
