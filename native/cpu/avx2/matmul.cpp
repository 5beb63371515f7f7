// AVX2 dequant-matmul, fp32 accuracy (layout: matmul.h). Same plan as the
// AVX-512 file with half-width registers: a 16-row tile is two ymm. Without a
// 16-entry vpermps, a nibble becomes a float by shift, mask and convert. Only 16
// ymm registers: decode (M <= 2) handles up to two rows of x, prefill 6 x 16 blocks.
#include <immintrin.h>

#include "quantform/matmul.h"

namespace qf {
namespace {

__m256i mask8(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

void group_chunks(const PackedInt4View& w, int64_t g, int64_t* c0, int64_t* c1) {
  const int64_t k0 = g * w.group_size;
  const int64_t k1 = g == w.G - 1 ? w.KP : k0 + w.group_size;
  *c0 = k0 / QF_MM_KC;
  *c1 = k1 / QF_MM_KC;
}

// s and s*z of tile t, group g, lanes 8h .. 8h+7.
void tile_params(const PackedInt4View& w, int64_t t, int64_t g, int h, __m256* s, __m256* sz) {
  const int64_t o = (t * w.G + g) * QF_MM_NT + 8 * h;
  __m256 z;
  if (w.f16_params) {
    *s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(w.scales) + o)));
    z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(w.zeros) + o)));
  } else {
    *s = _mm256_loadu_ps(static_cast<const float*>(w.scales) + o);
    z = _mm256_loadu_ps(static_cast<const float*>(w.zeros) + o);
  }
  *sz = _mm256_mul_ps(*s, z);
}

__m256 nibble(__m256i v, int j) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(j ? _mm256_srli_epi32(v, 4 * j) : v, _mm256_set1_epi32(0xf)));
}

// Decode: MR (1 or 2) rows of x times one tile of 16 output rows.
template <int MR>
void gemv_tile(float* y, const float* x, const float* xsum, const PackedInt4View& w, int64_t t) {
  const int64_t KC = w.KP / QF_MM_KC;
  __m256 acc[MR][2];
  for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.G; g++) {
    int64_t c0, c1;
    group_chunks(w, g, &c0, &c1);
    __m256 ag[MR][2];
    for (int m = 0; m < MR; m++) ag[m][0] = ag[m][1] = _mm256_setzero_ps();
    for (int64_t c = c0; c < c1; c++) {
      const uint32_t* src = w.codes + (t * KC + c) * QF_MM_NT;
      const __m256i v0 = _mm256_loadu_si256((const __m256i*)src), v1 = _mm256_loadu_si256((const __m256i*)(src + 8));
      const float* xc = x + c * QF_MM_KC;
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++) {
        const __m256 w0 = nibble(v0, j), w1 = nibble(v1, j);
        for (int m = 0; m < MR; m++) {
          const __m256 a = _mm256_set1_ps(xc[m * w.KP + j]);
          ag[m][0] = _mm256_fmadd_ps(w0, a, ag[m][0]);
          ag[m][1] = _mm256_fmadd_ps(w1, a, ag[m][1]);
        }
      }
    }
    for (int h = 0; h < 2; h++) {
      __m256 s, sz;
      tile_params(w, t, g, h, &s, &sz);
      for (int m = 0; m < MR; m++) {
        acc[m][h] = _mm256_fmadd_ps(ag[m][h], s, acc[m][h]);
        acc[m][h] = _mm256_fnmadd_ps(sz, _mm256_set1_ps(xsum[m * w.G + g]), acc[m][h]);
      }
    }
  }
  const int64_t n0 = t * QF_MM_NT;
  for (int m = 0; m < MR; m++) {
    _mm256_maskstore_ps(y + m * w.N + n0, mask8(w.N - n0), acc[m][0]);
    _mm256_maskstore_ps(y + m * w.N + n0 + 8, mask8(w.N - n0 - 8), acc[m][1]);
  }
}

// Prefill microkernel: y (MR, 16; `valid` columns stored) = x (MR, kn) · panel[:, 0:16]
// (panel row stride 32). The store masks are built after the loop: live across
// it they would push two accumulators out of the 16 ymm registers.
template <int MR>
void gemm_block(float* y, int64_t ldy, const float* x, int64_t ldx, const float* panel, int64_t kn, int64_t valid) {
  __m256 acc[MR][2];
  for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kn; k++) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * 32), b1 = _mm256_loadu_ps(panel + k * 32 + 8);
    for (int m = 0; m < MR; m++) {
      const __m256 a = _mm256_broadcast_ss(x + m * ldx + k);
      acc[m][0] = _mm256_fmadd_ps(a, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(a, b1, acc[m][1]);
    }
  }
  const __m256i mask0 = mask8(valid), mask1 = mask8(valid - 8);
  // fully unrolled: a loop indexing acc[m] at run time would keep acc in memory
#pragma GCC unroll 8
  for (int m = 0; m < MR; m++) {
    _mm256_maskstore_ps(y + m * ldy, mask0, acc[m][0]);
    _mm256_maskstore_ps(y + m * ldy + 8, mask1, acc[m][1]);
  }
}

constexpr int kMr = 6;  // 6 x 2 accumulators + 2 panel vectors + 1 broadcast fit in 16 ymm

// y (M, 32 columns, `valid` of them real) = x (M, kn) · panel (kn, 32).
void gemm_panel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const float* panel, int64_t kn,
                int64_t valid) {
  for (int64_t h = 0; h < 2; h++) {
    const int64_t v = valid - 16 * h;
    if (v <= 0) break;
    for (int64_t m0 = 0; m0 < M; m0 += kMr) {
      float* yb = y + m0 * ldy + 16 * h;
      const float* xb = x + m0 * ldx;
      const float* pb = panel + 16 * h;
      switch (M - m0 < kMr ? M - m0 : kMr) {
        case 1: gemm_block<1>(yb, ldy, xb, ldx, pb, kn, v); break;
        case 2: gemm_block<2>(yb, ldy, xb, ldx, pb, kn, v); break;
        case 3: gemm_block<3>(yb, ldy, xb, ldx, pb, kn, v); break;
        case 4: gemm_block<4>(yb, ldy, xb, ldx, pb, kn, v); break;
        case 5: gemm_block<5>(yb, ldy, xb, ldx, pb, kn, v); break;
        default: gemm_block<6>(yb, ldy, xb, ldx, pb, kn, v); break;
      }
    }
  }
}

void decode_panel(float* panel, const PackedInt4View& w, int64_t t, int64_t ntiles) {
  const int64_t KC = w.KP / QF_MM_KC;
  for (int64_t h = 0; h < 2; h++) {
    if (h >= ntiles) {
      for (int64_t k = 0; k < w.KP; k++) {
        _mm256_storeu_ps(panel + k * 32 + 16, _mm256_setzero_ps());
        _mm256_storeu_ps(panel + k * 32 + 24, _mm256_setzero_ps());
      }
      continue;
    }
    for (int64_t g = 0; g < w.G; g++) {
      int64_t c0, c1;
      group_chunks(w, g, &c0, &c1);
      __m256 s0, s1, z0, z1;
      tile_params(w, t + h, g, 0, &s0, &z0);
      tile_params(w, t + h, g, 1, &s1, &z1);
      for (int64_t c = c0; c < c1; c++) {
        const uint32_t* src = w.codes + ((t + h) * KC + c) * QF_MM_NT;
        const __m256i v0 = _mm256_loadu_si256((const __m256i*)src), v1 = _mm256_loadu_si256((const __m256i*)(src + 8));
        float* dst = panel + c * QF_MM_KC * 32 + h * 16;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
          _mm256_storeu_ps(dst + j * 32, _mm256_fmsub_ps(nibble(v0, j), s0, z0));
          _mm256_storeu_ps(dst + j * 32 + 8, _mm256_fmsub_ps(nibble(v1, j), s1, z1));
        }
      }
    }
  }
}

void matmul_f32_avx2(float* y, const float* x, const float* xsum, int64_t M, const PackedInt4View& w, int64_t t0,
                     int64_t t1, float* scratch) {
  if (M <= 2) {
    for (int64_t m0 = 0; m0 < M; m0 += 2)
      for (int64_t t = t0; t < t1; t++) {
        if (M - m0 >= 2) gemv_tile<2>(y + m0 * w.N, x + m0 * w.KP, xsum + m0 * w.G, w, t);
        else gemv_tile<1>(y + m0 * w.N, x + m0 * w.KP, xsum + m0 * w.G, w, t);
      }
    return;
  }
  for (int64_t t = t0; t < t1; t += 2) {
    const int64_t nt = t1 - t < 2 ? t1 - t : 2, n0 = t * QF_MM_NT;
    decode_panel(scratch, w, t, nt);
    const int64_t valid = w.N - n0 < 16 * nt ? w.N - n0 : 16 * nt;
    gemm_panel(y + n0, w.N, x, w.KP, M, scratch, w.KP, valid);
  }
}

}  // namespace

const MatmulKernels matmul_kernels_avx2 = {matmul_f32_avx2};

}  // namespace qf
