// Register-only FMA loop for the peak measurement (fma_probe.h).
#include <immintrin.h>

#include "quantform/fma_probe.h"

namespace qf {
namespace {

float fma_loop_avx512(int64_t iters) {
  // 24 chains: FMA latency 4 x 2 pipes needs >= 8 in flight; more costs nothing
  __m512 acc[24];
  #pragma GCC unroll 32
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps(0.001f * (float)i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
    #pragma GCC unroll 32
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  #pragma GCC unroll 32
  for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, acc[i]);
  float out[16];
  _mm512_storeu_ps(out, s);
  return out[0] + out[15];
}

}  // namespace

const FmaProbeKernels fma_probe_kernels_avx512 = {fma_loop_avx512, 24.0 * 16.0 * 2.0};

}  // namespace qf
