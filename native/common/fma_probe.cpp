// FMA peak over several threads: each thread runs the register-only loop of the
// widest supported tier; the peak is total flops over the slowest thread's time.
#include "quantform/fma_probe.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "quantform/dispatch.h"

namespace qf {

double measure_fma_peak_gflops(int threads, double seconds) {
  const Tier tier = best_supported_tier();
  if (tier == Tier::Ref) return 0.0;
  const FmaProbeKernels& k = tier == Tier::Avx512 ? fma_probe_kernels_avx512 : fma_probe_kernels_avx2;
  const double flops_per_iter = k.flops_per_iter;
  auto run = [&](int64_t iters) { return k.loop(iters); };
  // calibrate on one thread: iterations for about `seconds`
  int64_t iters = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    volatile float sink = run(iters);
    (void)sink;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > seconds * 0.25 || iters > (int64_t)1 << 40) {
      iters = (int64_t)((double)iters * seconds / std::max(dt, 1e-9));
      break;
    }
    iters *= 4;
  }
  threads = std::max(1, threads);
  std::vector<std::thread> pool;
  std::vector<double> secs((size_t)threads);
  std::atomic<int> ready{0};
  for (int t = 0; t < threads; t++)
    pool.emplace_back([&, t] {
      ready++;
      while (ready.load() < threads) {
      }
      auto t0 = std::chrono::steady_clock::now();
      volatile float sink = run(iters);
      (void)sink;
      secs[(size_t)t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  for (auto& th : pool) th.join();
  const double slowest = *std::max_element(secs.begin(), secs.end());
  return (double)iters * flops_per_iter * threads / slowest / 1e9;
}

}  // namespace qf
