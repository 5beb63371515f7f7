// AVX-512 non-finite scan: 64 floats per iteration, the exponent test as a mask
// compare per register; the first set mask bit is the index.
#include <immintrin.h>

#include <cstring>

#include "quantform/finite.h"

namespace qf {
namespace {

int64_t first_non_finite_f32_avx512(const float* p, int64_t n) {
  const __m512i exp = _mm512_set1_epi32(0x7f800000);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __mmask16 m0 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512(p + i), exp), exp);
    const __mmask16 m1 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512(p + i + 16), exp), exp);
    const __mmask16 m2 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512(p + i + 32), exp), exp);
    const __mmask16 m3 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512(p + i + 48), exp), exp);
    const uint64_t m = (uint64_t)m0 | ((uint64_t)m1 << 16) | ((uint64_t)m2 << 32) | ((uint64_t)m3 << 48);
    if (m) return i + __builtin_ctzll(m);
  }
  if (i < n) {
    const __mmask16 tail_all = 0xffff;
    for (; i < n; i += 16) {
      const int64_t left = n - i;
      const __mmask16 k = left >= 16 ? tail_all : (__mmask16)((1u << left) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(k, p + i);
      const __mmask16 m = _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(v, exp), exp);
      if (m) return i + __builtin_ctz(m);
    }
  }
  return -1;
}

}  // namespace

const FiniteKernels finite_kernels_avx512 = {first_non_finite_f32_avx512};

}  // namespace qf
