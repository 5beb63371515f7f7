// AVX-512 engine kernels. Same definitions as native/ref/engine.cpp; reductions
// run in f32 lanes (the reference uses double) and exp is a polynomial (relative
// error ~2 ulp), so results match the reference within the named tolerances of
// test/engine-ops.test.ts. Embedding, residual and AdamW keep the reference's exact
// operation order (no fused multiply-adds) and are bit-exact.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quantform/engine.h"

// Tiers leave the kernels they do not implement unset: null entries run the reference.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace qf {
namespace {

inline __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u); }

// Cephes expf: range reduction by ln 2 in two parts, degree-6 polynomial, scalef
// for 2^n. Inputs below -87.3 give ~0, which softmax and silu want.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3365478515625f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Horizontal sum; GCC 12's _mm512_reduce_add_ps trips -Wuninitialized in its own header.
inline float hsum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float dot512(const float* a, const float* b, int64_t K) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), acc1);
  }
  for (; k < K; k += 16) {
    const __mmask16 m = tail16(K - k);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc0);
  }
  return hsum512(_mm512_add_ps(acc0, acc1));
}

// ---------------------------------------------------------------------------
// GEMM. B is packed into k-major panels of NR columns (each k step of the micro-tile
// is NR/16 vector loads), kKC k at a time and kNC columns per block (1 MB, L2). A is
// read in place when its rows are contiguous (the forward and dX forms); transposed
// A (the dW form) is packed per tile of MR rows, contiguous in m, so each k step is a
// short vector copy. Every tile holds 24 zmm accumulators + NR/16 panel vectors + 1
// broadcast of the 32 registers: 6 x 64 for wide outputs (an 8 x 32 tile needs more
// broadcasts per FMA and measured slower), 12 x 32 and 24 x 16 for the narrow ones
// attention produces (N = hd: 64 columns of which 8 are used would waste 7/8).
// ---------------------------------------------------------------------------
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 1024;
constexpr int64_t kMC = 96;  // rows per A block (a multiple of every MR): its tiles share each B panel in L1/L2

template <int NJ>
struct Tile {
  static constexpr int64_t NR = 16 * NJ;       // panel columns
  static constexpr int MR = 24 / NJ;           // tile rows
  static constexpr int64_t AS = (MR + 7) / 8 * 8;  // floats per k step of a packed A tile
};
static_assert(kKC * kNC + kMC / Tile<4>::MR * kKC * Tile<4>::AS + 64 <= kGemmPackFloats, "gemm pack scratch too small");
static_assert(kMC / Tile<2>::MR * Tile<2>::AS <= kMC / Tile<4>::MR * Tile<4>::AS, "packed A of the narrow tiles must fit");
static_assert(kMC / Tile<1>::MR * Tile<1>::AS <= kMC / Tile<4>::MR * Tile<4>::AS, "packed A of the narrow tiles must fit");

// r[i][j] -> r[j][i] for a 16 x 16 block: 2x2 interleaves within 128-bit lanes, then
// 4x4 blocks within lanes, then lanes across registers (twice).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// Bp (ceil(nc / NR), kc, NR): B (k, n) for k in [pc, pc + kc), n in [jc, jc + nc), zero padded.
template <int NJ>
void pack_b(float* Bp, StridedMat B, int64_t pc, int64_t kc, int64_t jc, int64_t nc) {
  constexpr int64_t NR = Tile<NJ>::NR;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    float* dst = Bp + j0 * kc;
    const int64_t nr = nc - j0 < NR ? nc - j0 : NR;
    if (B.cs == 1) {
      __mmask16 mk[NJ];
      for (int j = 0; j < NJ; j++) mk[j] = tail16(nr - 16 * j);
      for (int64_t k = 0; k < kc; k++) {
        const float* src = B.p + (pc + k) * B.rs + jc + j0;
#pragma GCC unroll 4
        for (int j = 0; j < NJ; j++) _mm512_storeu_ps(dst + k * NR + 16 * j, _mm512_maskz_loadu_ps(mk[j], src + 16 * j));
      }
      continue;
    }
    if (B.rs == 1) {
      // B^T stored (the weight of x . W^T): column n is a contiguous row of W; 16 rows of
      // 16 k are transposed in registers (a scalar gather cost ~8 % of a 4096^2 forward)
      for (int64_t j = 0; j < NR; j += 16) {
        const float* src[16];
        for (int i = 0; i < 16; i++) src[i] = j + i < nr ? B.p + (jc + j0 + j + i) * B.cs + pc : nullptr;
        for (int64_t k = 0; k < kc; k += 16) {
          const __mmask16 mk = tail16(kc - k);
          __m512 r[16];
#pragma GCC unroll 16
          for (int i = 0; i < 16; i++) r[i] = src[i] ? _mm512_maskz_loadu_ps(mk, src[i] + k) : _mm512_setzero_ps();
          transpose16(r);
          const int64_t n = kc - k < 16 ? kc - k : 16;
          for (int64_t c = 0; c < n; c++) _mm512_storeu_ps(dst + (k + c) * NR + j, r[c]);
        }
      }
      continue;
    }
    for (int64_t j = 0; j < NR; j++) {  // any other strides: column by column
      if (j >= nr) {
        for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = 0.f;
        continue;
      }
      const float* src = B.p + (jc + j0 + j) * B.cs + pc * B.rs;
      for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = src[k * B.rs];
    }
  }
}

// Ap (ceil(mc / MR) tiles, kc, AS): rows [ic, ic + mc) of A, k in [pc, pc + kc), for A whose
// rows are not contiguous; each tile is k-major, zero padded to AS floats per k.
template <int NJ>
void pack_a(float* Ap, StridedMat A, int64_t ic, int64_t mc, int64_t pc, int64_t kc) {
  constexpr int MR = Tile<NJ>::MR;
  constexpr int64_t AS = Tile<NJ>::AS;
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    float* dst = Ap + i0 / MR * kc * AS;
    const int64_t mr = mc - i0 < MR ? mc - i0 : MR;
    if (A.rs == 1) {  // A^T stored: the mr rows of one k are contiguous
      for (int64_t k = 0; k < kc; k++) {
        const float* src = A.p + ic + i0 + (pc + k) * A.cs;
        for (int64_t i = 0; i < AS; i += 16) {
          const __mmask16 m = tail16(AS - i);
          _mm512_mask_storeu_ps(dst + k * AS + i, m, _mm512_maskz_loadu_ps(tail16(mr - i), src + i));
        }
      }
      continue;
    }
    for (int64_t k = 0; k < kc; k++)
      for (int64_t i = 0; i < AS; i++) dst[k * AS + i] = i < mr ? A.p[(ic + i0 + i) * A.rs + (pc + k) * A.cs] : 0.f;
  }
}

// C (R, NR) (+)= A (R, kc) . Bp (kc, NR). A in place (rows lda apart, k contiguous) or
// packed (kc, AS).
template <int NJ, int R, bool kPacked>
void micro(float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool load_c,
           const __mmask16* mk) {
  constexpr int64_t NR = Tile<NJ>::NR, AS = Tile<NJ>::AS;
  __m512 acc[R][NJ];
#pragma GCC unroll 24
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) acc[r][j] = load_c ? _mm512_maskz_loadu_ps(mk[j], c + r * ldc + 16 * j) : _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m512 b[NJ];
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) b[j] = _mm512_loadu_ps(bp + k * NR + 16 * j);
#pragma GCC unroll 24
    for (int r = 0; r < R; r++) {
      const __m512 av = _mm512_set1_ps(kPacked ? a[k * AS + r] : a[r * lda + k]);
#pragma GCC unroll 4
      for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_fmadd_ps(av, b[j], acc[r][j]);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) _mm512_mask_storeu_ps(c + r * ldc + 16 * j, mk[j], acc[r][j]);
}

// The tile for the last `rows` (< MR) rows of a block: one instantiation per height.
template <int NJ, bool kPacked, int R = Tile<NJ>::MR>
void micro_rows(int rows, float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool load_c,
                const __mmask16* mk) {
  if constexpr (R == 1) {
    micro<NJ, 1, kPacked>(c, ldc, a, lda, bp, kc, load_c, mk);
  } else {
    if (rows == R) micro<NJ, R, kPacked>(c, ldc, a, lda, bp, kc, load_c, mk);
    else micro_rows<NJ, kPacked, R - 1>(rows, c, ldc, a, lda, bp, kc, load_c, mk);
  }
}

template <int NJ>
void gemm_blocked(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t K, bool accumulate, int64_t n0,
                  int64_t n1, float* pack) {
  constexpr int64_t NR = Tile<NJ>::NR;
  constexpr int MR = Tile<NJ>::MR;
  constexpr int64_t AS = Tile<NJ>::AS;
  float* Bp = pack;               // (kNC / NR, kKC, NR)
  float* Ap = pack + kKC * kNC;   // (kMC / MR, kKC, AS)
  const bool in_place = A.cs == 1;
  for (int64_t jc = n0; jc < n1; jc += kNC) {
    const int64_t nc = n1 - jc < kNC ? n1 - jc : kNC;
    const int64_t panels = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = K - pc < kKC ? K - pc : kKC;
      pack_b<NJ>(Bp, B, pc, kc, jc, nc);
      const bool load_c = accumulate || pc > 0;
      for (int64_t ic = 0; ic < M; ic += kMC) {
        const int64_t mc = M - ic < kMC ? M - ic : kMC;
        if (!in_place) pack_a<NJ>(Ap, A, ic, mc, pc, kc);
        for (int64_t p = 0; p < panels; p++) {
          __mmask16 mk[NJ];
          for (int j = 0; j < NJ; j++) mk[j] = tail16(nc - p * NR - 16 * j);
          const float* bp = Bp + p * kc * NR;
          for (int64_t m0 = ic; m0 < ic + mc; m0 += MR) {
            const int rows = (int)(ic + mc - m0 < MR ? ic + mc - m0 : MR);
            float* c = C + m0 * ldc + jc + p * NR;
            if (in_place)
              micro_rows<NJ, false>(rows, c, ldc, A.p + m0 * A.rs + pc, A.rs, bp, kc, load_c, mk);
            else
              micro_rows<NJ, true>(rows, c, ldc, Ap + (m0 - ic) / MR * kc * AS, 0, bp, kc, load_c, mk);
          }
        }
      }
    }
  }
}

// Decode shapes (M < 4, weight rows contiguous in k): memory bound, so no packing;
// four weight rows stream at once (eight accumulators in flight) and each input
// vector load serves all four. The input rows loop inside, so the four weight rows
// come from DRAM once, then L1. W row n is B.p + n * B.cs.
void gemv_rows(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t K, bool accumulate, int64_t n0,
               int64_t n1) {
  const int64_t ldw = B.cs;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    for (int64_t m = 0; m < M; m++) {
      const float* x = A.p + m * A.rs;     // (K)
      const float* w0 = B.p + n * ldw;     // (4, K) rows ldw apart
      __m512 acc[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_ps();
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        const __m512 xa = _mm512_loadu_ps(x + k), xb = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
          acc[2 * r] = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + r * ldw + k), xa, acc[2 * r]);
          acc[2 * r + 1] = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + r * ldw + k + 16), xb, acc[2 * r + 1]);
        }
      }
      for (; k < K; k += 16) {
        const __mmask16 mk = tail16(K - k);
        const __m512 xa = _mm512_maskz_loadu_ps(mk, x + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) acc[2 * r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, w0 + r * ldw + k), xa, acc[2 * r]);
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) {
        const float v = hsum512(_mm512_add_ps(acc[2 * r], acc[2 * r + 1]));
        C[m * ldc + n + r] = accumulate ? C[m * ldc + n + r] + v : v;
      }
    }
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      const float v = dot512(A.p + m * A.rs, B.p + n * ldw, K);
      C[m * ldc + n] = accumulate ? C[m * ldc + n] + v : v;
    }
}

// M < 4 with B's rows contiguous in n (a decode step's P . V, dX of one row): up to 64
// output columns stay in registers while k streams B's rows once; no packing. Even and
// odd k accumulate separately: with one head of 8 values there is one vector per row and
// a single chain of FMAs would wait on its latency. MM rows, NJ zmm per row.
template <int MM, int NJ>
void gemv_cols_block(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t K, bool accumulate, int64_t n, int64_t e) {
  __mmask16 mk[NJ];
#pragma GCC unroll 4
  for (int j = 0; j < NJ; j++) mk[j] = tail16(e - n - 16 * j);
  __m512 acc[2][MM][NJ];
#pragma GCC unroll 3
  for (int m = 0; m < MM; m++)
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) {
      acc[0][m][j] = accumulate ? _mm512_maskz_loadu_ps(mk[j], C + m * ldc + n + 16 * j) : _mm512_setzero_ps();
      acc[1][m][j] = _mm512_setzero_ps();
    }
  auto step = [&](int h, int64_t k) {
    __m512 b[NJ];
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) b[j] = _mm512_maskz_loadu_ps(mk[j], B.p + k * B.rs + n + 16 * j);
#pragma GCC unroll 3
    for (int m = 0; m < MM; m++) {
      const __m512 av = _mm512_set1_ps(A.p[m * A.rs + k * A.cs]);
#pragma GCC unroll 4
      for (int j = 0; j < NJ; j++) acc[h][m][j] = _mm512_fmadd_ps(av, b[j], acc[h][m][j]);
    }
  };
  int64_t k = 0;
  for (; k + 2 <= K; k += 2) {
    step(0, k);
    step(1, k + 1);
  }
  if (k < K) step(0, k);
#pragma GCC unroll 3
  for (int m = 0; m < MM; m++)
#pragma GCC unroll 4
    for (int j = 0; j < NJ; j++) _mm512_mask_storeu_ps(C + m * ldc + n + 16 * j, mk[j], _mm512_add_ps(acc[0][m][j], acc[1][m][j]));
}

template <int MM>
void gemv_cols_rows(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t K, bool accumulate, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += 64) {
    const int64_t e = n1 - n < 64 ? n1 : n + 64;
    switch ((e - n + 15) / 16) {
      case 1: gemv_cols_block<MM, 1>(C, ldc, A, B, K, accumulate, n, e); break;
      case 2: gemv_cols_block<MM, 2>(C, ldc, A, B, K, accumulate, n, e); break;
      case 3: gemv_cols_block<MM, 3>(C, ldc, A, B, K, accumulate, n, e); break;
      default: gemv_cols_block<MM, 4>(C, ldc, A, B, K, accumulate, n, e); break;
    }
  }
}

void gemv_cols(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t K, bool accumulate, int64_t n0,
               int64_t n1) {
  if (M == 1) gemv_cols_rows<1>(C, ldc, A, B, K, accumulate, n0, n1);
  else if (M == 2) gemv_cols_rows<2>(C, ldc, A, B, K, accumulate, n0, n1);
  else gemv_cols_rows<3>(C, ldc, A, B, K, accumulate, n0, n1);
}

void gemm_avx512(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
                 int64_t n0, int64_t n1, float* pack) {
  if (n1 <= n0 || M <= 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; m++) memset(C + m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    return;
  }
  if (M < 4 && B.rs == 1 && A.cs == 1) return gemv_rows(C, ldc, A, B, M, K, accumulate, n0, n1);
  if (M < 4 && B.cs == 1) return gemv_cols(C, ldc, A, B, M, K, accumulate, n0, n1);
  const int64_t width = n1 - n0;
  if (width <= 16) return gemm_blocked<1>(C, ldc, A, B, M, K, accumulate, n0, n1, pack);
  if (width <= 32) return gemm_blocked<2>(C, ldc, A, B, M, K, accumulate, n0, n1, pack);
  gemm_blocked<4>(C, ldc, A, B, M, K, accumulate, n0, n1, pack);
}

// ---------------------------------------------------------------------------
// Rows and elements
// ---------------------------------------------------------------------------

void embedding_forward_avx512(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t r = r0; r < r1; r++) memcpy(out + r * D, table + (int64_t)ids[r] * D, (size_t)D * sizeof(float));
}

void embedding_backward_avx512(float* dtable, const float* dout, const int32_t* ids, int64_t BT, int64_t v0, int64_t v1,
                               int64_t D) {
  for (int64_t r = 0; r < BT; r++) {
    const int64_t v = ids[r];
    if (v < v0 || v >= v1) continue;
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      _mm512_mask_storeu_ps(dtable + v * D + i, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, dtable + v * D + i), _mm512_maskz_loadu_ps(m, dout + r * D + i)));
    }
  }
}

void rmsnorm_forward_avx512(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                            float eps) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * D;
    const float rs = 1.f / std::sqrt(dot512(xr, xr, D) / (float)D + eps);
    if (rstd) rstd[r] = rs;
    const __m512 vr = _mm512_set1_ps(rs);
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      _mm512_mask_storeu_ps(out + r * D + i, m,
                            _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vr), _mm512_maskz_loadu_ps(m, w + i)));
    }
  }
}

void rmsnorm_backward_avx512(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                             int64_t r0, int64_t r1, int64_t D) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * D;
    const float* gr = dout + r * D;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      dot = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, gr + i), _mm512_maskz_loadu_ps(m, w + i)),
                            _mm512_maskz_loadu_ps(m, xr + i), dot);
    }
    const float rs = rstd[r];
    const __m512 c = _mm512_set1_ps(hsum512(dot) * rs * rs * rs / (float)D), vr = _mm512_set1_ps(rs);
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      const __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gr + i), _mm512_maskz_loadu_ps(m, w + i));
      _mm512_mask_storeu_ps(dx + r * D + i, m, _mm512_fnmadd_ps(c, _mm512_maskz_loadu_ps(m, xr + i), _mm512_mul_ps(vr, gw)));
    }
  }
}

void rmsnorm_backward_weight_avx512(float* dw, const float* dout, const float* x, const float* rstd, int64_t BT,
                                    int64_t c0, int64_t c1, int64_t D) {
  for (int64_t i = c0; i < c1; i += 16) {
    const __mmask16 m = tail16(c1 - i);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t r = 0; r < BT; r++)
      acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + r * D + i), _mm512_set1_ps(rstd[r])),
                            _mm512_maskz_loadu_ps(m, x + r * D + i), acc);
    _mm512_mask_storeu_ps(dw + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dw + i), acc));
  }
}

void rope_avx512(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1, int64_t H,
                 int64_t hd, bool inverse) {
  const int64_t half = hd / 2;
  const __m512 sign = _mm512_set1_ps(inverse ? -1.f : 1.f);
  for (int64_t r = r0; r < r1; r++) {
    const float* c = cos + (int64_t)pos[r] * half;
    const float* s = sin + (int64_t)pos[r] * half;
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (r * H + h) * hd;
      for (int64_t i = 0; i < half; i += 16) {
        const __mmask16 m = tail16(half - i);
        const __m512 a = _mm512_maskz_loadu_ps(m, v + i), b = _mm512_maskz_loadu_ps(m, v + i + half);
        const __m512 vc = _mm512_maskz_loadu_ps(m, c + i), vs = _mm512_mul_ps(sign, _mm512_maskz_loadu_ps(m, s + i));
        _mm512_mask_storeu_ps(v + i, m, _mm512_sub_ps(_mm512_mul_ps(a, vc), _mm512_mul_ps(b, vs)));
        _mm512_mask_storeu_ps(v + i + half, m, _mm512_add_ps(_mm512_mul_ps(a, vs), _mm512_mul_ps(b, vc)));
      }
    }
  }
}

// Row of n scores (scaled by `scale` here) -> probabilities; [n, end) zeroed.
void softmax_row(float* row, int64_t n, int64_t end, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail16(n - j);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), sc));
  }
  const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail16(n - j);
    const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), sc), vmx)));
    _mm512_mask_storeu_ps(row + j, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.f / hsum512(sum));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail16(n - j);
    _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
  }
  if (end > n) memset(row + n, 0, (size_t)(end - n) * sizeof(float));
}

// Scores and outputs of a block of queries are two GEMMs (the tier's own): scores
// (tc, Lc) = Q . K^T over keys 0 .. Lc - 1 (the causal limit of the block's last
// query), softmax per row with its own limit, out (tc, hd) = P . V.
// A decode step (T = 1) takes the q heads of one kv head that fall in [i0, i1) as the
// rows of one block (GQA: 8 heads share each kv head in TinyLlama and Llama 3), so
// the cached keys and values are streamed once per kv head instead of once per q
// head: at 2048 positions the per-head loop read 8x the cache, 384 MB per token for
// a 12-layer TinyLlama shape, more than its weights.
void attention_forward_avx512(float* out, float* probs, const float* q, const float* k, const float* v, int64_t i0,
                              int64_t i1, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0,
                              float* scratch) {
  const int64_t L = pos0 + T, rep = Hq / Hkv, blocks = (T + kAttnChunk - 1) / kAttnChunk;
  const int64_t Dq = Hq * hd, Dkv = Hkv * hd;
  const float scale = 1.f / std::sqrt((float)hd);
  float* pack = scratch + kAttnChunk * L;
  for (int64_t it = i0; it < i1;) {
    if (T == 1) {
      const int64_t b = it / Hq, h = it % Hq, g = h / rep;
      int64_t n = 1;  // q heads h .. h + n - 1: same sequence, same kv head
      while (it + n < i1 && n < kAttnChunk && h + n < Hq && (h + n) / rep == g) n++;
      float* P = probs ? probs + (b * Hq + h) * L : scratch;  // (n, L) rows L apart
      const float* kb = k + b * S * Dkv + g * hd;              // (L, hd) rows Dkv apart
      const float* vb = v + b * S * Dkv + g * hd;
      gemm_avx512(P, L, StridedMat{q + b * Dq + h * hd, hd, 1}, StridedMat{kb, 1, Dkv}, n, L, hd, false, 0, L, pack);
      for (int64_t r = 0; r < n; r++) softmax_row(P + r * L, L, L, scale);
      gemm_avx512(out + b * Dq + h * hd, hd, StridedMat{P, L, 1}, StridedMat{vb, Dkv, 1}, n, hd, L, false, 0, hd, pack);
      it += n;
      continue;
    }
    const int64_t b = it / (Hq * blocks), h = (it / blocks) % Hq, g = h / rep;
    const int64_t t0 = (it % blocks) * kAttnChunk, t1 = t0 + kAttnChunk < T ? t0 + kAttnChunk : T, tc = t1 - t0;
    const int64_t Lc = pos0 + t1;
    float* P = probs ? probs + ((b * Hq + h) * T + t0) * L : scratch;  // (tc, L) rows L apart
    const float* kb = k + b * S * Dkv + g * hd;                          // (Lc, hd) rows Dkv apart
    const float* vb = v + b * S * Dkv + g * hd;
    gemm_avx512(P, L, StridedMat{q + (b * T + t0) * Dq + h * hd, Dq, 1}, StridedMat{kb, 1, Dkv}, tc, Lc, hd, false, 0,
                Lc, pack);
    for (int64_t t = 0; t < tc; t++) softmax_row(P + t * L, pos0 + t0 + t + 1, probs ? L : Lc, scale);
    gemm_avx512(out + (b * T + t0) * Dq + h * hd, Dq, StridedMat{P, L, 1}, StridedMat{vb, Dkv, 1}, tc, hd, Lc, false,
                0, hd, pack);
    it++;
  }
}

// Per query block [r0, r1) of one q head (keys 0 .. r1 - 1 only: the upper triangle is
// zero): dP = dO . V^T, dS = scale P (dP - rowsum(dP P)) in place, dQ = dS . K,
// dK += dS^T . Q, dV += P^T . dO.
void attention_backward_avx512(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                               const float* k, const float* v, int64_t i0, int64_t i1, int64_t T, int64_t Hq,
                               int64_t Hkv, int64_t hd, float* scratch) {
  const int64_t rep = Hq / Hkv, Dq = Hq * hd, Dkv = Hkv * hd;
  const float scale = 1.f / std::sqrt((float)hd);
  float* dS = scratch;                                  // (kAttnChunk, T)
  float* pack = scratch + (kAttnChunk + 3 * rep) * T;   // the reference's row statistics are unused here
  for (int64_t it = i0; it < i1; it++) {
    const int64_t b = it / Hkv, g = it % Hkv;
    const float* kh = k + b * T * Dkv + g * hd;
    const float* vh = v + b * T * Dkv + g * hd;
    float* dkh = dk + b * T * Dkv + g * hd;
    float* dvh = dv + b * T * Dkv + g * hd;
    for (int64_t t = 0; t < T; t++) {
      memset(dkh + t * Dkv, 0, (size_t)hd * sizeof(float));
      memset(dvh + t * Dkv, 0, (size_t)hd * sizeof(float));
    }
    for (int64_t r = 0; r < rep; r++) {
      const int64_t h = g * rep + r;
      const float* P = probs + (b * Hq + h) * T * T;  // (T, T)
      const float* qh = q + b * T * Dq + h * hd;
      const float* doh = dout + b * T * Dq + h * hd;
      float* dqh = dq + b * T * Dq + h * hd;
      for (int64_t r0 = 0; r0 < T; r0 += kAttnChunk) {
        const int64_t r1 = r0 + kAttnChunk < T ? r0 + kAttnChunk : T, rb = r1 - r0;
        gemm_avx512(dS, T, StridedMat{doh + r0 * Dq, Dq, 1}, StridedMat{vh, 1, Dkv}, rb, r1, hd, false, 0, r1, pack);
        for (int64_t t = 0; t < rb; t++) {
          float* d = dS + t * T;
          const float* pr = P + (r0 + t) * T;
          const int64_t n = r0 + t + 1;
          __m512 dot = _mm512_setzero_ps();
          for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = tail16(n - j);
            dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, d + j), _mm512_maskz_loadu_ps(m, pr + j), dot);
          }
          const __m512 rowsum = _mm512_set1_ps(hsum512(dot)), sc = _mm512_set1_ps(scale);
          for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = tail16(n - j);
            _mm512_mask_storeu_ps(d + j, m, _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_maskz_loadu_ps(m, pr + j)),
                                                          _mm512_sub_ps(_mm512_maskz_loadu_ps(m, d + j), rowsum)));
          }
          if (r1 > n) memset(d + n, 0, (size_t)(r1 - n) * sizeof(float));
        }
        gemm_avx512(dqh + r0 * Dq, Dq, StridedMat{dS, T, 1}, StridedMat{kh, Dkv, 1}, rb, hd, r1, false, 0, hd, pack);
        gemm_avx512(dkh, Dkv, StridedMat{dS, 1, T}, StridedMat{qh + r0 * Dq, Dq, 1}, r1, hd, rb, true, 0, hd, pack);
        gemm_avx512(dvh, Dkv, StridedMat{P + r0 * T, 1, T}, StridedMat{doh + r0 * Dq, Dq, 1}, r1, hd, rb, true, 0, hd,
                    pack);
      }
    }
  }
}

inline __m512 sigmoid512(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}

void swiglu_forward_avx512(float* out, const float* g, const float* u, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = tail16(i1 - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(gv, sigmoid512(gv)), _mm512_maskz_loadu_ps(m, u + i)));
  }
}

void swiglu_backward_avx512(float* dg, float* du, const float* dout, const float* g, const float* u, int64_t i0,
                            int64_t i1) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = tail16(i1 - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i), dv = _mm512_maskz_loadu_ps(m, dout + i);
    const __m512 s = sigmoid512(gv);
    _mm512_mask_storeu_ps(du + i, m, _mm512_mul_ps(dv, _mm512_mul_ps(gv, s)));
    const __m512 ds = _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(dg + i, m, _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_maskz_loadu_ps(m, u + i)), ds));
  }
}

void residual_forward_avx512(float* out, const float* a, const float* b, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = tail16(i1 - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
  }
}

void cross_entropy_forward_avx512(float* loss, float* logits, const int32_t* targets, int64_t r0, int64_t r1,
                                  int64_t V) {
  for (int64_t r = r0; r < r1; r++) {
    float* row = logits + r * V;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t v = 0; v < V; v += 16)
      mx = _mm512_mask_max_ps(mx, tail16(V - v), mx, _mm512_maskz_loadu_ps(tail16(V - v), row + v));
    const float mxs = _mm512_reduce_max_ps(mx);
    const __m512 mv = _mm512_set1_ps(mxs);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t v = 0; v < V; v += 16) {
      const __mmask16 m = tail16(V - v);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + v), mv))));
    }
    const float lse = mxs + std::log(hsum512(sum));
    loss[r] = targets[r] < 0 ? 0.f : lse - row[targets[r]];
    const __m512 lv = _mm512_set1_ps(lse);
    for (int64_t v = 0; v < V; v += 16) {
      const __mmask16 m = tail16(V - v);
      _mm512_mask_storeu_ps(row + v, m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + v), lv)));
    }
  }
}

void cross_entropy_backward_avx512(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V,
                                   float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t r = r0; r < r1; r++) {
    float* row = probs + r * V;
    if (targets[r] < 0) {
      memset(row, 0, (size_t)V * sizeof(float));
      continue;
    }
    row[targets[r]] -= 1.f;
    for (int64_t v = 0; v < V; v += 16) {
      const __mmask16 m = tail16(V - v);
      _mm512_mask_storeu_ps(row + v, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + v), sc));
    }
  }
}

void teq_scale_backward_avx512(float* dalpha, float* dx, const float* dxs, const float* x, int64_t BT, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t c0, int64_t c1, int64_t K) {
  for (int64_t k = c0; k < c1; k += 16) {
    const __mmask16 m = tail16(c1 - k);
    __m512 acc = _mm512_setzero_ps(), act = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; n++)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dws + n * K + k), _mm512_maskz_loadu_ps(m, W + n * K + k), acc);
    for (int64_t r = 0; r < BT; r++)
      act = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dxs + r * K + k), _mm512_maskz_loadu_ps(m, x + r * K + k), act);
    const __m512 a = _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), m, alpha + k);
    const __m512 d = _mm512_sub_ps(acc, _mm512_div_ps(act, _mm512_mul_ps(a, a)));
    _mm512_mask_storeu_ps(dalpha + k, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dalpha + k), d));
    if (dx)
      for (int64_t r = 0; r < BT; r++)
        _mm512_mask_storeu_ps(dx + r * K + k, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, dxs + r * K + k), a));
  }
}

// Same per-element arithmetic as the reference (w / s divided, not multiplied by 1/s, so
// codes agree bit for bit); group sums in f32 lanes.
void learned_fq_backward_avx512(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                                const float* zeros, int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t gs = spec.group_size, G = (K + gs - 1) / gs;
  const float lo_f = spec.symmetric ? -(float)(1 << (spec.bits - 1)) : 0.f;
  const float hi_f = spec.symmetric ? (float)((1 << (spec.bits - 1)) - 1) : (float)((1 << spec.bits) - 1);
  const __m512 lo = _mm512_set1_ps(lo_f), hi = _mm512_set1_ps(hi_f);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t gi = 0; gi < G; gi++) {
      const int64_t k0 = gi * gs, k1 = k0 + gs < K ? k0 + gs : K;
      const float sv = scales[r * G + gi];
      const float zv = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + gi]);
      const __m512 s = _mm512_set1_ps(sv), z = _mm512_set1_ps(zv);
      const __m512 lo_z = _mm512_sub_ps(lo, z), hi_z = _mm512_sub_ps(hi, z);
      __m512 acc_s = _mm512_setzero_ps(), acc_z = _mm512_setzero_ps();
      for (int64_t k = k0; k < k1; k += 16) {
        const __mmask16 m = tail16(k1 - k);
        const int64_t i = r * K + k;
        const __m512 gk = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), s);
        const __m512 ru = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 q = _mm512_add_ps(ru, z);
        const __mmask16 below = _mm512_cmp_ps_mask(q, lo, _CMP_LT_OQ);
        const __mmask16 above = _mm512_cmp_ps_mask(q, hi, _CMP_GT_OQ);
        const __mmask16 inside = (__mmask16)(m & ~(below | above));
        if (dw) _mm512_mask_storeu_ps(dw + i, inside, _mm512_add_ps(_mm512_maskz_loadu_ps(inside, dw + i), gk));
        // inside: g (round(u) - u); clamped: g (bound - z)
        __m512 dsv = _mm512_sub_ps(ru, u);
        dsv = _mm512_mask_mov_ps(dsv, below, lo_z);
        dsv = _mm512_mask_mov_ps(dsv, above, hi_z);
        acc_s = _mm512_mask3_fmadd_ps(gk, dsv, acc_s, m);
        acc_z = _mm512_mask_sub_ps(acc_z, (__mmask16)(m & (below | above)), acc_z, _mm512_mul_ps(gk, s));
      }
      if (ds) ds[r * G + gi] += hsum512(acc_s);
      if (dz) dz[r * G + gi] += hsum512(acc_z);
    }
}

void adamw_avx512(float* arena, int64_t P, int64_t i0, int64_t i1, int64_t step, float lr, float b1, float b2,
                  float eps, float wd, float pmin) {
  float* p = arena;
  const float* g = arena + P;
  float* m = arena + 2 * P;
  float* v = arena + 3 * P;
  const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), ob1 = _mm512_set1_ps(1.f - b1),
               ob2 = _mm512_set1_ps(1.f - b2), bc1 = _mm512_set1_ps((float)(1.0 - std::pow((double)b1, (double)step))),
               bc2 = _mm512_set1_ps((float)(1.0 - std::pow((double)b2, (double)step))), ve = _mm512_set1_ps(eps),
               vwd = _mm512_set1_ps(wd), vlr = _mm512_set1_ps(lr), vmin = _mm512_set1_ps(pmin);
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 k = tail16(i1 - i);
    const __m512 gv = _mm512_maskz_loadu_ps(k, g + i), pv = _mm512_maskz_loadu_ps(k, p + i);
    const __m512 mv = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_maskz_loadu_ps(k, m + i)), _mm512_mul_ps(ob1, gv));
    const __m512 vv = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_maskz_loadu_ps(k, v + i)),
                                    _mm512_mul_ps(ob2, _mm512_mul_ps(gv, gv)));
    const __m512 upd = _mm512_add_ps(
        _mm512_div_ps(_mm512_div_ps(mv, bc1), _mm512_add_ps(_mm512_sqrt_ps(_mm512_div_ps(vv, bc2)), ve)),
        _mm512_mul_ps(vwd, pv));
    const __m512 np = _mm512_sub_ps(pv, _mm512_mul_ps(vlr, upd));
    _mm512_mask_storeu_ps(m + i, k, mv);
    _mm512_mask_storeu_ps(v + i, k, vv);
    // NaN-propagating select (max would drop a NaN and hide a diverged run)
    _mm512_mask_storeu_ps(p + i, k, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(np, vmin, _CMP_LT_OQ), np, vmin));
  }
}

#include "engine_fpt.inc"  // FPTQuant's kernels (QF_FPT_KERNELS)

}  // namespace

const EngineKernels engine_kernels_avx512 = {
    .gemm = gemm_avx512,
    .embedding_forward = embedding_forward_avx512,
    .embedding_backward = embedding_backward_avx512,
    .rmsnorm_forward = rmsnorm_forward_avx512,
    .rmsnorm_backward = rmsnorm_backward_avx512,
    .rmsnorm_backward_weight = rmsnorm_backward_weight_avx512,
    .rope = rope_avx512,
    .attention_forward = attention_forward_avx512,
    .attention_backward = attention_backward_avx512,
    .swiglu_forward = swiglu_forward_avx512,
    .swiglu_backward = swiglu_backward_avx512,
    .residual_forward = residual_forward_avx512,
    .cross_entropy_forward = cross_entropy_forward_avx512,
    .cross_entropy_backward = cross_entropy_backward_avx512,
    .teq_scale_backward = teq_scale_backward_avx512,
    .learned_fq_backward = learned_fq_backward_avx512,
    .adamw = adamw_avx512,
    .rmsnorm_scaled_forward = rmsnorm_scaled_forward_avx512,
    .rmsnorm_scaled_backward = rmsnorm_scaled_backward_avx512,
    .residual_scaled_forward = residual_scaled_forward_avx512,
    .act_fake_quant_forward = act_fake_quant_forward_avx512,
    .act_fake_quant_backward = act_fake_quant_backward_avx512,
    .act_quant_error = act_quant_error_avx512,
    .fwht = fwht_avx512,
    .act_quant_rows = act_quant_rows_avx512,
    .rmsnorm_quant = rmsnorm_quant_avx512,
    .swiglu_quant = swiglu_quant_avx512,
    .quant_heads = quant_heads_avx512,
    .attention_forward_q8 = attention_forward_q8_avx512,
    .jsd_forward_backward = jsd_forward_backward_avx512,
};

}  // namespace qf
