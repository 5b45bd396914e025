// Every Prometheus family the server exports (DESIGN.md section 7), typed, in one place. Names
// carry the prefix semshare_ and unit suffixes; every series has the label model. prometheus-cpp
// metric objects are thread-safe; this class only holds references to them.
#ifndef SEMSHARE_SERVER_METRICS_H_
#define SEMSHARE_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "cache_store/reference_store.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "serving/pipeline.h"

namespace semshare::server {

// cache_result label values (serving/pipeline.h).
using serving::CacheResult;
using serving::CacheResultName;

// What one finished request contributes (the same figures the response carries).
struct RequestFigures {
  CacheResult cache_result = CacheResult::kBypass;
  bool looked_up = false;  // a store lookup ran (counts toward the hit rate)
  double queue_s = 0, prefill_s = 0, ttft_s = 0, total_s = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t reused_tokens = 0, recomputed_tokens = 0;
  float similarity = -1;      // best candidate's similarity; < 0 when none was scored
  const char* hit_kind = "";  // hits: "exact" or "semantic"
};

// Also the pipeline's observer: queue gauges, the engine loop's iterations (rows per batch,
// KV held and its share of the budget), preemptions and inter-token latency.
class Metrics final : public serving::PipelineObserver {
 public:
  explicit Metrics(const std::string& model_name);

  // serving::PipelineObserver (called on the engine loop's and the front workers' threads).
  void OnQueues(int64_t running, int64_t waiting) override;
  void OnFrontQueues(int64_t running, int64_t waiting) override;
  void OnIteration(int64_t rows, int64_t kv_bytes, double kv_utilization) override;
  void OnRelease(int64_t kv_bytes) override { kv_bytes_->Decrement(static_cast<double>(kv_bytes)); }
  void OnPreemption() override { preemptions_->Increment(); }
  void OnInterToken(double seconds) override { inter_token_->Observe(seconds); }

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RecordRequest(const RequestFigures& f);
  // requests_total{method, code}; code is a canonical gRPC code name (OK, INVALID_ARGUMENT...).
  void CountRequest(const std::string& method, const std::string& code);
  void SetGpuMemory(int64_t used, int64_t total);
  // Store gauges and counters from a StoreStats snapshot (counters advance by the delta since
  // the last call). Thread-safe.
  void UpdateStore(const store::StoreStats& s);

 private:
  struct TierSeries {
    prometheus::Gauge* bytes;
    prometheus::Gauge* entries;
    prometheus::Counter* evictions;
    prometheus::Counter* errors;
    int64_t last_evictions = 0, last_errors = 0;
  };
  void UpdateTier(TierSeries& t, const store::TierStats& s);

  std::shared_ptr<prometheus::Registry> registry_;
  const std::string model_;
  prometheus::Histogram* ttft_[3];
  prometheus::Histogram* prefill_[3];
  prometheus::Histogram* duration_;
  prometheus::Histogram* queue_;
  prometheus::Histogram* inter_token_;
  prometheus::Histogram* similarity_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_bytes_;
  prometheus::Gauge* kv_utilization_;
  prometheus::Counter* preemptions_;
  prometheus::Histogram* batch_rows_;
  std::mutex queues_mu_;  // the two halves of requests_waiting
  int64_t loop_waiting_ = 0, front_waiting_ = 0;
  prometheus::Gauge* gpu_used_ = nullptr;
  prometheus::Gauge* gpu_total_ = nullptr;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* lookups_;
  prometheus::Counter* hits_exact_;
  prometheus::Counter* hits_semantic_;
  prometheus::Counter* reused_;
  prometheus::Counter* recomputed_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* gpu_family_used_;
  prometheus::Family<prometheus::Gauge>* gpu_family_total_;
  std::mutex store_mu_;  // guards the TierSeries deltas
  TierSeries tiers_[3];  // memory, disk, redis
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_METRICS_H_
