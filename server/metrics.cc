#include "server/metrics.h"

#include <cmath>
#include <string_view>
#include <vector>

namespace semshare::server {
namespace {

using prometheus::Histogram;

// 1 ms .. 60 s, roughly x2 per bucket (TTFT, durations, prefill).
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,  0.25,
          0.5,   1.0,    2.5,   5.0,  10.0,  20.0, 30.0, 60.0};
}
// 0.1 ms .. 2.5 s (one decode step; queueing).
Histogram::BucketBoundaries StepBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 30.0,  60.0};
}
Histogram::BucketBoundaries SimilarityBuckets() {
  Histogram::BucketBoundaries b;
  for (int i = 1; i <= 20; ++i) b.push_back(i * 0.05);
  return b;
}

}  // namespace

Metrics::Metrics(const std::string& model_name)
    : registry_(std::make_shared<prometheus::Registry>()), model_(model_name) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  prometheus::Registry& r = *registry_;
  const prometheus::Labels m{{"model", model_}};
  auto& ttft = BuildHistogram()
                   .Name("semshare_time_to_first_token_seconds")
                   .Help("Request accepted to first token sampled, queue included")
                   .Register(r);
  auto& prefill = BuildHistogram()
                      .Name("semshare_prefill_seconds")
                      .Help("Prompt through the model (full or selective prefill)")
                      .Register(r);
  for (int i = 0; i < 3; ++i) {
    const char* res = CacheResultName(static_cast<CacheResult>(i));
    ttft_[i] = &ttft.Add({{"model", model_}, {"cache_result", res}}, LatencyBuckets());
    prefill_[i] = &prefill.Add({{"model", model_}, {"cache_result", res}}, LatencyBuckets());
  }
  duration_ = &BuildHistogram()
                   .Name("semshare_request_duration_seconds")
                   .Help("Request accepted to last token")
                   .Register(r)
                   .Add(m, LatencyBuckets());
  queue_ = &BuildHistogram()
                .Name("semshare_request_queue_seconds")
                .Help(
                    "Request accepted to its admission into the engine loop (front queue, "
                    "lookup and the wait for KV budget included)")
                .Register(r)
                .Add(m, StepBuckets());
  inter_token_ = &BuildHistogram()
                      .Name("semshare_inter_token_latency_seconds")
                      .Help("Time between consecutive generated tokens")
                      .Register(r)
                      .Add(m, StepBuckets());
  similarity_ = &BuildHistogram()
                     .Name("semshare_match_similarity")
                     .Help("Token-level similarity of the best reference candidate per lookup")
                     .Register(r)
                     .Add(m, SimilarityBuckets());
  running_ = &BuildGauge()
                  .Name("semshare_requests_running")
                  .Help("Requests admitted into the engine loop (prefilling or decoding)")
                  .Register(r)
                  .Add(m);
  waiting_ = &BuildGauge()
                  .Name("semshare_requests_waiting")
                  .Help(
                      "Requests accepted and not yet admitted into the engine loop (front queue, "
                      "lookup, waiting for KV budget)")
                  .Register(r)
                  .Add(m);
  kv_bytes_ = &BuildGauge()
                   .Name("semshare_kv_cache_bytes")
                   .Help("KV cache bytes held by requests in flight")
                   .Register(r)
                   .Add(m);
  kv_utilization_ = &BuildGauge()
                         .Name("semshare_kv_cache_utilization")
                         .Help(
                             "Share (0..1) of the KV budget (--kv-cache-bytes) that running "
                             "requests hold or have reserved for their prompts")
                         .Register(r)
                         .Add(m);
  batch_rows_ = &BuildHistogram()
                     .Name("semshare_batch_rows")
                     .Help("Rows (decode tokens + prefill chunk tokens) per engine iteration")
                     .Register(r)
                     .Add(m, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                         1024, 2048, 4096, 8192});
  gpu_family_used_ = &BuildGauge()
                          .Name("semshare_gpu_memory_used_bytes")
                          .Help("Device memory the CUDA backend holds (weights, KV, scratch)")
                          .Register(r);
  gpu_family_total_ = &BuildGauge()
                           .Name("semshare_gpu_memory_total_bytes")
                           .Help("Device memory of the GPU the CUDA backend runs on")
                           .Register(r);
  auto counter = [&](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Register(r).Add(m);
  };
  prompt_tokens_ = counter("semshare_prompt_tokens_total", "Prompt tokens processed");
  generation_tokens_ = counter("semshare_generation_tokens_total", "Tokens generated");
  lookups_ = counter("semshare_cache_lookups_total", "Reference store lookups");
  auto& hits = BuildCounter()
                   .Name("semshare_cache_hits_total")
                   .Help(
                       "Lookups whose reference was reused, by kind: exact (an exact prefix of a "
                       "stored turn, copied) or semantic (SemShareKV)")
                   .Register(r);
  hits_exact_ = &hits.Add({{"model", model_}, {"kind", "exact"}});
  hits_semantic_ = &hits.Add({{"model", model_}, {"kind", "semantic"}});
  reused_ = counter("semshare_reused_tokens_total",
                    "Prompt tokens whose deeper-layer KV came from a reference");
  recomputed_ =
      counter("semshare_recomputed_tokens_total", "Prompt tokens computed beyond layer 0");
  preemptions_ = counter("semshare_preemptions_total",
                         "Requests preempted (KV dropped, recomputed later) when the KV budget "
                         "ran out");
  requests_ = &BuildCounter()
                   .Name("semshare_requests_total")
                   .Help("Finished RPCs by method and canonical gRPC status code")
                   .Register(r);
  auto& store_bytes = BuildGauge()
                          .Name("semshare_cache_store_bytes")
                          .Help("Bytes the reference store holds per tier")
                          .Register(r);
  auto& store_entries = BuildGauge()
                            .Name("semshare_cache_store_entries")
                            .Help("References the store holds per tier")
                            .Register(r);
  auto& store_evictions = BuildCounter()
                              .Name("semshare_cache_store_evictions_total")
                              .Help("References evicted to respect a tier's byte budget")
                              .Register(r);
  auto& store_errors = BuildCounter()
                           .Name("semshare_cache_store_errors_total")
                           .Help("Store errors per tier (corrupt data, I/O, Redis failures)")
                           .Register(r);
  const char* tiers[3] = {"memory", "disk", "redis"};
  for (int i = 0; i < 3; ++i) {
    const prometheus::Labels l{{"model", model_}, {"tier", tiers[i]}};
    tiers_[i] = {&store_bytes.Add(l), &store_entries.Add(l), &store_evictions.Add(l),
                 &store_errors.Add(l)};
  }
}

void Metrics::RecordRequest(const RequestFigures& f) {
  const int res = static_cast<int>(f.cache_result);
  ttft_[res]->Observe(f.ttft_s);
  prefill_[res]->Observe(f.prefill_s);
  duration_->Observe(f.total_s);
  queue_->Observe(f.queue_s);
  prompt_tokens_->Increment(static_cast<double>(f.prompt_tokens));
  generation_tokens_->Increment(static_cast<double>(f.completion_tokens));
  if (f.looked_up) {
    lookups_->Increment();
    if (f.cache_result == CacheResult::kHit) {
      (std::string_view(f.hit_kind) == "exact" ? hits_exact_ : hits_semantic_)->Increment();
    }
  }
  reused_->Increment(static_cast<double>(f.reused_tokens));
  recomputed_->Increment(static_cast<double>(f.recomputed_tokens));
  if (f.similarity >= 0) similarity_->Observe(f.similarity);
}

void Metrics::CountRequest(const std::string& method, const std::string& code) {
  requests_->Add({{"model", model_}, {"method", method}, {"code", code}}).Increment();
}

void Metrics::SetGpuMemory(int64_t used, int64_t total) {
  if (gpu_used_ == nullptr) {
    gpu_used_ = &gpu_family_used_->Add({{"model", model_}});
    gpu_total_ = &gpu_family_total_->Add({{"model", model_}});
  }
  gpu_used_->Set(static_cast<double>(used));
  gpu_total_->Set(static_cast<double>(total));
}

void Metrics::UpdateTier(TierSeries& t, const store::TierStats& s) {
  t.bytes->Set(static_cast<double>(s.bytes));
  t.entries->Set(static_cast<double>(s.entries));
  const int64_t errors = s.errors;
  if (s.evictions > t.last_evictions) {
    t.evictions->Increment(static_cast<double>(s.evictions - t.last_evictions));
  }
  if (errors > t.last_errors) t.errors->Increment(static_cast<double>(errors - t.last_errors));
  t.last_evictions = std::max(t.last_evictions, s.evictions);
  t.last_errors = std::max(t.last_errors, errors);
}

void Metrics::UpdateStore(const store::StoreStats& s) {
  std::lock_guard<std::mutex> lock(store_mu_);
  UpdateTier(tiers_[0], s.memory);
  UpdateTier(tiers_[1], s.disk);
  UpdateTier(tiers_[2], s.redis);
}

void Metrics::OnQueues(int64_t running, int64_t waiting) {
  running_->Set(static_cast<double>(running));
  std::lock_guard<std::mutex> lock(queues_mu_);
  loop_waiting_ = waiting;
  waiting_->Set(static_cast<double>(loop_waiting_ + front_waiting_));
}

void Metrics::OnFrontQueues(int64_t running, int64_t waiting) {
  std::lock_guard<std::mutex> lock(queues_mu_);
  front_waiting_ = running + waiting;  // a front job (tokenize, lookup) is not yet admitted
  waiting_->Set(static_cast<double>(loop_waiting_ + front_waiting_));
}

void Metrics::OnIteration(int64_t rows, int64_t kv_bytes, double kv_utilization) {
  if (rows > 0) batch_rows_->Observe(static_cast<double>(rows));
  kv_bytes_->Set(static_cast<double>(kv_bytes));
  kv_utilization_->Set(kv_utilization);
}

}  // namespace semshare::server
