#include "core/codec/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/check.h"

namespace saddle::codec {
namespace {

using RangeFn = std::function<void(size_t, size_t)>;

// Set on pool workers and on a caller while it runs a job, so a nested call does not deadlock.
thread_local bool tls_inside_pool = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
    threads_ = static_cast<size_t>(threads);
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(size_t count, size_t grain, const RangeFn& fn) {
    if (count == 0) return;
    grain = std::max<size_t>(grain, 1);
    const size_t tasks = std::min(threads_, (count + grain - 1) / grain);
    if (tasks <= 1 || tls_inside_pool) {
      fn(0, count);
      return;
    }
    std::lock_guard<std::mutex> one_job(run_mu_);  // one job at a time per pool
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      count_ = count;
      tasks_ = tasks;
      next_ = 0;
      pending_ = tasks;
      error_ = nullptr;
      gen = ++generation_;
    }
    wake_.notify_all();
    tls_inside_pool = true;
    work(gen);
    tls_inside_pool = false;
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims tasks of job `gen` until none is left; task t covers an even share of [0, count). Claims
  // go through the mutex (at most `threads` tasks a job) so a late worker never joins a newer job.
  void work(uint64_t gen) {
    for (;;) {
      const RangeFn* fn;
      size_t begin, end;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (generation_ != gen || next_ >= tasks_) return;
        const size_t t = next_++;
        fn = fn_;
        begin = count_ * t / tasks_;
        end = count_ * (t + 1) / tasks_;
      }
      std::exception_ptr error;
      try {
        (*fn)(begin, end);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (error && !error_) error_ = error;
      if (--pending_ == 0) done_.notify_all();
    }
  }

  void worker_loop() {
    tls_inside_pool = true;
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work(seen);
    }
  }

  size_t threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  const RangeFn* fn_ = nullptr;
  size_t count_ = 0, tasks_ = 0, next_ = 0, pending_ = 0;
  std::exception_ptr error_;
};

}  // namespace

Parallel serial() {
  return [](size_t count, size_t, const RangeFn& fn) {
    if (count > 0) fn(0, count);
  };
}

Parallel thread_pool_parallel(int threads) {
  SADDLE_CHECK_ARG(threads >= 1, "thread_pool_parallel: threads must be >= 1, got ", threads);
  auto pool = std::make_shared<ThreadPool>(threads);
  return [pool](size_t count, size_t grain, const RangeFn& fn) { pool->run(count, grain, fn); };
}

}  // namespace saddle::codec
