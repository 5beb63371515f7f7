// Machine-limit probes for benchmarks: multi-threaded streaming read bandwidth and
// register-only fp32 FMA / int8 VNNI / int8 AMX peaks, run on all threads of the native pool.
// The inner loops live in the ISA folders (cpu/avx2, cpu/avx512, cpu/avx512vnni).
#pragma once
#include <cstdint>

#include "quantform/status.h"

namespace qf {

struct ProbeKernels {
  // Sum of n floats (n a multiple of 64) read with the widest loads; the result
  // keeps the compiler from dropping the loop.
  float (*read_sum)(const float* p, int64_t n);
  // `iters` rounds of independent FMA chains on registers only; returns the flops done.
  double (*fma_loop)(int64_t iters);
};

struct VnniProbeKernels {
  // vpdpbusd chains on registers only; returns int8 ops done (2 per multiply-add).
  double (*vnni_loop)(int64_t iters);
};

extern const ProbeKernels probe_kernels_ref;
extern const ProbeKernels probe_kernels_avx2;
extern const ProbeKernels probe_kernels_avx512;
const ProbeKernels& probe_kernels();
// Only usable when vnni_available().
extern const VnniProbeKernels probe_kernels_avx512vnni;
struct AmxProbeKernels {
  // TDPBSUD on tile registers only; returns int8 ops done (2 per multiply-add).
  double (*amx_int8_loop)(int64_t iters);
};
// Only usable when amx_int8_available().
extern const AmxProbeKernels probe_kernels_amx_avx512bf16;

struct MachineLimits {
  double read_gbps;    // best of the repetitions
  double copy_gbps;    // memcpy of the same buffer, bytes read + written, best of the repetitions
  double fma_gflops;   // fp32, all threads
  double vnni_gops;    // int8, all threads; 0 when VNNI is unavailable
  double amx_int8_gops;  // int8 on AMX tiles, all threads; 0 when AMX-INT8 is unavailable
  int64_t read_bytes;  // buffer size streamed
  int threads;
};

// Which limits to measure (a bitmask); the others are reported as 0.
enum ProbePart : unsigned { kProbeRead = 1, kProbeCopy = 2, kProbeFma = 4, kProbeVnni = 8, kProbeAmx = 16, kProbeAll = 31 };

// Streams `bytes` (>= 1 MiB) `reps` times; FMA / VNNI loops run ~`seconds` each.
Status measure_machine(MachineLimits* out, int64_t bytes, int reps, double seconds, unsigned parts = kProbeAll);

}  // namespace qf
