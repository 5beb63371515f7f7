// AVX-512 Llama forward ops. Tested against native/ref/llama_ops.cpp
// (test/llama-ops.test.ts); results differ only by summation order and the
// polynomial exp (relative error ~2 ulp).
#include <immintrin.h>

#include <cmath>

#include "quantform/llama_ops.h"

namespace qf {
namespace {

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

// Cephes expf: range reduction by ln 2 in two parts, degree-6 polynomial, scalef
// for 2^n. Inputs below -87.3 give 0, which softmax and silu want.
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
    const __mmask16 m = tail_mask(K - k);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc0);
  }
  return hsum512(_mm512_add_ps(acc0, acc1));
}

void embedding_forward_avx512(float* out, const int32_t* tokens, const float* wte, int64_t r0, int64_t r1,
                              int64_t C) {
  for (int64_t n = r0; n < r1; n++) {
    const float* row = wte + (int64_t)tokens[n] * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = tail_mask(C - c);
      _mm512_mask_storeu_ps(out + n * C + c, m, _mm512_maskz_loadu_ps(m, row + c));
    }
  }
}

void rmsnorm_forward_avx512(float* out, float* rstd, const float* inp, const float* weight, int64_t r0,
                            int64_t r1, int64_t C, float eps) {
  for (int64_t n = r0; n < r1; n++) {
    const float* x = inp + n * C;
    const float s = 1.0f / std::sqrt(dot512(x, x, C) / (float)C + eps);
    if (rstd) rstd[n] = s;
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = tail_mask(C - c);
      const __m512 v = _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m, x + c));
      _mm512_mask_storeu_ps(out + n * C + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, weight + c), v));
    }
  }
}

constexpr int64_t kNR = 64;  // columns of one packed weight panel: 4 zmm
constexpr int kMR = 6;        // 6 x 4 = 24 accumulators + 4 panel vectors + 1 broadcast of the 32 zmm

// C (MR, 64) (+)= A (MR, kc) rows lda apart @ Bp (kc, 64): the packed panel holds
// 64 output columns side by side for every k, so each k step is four vector loads,
// MR broadcasts and 4*MR FMAs into registers that never leave the core. (12 x 32
// needs 12 broadcasts for the same 24 FMAs and measured ~5 % slower on Zen 4.)
template <int MR>
void gemm_micro(float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool first,
                const __mmask16* mk) {
  __m512 acc[MR][4];
#pragma GCC unroll 32
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) acc[r][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[j], c + r * ldc + 16 * j);
  for (int64_t k = 0; k < kc; k++) {
    __m512 b[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) b[j] = _mm512_loadu_ps(bp + k * kNR + 16 * j);
#pragma GCC unroll 32
    for (int r = 0; r < MR; r++) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(av, b[j], acc[r][j]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(c + r * ldc + 16 * j, mk[j], acc[r][j]);
}

void gemm_rows(int rows, float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc,
               bool first, const __mmask16* mk) {
  switch (rows) {
    case 6: gemm_micro<6>(c, ldc, a, lda, bp, kc, first, mk); break;
    case 5: gemm_micro<5>(c, ldc, a, lda, bp, kc, first, mk); break;
    case 4: gemm_micro<4>(c, ldc, a, lda, bp, kc, first, mk); break;
    case 3: gemm_micro<3>(c, ldc, a, lda, bp, kc, first, mk); break;
    case 2: gemm_micro<2>(c, ldc, a, lda, bp, kc, first, mk); break;
    default: gemm_micro<1>(c, ldc, a, lda, bp, kc, first, mk); break;
  }
}

// Decode shapes (few rows): memory bound, so no packing; four weight rows stream
// at once (eight accumulators in flight) and each input vector load serves all four.
// The input rows loop inside, so the four weight rows come from DRAM once, then L1/L2.
void gemv_rows(float* out, const float* inp, const float* weight, const float* bias, int64_t M, int64_t N,
               int64_t K, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    for (int64_t m = 0; m < M; m++) {
      const float* x = inp + m * K;  // (K)
      const float* w0 = weight + n * K;  // (4, K)
      __m512 acc[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_ps();
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        const __m512 xa = _mm512_loadu_ps(x + k), xb = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
          acc[2 * r] = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + r * K + k), xa, acc[2 * r]);
          acc[2 * r + 1] = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + r * K + k + 16), xb, acc[2 * r + 1]);
        }
      }
      for (; k < K; k += 16) {
        const __mmask16 mk = tail_mask(K - k);
        const __m512 xa = _mm512_maskz_loadu_ps(mk, x + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) acc[2 * r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, w0 + r * K + k), xa, acc[2 * r]);
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) {
        const float v = hsum512(_mm512_add_ps(acc[2 * r], acc[2 * r + 1]));
        out[m * N + n + r] = bias ? v + bias[n + r] : v;
      }
    }
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      const float v = dot512(inp + m * K, weight + n * K, K);
      out[m * N + n] = bias ? v + bias[n] : v;
    }
}

void matmul_forward_avx512(float* out, const float* inp, const float* weight, const float* bias, int64_t M,
                           int64_t N, int64_t K, int64_t n0, int64_t n1, float* scratch) {
  if (M < 4) {
    gemv_rows(out, inp, weight, bias, M, N, K, n0, n1);
    return;
  }
  for (int64_t nc0 = n0; nc0 < n1; nc0 += kMatmulNC) {
    const int64_t ncols = n1 - nc0 < kMatmulNC ? n1 - nc0 : kMatmulNC;
    const int64_t panels = (ncols + kNR - 1) / kNR;
    for (int64_t kc0 = 0; kc0 < K; kc0 += kMatmulKC) {
      const int64_t kc = K - kc0 < kMatmulKC ? K - kc0 : kMatmulKC;
      // scratch (panels, kc, 64): weight rows nc0.. transposed so that k is the slow index
      for (int64_t p = 0; p < panels; p++) {
        float* dst = scratch + p * kc * kNR;
        for (int64_t j = 0; j < kNR; j++) {
          const int64_t n = nc0 + p * kNR + j;
          if (n < nc0 + ncols) {
            const float* src = weight + n * K + kc0;
            for (int64_t k = 0; k < kc; k++) dst[k * kNR + j] = src[k];
          } else {
            for (int64_t k = 0; k < kc; k++) dst[k * kNR + j] = 0.0f;
          }
        }
      }
      for (int64_t m0 = 0; m0 < M; m0 += kMR) {
        const int rows = (int)(M - m0 < kMR ? M - m0 : kMR);
        for (int64_t p = 0; p < panels; p++) {
          const int64_t cols = ncols - p * kNR;
          __mmask16 mk[4];
          for (int j = 0; j < 4; j++) mk[j] = tail_mask(cols > 16 * j ? cols - 16 * j : 0);
          gemm_rows(rows, out + m0 * N + nc0 + p * kNR, N, inp + m0 * K + kc0, K, scratch + p * kc * kNR, kc,
                    kc0 == 0, mk);
        }
      }
    }
    if (bias) {
      for (int64_t m = 0; m < M; m++)
        for (int64_t c = 0; c < ncols; c += 16) {
          const __mmask16 mk = tail_mask(ncols - c);
          float* o = out + m * N + nc0 + c;
          _mm512_mask_storeu_ps(o, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, o), _mm512_maskz_loadu_ps(mk, bias + nc0 + c)));
        }
    }
  }
}

void rope_forward_avx512(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1,
                         int64_t H, int64_t HS) {
  const int64_t half = HS / 2;
  for (int64_t n = r0; n < r1; n++) {
    const float* c = cos + (int64_t)pos[n] * half;
    const float* s = sin + (int64_t)pos[n] * half;
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (n * H + h) * HS;
      for (int64_t i = 0; i < half; i += 16) {
        const __mmask16 m = tail_mask(half - i);
        const __m512 a = _mm512_maskz_loadu_ps(m, v + i), b = _mm512_maskz_loadu_ps(m, v + i + half);
        const __m512 vc = _mm512_maskz_loadu_ps(m, c + i), vs = _mm512_maskz_loadu_ps(m, s + i);
        _mm512_mask_storeu_ps(v + i, m, _mm512_sub_ps(_mm512_mul_ps(a, vc), _mm512_mul_ps(b, vs)));
        _mm512_mask_storeu_ps(v + i + half, m, _mm512_add_ps(_mm512_mul_ps(a, vs), _mm512_mul_ps(b, vc)));
      }
    }
  }
}

void attention_forward_avx512(float* out, float* att, const float* q, const float* kc, const float* vc, int64_t r0,
                              int64_t r1, int64_t T, int64_t NH, int64_t NKV, int64_t HS, int64_t S, int64_t pos0) {
  const int64_t L = pos0 + T, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
  for (int64_t bh = r0; bh < r1; bh++) {
    const int64_t b = bh / NH, h = bh % NH, kvh = h / group;
    for (int64_t t = 0; t < T; t++) {
      const float* qv = q + ((b * T + t) * NH + h) * HS;
      float* a = att + ((b * NH + h) * T + t) * L;
      const int64_t cnt = pos0 + t + 1;
      float mx = -INFINITY;
      for (int64_t j = 0; j < cnt; j++) {
        const float s = dot512(qv, kc + ((b * S + j) * NKV + kvh) * HS, HS) * scale;
        a[j] = s;
        if (s > mx) mx = s;
      }
      const __m512 vmx = _mm512_set1_ps(mx);
      __m512 vsum = _mm512_setzero_ps();
      for (int64_t j = 0; j < cnt; j += 16) {
        const __mmask16 m = tail_mask(cnt - j);
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + j), vmx)));
        _mm512_mask_storeu_ps(a + j, m, e);
        vsum = _mm512_add_ps(vsum, e);
      }
      const __m512 vinv = _mm512_set1_ps(1.0f / hsum512(vsum));
      for (int64_t j = 0; j < cnt; j += 16) {
        const __mmask16 m = tail_mask(cnt - j);
        _mm512_mask_storeu_ps(a + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + j), vinv));
      }
      for (int64_t j = cnt; j < L; j++) a[j] = 0.0f;
      float* o = out + ((b * T + t) * NH + h) * HS;
      for (int64_t i = 0; i < HS; i += 16) {
        const __mmask16 m = tail_mask(HS - i);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < cnt; j++)
          acc = _mm512_fmadd_ps(_mm512_set1_ps(a[j]), _mm512_maskz_loadu_ps(m, vc + ((b * S + j) * NKV + kvh) * HS + i), acc);
        _mm512_mask_storeu_ps(o + i, m, acc);
      }
    }
  }
}

void swiglu_forward_avx512(float* out, const float* gate, const float* up, int64_t r0, int64_t r1) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = r0; i < r1; i += 16) {
    const __mmask16 m = tail_mask(r1 - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void residual_forward_avx512(float* out, const float* a, const float* b, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; i += 16) {
    const __mmask16 m = tail_mask(r1 - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
  }
}

}  // namespace

const LlamaKernels llama_kernels_avx512 = {
    embedding_forward_avx512, rmsnorm_forward_avx512, matmul_forward_avx512,   rope_forward_avx512,
    attention_forward_avx512, swiglu_forward_avx512,  residual_forward_avx512,
};

}  // namespace qf
