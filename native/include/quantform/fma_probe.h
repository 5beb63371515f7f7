// The machine limit benchmarks compare against: a register-only FMA loop (no
// memory traffic), so GFLOP/s here is the fp32 FMA peak of the cores.
#pragma once
#include <cstdint>

namespace qf {

struct FmaProbeKernels {
  // Runs `iters` iterations of independent vfmadd231ps chains held in registers;
  // returns a value derived from the results so the loop cannot be optimised away.
  float (*loop)(int64_t iters);
  double flops_per_iter;  // chains x lanes x 2
};

extern const FmaProbeKernels fma_probe_kernels_avx2;    // 12 ymm chains
extern const FmaProbeKernels fma_probe_kernels_avx512;  // 24 zmm chains

// Peak over `threads` threads (each runs the loop for about `seconds`), GFLOP/s, using
// the widest tier the CPU supports (0 when it has neither AVX2 nor AVX-512).
double measure_fma_peak_gflops(int threads, double seconds);

}  // namespace qf
