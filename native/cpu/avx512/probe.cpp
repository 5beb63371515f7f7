// AVX-512 probe loops: zmm loads for the read bandwidth, 16 independent zmm FMA
// chains (2 FMA pipes x 4-cycle latency needs >= 8 in flight) for the fp32 peak.
#include <immintrin.h>

// GCC 12's _mm512_reduce_add_* start from _mm256_undefined_*(), which -Wuninitialized flags
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "quantform/probe.h"

namespace qf {
namespace {

float read_sum_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

double fma_loop_avx512(int64_t iters) {
  constexpr int kChains = 16;
  __m512 a[kChains];
  for (int j = 0; j < kChains; j++) a[j] = _mm512_set1_ps((float)j);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 16
    for (int j = 0; j < kChains; j++) a[j] = _mm512_fmadd_ps(a[j], b, c);
  __m512 s = a[0];
  for (int j = 1; j < kChains; j++) s = _mm512_add_ps(s, a[j]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return (double)iters * kChains * 16 * 2;
}

}  // namespace

const ProbeKernels probe_kernels_avx512 = {read_sum_avx512, fma_loop_avx512};

}  // namespace qf
