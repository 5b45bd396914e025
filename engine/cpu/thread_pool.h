// A small fork-join pool for the CPU backend's element-wise ops. Written by hand instead of
// OpenMP because libgomp's idle threads spin (OMP_WAIT_POLICY is read only at load time) and
// steal the cores OpenBLAS' own threads need right after; these workers sleep on a condition
// variable between jobs, after spinning briefly (kSpinIterations, ~50 us): a decode step makes
// hundreds of ParallelFor calls microseconds apart, and a futex sleep and wake-up per call cost
// more than the work of a small one. ParallelFor calls must not nest, and one job runs at a
// time (a second caller waits).
#ifndef SEMSHARE_ENGINE_CPU_THREAD_POOL_H_
#define SEMSHARE_ENGINE_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace semshare::engine {

class ThreadPool {
 public:
  // `threads` includes the calling thread; 1 runs everything inline.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end) on contiguous ranges covering [0, n), at most one range per thread,
  // and returns when all are done. Ranges smaller than `min_chunk` items are not split off.
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool the CpuBackend uses (hardware threads unless SetDefaultThreads).
  static ThreadPool& Default();
  // Replaces the default pool; call before any forward pass runs (CLI start-up).
  static void SetDefaultThreads(int threads);

 private:
  void WorkerLoop(int index);

  std::vector<std::thread> workers_;
  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};  // bumped (under mu_) when a job is published
  std::atomic<int> pending_{0};          // workers still running the current job
  bool stop_ = false;
  int64_t n_ = 0, chunk_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_THREAD_POOL_H_
