// The front of the pipeline: a bounded queue in front of a fixed set of worker threads
// (DESIGN.md section 3, steps 1-3: tokenize, lookup, hand to the engine loop). Each thread
// runs one job at a time and passes the job its index (the pipeline keeps one FrontWorker,
// a backend for sketches and its scratch, per index); at most `max_queue` jobs wait beyond the
// running ones, and Submit answers RESOURCE_EXHAUSTED at once when the queue is full (never blocks
// a gRPC callback).
//
// Jobs are callables that get the worker; they report to their caller themselves (the
// service's reactors). A job must check its own cancellation: the scheduler runs every job it
// accepted, so a job cancelled while queued sees that first and returns immediately.
// Thread-safe. The destructor stops accepting, runs what is queued, and joins the workers.
#ifndef SEMSHARE_SERVING_SCHEDULER_H_
#define SEMSHARE_SERVING_SCHEDULER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
namespace semshare::serving {

class Scheduler {
 public:
  using Job = std::function<void(int32_t worker)>;
  // Called under the scheduler's lock whenever running or waiting change: must be cheap and
  // must not call back into the scheduler (the server sets two gauges).
  using Observer = std::function<void(int64_t running, int64_t waiting)>;

  Scheduler(int32_t workers, int32_t max_queue, Observer observer = nullptr);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // RESOURCE_EXHAUSTED when max_queue jobs already wait; UNAVAILABLE after Close().
  absl::Status Submit(Job job);
  // Stops accepting; queued jobs still run.
  void Close();
  // Blocks until nothing is queued or running, or until `timeout_ms` passed; true if idle.
  bool WaitIdle(int64_t timeout_ms);

  int64_t running() const;
  int64_t waiting() const;

 private:
  void Loop(int32_t worker);
  void Notify();  // with mu_ held

  const int32_t max_queue_;
  Observer observer_;
  const int32_t workers_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<Job> queue_;
  int64_t running_ = 0;
  bool closed_ = false, stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace semshare::serving

#endif  // SEMSHARE_SERVING_SCHEDULER_H_
