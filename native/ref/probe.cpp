// Scalar probe loops: the limits of code without SIMD (what the ref tier runs on).
#include "quantform/probe.h"

namespace qf {
namespace {

float read_sum_ref(const float* p, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += p[i + j];
  return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

double fma_loop_ref(int64_t iters) {
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float b = 0.999999f, c = 1e-6f;
  for (int64_t i = 0; i < iters; i++)
    for (int j = 0; j < 8; j++) a[j] = a[j] * b + c;
  volatile float sink = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
  (void)sink;
  return (double)iters * 8 * 2;
}

}  // namespace

const ProbeKernels probe_kernels_ref = {read_sum_ref, fma_loop_ref};

}  // namespace qf
