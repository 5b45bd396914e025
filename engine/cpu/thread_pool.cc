#include "engine/cpu/thread_pool.h"

#include <algorithm>
#include <memory>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace semshare::engine {
namespace {

// Polls before sleeping: a few microseconds.
constexpr int kSpinIterations = 256;

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spins until pred() holds or the budget runs out; true when it holds.
template <typename Pred>
bool SpinUntil(Pred pred) {
  for (int i = 0; i < kSpinIterations; ++i) {
    if (pred()) return true;
    CpuRelax();
  }
  return pred();
}

std::unique_ptr<ThreadPool>& DefaultSlot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(threads, 1); ++i)
    workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    SpinUntil([&] { return generation_.load(std::memory_order_acquire) != seen; });
    std::unique_lock<std::mutex> l(mu_);
    start_cv_.wait(l, [&] { return stop_ || generation_.load() != seen; });
    if (stop_) return;
    seen = generation_.load();
    const int64_t begin = index * chunk_, end = std::min(n_, begin + chunk_);
    const auto* fn = fn_;
    l.unlock();
    if (begin < end) (*fn)(begin, end);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      l.lock();  // the caller may be between its predicate check and its wait
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t parts =
      std::min<int64_t>(size(), std::max<int64_t>(1, n / std::max<int64_t>(min_chunk, 1)));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> job(job_mu_);
  const int64_t chunk = (n + size() - 1) / size();
  {
    std::lock_guard<std::mutex> l(mu_);
    n_ = n;
    chunk_ = chunk;
    fn_ = &fn;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  fn(0, std::min(n, chunk));
  if (SpinUntil([&] { return pending_.load(std::memory_order_acquire) == 0; })) return;
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait(l, [&] { return pending_.load(std::memory_order_acquire) == 0; });
}

ThreadPool& ThreadPool::Default() {
  auto& slot = DefaultSlot();
  static std::once_flag once;
  std::call_once(once, [&] {
    if (!slot)
      slot = std::make_unique<ThreadPool>(static_cast<int>(std::thread::hardware_concurrency()));
  });
  return *slot;
}

void ThreadPool::SetDefaultThreads(int threads) {
  DefaultSlot() = std::make_unique<ThreadPool>(threads);
}

}  // namespace semshare::engine
