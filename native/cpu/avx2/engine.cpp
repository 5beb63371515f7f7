// AVX2 engine kernels where AVX2 pays off cheaply: the GEMM (nearly the whole cost
// of a forward or training step), RMSNorm and the residual add. The other entries
// stay null and run the reference (they are a small share of the time).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quantform/engine.h"

// Tiers leave the kernels they do not implement unset: null entries run the reference.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace qf {
namespace {

// Lanes [0, n) of a ymm: AVX2 masked loads/stores take an integer mask.
inline __m256i mask8(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float dot256(const float* a, const float* b, int64_t K) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
  }
  for (; k < K; k += 8) {
    const __m256i m = mask8(K - k);
    acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + k, m), _mm256_maskload_ps(b + k, m), acc0);
  }
  return hsum256(_mm256_add_ps(acc0, acc1));
}

// GEMM: the AVX-512 design at half width. B panels of 32 columns (4 ymm), a 3-row
// micro-tile: 12 accumulators + 4 panel vectors of the 16 ymm; A read in place when
// its rows are contiguous, else packed per tile.
constexpr int64_t kNR = 32;
constexpr int kMR = 3;
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 256;
constexpr int64_t kAS = 4;  // floats per k step of a packed A tile
static_assert(kKC * kNC + kKC * kAS + 64 <= kGemmPackFloats, "gemm pack scratch too small");

// Bp (ceil(nc / 32), kc, 32): B (k, n) for k in [pc, pc + kc), n in [jc, jc + nc), zero padded.
void pack_b(float* Bp, StridedMat B, int64_t pc, int64_t kc, int64_t jc, int64_t nc) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNR) {
    float* dst = Bp + j0 * kc;
    const int64_t nr = nc - j0 < kNR ? nc - j0 : kNR;
    if (B.cs == 1) {
      __m256i mk[4];
      for (int j = 0; j < 4; j++) mk[j] = mask8(nr - 8 * j);
      for (int64_t k = 0; k < kc; k++) {
        const float* src = B.p + (pc + k) * B.rs + jc + j0;
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(dst + k * kNR + 8 * j, _mm256_maskload_ps(src + 8 * j, mk[j]));
      }
      continue;
    }
    for (int64_t j = 0; j < kNR; j++) {
      if (j >= nr) {
        for (int64_t k = 0; k < kc; k++) dst[k * kNR + j] = 0.f;
        continue;
      }
      const float* src = B.p + (jc + j0 + j) * B.cs + pc * B.rs;
      for (int64_t k = 0; k < kc; k++) dst[k * kNR + j] = src[k * B.rs];
    }
  }
}

void pack_a_tile(float* Ap, StridedMat A, int64_t m0, int64_t mr, int64_t pc, int64_t kc) {
  for (int64_t k = 0; k < kc; k++)
    for (int64_t i = 0; i < kAS; i++) Ap[k * kAS + i] = i < mr ? A.p[(m0 + i) * A.rs + (pc + k) * A.cs] : 0.f;
}

template <int MR, bool kPacked>
void micro(float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool load_c,
           const __m256i* mk) {
  __m256 acc[MR][4];
#pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) acc[r][j] = load_c ? _mm256_maskload_ps(c + r * ldc + 8 * j, mk[j]) : _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
      const __m256 b = _mm256_loadu_ps(bp + k * kNR + 8 * j);
#pragma GCC unroll 4
      for (int r = 0; r < MR; r++)
        acc[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(kPacked ? a + k * kAS + r : a + r * lda + k), b, acc[r][j]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) _mm256_maskstore_ps(c + r * ldc + 8 * j, mk[j], acc[r][j]);
}

template <bool kPacked>
void micro_rows(int rows, float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool load_c,
                const __m256i* mk) {
  if (rows == 3) micro<3, kPacked>(c, ldc, a, lda, bp, kc, load_c, mk);
  else if (rows == 2) micro<2, kPacked>(c, ldc, a, lda, bp, kc, load_c, mk);
  else micro<1, kPacked>(c, ldc, a, lda, bp, kc, load_c, mk);
}

// M < 4 with B's rows contiguous in n (a decode step's P . V): 32 output columns in
// registers while k streams B's rows once; no packing.
void gemv_cols(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t K, bool accumulate, int64_t n0,
               int64_t n1) {
  for (int64_t n = n0; n < n1; n += kNR) {
    __m256i mk[4];
    for (int j = 0; j < 4; j++) mk[j] = mask8(n1 - n - 8 * j);
    __m256 acc[3][4];
    for (int64_t m = 0; m < M; m++)
      for (int j = 0; j < 4; j++) acc[m][j] = accumulate ? _mm256_maskload_ps(C + m * ldc + n + 8 * j, mk[j]) : _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++)
      for (int j = 0; j < 4; j++) {
        const __m256 b = _mm256_maskload_ps(B.p + k * B.rs + n + 8 * j, mk[j]);
        for (int64_t m = 0; m < M; m++) acc[m][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(A.p + m * A.rs + k * A.cs), b, acc[m][j]);
      }
    for (int64_t m = 0; m < M; m++)
      for (int j = 0; j < 4; j++) _mm256_maskstore_ps(C + m * ldc + n + 8 * j, mk[j], acc[m][j]);
  }
}

void gemm_avx2(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
               int64_t n0, int64_t n1, float* pack) {
  if (n1 <= n0 || M <= 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; m++) memset(C + m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    return;
  }
  if (M < 4 && B.rs == 1 && A.cs == 1) {  // decode: one dot product per (row, weight row)
    for (int64_t n = n0; n < n1; n++)
      for (int64_t m = 0; m < M; m++) {
        const float v = dot256(A.p + m * A.rs, B.p + n * B.cs, K);
        C[m * ldc + n] = accumulate ? C[m * ldc + n] + v : v;
      }
    return;
  }
  if (M < 4 && B.cs == 1) return gemv_cols(C, ldc, A, B, M, K, accumulate, n0, n1);
  float* Bp = pack;
  float* Ap = pack + kKC * kNC;
  const bool in_place = A.cs == 1;
  for (int64_t jc = n0; jc < n1; jc += kNC) {
    const int64_t nc = n1 - jc < kNC ? n1 - jc : kNC;
    const int64_t panels = (nc + kNR - 1) / kNR;
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = K - pc < kKC ? K - pc : kKC;
      pack_b(Bp, B, pc, kc, jc, nc);
      const bool load_c = accumulate || pc > 0;
      for (int64_t m0 = 0; m0 < M; m0 += kMR) {
        const int rows = (int)(M - m0 < kMR ? M - m0 : kMR);
        if (!in_place) pack_a_tile(Ap, A, m0, rows, pc, kc);
        for (int64_t p = 0; p < panels; p++) {
          __m256i mk[4];
          for (int j = 0; j < 4; j++) mk[j] = mask8(nc - p * kNR - 8 * j);
          float* c = C + m0 * ldc + jc + p * kNR;
          const float* bp = Bp + p * kc * kNR;
          if (in_place)
            micro_rows<false>(rows, c, ldc, A.p + m0 * A.rs + pc, A.rs, bp, kc, load_c, mk);
          else
            micro_rows<true>(rows, c, ldc, Ap, 0, bp, kc, load_c, mk);
        }
      }
    }
  }
}

void rmsnorm_forward_avx2(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                          float eps) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * D;
    const float rs = 1.0f / std::sqrt(dot256(xr, xr, D) / (float)D + eps);
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < D; i++) out[r * D + i] = xr[i] * rs * w[i];
  }
}

void residual_forward_avx2(float* out, const float* a, const float* b, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < i1; i++) out[i] = a[i] + b[i];
}

#include "engine_fpt.inc"  // FPTQuant's inference kernels (QF_FPT_KERNELS)

}  // namespace

const EngineKernels engine_kernels_avx2 = {
    .gemm = gemm_avx2,
    .rmsnorm_forward = rmsnorm_forward_avx2,
    .residual_forward = residual_forward_avx2,
    .fwht = fwht_avx2,
    .act_quant_rows = act_quant_rows_avx2,
    .rmsnorm_quant = rmsnorm_quant_avx2,
    .swiglu_quant = swiglu_quant_avx2,
    .quant_heads = quant_heads_avx2,
    .attention_forward_q8 = attention_forward_q8_avx2,
};

}  // namespace qf
