#include "serving/scheduler.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace semshare::serving {

Scheduler::Scheduler(int32_t workers, int32_t max_queue, Observer observer)
    : max_queue_(max_queue), observer_(std::move(observer)), workers_(workers) {
  for (int32_t i = 0; i < workers_; ++i) threads_.emplace_back([this, i] { Loop(i); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

absl::Status Scheduler::Submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return absl::UnavailableError("the server is shutting down; retry elsewhere");
    const int64_t idle = workers_ - running_;
    if (static_cast<int64_t>(queue_.size()) - idle >= max_queue_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server is at capacity (", running_, " running, ", queue_.size(),
                       " queued, queue limit ", max_queue_, "); retry with backoff"));
    }
    queue_.push_back(std::move(job));
    Notify();
  }
  work_cv_.notify_one();
  return absl::OkStatus();
}

void Scheduler::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

bool Scheduler::WaitIdle(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [&] { return queue_.empty() && running_ == 0; });
}

int64_t Scheduler::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

int64_t Scheduler::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

void Scheduler::Notify() {
  if (observer_) observer_(running_, static_cast<int64_t>(queue_.size()));
}

void Scheduler::Loop(int32_t worker) {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
      Notify();
    }
    job(worker);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --running_;
      Notify();
      if (queue_.empty() && running_ == 0) idle_cv_.notify_all();
    }
  }
}

}  // namespace semshare::serving
