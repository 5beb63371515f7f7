#include "quantform/probe.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "quantform/dispatch.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `loop` on all threads in many small chunks (so a slow-to-wake worker does
// not leave the caller doing its share alone); returns work units per second.
template <class F>
double throughput(int64_t iters_per_chunk, F loop) {
  const int64_t chunks = (int64_t)num_threads() * 16;
  double units = 0;
  const double t0 = now_s();
  std::vector<double> per(chunks, 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) per[c] = loop(iters_per_chunk);
  });
  const double dt = now_s() - t0;
  for (double u : per) units += u;
  return units / dt;
}

// Iterations per chunk so that a whole run takes about `seconds`.
template <class F>
int64_t calibrate(double seconds, F loop) {
  int64_t iters = 1 << 14;
  for (;;) {
    const double t0 = now_s();
    loop(iters);
    const double dt = now_s() - t0;
    if (dt > 0.01 || iters > (int64_t(1) << 34)) {
      const double per_chunk = seconds / 16.0;
      const double want = (double)iters * per_chunk / (dt > 0 ? dt : 1e-9);
      return want < 1024 ? 1024 : (int64_t)want;
    }
    iters *= 4;
  }
}

}  // namespace

Status measure_machine(MachineLimits* out, int64_t bytes, int reps, double seconds, unsigned parts) {
  if (bytes < (int64_t(1) << 20) || reps < 1 || !(seconds > 0))
    return error(Code::InvalidArgument, "Expected bytes >= 1 MiB, reps >= 1 and seconds > 0 but received bytes=" +
                                            std::to_string(bytes) + ", reps=" + std::to_string(reps));
  const ProbeKernels& pk = probe_kernels();
  *out = MachineLimits{0, 0, 0, 0, 0, 0, num_threads()};
  constexpr int64_t kBlock = 1 << 18;  // floats per parallel chunk (1 MiB)
  const int64_t n = bytes / 4 / kBlock * kBlock;
  out->read_bytes = n * 4;
  if (parts & (kProbeRead | kProbeCopy)) {
    float* buf = static_cast<float*>(std::aligned_alloc(64, (size_t)n * 4));
    float* dst = parts & kProbeCopy ? static_cast<float*>(std::aligned_alloc(64, (size_t)n * 4)) : nullptr;
    if (!buf || ((parts & kProbeCopy) && !dst)) {
      std::free(buf);
      std::free(dst);
      return error(Code::OutOfMemory, "measureMachine: out of memory allocating " + std::to_string(bytes) + " bytes for the bandwidth probe");
    }
    // first touch from the pool so pages are spread as the readers will read them
    parallel_for(n / kBlock, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; b++) {
        for (int64_t i = 0; i < kBlock; i++) buf[b * kBlock + i] = (float)(i & 7);
        if (dst) memset(dst + b * kBlock, 0, kBlock * 4);
      }
    });
    volatile float sink = 0;
    for (int r = 0; r < reps; r++) {
      if (parts & kProbeRead) {
        std::vector<float> part((size_t)(n / kBlock), 0.f);
        const double t0 = now_s();
        parallel_for(n / kBlock, 1, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; b++) part[(size_t)b] = pk.read_sum(buf + b * kBlock, kBlock);
        });
        const double gbps = (double)n * 4 / (now_s() - t0) / 1e9;
        for (float p : part) sink = sink + p;
        out->read_gbps = gbps > out->read_gbps ? gbps : out->read_gbps;
      }
      if (dst) {
        const double t0 = now_s();
        parallel_for(n / kBlock, 1, [&](int64_t b0, int64_t b1) {
          memcpy(dst + b0 * kBlock, buf + b0 * kBlock, (size_t)(b1 - b0) * kBlock * 4);
        });
        const double gbps = 2.0 * (double)n * 4 / (now_s() - t0) / 1e9;  // read + write
        sink = sink + dst[r % n];
        out->copy_gbps = gbps > out->copy_gbps ? gbps : out->copy_gbps;
      }
    }
    std::free(buf);
    std::free(dst);
  }
  if (parts & kProbeFma) {
    const int64_t fi = calibrate(seconds, pk.fma_loop);
    out->fma_gflops = throughput(fi, pk.fma_loop) / 1e9;
  }
  if ((parts & kProbeVnni) && vnni_available()) {
    const auto loop = probe_kernels_avx512vnni.vnni_loop;
    const int64_t vi = calibrate(seconds, loop);
    out->vnni_gops = throughput(vi, loop) / 1e9;
  }
  if ((parts & kProbeAmx) && amx_int8_available()) {
    const auto loop = probe_kernels_amx_avx512bf16.amx_int8_loop;
    const int64_t ai = calibrate(seconds, loop);
    out->amx_int8_gops = throughput(ai, loop) / 1e9;
  }
  return Status::Ok();
}

}  // namespace qf
