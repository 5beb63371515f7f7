// Register-only FMA loop for the peak measurement (fma_probe.h), AVX2 tier.
#include <immintrin.h>

#include "quantform/fma_probe.h"

namespace qf {
namespace {

float fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  #pragma GCC unroll 32
  for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(0.001f * (float)i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
    #pragma GCC unroll 32
    for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  #pragma GCC unroll 32
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[7];
}

}  // namespace

const FmaProbeKernels fma_probe_kernels_avx2 = {fma_loop_avx2, 12.0 * 8.0 * 2.0};

}  // namespace qf
