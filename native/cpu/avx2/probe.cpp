// AVX2 probe loops: ymm loads for the read bandwidth, 12 independent ymm FMA
// chains for the fp32 peak (12 of 16 registers; >= 8 needed in flight).
#include <immintrin.h>

#include "quantform/probe.h"

namespace qf {
namespace {

float read_sum_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

double fma_loop_avx2(int64_t iters) {
  constexpr int kChains = 12;
  __m256 a[kChains];
  for (int j = 0; j < kChains; j++) a[j] = _mm256_set1_ps((float)j);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 12
    for (int j = 0; j < kChains; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
  __m256 s = a[0];
  for (int j = 1; j < kChains; j++) s = _mm256_add_ps(s, a[j]);
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  volatile float sink = t[0] + t[7];
  (void)sink;
  return (double)iters * kChains * 8 * 2;
}

}  // namespace

const ProbeKernels probe_kernels_avx2 = {read_sum_avx2, fma_loop_avx2};

}  // namespace qf
