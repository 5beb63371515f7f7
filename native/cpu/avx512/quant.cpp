// AVX-512 (F/BW/VL/DQ) quantization family. Same arithmetic as native/ref/quant.cpp,
// in the same order (w / s, round-half-even, + z, clamp), so codes match the
// reference bit for bit. Rows are processed in chunks of kChunk positions: codes
// for a chunk land in a stack buffer, then the chunk is packed with SIMD.
#include <immintrin.h>

#include <cstring>

#include "../quant_rows.h"

namespace qf {
namespace {

__mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

__m512 rint16(__m512 x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

bool row_finite(const float* w, int64_t K) {
  __mmask16 bad = 0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) bad |= _mm512_fpclass_ps_mask(_mm512_loadu_ps(w + k), 0x99);
  if (k < K) bad |= _mm512_mask_fpclass_ps_mask(tail16(K - k), _mm512_maskz_loadu_ps(tail16(K - k), w + k), 0x99);
  return bad == 0;
}

// Codes for w[k0, k1) of one group into c8[k0 - base ...].
void quantize_span(uint8_t* c8, const float* w, int64_t k0, int64_t k1, const GroupParams& p) {
  if (p.scale == 0.f) { memset(c8, (int)p.zero, (size_t)(k1 - k0)); return; }
  const __m512 s = _mm512_set1_ps(p.scale), z = _mm512_set1_ps(p.zero);
  const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps((float)p.qmax);
  for (int64_t k = k0; k < k1; k += 16) {
    const __mmask16 m = tail16(k1 - k);
    __m512 q = _mm512_add_ps(rint16(_mm512_div_ps(_mm512_maskz_loadu_ps(m, w + k), s)), z);
    q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
    _mm_mask_storeu_epi8(c8 + (k - k0), m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
  }
}

// Packs n codes (c8) into row positions starting at k0; k0 is a multiple of 64.
void pack_chunk(uint8_t* row, const uint8_t* c8, int64_t k0, int64_t n, int bits) {
  int64_t i = 0;
  if (bits == 8) { memcpy(row + k0, c8, (size_t)n); return; }
  if (bits == 4) {
    uint8_t* dst = row + k0 / 2;
    for (; i + 64 <= n; i += 64) {
      // 16-bit lanes hold (even, odd) code pairs: even | odd << 4, then narrow to bytes
      const __m512i v = _mm512_loadu_si512(c8 + i);
      const __m512i pairs = _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi16(0x000f)),
                                            _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi16(0x00f0)));
      _mm256_storeu_si256((__m256i*)(dst + i / 2), _mm512_cvtepi16_epi8(pairs));
    }
  } else if (bits == 2) {
    uint8_t* dst = row + k0 / 4;
    for (; i + 64 <= n; i += 64) {
      // 32-bit lanes hold 4 codes a|b<<8|c<<16|d<<24 -> a|b<<2|c<<4|d<<6
      const __m512i v = _mm512_loadu_si512(c8 + i);
      const __m512i m2 = _mm512_set1_epi32(0x3);
      __m512i x = _mm512_and_si512(v, m2);
      x = _mm512_or_si512(x, _mm512_and_si512(_mm512_srli_epi32(v, 6), _mm512_set1_epi32(0x0c)));
      x = _mm512_or_si512(x, _mm512_and_si512(_mm512_srli_epi32(v, 12), _mm512_set1_epi32(0x30)));
      x = _mm512_or_si512(x, _mm512_and_si512(_mm512_srli_epi32(v, 18), _mm512_set1_epi32(0xc0)));
      _mm_storeu_si128((__m128i*)(dst + i / 4), _mm512_cvtepi32_epi8(x));
    }
  } else {  // 3: 8 codes -> 24 bits; two 64-bit lanes of codes make 6 bytes
    uint8_t* dst = row + k0 / 8 * 3;
    for (; i + 8 <= n; i += 8) {
      uint64_t v;
      memcpy(&v, c8 + i, 8);
      const uint64_t word = _pext_u64(v, 0x0707070707070707ull);
      dst[i / 8 * 3] = (uint8_t)word;
      dst[i / 8 * 3 + 1] = (uint8_t)(word >> 8);
      dst[i / 8 * 3 + 2] = (uint8_t)(word >> 16);
    }
  }
  if (i < n) pack_span(row, c8 + i, k0 + i, k0 + n, bits);
}

// Unpacks n codes from row positions starting at k0 (a multiple of 64) into c8.
void unpack_chunk(uint8_t* c8, const uint8_t* row, int64_t k0, int64_t n, int bits) {
  int64_t i = 0;
  if (bits == 8) { memcpy(c8, row + k0, (size_t)n); return; }
  if (bits == 4) {
    const uint8_t* src = row + k0 / 2;
    for (; i + 64 <= n; i += 64) {
      const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(src + i / 2)));
      const __m512i pairs = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi16(0x000f)),
                                            _mm512_slli_epi16(_mm512_and_si512(b, _mm512_set1_epi16(0x00f0)), 4));
      _mm512_storeu_si512(c8 + i, pairs);
    }
  } else if (bits == 2) {
    const uint8_t* src = row + k0 / 4;
    for (; i + 64 <= n; i += 64) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(src + i / 4)));
      __m512i x = _mm512_and_si512(b, _mm512_set1_epi32(0x3));
      x = _mm512_or_si512(x, _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x0c)), 6));
      x = _mm512_or_si512(x, _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x30)), 12));
      x = _mm512_or_si512(x, _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0xc0)), 18));
      _mm512_storeu_si512(c8 + i, x);
    }
  } else {
    const uint8_t* src = row + k0 / 8 * 3;
    for (; i + 8 <= n; i += 8) {
      const uint64_t word = (uint64_t)src[i / 8 * 3] | (uint64_t)src[i / 8 * 3 + 1] << 8 |
                            (uint64_t)src[i / 8 * 3 + 2] << 16;
      const uint64_t v = _pdep_u64(word, 0x0707070707070707ull);
      memcpy(c8 + i, &v, 8);
    }
  }
  for (; i < n; i++) c8[i] = (uint8_t)get_code(row, k0 + i, bits);
}

void group_minmax(const float* w, int64_t k0, int64_t k1, float* lo_out, float* hi_out) {
  // masked-off lanes load 0, which the range includes anyway
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  for (int64_t k = k0; k < k1; k += 16) {
    const __m512 x = _mm512_maskz_loadu_ps(tail16(k1 - k), w + k);
    lo = _mm512_min_ps(lo, x);
    hi = _mm512_max_ps(hi, x);
  }
  *lo_out = _mm512_reduce_min_ps(lo);
  *hi_out = _mm512_reduce_max_ps(hi);
}

struct Avx512 {
  static bool row_finite(const float* w, int64_t K) { return qf::row_finite(w, K); }
  static void group_minmax(const float* w, int64_t k0, int64_t k1, float* lo, float* hi) { qf::group_minmax(w, k0, k1, lo, hi); }
  static void quantize_span(uint8_t* c8, const float* w, int64_t k0, int64_t k1, const GroupParams& p) { qf::quantize_span(c8, w, k0, k1, p); }
  static void pack_chunk(uint8_t* row, const uint8_t* c8, int64_t k0, int64_t n, int bits) { qf::pack_chunk(row, c8, k0, n, bits); }
  static void unpack_chunk(uint8_t* c8, const uint8_t* row, int64_t k0, int64_t n, int bits) { qf::unpack_chunk(c8, row, k0, n, bits); }
};

void dequantize_avx512(float* w, const uint8_t* codes, const float* scales, const float* zeros,
                       int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  const float zsym = (float)(1 << (spec.bits - 1));
  alignas(64) uint8_t c8[kChunk];
  for (int64_t r = r0; r < r1; r++) {
    float* wr = w + r * K;
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
      const int64_t c1 = c0 + kChunk < K ? c0 + kChunk : K;
      unpack_chunk(c8, codes + r * rb, c0, c1 - c0, spec.bits);
      for (int64_t k = c0; k < c1;) {
        const int64_t g = k / gs;
        const int64_t e = (g + 1) * gs < c1 ? (g + 1) * gs : c1;
        const __m512 s = _mm512_set1_ps(scales[r * G + g]);
        const __m512 z = _mm512_set1_ps(spec.symmetric ? zsym : zeros[r * G + g]);
        for (; k < e; k += 16) {
          const __mmask16 m = tail16(e - k);
          const __m128i b = _mm_maskz_loadu_epi8(m, c8 + (k - c0));
          const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
          _mm512_mask_storeu_ps(wr + k, m, _mm512_mul_ps(_mm512_sub_ps(q, z), s));
        }
        k = e;
      }
    }
  }
}

void fake_quant_forward_avx512(float* out, const float* w, const float* scales, const float* zeros,
                               int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const FakeQuantRange qr = fake_quant_range(spec);
  const __m512 lo = _mm512_set1_ps(qr.lo), hi = _mm512_set1_ps(qr.hi);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t k0 = g * gs, k1 = k0 + gs < K ? k0 + gs : K;
      const float sv = scales[r * G + g];
      const float zv = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + g]);
      const __m512 s = _mm512_set1_ps(sv), z = _mm512_set1_ps(zv);
      for (int64_t k = k0; k < k1; k += 16) {
        const __mmask16 m = tail16(k1 - k);
        const int64_t i = r * K + k;
        if (sv == 0.f) { _mm512_mask_storeu_ps(out + i, m, _mm512_setzero_ps()); continue; }
        __m512 q = _mm512_add_ps(rint16(_mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), s)), z);
        q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_sub_ps(q, z), s));
      }
    }
}

void fake_quant_backward_avx512(float* dw, float* ds, float* dz, const float* gout, const float* w,
                                const float* scales, const float* zeros, int64_t r0, int64_t r1,
                                int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const FakeQuantRange qr = fake_quant_range(spec);
  const __m512 lo = _mm512_set1_ps(qr.lo), hi = _mm512_set1_ps(qr.hi);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t k0 = g * gs, k1 = k0 + gs < K ? k0 + gs : K;
      const float sv = scales[r * G + g];
      const float zv = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + g]);
      if (sv == 0.f) {
        memcpy(dw + r * K + k0, gout + r * K + k0, sizeof(float) * (size_t)(k1 - k0));
        ds[r * G + g] = 0.f;
        if (!spec.symmetric) dz[r * G + g] = 0.f;
        continue;
      }
      const __m512 s = _mm512_set1_ps(sv), z = _mm512_set1_ps(zv);
      const __m512 lo_z = _mm512_sub_ps(lo, z), hi_z = _mm512_sub_ps(hi, z);
      __m512 acc_s = _mm512_setzero_ps(), acc_z = _mm512_setzero_ps();
      for (int64_t k = k0; k < k1; k += 16) {
        const __mmask16 m = tail16(k1 - k);
        const int64_t i = r * K + k;
        const __m512 gk = _mm512_maskz_loadu_ps(m, gout + i);
        const __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), s);
        const __m512 ru = rint16(u);
        const __m512 q = _mm512_add_ps(ru, z);
        const __mmask16 below = _mm512_cmp_ps_mask(q, lo, _CMP_LT_OQ);
        const __mmask16 above = _mm512_cmp_ps_mask(q, hi, _CMP_GT_OQ);
        const __mmask16 out = below | above;
        _mm512_mask_storeu_ps(dw + i, m, _mm512_maskz_mov_ps((__mmask16)~out, gk));
        // inside: g * (round(u) - u); clamped: g * (bound - z)
        __m512 dsv = _mm512_sub_ps(ru, u);
        dsv = _mm512_mask_mov_ps(dsv, below, lo_z);
        dsv = _mm512_mask_mov_ps(dsv, above, hi_z);
        acc_s = _mm512_fmadd_ps(gk, dsv, acc_s);
        acc_z = _mm512_mask_sub_ps(acc_z, out, acc_z, _mm512_mul_ps(gk, s));
      }
      ds[r * G + g] = _mm512_reduce_add_ps(acc_s);
      if (!spec.symmetric) dz[r * G + g] = _mm512_reduce_add_ps(acc_z);
    }
}

}  // namespace

const QuantKernels quant_kernels_avx512 = {quantize_rows<Avx512>,           pack_rows<Avx512>,
                                           unpack_rows<Avx512>,             dequantize_avx512,
                                           fake_quant_forward_avx512, fake_quant_backward_avx512};

}  // namespace qf
