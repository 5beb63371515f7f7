// AVX-512 16-bit float conversions: vcvtph2ps on zmm (exact, quiets signalling
// NaNs as _ref does), bf16 by integer shifts; heads and tails use masked loads
// and stores, long outputs streaming stores.
#include <immintrin.h>

#include <cstdint>

#include "quantform/convert.h"

namespace qf {
namespace {

__mmask16 tail_mask(int64_t m) { return (__mmask16)((1u << m) - 1u); }

// Outputs at least this long (floats) bypass the cache with streaming stores: a
// loaded weight is not read again soon, and plain stores would first read every
// destination line for ownership (1.5x the memory traffic of the conversion).
constexpr int64_t kStreamMin = 1 << 16;

// dst (n) <- cvt(src (n)), 16 lanes at a time; cvt maps 16 halves to 16 floats.
template <class Cvt>
void widen(float* dst, const uint16_t* src, int64_t n, Cvt cvt) {
  int64_t i = 0;
  if (n >= kStreamMin) {
    // masked up to the next 64-byte boundary of dst (floats are 4-byte aligned), then aligned streaming stores
    const int64_t head = (int64_t)(((64 - ((uintptr_t)dst & 63)) & 63) / 4);
    if (head) _mm512_mask_storeu_ps(dst, tail_mask(head), cvt(_mm256_maskz_loadu_epi16(tail_mask(head), src)));
    for (i = head; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, cvt(_mm256_loadu_si256((const __m256i*)(src + i))));
    _mm_sfence();  // streaming stores are weakly ordered: visible before the caller (or another thread) reads dst
  }
  for (; i < n; i += 16) {
    const __mmask16 k = n - i < 16 ? tail_mask(n - i) : (__mmask16)0xffff;
    _mm512_mask_storeu_ps(dst + i, k, cvt(_mm256_maskz_loadu_epi16(k, src + i)));
  }
}

void f16_to_f32_avx512(float* dst, const uint16_t* src, int64_t n) {
  widen(dst, src, n, [](__m256i h) { return _mm512_cvtph_ps(h); });
}

void bf16_to_f32_avx512(float* dst, const uint16_t* src, int64_t n) {
  widen(dst, src, n, [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); });
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
