#include "quantform/threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace qf {
namespace {

// One job at a time: parallel_for publishes a job, workers claim chunk indices
// with an atomic counter, the caller works too and waits for the last chunk.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop_workers(); }

  int size() const { return size_.load(std::memory_order_relaxed); }

  void resize(int n) {
    std::lock_guard<std::mutex> lk(resize_mu_);
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    stop_workers();
    stopping_ = false;
    for (int i = 0; i + 1 < n; i++) workers_.emplace_back([this] { worker_loop(); });
    size_.store(n, std::memory_order_relaxed);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (in_job_) { fn(0, n); return; }  // nested: run serially on this thread
    std::unique_lock<std::mutex> job_lock(job_mu_);  // one job at a time across callers
    std::lock_guard<std::mutex> rlk(resize_mu_);
    const int64_t threads = (int64_t)workers_.size() + 1;
    grain = std::max<int64_t>(1, grain);
    int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
    if (chunks <= 1) { in_job_ = true; fn(0, n); in_job_ = false; return; }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn; n_ = n; chunks_ = chunks; next_ = 0; done_ = 0; generation_++;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return done_ == chunks_; });
    fn_ = nullptr;
  }

 private:
  void work() {
    in_job_ = true;
    for (;;) {
      int64_t c;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!fn_ || next_ >= chunks_) break;
        c = next_++;
      }
      const int64_t b = n_ * c / chunks_, e = n_ * (c + 1) / chunks_;
      (*fn_)(b, e);
      std::lock_guard<std::mutex> lk(mu_);
      if (++done_ == chunks_) done_cv_.notify_all();
    }
    in_job_ = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex resize_mu_, job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0, next_ = 0, done_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int> size_{1};
  bool stopping_ = false;
  static thread_local bool in_job_;
};

thread_local bool Pool::in_job_ = false;

Pool& pool() {
  static Pool* p = new Pool(0);  // leaked on purpose: no join at static destruction
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace qf
