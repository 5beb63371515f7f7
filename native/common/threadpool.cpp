#include "quantform/threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QF_CPU_RELAX() _mm_pause()
#else
#define QF_CPU_RELAX() std::this_thread::yield()
#endif

namespace qf {
namespace {

// How long a thread spins before it sleeps on a condition variable: a worker after
// its job (waiting for the next one), the caller while the last chunks finish. A
// decode step of a 1B model runs ~100 parallel jobs in ~10 ms with microseconds of
// serial work between them; a futex wake-up in a VM costs 10-50 us per job, which was
// a tenth of the step. Longer gaps (between tokens, after a call) end in sleep, so an
// idle pool takes no CPU.
constexpr auto kSpin = std::chrono::microseconds(200);

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

// One job at a time. A job is published as one 64-bit ticket (generation, chunk
// count, next chunk index); a thread claims chunk i by a CAS that advances the index
// within the same generation, so a thread that wakes up late for a finished job can
// never claim a chunk of the next one. Chunks are claimed dynamically: a thread
// descheduled by another process (a shared machine) delays only the chunk it holds,
// the others take the rest. The caller works too and waits for the last chunk.
// Exceptions: a body that throws on any thread (std::bad_alloc from scratch
// buffers, most often) must not reach the thread's top frame, where it would call
// std::terminate and take the host process down. The first one is kept, chunks not
// yet started are skipped (counted done without running: their results would be
// discarded anyway), chunks already running finish, and the caller rethrows it once
// the job is complete.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop_workers(); }

  int size() const { return size_.load(std::memory_order_relaxed); }

  void resize(int n) {
    std::lock_guard<std::mutex> lk(resize_mu_);
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    stop_workers();
    stopping_.store(false);
    // thread creation can fail (EAGAIN, bad_alloc): keep the workers that started
    // and a size that tells the truth, then report the failure
    try {
      for (int i = 0; i + 1 < n; i++) workers_.emplace_back([this, i] { worker_loop(i + 1); });
    } catch (...) {
      size_.store((int)workers_.size() + 1, std::memory_order_relaxed);
      throw;
    }
    size_.store(n, std::memory_order_relaxed);
  }

  void run(int64_t n, int64_t grain, int64_t max_chunks, const ChunkFn& fn) {
    if (n <= 0) return;
    if (in_job_) {  // nested: run serially on this thread; exceptions go to the outer body
      fn(thread_index_, 0, n);
      return;
    }
    std::unique_lock<std::mutex> job_lock(job_mu_);  // one job at a time across callers
    std::lock_guard<std::mutex> rlk(resize_mu_);
    grain = std::max<int64_t>(1, grain);
    const int64_t chunks = std::min<int64_t>({std::max<int64_t>(1, max_chunks), (n + grain - 1) / grain, kMaxChunks});
    if (chunks <= 1 || workers_.empty()) {
      InJob mark(&in_job_);
      fn(thread_index_, 0, n);
      return;
    }
    fn_ = &fn;
    n_ = n;
    error_ = nullptr;
    cancelled_.store(false, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = (ticket_.load(std::memory_order_relaxed) >> 32) + 1;
    ticket_.store(gen << 32 | (uint64_t)chunks << 16, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    thread_index_ = 0;
    work(gen);
    wait_done(chunks);
    if (cancelled_.load(std::memory_order_relaxed)) {
      std::exception_ptr err;
      {
        std::lock_guard<std::mutex> lk(mu_);
        err = std::move(error_);
        error_ = nullptr;
      }
      std::rethrow_exception(err);
    }
  }

 private:
  static constexpr int64_t kMaxChunks = 0xffff;
  using Clock = std::chrono::steady_clock;

  // Claims and runs chunks of generation `gen` until none is left.
  void work(uint64_t gen) {
    InJob mark(&in_job_);
    for (;;) {
      uint64_t t = ticket_.load(std::memory_order_acquire);
      if ((t >> 32) != gen) break;
      const int64_t chunks = (int64_t)(t >> 16 & 0xffff), c = (int64_t)(t & 0xffff);
      if (c >= chunks) break;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      // the job cannot end before this chunk is done, so fn_ and n_ are still its own
      if (!cancelled_.load(std::memory_order_acquire)) {
        try {
          (*fn_)(thread_index_, n_ * c / chunks, n_ * (c + 1) / chunks);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu_);
          if (!error_) error_ = std::current_exception();
          cancelled_.store(true, std::memory_order_release);
        }
      }
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == chunks && caller_sleeping_.load(std::memory_order_seq_cst)) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    }
  }

  void wait_done(int64_t chunks) {
    const auto until = Clock::now() + kSpin;
    for (int i = 0; done_.load(std::memory_order_acquire) != chunks; i++) {
      QF_CPU_RELAX();
      if ((i & 63) == 63 && Clock::now() > until) {
        std::unique_lock<std::mutex> lk(mu_);
        caller_sleeping_.store(true, std::memory_order_seq_cst);
        done_cv_.wait(lk, [&] { return done_.load(std::memory_order_seq_cst) == chunks; });
        caller_sleeping_.store(false, std::memory_order_relaxed);
        break;
      }
    }
    fn_ = nullptr;
  }

  void worker_loop(int index) {
    thread_index_ = index;
    uint64_t seen = ticket_.load() >> 32;
    for (;;) {
      uint64_t gen = ticket_.load(std::memory_order_acquire) >> 32;
      const auto until = Clock::now() + kSpin;
      for (int i = 0; gen == seen && !stopping_.load(std::memory_order_relaxed); i++) {
        QF_CPU_RELAX();
        gen = ticket_.load(std::memory_order_acquire) >> 32;
        if ((i & 63) == 63 && gen == seen && Clock::now() > until) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lk, [&] { return stopping_.load() || (ticket_.load(std::memory_order_seq_cst) >> 32) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
          gen = ticket_.load(std::memory_order_acquire) >> 32;
        }
      }
      if (stopping_.load()) return;
      seen = gen;
      work(gen);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex resize_mu_, job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const ChunkFn* fn_ = nullptr;
  int64_t n_ = 0;
  std::exception_ptr error_;           // first exception of the running job (under mu_)
  std::atomic<bool> cancelled_{false};  // a body of the running job threw
  std::atomic<uint64_t> ticket_{0};  // generation << 32 | chunks << 16 | next chunk
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<int> size_{1};
  std::atomic<bool> stopping_{false};
  static thread_local bool in_job_;
  static thread_local int thread_index_;
};

thread_local bool Pool::in_job_ = false;
thread_local int Pool::thread_index_ = 0;

Pool& pool() {
  static Pool* p = new Pool(0);  // leaked on purpose: no join at static destruction
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, num_threads(), [&](int, int64_t b, int64_t e) { fn(b, e); });
}
void parallel_chunks(int64_t n, int64_t grain, int64_t max_chunks, const ChunkFn& fn) {
  pool().run(n, grain, max_chunks, fn);
}

}  // namespace qf
