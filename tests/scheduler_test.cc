// The scheduler under many submitting threads (also under ThreadSanitizer): every accepted job
// runs exactly once, at most `workers` at a time, a full queue answers RESOURCE_EXHAUSTED at
// once, Close answers UNAVAILABLE while queued jobs still run, and the observer sees
// consistent counts.
#include "serving/scheduler.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace semshare::serving {
namespace {

TEST(SchedulerTest, RunsEveryAcceptedJobOnceWithinTheLimits) {
  constexpr int kWorkers = 3, kQueue = 4, kThreads = 8, kPerThread = 60;
  std::atomic<int64_t> max_running{0}, max_waiting{0}, bad_observation{0};
  Scheduler sched(kWorkers, kQueue, [&](int64_t r, int64_t w) {
    if (r < 0 || r > kWorkers || w < 0 || w > kQueue + kWorkers) ++bad_observation;
    int64_t m = max_running.load();
    while (r > m && !max_running.compare_exchange_weak(m, r)) {
    }
    m = max_waiting.load();
    while (w > m && !max_waiting.compare_exchange_weak(m, w)) {
    }
  });
  std::atomic<int64_t> accepted{0}, rejected{0}, ran{0}, concurrent{0}, peak{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::Status s = sched.Submit([&](int32_t) {
          const int64_t now = ++concurrent;
          int64_t p = peak.load();
          while (now > p && !peak.compare_exchange_weak(p, now)) {
          }
          std::this_thread::sleep_for(std::chrono::microseconds(300));
          --concurrent;
          ++ran;
        });
        if (s.ok()) {
          ++accepted;
        } else {
          EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
          ++rejected;
          std::this_thread::sleep_for(std::chrono::microseconds(200));  // back off, as clients do
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(sched.WaitIdle(30000));
  EXPECT_EQ(ran.load(), accepted.load());
  EXPECT_EQ(accepted + rejected, kThreads * kPerThread);
  EXPECT_GT(rejected.load(), 0) << "8 threads against 3 workers + 4 queued must overflow";
  EXPECT_GE(accepted.load(), kWorkers + kQueue);  // the first ones always fit
  EXPECT_LE(peak.load(), kWorkers);
  EXPECT_EQ(bad_observation.load(), 0);
  EXPECT_EQ(sched.running(), 0);
  EXPECT_EQ(sched.waiting(), 0);
}

TEST(SchedulerTest, CloseRefusesNewJobsButRunsQueuedOnes) {
  Scheduler sched(1, 8);
  std::atomic<int> ran{0};
  std::atomic<bool> release{false};
  ASSERT_TRUE(sched
                  .Submit([&](int32_t) {
                    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    ++ran;
                  })
                  .ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sched.Submit([&](int32_t) { ++ran; }).ok());
  sched.Close();
  absl::Status s = sched.Submit([&](int32_t) { ++ran; });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_FALSE(sched.WaitIdle(20));  // the first job is still held
  release = true;
  EXPECT_TRUE(sched.WaitIdle(10000));
  EXPECT_EQ(ran.load(), 4);
}

TEST(SchedulerTest, QueueLimitZeroAcceptsOnlyWhatWorkersCanStart) {
  Scheduler sched(1, 0);
  std::atomic<bool> release{false};
  ASSERT_TRUE(sched
                  .Submit([&](int32_t) {
                    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                  })
                  .ok());
  // Wait until the worker took it, then the next one has nowhere to go.
  for (int i = 0; i < 1000 && sched.running() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  absl::Status s = sched.Submit([](int32_t) {});
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(std::string(s.message()).find("retry"), std::string::npos);
  release = true;
  EXPECT_TRUE(sched.WaitIdle(10000));
}

}  // namespace
}  // namespace semshare::serving
