#include "quantform/threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace qf {
namespace {

// Marks the current thread as running a job body for its lifetime, also when the
// body throws (a leaked flag would run every later job of this thread serially).
class InJob {
 public:
  explicit InJob(bool* flag) : flag_(flag), was_(*flag) { *flag_ = true; }
  ~InJob() { *flag_ = was_; }
  InJob(const InJob&) = delete;
  InJob& operator=(const InJob&) = delete;

 private:
  bool* flag_;
  bool was_;
};

// One job at a time: parallel_for publishes a job, workers claim chunk indices
// under a mutex, the caller works too and waits for the last chunk.
// Exceptions: a body that throws on any thread (std::bad_alloc from scratch
// buffers, most often) must not reach the thread's top frame, where it would call
// std::terminate and take the host process down. The first one is kept, chunks not
// yet started are skipped (their results would be discarded anyway), chunks already
// running finish, and the caller rethrows it once the job is complete.
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
    // thread creation can fail (EAGAIN, bad_alloc): keep the workers that started
    // and a size that tells the truth, then report the failure
    try {
      for (int i = 0; i + 1 < n; i++) workers_.emplace_back([this] { worker_loop(); });
    } catch (...) {
      size_.store((int)workers_.size() + 1, std::memory_order_relaxed);
      throw;
    }
    size_.store(n, std::memory_order_relaxed);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (in_job_) { fn(0, n); return; }  // nested: run serially on this thread; exceptions go to the outer body
    std::unique_lock<std::mutex> job_lock(job_mu_);  // one job at a time across callers
    std::lock_guard<std::mutex> rlk(resize_mu_);
    const int64_t threads = (int64_t)workers_.size() + 1;
    grain = std::max<int64_t>(1, grain);
    const int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
    if (chunks <= 1) {
      InJob mark(&in_job_);
      fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn; n_ = n; chunks_ = chunks; next_ = 0; done_ = 0; error_ = nullptr; generation_++;
    }
    cv_.notify_all();
    work();
    std::exception_ptr err;
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return done_ == chunks_; });
      fn_ = nullptr;
      err = std::move(error_);
      error_ = nullptr;
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void work() {
    InJob mark(&in_job_);
    for (;;) {
      int64_t c;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!fn_ || next_ >= chunks_) break;
        c = next_++;
        if (error_) {  // cancelled: count the chunk as done without running it
          if (++done_ == chunks_) done_cv_.notify_all();
          continue;
        }
      }
      const int64_t b = n_ * c / chunks_, e = n_ * (c + 1) / chunks_;
      std::exception_ptr err;
      try {
        (*fn_)(b, e);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (err && !error_) error_ = std::move(err);
      if (++done_ == chunks_) done_cv_.notify_all();
    }
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
  std::exception_ptr error_;  // first exception of the running job
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
