// AVX-512 VNNI dequant-matmul, int8 accuracy (algorithm and xq layout: matmul.h).
// Only called when vnni_available(). vpdpbusd multiplies the unsigned 4-bit codes
// (as u8) with the signed int8 activations and sums 4 products into int32 lanes,
// exactly; each group's int32 sum is converted and scaled once.
//   M <= 8: code words are split into low / high nibbles (even / odd k) in
//     registers; x is broadcast 4 bytes at a time from the permuted xq rows.
//   M > 8: 32 output rows are split into a byte panel once, then a 6 x 32
//     microkernel runs 4 vpdpbusd per chunk of 8 k per row of x.
#include <immintrin.h>

#include <cfloat>
#include <cmath>

#include "quantform/matmul.h"

namespace qf {
namespace {

__mmask16 lanes_below(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }

void group_chunks(const PackedInt4View& w, int64_t g, int64_t* c0, int64_t* c1) {
  const int64_t k0 = g * w.group_size;
  const int64_t k1 = g == w.G - 1 ? w.KP : k0 + w.group_size;
  *c0 = k0 / QF_MM_KC;
  *c1 = k1 / QF_MM_KC;
}

typedef int32_t __attribute__((may_alias, aligned(1))) unaligned_i32;

// acc += u8 codes x the 4 int8 at x broadcast to every lane ({1to16} memory
// operand). Inline asm because GCC 12 copies the accumulator to a fresh register
// around every intrinsic vpdpbusd in these loops (twice the instructions) and
// does not fold the broadcast into the instruction.
__m512i dpbusd_x4(__m512i acc, __m512i u8, const int8_t* x) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*reinterpret_cast<const unaligned_i32*>(x)));
  return acc;
}

// s and s*z of tile t, group g: one lane per output row.
void tile_params(const PackedInt4View& w, int64_t t, int64_t g, __m512* s, __m512* sz) {
  const int64_t o = (t * w.G + g) * QF_MM_NT;
  __m512 z;
  if (w.f16_params) {
    *s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.scales) + o)));
    z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.zeros) + o)));
  } else {
    *s = _mm512_loadu_ps(static_cast<const float*>(w.scales) + o);
    z = _mm512_loadu_ps(static_cast<const float*>(w.zeros) + o);
  }
  *sz = _mm512_mul_ps(*s, z);
}

template <int MR, int NT>
void gemv_tiles(float* y, const int8_t* xq, const float* xs, const float* xsumq, const PackedInt4View& w, int64_t t) {
  const int64_t KC = w.KP / QF_MM_KC;
  const __m512i low4 = _mm512_set1_epi32(0x0f0f0f0f);
  __m512 fa[MR][NT];
  for (int m = 0; m < MR; m++)
    for (int i = 0; i < NT; i++) fa[m][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; g++) {
    int64_t c0, c1;
    group_chunks(w, g, &c0, &c1);
    __m512i ia[MR][NT];
    for (int m = 0; m < MR; m++)
      for (int i = 0; i < NT; i++) ia[m][i] = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; c++)
      for (int i = 0; i < NT; i++) {
        const __m512i v = _mm512_loadu_si512(w.codes + ((t + i) * KC + c) * QF_MM_NT);
        const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
        // x broadcasts are vpdpbusd's {1to16} memory operand: they cost no register
        // (2 * MR of them would not fit next to the accumulators)
        for (int m = 0; m < MR; m++) {
          ia[m][i] = dpbusd_x4(ia[m][i], lo, xq + m * w.KP + c * QF_MM_KC);
          ia[m][i] = dpbusd_x4(ia[m][i], hi, xq + m * w.KP + c * QF_MM_KC + 4);
        }
      }
    for (int i = 0; i < NT; i++) {
      __m512 s, sz;
      tile_params(w, t + i, g, &s, &sz);
      for (int m = 0; m < MR; m++) {
        fa[m][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][i]), s, fa[m][i]);
        fa[m][i] = _mm512_fnmadd_ps(sz, _mm512_set1_ps(xsumq[m * w.G + g]), fa[m][i]);
      }
    }
  }
  for (int i = 0; i < NT; i++) {
    const int64_t n0 = (t + i) * QF_MM_NT;
    for (int m = 0; m < MR; m++)
      _mm512_mask_storeu_ps(y + m * w.N + n0, lanes_below(w.N - n0), _mm512_mul_ps(fa[m][i], _mm512_set1_ps(xs[m])));
  }
}

template <int MR>
void gemv_rows(float* y, const int8_t* xq, const float* xs, const float* xsumq, const PackedInt4View& w, int64_t t0,
               int64_t t1) {
  // 4 tiles = 4 weight streams per thread. Zen 4, 32768x4096 M=1, best of 100:
  // 2.05 ms with 4 tiles, 2.33 with 2, 2.65 with 6, 2.40 with 8 (bandwidth-bound
  // decode: more streams than the prefetcher tracks well cost more than they hide)
  constexpr int NT = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;
  int64_t t = t0;
  for (; t + NT <= t1; t += NT) gemv_tiles<MR, NT>(y, xq, xs, xsumq, w, t);
  for (; t < t1; t++) gemv_tiles<MR, 1>(y, xq, xs, xsumq, w, t);
}

// panel (KC, 4, 16) u32: per chunk the low nibbles of tiles t, t+1, then the high
// nibbles of tiles t, t+1, one code per byte (u8 operands of vpdpbusd).
void split_panel(uint32_t* panel, const PackedInt4View& w, int64_t t, int64_t ntiles) {
  const int64_t KC = w.KP / QF_MM_KC;
  const __m512i low4 = _mm512_set1_epi32(0x0f0f0f0f);
  for (int64_t c = 0; c < KC; c++)
    for (int64_t h = 0; h < 2; h++) {
      __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
      if (h < ntiles) {
        const __m512i v = _mm512_loadu_si512(w.codes + ((t + h) * KC + c) * QF_MM_NT);
        lo = _mm512_and_si512(v, low4);
        hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
      }
      _mm512_storeu_si512(panel + c * 64 + h * 16, lo);
      _mm512_storeu_si512(panel + c * 64 + 32 + h * 16, hi);
    }
}

template <int MR>
void gemm_block(float* y, const int8_t* xq, const float* xs, const float* xsumq, const PackedInt4View& w,
                const uint32_t* panel, int64_t t, int64_t ntiles) {
  __m512 fa[MR][2];
  for (int m = 0; m < MR; m++) fa[m][0] = fa[m][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; g++) {
    int64_t c0, c1;
    group_chunks(w, g, &c0, &c1);
    __m512i ia[MR][2];
    for (int m = 0; m < MR; m++) ia[m][0] = ia[m][1] = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; c++) {
      const uint32_t* p = panel + c * 64;
      const __m512i lo0 = _mm512_loadu_si512(p), lo1 = _mm512_loadu_si512(p + 16);
      const __m512i hi0 = _mm512_loadu_si512(p + 32), hi1 = _mm512_loadu_si512(p + 48);
      for (int m = 0; m < MR; m++) {
        const int8_t* xc = xq + m * w.KP + c * QF_MM_KC;
        ia[m][0] = dpbusd_x4(ia[m][0], lo0, xc);
        ia[m][1] = dpbusd_x4(ia[m][1], lo1, xc);
        ia[m][0] = dpbusd_x4(ia[m][0], hi0, xc + 4);
        ia[m][1] = dpbusd_x4(ia[m][1], hi1, xc + 4);
      }
    }
    for (int h = 0; h < 2; h++) {
      if (h >= ntiles) break;
      __m512 s, sz;
      tile_params(w, t + h, g, &s, &sz);
      for (int m = 0; m < MR; m++) {
        fa[m][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][h]), s, fa[m][h]);
        fa[m][h] = _mm512_fnmadd_ps(sz, _mm512_set1_ps(xsumq[m * w.G + g]), fa[m][h]);
      }
    }
  }
  const int64_t n0 = t * QF_MM_NT;
  for (int m = 0; m < MR; m++) {
    const __m512 sx = _mm512_set1_ps(xs[m]);
    _mm512_mask_storeu_ps(y + m * w.N + n0, lanes_below(w.N - n0), _mm512_mul_ps(fa[m][0], sx));
    if (ntiles == 2) _mm512_mask_storeu_ps(y + m * w.N + n0 + 16, lanes_below(w.N - n0 - 16), _mm512_mul_ps(fa[m][1], sx));
  }
}

constexpr int kMr = 6;  // 6 x 2 int32 + 6 x 2 fp32 accumulators + 4 panel vectors + 2 broadcasts: 30 zmm

void matmul_int8_avx512vnni(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M,
                            const PackedInt4View& w, int64_t t0, int64_t t1, uint8_t* scratch) {
  switch (M) {
    case 1: gemv_rows<1>(y, xq, xs, xsumq, w, t0, t1); return;
    case 2: gemv_rows<2>(y, xq, xs, xsumq, w, t0, t1); return;
    case 3: gemv_rows<3>(y, xq, xs, xsumq, w, t0, t1); return;
    case 4: gemv_rows<4>(y, xq, xs, xsumq, w, t0, t1); return;
    case 5: gemv_rows<5>(y, xq, xs, xsumq, w, t0, t1); return;
    case 6: gemv_rows<6>(y, xq, xs, xsumq, w, t0, t1); return;
    case 7: gemv_rows<7>(y, xq, xs, xsumq, w, t0, t1); return;
    case 8: gemv_rows<8>(y, xq, xs, xsumq, w, t0, t1); return;
    default: break;
  }
  uint32_t* panel = reinterpret_cast<uint32_t*>(scratch);
  for (int64_t t = t0; t < t1; t += 2) {
    const int64_t nt = t1 - t < 2 ? t1 - t : 2;
    split_panel(panel, w, t, nt);
    for (int64_t m0 = 0; m0 < M; m0 += kMr) {
      float* yb = y + m0 * w.N;
      const int8_t* xb = xq + m0 * w.KP;
      const float* sb = xs + m0;
      const float* gb = xsumq + m0 * w.G;
      switch (M - m0 < kMr ? M - m0 : kMr) {
        case 1: gemm_block<1>(yb, xb, sb, gb, w, panel, t, nt); break;
        case 2: gemm_block<2>(yb, xb, sb, gb, w, panel, t, nt); break;
        case 3: gemm_block<3>(yb, xb, sb, gb, w, panel, t, nt); break;
        case 4: gemm_block<4>(yb, xb, sb, gb, w, panel, t, nt); break;
        case 5: gemm_block<5>(yb, xb, sb, gb, w, panel, t, nt); break;
        default: gemm_block<6>(yb, xb, sb, gb, w, panel, t, nt); break;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Split accuracy (matmul.h): fp32 activations as three int8 digits per element.
// ---------------------------------------------------------------------------

// Lanes of one 16-float half of a block, permuted per chunk of 8 to the xq order.
__m512i chunk_order() { return _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15); }

// Balanced base-256 digits of xi (|xi| <= QF_SPLIT_MAX): l, then m, then h.
void digits(__m512i xi, __m512i* h, __m512i* m, __m512i* l) {
  const __m512i c128 = _mm512_set1_epi32(128), c255 = _mm512_set1_epi32(255);
  *l = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(xi, c128), c255), c128);
  const __m512i r = _mm512_srai_epi32(_mm512_sub_epi32(xi, *l), 8);
  *m = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(r, c128), c255), c128);
  *h = _mm512_srai_epi32(_mm512_sub_epi32(r, *m), 8);
}

// Stores the 16 digits of d (chunks c and c + 1 of the half) as bytes at their chunk slots.
void store_digits(int8_t* xd, int64_t c, bool two, int i, __m512i d) {
  const __m128i b = _mm512_cvtepi32_epi8(_mm512_permutexvar_epi32(chunk_order(), d));
  _mm_storel_epi64((__m128i*)(xd + c * 24 + i * 8), b);
  if (two) _mm_storel_epi64((__m128i*)(xd + (c + 1) * 24 + i * 8), _mm_unpackhi_epi64(b, b));
}

void split_x_avx512vnni(int8_t* xd, float* sx, int32_t* zs, float* xsum, const float* x, int64_t M, int64_t K,
                        int64_t KP, int64_t bc) {
  const int64_t KC = KP / QF_MM_KC, NB = (KC + bc - 1) / bc;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff)), fmax = _mm512_set1_ps(FLT_MAX);
  const __m512i lim = _mm512_set1_epi32(QF_SPLIT_MAX), nlim = _mm512_set1_epi32(-QF_SPLIT_MAX);
  for (int64_t m = 0; m < M; m++) {
    const float* xr = x + m * K;
    int8_t* xdr = xd + m * KC * 24;
    for (int64_t j = 0; j < NB; j++) {
      const int64_t c0 = j * bc, c1 = c0 + bc < KC ? c0 + bc : KC, k0 = c0 * QF_MM_KC;
      const int64_t valid = K - k0 < (c1 - c0) * QF_MM_KC ? K - k0 : (c1 - c0) * QF_MM_KC;
      __m512 a[2];
      a[0] = _mm512_maskz_loadu_ps(lanes_below(valid), xr + k0);
      a[1] = _mm512_maskz_loadu_ps(lanes_below(valid - 16), xr + k0 + 16);
      const __m512 a0 = _mm512_and_ps(a[0], absmask), a1 = _mm512_and_ps(a[1], absmask);
      const bool finite = (_mm512_cmp_ps_mask(a0, fmax, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, fmax, _CMP_NLE_UQ)) == 0;
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
      const float inv = amax > 0.f && finite ? (float)QF_SPLIT_MAX / amax : 0.f;
      const __m512 vinv = _mm512_set1_ps(inv);
      __m512i sum[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
      for (int hf = 0; hf < 2 && c0 + 2 * hf < c1; hf++) {
        const __m512i xi = _mm512_max_epi32(nlim, _mm512_min_epi32(lim, _mm512_cvtps_epi32(_mm512_mul_ps(a[hf], vinv))));
        __m512i d[3];
        digits(xi, &d[0], &d[1], &d[2]);
        const int64_t c = c0 + 2 * hf;
        for (int i = 0; i < 3; i++) {
          store_digits(xdr, c, c + 1 < c1, i, d[i]);
          sum[i] = _mm512_add_epi32(sum[i], d[i]);
        }
      }
      sx[m * NB + j] = finite ? amax / (float)QF_SPLIT_MAX : NAN;
      int32_t t[3];
      for (int i = 0; i < 3; i++) {
        t[i] = _mm512_reduce_add_epi32(sum[i]);
        zs[(m * NB + j) * 3 + i] = -8 * t[i];
      }
      xsum[m * NB + j] = (float)(65536 * (int64_t)t[0] + 256 * (int64_t)t[1] + t[2]);
    }
  }
}

// Weight scales (and zeros) of tile t, group g, one lane per output row.
void tile_scale_zero(const PackedInt4View& w, int64_t t, int64_t g, __m512* s, __m512* z) {
  const int64_t o = (t * w.G + g) * QF_MM_NT;
  if (w.f16_params) {
    *s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.scales) + o)));
    *z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.zeros) + o)));
  } else {
    *s = _mm512_loadu_ps(static_cast<const float*>(w.scales) + o);
    *z = _mm512_loadu_ps(static_cast<const float*>(w.zeros) + o);
  }
}

// Code words are prefetched this many chunks ahead in each tile's stream (as the fp32
// decode: the hardware prefetcher alone keeps too few lines in flight for 4 streams).
constexpr int64_t kSplitPrefetch = 8;

// MR rows of x (from row m0) times NT tiles of 16 output rows from tile t.
template <int MR, int NT, bool SYM>
void split_tiles(float* y, const SplitX& x, int64_t m0, const PackedInt4View& w, int64_t t) {
  const int64_t KC = w.KP / QF_MM_KC, bc = x.bc, NB = x.NB;
  const __m512i low4 = _mm512_set1_epi32(0x0f0f0f0f);
  const int8_t* xd = x.xd + m0 * KC * 24;
  __m512 fa[MR][NT];
  for (int m = 0; m < MR; m++)
    for (int i = 0; i < NT; i++) fa[m][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; g++) {
    int64_t c0, c1;
    group_chunks(w, g, &c0, &c1);
    __m512 s[NT], z[NT];
    for (int i = 0; i < NT; i++) tile_scale_zero(w, t + i, g, &s[i], &z[i]);
    __m512 accg[MR][NT];
    for (int64_t j = c0 / bc; j * bc < c1; j++) {
      __m512i ia[MR][NT][3];
      for (int m = 0; m < MR; m++)
        for (int d = 0; d < 3; d++) {
          const __m512i init = SYM ? _mm512_set1_epi32(x.zs[((m0 + m) * NB + j) * 3 + d]) : _mm512_setzero_si512();
          for (int i = 0; i < NT; i++) ia[m][i][d] = init;
        }
      const int64_t ce = (j + 1) * bc < c1 ? (j + 1) * bc : c1;
      for (int64_t c = j * bc; c < ce; c++) {
        const int64_t cp = c + kSplitPrefetch < KC ? c + kSplitPrefetch : KC - 1;
        for (int i = 0; i < NT; i++) {
          _mm_prefetch((const char*)(w.codes + ((t + i) * KC + cp) * QF_MM_NT), _MM_HINT_T0);
          const __m512i v = _mm512_loadu_si512(w.codes + ((t + i) * KC + c) * QF_MM_NT);
          const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
          for (int m = 0; m < MR; m++) {
            const int8_t* xc = xd + m * KC * 24 + c * 24;
            for (int d = 0; d < 3; d++) {
              ia[m][i][d] = dpbusd_x4(ia[m][i][d], lo, xc + d * 8);
              ia[m][i][d] = dpbusd_x4(ia[m][i][d], hi, xc + d * 8 + 4);
            }
          }
        }
      }
      for (int m = 0; m < MR; m++) {
        const __m512 sxj = _mm512_set1_ps(x.sx[(m0 + m) * NB + j]);
        for (int i = 0; i < NT; i++) {
          const __m512i hm = _mm512_add_epi32(_mm512_slli_epi32(ia[m][i][0], 8), ia[m][i][1]);
          __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hm), _mm512_set1_ps(256.f), _mm512_cvtepi32_ps(ia[m][i][2]));
          if (!SYM) v = _mm512_fnmadd_ps(z[i], _mm512_set1_ps(x.xsum[(m0 + m) * NB + j]), v);
          accg[m][i] = j * bc == c0 ? _mm512_mul_ps(v, sxj) : _mm512_fmadd_ps(v, sxj, accg[m][i]);
        }
      }
    }
    for (int m = 0; m < MR; m++)
      for (int i = 0; i < NT; i++) fa[m][i] = _mm512_fmadd_ps(accg[m][i], s[i], fa[m][i]);
  }
  for (int i = 0; i < NT; i++) {
    const int64_t n0 = (t + i) * QF_MM_NT;
    for (int m = 0; m < MR; m++) _mm512_mask_storeu_ps(y + (m0 + m) * w.N + n0, lanes_below(w.N - n0), fa[m][i]);
  }
}

// Tiles NT at a time (4 streams at one row, as the other decode kernels); rows in blocks of
// 4, each block re-reading the tiles' codes from L1/L2.
template <int NT, bool SYM>
void split_rows(float* y, const SplitX& x, int64_t M, const PackedInt4View& w, int64_t t) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    switch (M - m0 < 4 ? M - m0 : 4) {
      case 1: split_tiles<1, NT, SYM>(y, x, m0, w, t); break;
      case 2: split_tiles<2, NT, SYM>(y, x, m0, w, t); break;
      case 3: split_tiles<3, NT, SYM>(y, x, m0, w, t); break;
      default: split_tiles<4, NT, SYM>(y, x, m0, w, t); break;
    }
  }
}

template <bool SYM>
void matmul_split_sym(float* y, const SplitX& x, int64_t M, const PackedInt4View& w, int64_t t0, int64_t t1) {
  int64_t t = t0;
  if (M == 1) {
    for (; t + 4 <= t1; t += 4) split_tiles<1, 4, SYM>(y, x, 0, w, t);
  } else if (M == 2) {
    for (; t + 2 <= t1; t += 2) split_tiles<2, 2, SYM>(y, x, 0, w, t);
  }
  for (; t < t1; t++) split_rows<1, SYM>(y, x, M, w, t);
}

void matmul_split_avx512vnni(float* y, const SplitX& x, int64_t M, const PackedInt4View& w, int64_t t0, int64_t t1) {
  if (w.symmetric)
    matmul_split_sym<true>(y, x, M, w, t0, t1);
  else
    matmul_split_sym<false>(y, x, M, w, t0, t1);
}

}  // namespace

const MatmulInt8Kernels matmul_int8_kernels_avx512vnni = {matmul_int8_avx512vnni};
const MatmulSplitKernels matmul_split_kernels_avx512vnni = {split_x_avx512vnni, matmul_split_avx512vnni};

}  // namespace qf
