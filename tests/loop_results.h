// Collects the results of requests submitted to an EngineLoop (serving/engine_loop.h), one slot
// per request; Wait only bounds a hang. Shared by the CPU and CUDA engine-loop tests.
#ifndef SEMSHARE_TESTS_LOOP_RESULTS_H_
#define SEMSHARE_TESTS_LOOP_RESULTS_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "serving/engine_loop.h"

namespace semshare::testing {

struct LoopResults {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<absl::StatusOr<serving::LoopResult>> out;
  int done = 0;

  explicit LoopResults(size_t n) {
    for (size_t i = 0; i < n; ++i) out.emplace_back(absl::UnknownError("not finished"));
  }
  std::function<void(absl::StatusOr<serving::LoopResult>)> Slot(size_t i) {
    return [this, i](absl::StatusOr<serving::LoopResult> r) {
      std::lock_guard<std::mutex> lock(mu);
      out[i] = std::move(r);
      ++done;
      cv.notify_all();
    };
  }
  bool Wait(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::minutes(10), [&] { return done == n; });
  }
};

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_LOOP_RESULTS_H_
