// VNNI peak probe: 16 independent vpdpbusd chains on registers only. Each zmm
// vpdpbusd does 64 u8 x s8 multiply-adds = 128 int8 ops.
#include <immintrin.h>

// GCC 12's _mm512_reduce_add_* start from _mm256_undefined_*(), which -Wuninitialized flags
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "quantform/probe.h"

namespace qf {
namespace {

double vnni_loop_avx512vnni(int64_t iters) {
  constexpr int kChains = 16;
  __m512i a[kChains];
  for (int j = 0; j < kChains; j++) a[j] = _mm512_set1_epi32(j);
  const __m512i u = _mm512_set1_epi32(0x01020304), s = _mm512_set1_epi32(0x01ff01ff);
  for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 16
    for (int j = 0; j < kChains; j++) a[j] = _mm512_dpbusd_epi32(a[j], u, s);
  __m512i t = a[0];
  for (int j = 1; j < kChains; j++) t = _mm512_add_epi32(t, a[j]);
  volatile int sink = _mm512_reduce_add_epi32(t);
  (void)sink;
  return (double)iters * kChains * 64 * 2;
}

}  // namespace

const VnniProbeKernels probe_kernels_avx512vnni = {vnni_loop_avx512vnni};

}  // namespace qf
