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

namespace semshare::server {

// cache_result label values.
enum class CacheResult { kHit, kMiss, kBypass };
const char* CacheResultName(CacheResult r);

// What one finished request contributes (the same figures the response carries).
struct RequestFigures {
  CacheResult cache_result = CacheResult::kBypass;
  bool looked_up = false;  // a store lookup ran (counts toward the hit rate)
  double queue_s = 0, prefill_s = 0, ttft_s = 0, total_s = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t reused_tokens = 0, recomputed_tokens = 0;
  float similarity = -1;  // best candidate's similarity; < 0 when none was scored
};

class Metrics {
 public:
  explicit Metrics(const std::string& model_name);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RecordRequest(const RequestFigures& f);
  void RecordInterTokenLatency(double seconds) { inter_token_->Observe(seconds); }
  // requests_total{method, code}; code is a canonical gRPC code name (OK, INVALID_ARGUMENT...).
  void CountRequest(const std::string& method, const std::string& code);
  void SetRunning(int64_t n) { running_->Set(static_cast<double>(n)); }
  void SetWaiting(int64_t n) { waiting_->Set(static_cast<double>(n)); }
  // KV bytes held by requests in flight (added on prefill, removed at the end).
  void AddKvBytes(int64_t delta) { kv_bytes_->Increment(static_cast<double>(delta)); }
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
  prometheus::Gauge* gpu_used_ = nullptr;
  prometheus::Gauge* gpu_total_ = nullptr;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* lookups_;
  prometheus::Counter* hits_;
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
