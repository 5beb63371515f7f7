// AVX-512 quantized-linear backward (qlinear.h). Both gradients are GEMMs on the
// engine's AVX-512 GEMM, around small pieces decoded from the codes:
//   dx[:, k0:k1] = Σ over row chunks of dy[:, n-chunk] · Ŵ[n-chunk, k0:k1]
//       (each chunk of Ŵ dequantized into the task's scratch, then multiplied);
//   ds[n0:n1, :] += reduce over each group of (q - z) ⊙ (dyᵀ x)[n0:n1, k-chunk]
//       (the chunk of dyᵀ x computed into scratch, then reduced against the codes).
// Decoding a piece costs O(rows x cols) against its GEMM's O(M x rows x cols), a
// small fraction at training token counts (M in the hundreds); codes are unpacked
// by SIMD byte shuffles (INT2/INT4), 24-bit words (INT3) or copied (INT8).
// Sums run in f32 lanes (the reference uses double): named tolerances in
// test/qlinear.test.ts.
#include <immintrin.h>

#include <cstring>

#include "../../ref/quant_common.h"
#include "quantform/qlinear.h"
#include "quantform/engine.h"

namespace qf {
namespace {

// The one call into the engine's GEMM (this tier's table entry).
void gemm_tile(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool acc,
               float* pack) {
  engine_kernels_avx512.gemm(C, ldc, A, B, M, N, K, acc, 0, N, pack);
}

__mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

// c8[0, k1 - k0) = codes of row positions [k0, k1), k0 % 8 == 0 (whole INT3 blocks and bytes).
void decode_codes(uint8_t* c8, const uint8_t* row, int64_t k0, int64_t k1, int bits) {
  const int64_t n = k1 - k0;
  int64_t j = 0;
  if (bits == 8) {
    memcpy(c8, row + k0, (size_t)n);
    return;
  }
  if (bits == 4) {
    const __m128i lo_mask = _mm_set1_epi8(0x0f);
    for (; j + 32 <= n; j += 32) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (k0 + j) / 2));
      const __m128i lo = _mm_and_si128(b, lo_mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo_mask);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j), _mm_unpacklo_epi8(lo, hi));       // low nibble first
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j + 16), _mm_unpackhi_epi8(lo, hi));
    }
  } else if (bits == 2) {
    // 16 bytes -> 64 codes: the four 2-bit fields of every byte, then interleaved so
    // byte i's fields land at 4i .. 4i + 3 (lowest bits first)
    const __m128i m2 = _mm_set1_epi8(0x03);
    for (; j + 64 <= n; j += 64) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (k0 + j) / 4));
      const __m128i f0 = _mm_and_si128(b, m2), f1 = _mm_and_si128(_mm_srli_epi16(b, 2), m2);
      const __m128i f2 = _mm_and_si128(_mm_srli_epi16(b, 4), m2), f3 = _mm_and_si128(_mm_srli_epi16(b, 6), m2);
      const __m128i a_lo = _mm_unpacklo_epi8(f0, f1), a_hi = _mm_unpackhi_epi8(f0, f1);  // (f0, f1) pairs
      const __m128i b_lo = _mm_unpacklo_epi8(f2, f3), b_hi = _mm_unpackhi_epi8(f2, f3);  // (f2, f3) pairs
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j), _mm_unpacklo_epi16(a_lo, b_lo));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j + 16), _mm_unpackhi_epi16(a_lo, b_lo));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j + 32), _mm_unpacklo_epi16(a_hi, b_hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + j + 48), _mm_unpackhi_epi16(a_hi, b_hi));
    }
  } else if (bits == 3) {
    for (; j + 8 <= n; j += 8) {  // one 24-bit word per block of 8 codes
      const uint8_t* b = row + (k0 + j) / 8 * 3;
      const uint32_t w = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
      for (int t = 0; t < 8; t++) c8[j + t] = (uint8_t)((w >> (3 * t)) & 7u);
    }
  }
  for (; j < n; j++) c8[j] = (uint8_t)get_code(row, k0 + j, bits);
}

// out[0, k1 - k0) = (q - z) * s over row positions [k0, k1), group by group;
// srow null: (q - z) only. c8: the codes of [k0, k1).
void centered(float* out, const uint8_t* c8, const float* srow, const float* zrow, float zsym, int64_t k0, int64_t k1,
              int64_t gs) {
  for (int64_t ka = k0; ka < k1;) {
    const int64_t g = ka / gs, kb = (g + 1) * gs < k1 ? (g + 1) * gs : k1;
    const __m512 z = _mm512_set1_ps(zrow ? zrow[g] : zsym), s = _mm512_set1_ps(srow ? srow[g] : 1.f);
    for (int64_t k = ka; k < kb; k += 16) {
      const __mmask16 m = tail16(kb - k);
      const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, c8 + (k - k0))));
      // (q - z) * s, the operation order of dequantize
      _mm512_mask_storeu_ps(out + (k - k0), m, srow ? _mm512_mul_ps(_mm512_sub_ps(q, z), s) : _mm512_sub_ps(q, z));
    }
    ka = kb;
  }
}

void grad_input_avx512(float* dx, const float* dy, const uint8_t* codes, const float* scales, const float* zeros,
                       int64_t M, int64_t N, int64_t K, const QuantSpec& spec, int64_t k0, int64_t k1, float* scratch) {
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K), kt = k1 - k0;
  const float zsym = (float)(1 << (spec.bits - 1));
  float* wt = scratch;                                     // (kQLinearRowChunk, kt) a dequantized piece of Ŵ
  float* pack = scratch + kQLinearPieceFloats;
  alignas(64) uint8_t c8[kQLinearColTile];                 // (kt) codes of one row of the piece
  for (int64_t n0 = 0; n0 < N; n0 += kQLinearRowChunk) {
    const int64_t nc = N - n0 < kQLinearRowChunk ? N - n0 : kQLinearRowChunk;
    for (int64_t r = 0; r < nc; r++) {
      const int64_t n = n0 + r;
      decode_codes(c8, codes + n * rb, k0, k1, spec.bits);
      centered(wt + r * kt, c8, scales + n * G, zeros ? zeros + n * G : nullptr, zsym, k0, k1, spec.group_size);
    }
    // dx[:, k0:k1] (+)= dy[:, n0:n0+nc] (M, nc) · wt (nc, kt)
    gemm_tile(dx + k0, K, StridedMat{dy + n0, N, 1}, StridedMat{wt, kt, 1}, M, kt, nc, n0 > 0, pack);
  }
}

float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

void grad_scales_avx512(float* ds, const float* dy, const float* x, const uint8_t* codes, const float* zeros, int64_t M,
                        int64_t N, int64_t K, const QuantSpec& spec, int64_t n0, int64_t n1, float* scratch) {
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K), nt = n1 - n0;
  const int64_t gs = spec.group_size;
  const float zsym = (float)(1 << (spec.bits - 1));
  float* gt = scratch;                                     // (nt, kc) a piece of dyᵀ x
  float* pack = scratch + kQLinearPieceFloats;
  alignas(64) uint8_t c8[kQLinearColChunk];                // (kc) codes of one row of the piece
  alignas(64) float qz[kQLinearColChunk];                  // (kc) q - z of that row
  for (int64_t kc0 = 0; kc0 < K; kc0 += kQLinearColChunk) {
    const int64_t kc = K - kc0 < kQLinearColChunk ? K - kc0 : kQLinearColChunk;
    // gt (nt, kc) = dy[:, n0:n1]ᵀ · x[:, kc0:kc0+kc]
    gemm_tile(gt, kc, StridedMat{dy + n0, 1, N}, StridedMat{x + kc0, K, 1}, nt, kc, M, false, pack);
    for (int64_t r = 0; r < nt; r++) {
      const int64_t n = n0 + r;
      decode_codes(c8, codes + n * rb, kc0, kc0 + kc, spec.bits);
      centered(qz, c8, nullptr, zeros ? zeros + n * G : nullptr, zsym, kc0, kc0 + kc, gs);
      const float* gr = gt + r * kc;
      for (int64_t ka = kc0; ka < kc0 + kc;) {
        const int64_t g = ka / gs, kb = (g + 1) * gs < kc0 + kc ? (g + 1) * gs : kc0 + kc;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t k = ka; k < kb; k += 16) {
          const __mmask16 m = tail16(kb - k);
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qz + (k - kc0)), _mm512_maskz_loadu_ps(m, gr + (k - kc0)), acc);
        }
        ds[n * G + g] += hsum(acc);
        ka = kb;
      }
    }
  }
}

}  // namespace

const QLinearKernels qlinear_kernels_avx512 = {grad_input_avx512, grad_scales_avx512};

}  // namespace qf
