// AVX2 + FMA quantization family: the fallback for x86-64 CPUs without AVX-512.
// Same arithmetic and order as native/ref/quant.cpp, so codes match bit for bit.
// INT2/INT3 packing stays scalar here (pdep/pext are microcoded on Zen 1/2).
#include <immintrin.h>

#include <cstring>

#include "../quant_rows.h"

namespace qf {
namespace {

__m256i tail8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

__m256 rint8(__m256 x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

bool row_finite(const float* w, int64_t K) {
  const __m256 expmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7f800000));
  __m256i bad = _mm256_setzero_si256();
  for (int64_t k = 0; k < K; k += 8) {
    const __m256 x = _mm256_maskload_ps(w + k, tail8(K - k));
    const __m256i e = _mm256_castps_si256(_mm256_and_ps(x, expmask));
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, _mm256_castps_si256(expmask)));
  }
  return _mm256_testz_si256(bad, bad);
}

void store_codes8(uint8_t* dst, __m256 q, int64_t n) {
  const __m256i i32 = _mm256_cvtps_epi32(q);
  const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  const __m128i b8 = _mm_packus_epi16(w16, w16);
  if (n >= 8) { _mm_storel_epi64((__m128i*)dst, b8); return; }
  alignas(16) uint8_t tmp[16];
  _mm_store_si128((__m128i*)tmp, b8);
  memcpy(dst, tmp, (size_t)n);
}

void quantize_span(uint8_t* c8, const float* w, int64_t k0, int64_t k1, const GroupParams& p) {
  if (p.scale == 0.f) { memset(c8, (int)p.zero, (size_t)(k1 - k0)); return; }
  const __m256 s = _mm256_set1_ps(p.scale), z = _mm256_set1_ps(p.zero);
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps((float)p.qmax);
  for (int64_t k = k0; k < k1; k += 8) {
    __m256 q = _mm256_add_ps(rint8(_mm256_div_ps(_mm256_maskload_ps(w + k, tail8(k1 - k)), s)), z);
    q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
    store_codes8(c8 + (k - k0), q, k1 - k);
  }
}

void pack_chunk(uint8_t* row, const uint8_t* c8, int64_t k0, int64_t n, int bits) {
  int64_t i = 0;
  if (bits == 8) { memcpy(row + k0, c8, (size_t)n); return; }
  if (bits == 4) {
    uint8_t* dst = row + k0 / 2;
    for (; i + 32 <= n; i += 32) {
      // 16-bit lanes hold (even, odd) code pairs: even | odd << 4, then narrow to bytes
      const __m256i v = _mm256_loadu_si256((const __m256i*)(c8 + i));
      const __m256i pairs = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi16(0x000f)),
                                            _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi16(0x00f0)));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0xd8);
      _mm_storeu_si128((__m128i*)(dst + i / 2), _mm256_castsi256_si128(packed));
    }
  }
  if (i < n) pack_span(row, c8 + i, k0 + i, k0 + n, bits);
}

void unpack_chunk(uint8_t* c8, const uint8_t* row, int64_t k0, int64_t n, int bits) {
  int64_t i = 0;
  if (bits == 8) { memcpy(c8, row + k0, (size_t)n); return; }
  if (bits == 4) {
    const uint8_t* src = row + k0 / 2;
    for (; i + 32 <= n; i += 32) {
      const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(src + i / 2)));
      const __m256i pairs = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi16(0x000f)),
                                            _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x00f0)), 4));
      _mm256_storeu_si256((__m256i*)(c8 + i), pairs);
    }
  }
  for (; i < n; i++) c8[i] = (uint8_t)get_code(row, k0 + i, bits);
}

float hmin8(__m256 v) {
  __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_min_ps(x, _mm_movehl_ps(x, x));
  x = _mm_min_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
float hmax8(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
float hsum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

void group_minmax(const float* w, int64_t k0, int64_t k1, float* lo_out, float* hi_out) {
  // masked-off lanes load 0, which the range includes anyway
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t k = k0; k < k1; k += 8) {
    const __m256 x = _mm256_maskload_ps(w + k, tail8(k1 - k));
    lo = _mm256_min_ps(lo, x);
    hi = _mm256_max_ps(hi, x);
  }
  *lo_out = hmin8(lo);
  *hi_out = hmax8(hi);
}

struct Avx2 {
  static bool row_finite(const float* w, int64_t K) { return qf::row_finite(w, K); }
  static void group_minmax(const float* w, int64_t k0, int64_t k1, float* lo, float* hi) { qf::group_minmax(w, k0, k1, lo, hi); }
  static void quantize_span(uint8_t* c8, const float* w, int64_t k0, int64_t k1, const GroupParams& p) { qf::quantize_span(c8, w, k0, k1, p); }
  static void pack_chunk(uint8_t* row, const uint8_t* c8, int64_t k0, int64_t n, int bits) { qf::pack_chunk(row, c8, k0, n, bits); }
  static void unpack_chunk(uint8_t* c8, const uint8_t* row, int64_t k0, int64_t n, int bits) { qf::unpack_chunk(c8, row, k0, n, bits); }
};

void dequantize_avx2(float* w, const uint8_t* codes, const float* scales, const float* zeros,
                     int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  const float zsym = (float)(1 << (spec.bits - 1));
  alignas(64) uint8_t c8[kChunk + 8];  // +8: full 8-byte loads at a chunk's end
  for (int64_t r = r0; r < r1; r++) {
    float* wr = w + r * K;
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
      const int64_t c1 = c0 + kChunk < K ? c0 + kChunk : K;
      unpack_chunk(c8, codes + r * rb, c0, c1 - c0, spec.bits);
      for (int64_t k = c0; k < c1;) {
        const int64_t g = k / gs;
        const int64_t e = (g + 1) * gs < c1 ? (g + 1) * gs : c1;
        const __m256 s = _mm256_set1_ps(scales[r * G + g]);
        const __m256 z = _mm256_set1_ps(spec.symmetric ? zsym : zeros[r * G + g]);
        for (; k < e; k += 8) {
          const __m128i b = _mm_loadl_epi64((const __m128i*)(c8 + (k - c0)));
          const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
          _mm256_maskstore_ps(wr + k, tail8(e - k), _mm256_mul_ps(_mm256_sub_ps(q, z), s));
        }
        k = e;
      }
    }
  }
}

void fake_quant_forward_avx2(float* out, const float* w, const float* scales, const float* zeros,
                             int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const FakeQuantRange qr = fake_quant_range(spec);
  const __m256 lo = _mm256_set1_ps(qr.lo), hi = _mm256_set1_ps(qr.hi);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t k0 = g * gs, k1 = k0 + gs < K ? k0 + gs : K;
      const float sv = scales[r * G + g];
      const float zv = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + g]);
      const __m256 s = _mm256_set1_ps(sv), z = _mm256_set1_ps(zv);
      for (int64_t k = k0; k < k1; k += 8) {
        const __m256i m = tail8(k1 - k);
        const int64_t i = r * K + k;
        if (sv == 0.f) { _mm256_maskstore_ps(out + i, m, _mm256_setzero_ps()); continue; }
        __m256 q = _mm256_add_ps(rint8(_mm256_div_ps(_mm256_maskload_ps(w + i, m), s)), z);
        q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
      }
    }
}

void fake_quant_backward_avx2(float* dw, float* ds, float* dz, const float* gout, const float* w,
                              const float* scales, const float* zeros, int64_t r0, int64_t r1,
                              int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const FakeQuantRange qr = fake_quant_range(spec);
  const __m256 lo = _mm256_set1_ps(qr.lo), hi = _mm256_set1_ps(qr.hi);
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
      const __m256 s = _mm256_set1_ps(sv), z = _mm256_set1_ps(zv);
      const __m256 lo_z = _mm256_sub_ps(lo, z), hi_z = _mm256_sub_ps(hi, z);
      __m256 acc_s = _mm256_setzero_ps(), acc_z = _mm256_setzero_ps();
      for (int64_t k = k0; k < k1; k += 8) {
        const __m256i m = tail8(k1 - k);
        const int64_t i = r * K + k;
        const __m256 gk = _mm256_maskload_ps(gout + i, m);
        const __m256 u = _mm256_div_ps(_mm256_maskload_ps(w + i, m), s);
        const __m256 ru = rint8(u);
        const __m256 q = _mm256_add_ps(ru, z);
        const __m256 below = _mm256_cmp_ps(q, lo, _CMP_LT_OQ);
        const __m256 above = _mm256_cmp_ps(q, hi, _CMP_GT_OQ);
        const __m256 out = _mm256_or_ps(below, above);
        _mm256_maskstore_ps(dw + i, m, _mm256_andnot_ps(out, gk));
        // inside: g * (round(u) - u); clamped: g * (bound - z)
        __m256 dsv = _mm256_sub_ps(ru, u);
        dsv = _mm256_blendv_ps(dsv, lo_z, below);
        dsv = _mm256_blendv_ps(dsv, hi_z, above);
        acc_s = _mm256_fmadd_ps(gk, dsv, acc_s);
        acc_z = _mm256_sub_ps(acc_z, _mm256_and_ps(out, _mm256_mul_ps(gk, s)));
      }
      ds[r * G + g] = hsum8(acc_s);
      if (!spec.symmetric) dz[r * G + g] = hsum8(acc_z);
    }
}

}  // namespace

const QuantKernels quant_kernels_avx2 = {quantize_rows<Avx2>,           pack_rows<Avx2>,
                                         unpack_rows<Avx2>,             dequantize_avx2,
                                         fake_quant_forward_avx2, fake_quant_backward_avx2};

}  // namespace qf
