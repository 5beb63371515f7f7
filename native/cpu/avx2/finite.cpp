// AVX2 non-finite scan: 32 floats per iteration, exponent bits compared on whole
// registers and OR-ed, so the loop body has one branch; the hit is located after.
#include <immintrin.h>

#include <cstring>

#include "quantform/finite.h"

namespace qf {
namespace {

int64_t first_non_finite_f32_avx2(const float* p, int64_t n) {
  const __m256i exp = _mm256_set1_epi32(0x7f800000);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i any = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8 * j)), exp);
      any = _mm256_or_si256(any, _mm256_cmpeq_epi32(v, exp));
    }
    if (!_mm256_testz_si256(any, any)) break;  // the hit is in these 32: the tail loop finds it
  }
  for (; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return i;
  }
  return -1;
}

}  // namespace

const FiniteKernels finite_kernels_avx2 = {first_non_finite_f32_avx2};

}  // namespace qf
