// The machine limit benchmarks compare against: a register-only FMA loop (no
// memory traffic), so GFLOP/s here is the fp32 FMA peak of the cores.
#pragma once
#include <cstdint>

namespace qf {

// Runs `iters` iterations of 24 independent vfmadd231ps zmm chains; returns a value
// derived from the results so the loop cannot be optimised away. Flops = iters * 24 * 32.
float fma_loop_avx512(int64_t iters);
float fma_loop_avx2(int64_t iters);  // 12 ymm chains: flops = iters * 12 * 16

// Peak over `threads` threads (each runs the loop for about `seconds`), GFLOP/s, using
// the widest tier the CPU supports.
double measure_fma_peak_gflops(int threads, double seconds);

}  // namespace qf
