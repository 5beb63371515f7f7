// AVX2 16-bit float conversions: F16C's vcvtph2ps widens binary16 (exact, quiets
// signalling NaNs as _ref does); bf16 is integer shifts. Heads and tails go
// through a zero-padded register-sized buffer so they take the same
// instructions; long outputs use streaming stores.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quantform/convert.h"

namespace qf {
namespace {

// Outputs at least this long (floats) bypass the cache with streaming stores: a
// loaded weight is not read again soon, and plain stores would first read every
// destination line for ownership (1.5x the memory traffic of the conversion).
constexpr int64_t kStreamMin = 1 << 16;

// dst (m <= 8) <- cvt(src (m)) through zero-padded registers: the same instructions as the body.
template <class Cvt>
void widen_short(float* dst, const uint16_t* src, int64_t m, Cvt cvt) {
  alignas(32) uint16_t in[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  alignas(32) float out[8];
  memcpy(in, src, (size_t)m * 2);
  _mm256_store_ps(out, cvt(_mm_load_si128((const __m128i*)in)));
  memcpy(dst, out, (size_t)m * 4);
}

// dst (n) <- cvt(src (n)), 8 lanes at a time; cvt maps 8 halves to 8 floats.
template <class Cvt>
void widen(float* dst, const uint16_t* src, int64_t n, Cvt cvt) {
  int64_t i = 0;
  if (n >= kStreamMin) {
    // up to the next 32-byte boundary of dst (floats are 4-byte aligned), then aligned streaming stores
    const int64_t head = (int64_t)(((32 - ((uintptr_t)dst & 31)) & 31) / 4);
    if (head) widen_short(dst, src, head, cvt);
    for (i = head; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, cvt(_mm_loadu_si128((const __m128i*)(src + i))));
    _mm_sfence();  // streaming stores are weakly ordered: visible before the caller (or another thread) reads dst
  } else {
    for (; i + 16 <= n; i += 16) {
      const __m256 a = cvt(_mm_loadu_si128((const __m128i*)(src + i)));
      const __m256 b = cvt(_mm_loadu_si128((const __m128i*)(src + i + 8)));
      _mm256_storeu_ps(dst + i, a);
      _mm256_storeu_ps(dst + i + 8, b);
    }
  }
  for (; i < n; i += 8) widen_short(dst + i, src + i, n - i < 8 ? n - i : 8, cvt);
}

void f16_to_f32_avx2(float* dst, const uint16_t* src, int64_t n) {
  widen(dst, src, n, [](__m128i h) { return _mm256_cvtph_ps(h); });
}

void bf16_to_f32_avx2(float* dst, const uint16_t* src, int64_t n) {
  widen(dst, src, n, [](__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); });
}

// 8 floats -> 8 bf16 bits in the low halves of 32-bit lanes: round to nearest even,
// NaN -> (bits >> 16) | 0x40.
__m256i bf16_round8(__m256i x) {
  const __m256i abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));  // both sides < 2^31
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

void f32_to_bf16_avx2(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = bf16_round8(_mm256_loadu_si256((const __m256i*)(src + i)));
    const __m256i b = bf16_round8(_mm256_loadu_si256((const __m256i*)(src + i + 8)));
    // packus works per 128-bit lane (values are <= 0xffff, so it does not saturate): restore order
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256((__m256i*)(dst + i), p);
  }
  for (; i < n; i += 8) {
    const int64_t m = n - i < 8 ? n - i : 8;
    alignas(32) float in[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    alignas(32) uint32_t out[8];
    memcpy(in, src + i, (size_t)m * 4);
    _mm256_store_si256((__m256i*)out, bf16_round8(_mm256_load_si256((const __m256i*)in)));
    for (int64_t j = 0; j < m; j++) dst[i + j] = (uint16_t)out[j];
  }
}

}  // namespace

const ConvertKernels convert_kernels_avx2 = {f16_to_f32_avx2, bf16_to_f32_avx2, f32_to_bf16_avx2};

}  // namespace qf
