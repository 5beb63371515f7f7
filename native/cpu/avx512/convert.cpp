// AVX-512 16-bit float conversions: vcvtph2ps on zmm (exact, quiets signalling
// NaNs as _ref does), bf16 by integer shifts; tails use masked loads and stores.
#include <immintrin.h>

#include "quantform/convert.h"

namespace qf {
namespace {

__mmask16 tail_mask(int64_t m) { return (__mmask16)((1u << m) - 1u); }

void f16_to_f32_avx512(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i)));
    const __m512 b = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i + 16)));
    _mm512_storeu_ps(dst + i, a);
    _mm512_storeu_ps(dst + i + 16, b);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = n - i < 16 ? tail_mask(n - i) : (__mmask16)0xffff;
    const __m256i h = _mm256_maskz_loadu_epi16(k, src + i);
    _mm512_mask_storeu_ps(dst + i, k, _mm512_cvtph_ps(h));
  }
}

void bf16_to_f32_avx512(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i < 16 ? tail_mask(n - i) : (__mmask16)0xffff;
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, src + i));
    _mm512_mask_storeu_epi32(dst + i, k, _mm512_slli_epi32(w, 16));
  }
}

void f32_to_bf16_avx512(uint16_t* dst, const float* src, int64_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), qbit = _mm512_set1_epi32(0x40);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i < 16 ? tail_mask(n - i) : (__mmask16)0xffff;
    const __m512i x = _mm512_maskz_loadu_epi32(k, src + i);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, abs_mask), inf);
    const __m512i hi = _mm512_srli_epi32(x, 16);
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, bias), _mm512_and_si512(hi, one)), 16);
    const __m512i r = _mm512_mask_or_epi32(rounded, nan, hi, qbit);
    _mm256_mask_storeu_epi16(dst + i, k, _mm512_cvtepi32_epi16(r));
  }
}

}  // namespace

const ConvertKernels convert_kernels_avx512 = {f16_to_f32_avx512, bf16_to_f32_avx512, f32_to_bf16_avx512};

}  // namespace qf
