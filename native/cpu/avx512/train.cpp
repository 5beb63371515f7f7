// AVX-512 training family. Same definitions as native/ref/train.cpp; reductions
// run in f32 lanes (the reference uses double), exp is a polynomial (rel. error
// ~2 ulp), so results match the reference within the named tolerances of
// test/train-kernels.test.ts. AdamW uses the reference's exact operation order
// without fused multiply-adds and is bit-exact.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quantform/train.h"

namespace qf {
namespace {

__mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

// e^x for x in f32 range: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 minimax-like Taylor.
__m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-103.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 hi part: exact product
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);      // ln2 lo part
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// ---- GEMM: BLIS-style packing, 8 x 32 register tile (16 accumulators) ----
constexpr int64_t MR = 8, NR = 32, KC = 256, NC = 512, MC = 128;
static_assert(KC * NC + MC * KC + 64 <= kGemmPackFloats, "pack workspace too small");

// Bp (ceil(nc/NR) panels, kc, NR): B (k, n) for k in [pc, pc+kc), n in [jc, jc+nc), zero padded.
void pack_b(float* Bp, StridedMat B, int64_t pc, int64_t kc, int64_t jc, int64_t nc) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    float* dst = Bp + j0 * kc;
    const int64_t nr = nc - j0 < NR ? nc - j0 : NR;
    if (B.cs == 1) {
      for (int64_t k = 0; k < kc; k++) {
        const float* src = B.p + (pc + k) * B.rs + jc + j0;
        const __mmask16 m0 = tail16(nr), m1 = tail16(nr - 16 > 0 ? nr - 16 : 0);
        _mm512_storeu_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_storeu_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
    } else {
      for (int64_t j = 0; j < NR; j++) {
        if (j >= nr) {
          for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = 0.f;
          continue;
        }
        const float* src = B.p + (jc + j0 + j) * B.cs + pc * B.rs;
        for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = src[k * B.rs];
      }
    }
  }
}

// Ap (ceil(mc/MR) panels, kc, MR): A (m, k) for m in [ic, ic+mc), k in [pc, pc+kc), zero padded.
void pack_a(float* Ap, StridedMat A, int64_t ic, int64_t mc, int64_t pc, int64_t kc) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    float* dst = Ap + i0 * kc;
    const int64_t mr = mc - i0 < MR ? mc - i0 : MR;
    if (A.rs == 1) {  // A^T stored: the MR rows of one k are contiguous
      const __mmask8 m = (__mmask8)((1u << mr) - 1);
      for (int64_t k = 0; k < kc; k++)
        _mm256_storeu_ps(dst + k * MR, _mm256_maskz_loadu_ps(m, A.p + (ic + i0) + (pc + k) * A.cs));
      continue;
    }
    for (int64_t i = 0; i < MR; i++) {
      if (i >= mr) {
        for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = 0.f;
        continue;
      }
      const float* src = A.p + (ic + i0 + i) * A.rs + pc * A.cs;
      for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = src[k * A.cs];
    }
  }
}

void micro_8x32(const float* Ap, const float* Bp, int64_t kc, float* C, int64_t ldc, int64_t mr, int64_t nr,
                bool load_c) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  for (int64_t k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_loadu_ps(Bp + k * NR), b1 = _mm512_loadu_ps(Bp + k * NR + 16);
    const float* a = Ap + k * MR;
    __m512 av;
    av = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);
    av = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);
    av = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);
    av = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);
    av = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);
    av = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);
    av = _mm512_set1_ps(a[6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);
    av = _mm512_set1_ps(a[7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);
  }
  const __m512 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                             {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  const __mmask16 m0 = tail16(nr), m1 = tail16(nr > 16 ? nr - 16 : 0);
  for (int64_t i = 0; i < mr; i++) {
    float* c = C + i * ldc;
    __m512 v0 = acc[i][0], v1 = acc[i][1];
    if (load_c) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

void gemm_avx512(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
                 int64_t n0, int64_t n1, float* pack) {
  (void)N;
  float* Bp = pack;
  float* Ap = pack + KC * NC;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; m++) memset(C + m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    return;
  }
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = n1 - jc < NC ? n1 - jc : NC;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = K - pc < KC ? K - pc : KC;
      pack_b(Bp, B, pc, kc, jc, nc);
      const bool load_c = accumulate || pc > 0;
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = M - ic < MC ? M - ic : MC;
        pack_a(Ap, A, ic, mc, pc, kc);
        for (int64_t j0 = 0; j0 < nc; j0 += NR)
          for (int64_t i0 = 0; i0 < mc; i0 += MR)
            micro_8x32(Ap + i0 * kc, Bp + j0 * kc, kc, C + (ic + i0) * ldc + jc + j0, ldc,
                       mc - i0 < MR ? mc - i0 : MR, nc - j0 < NR ? nc - j0 : NR, load_c);
      }
    }
  }
}

// ---- elementwise and row ops ----
float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

void rmsnorm_forward_avx512(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                            float eps) {
  for (int64_t t = r0; t < r1; t++) {
    const float* xr = x + t * D;
    __m512 ss = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(tail16(D - i), xr + i);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const float rs = 1.f / std::sqrt(hsum(ss) / (float)D + eps);
    rstd[t] = rs;
    const __m512 r = _mm512_set1_ps(rs);
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      _mm512_mask_storeu_ps(out + t * D + i, m,
                            _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), r), _mm512_maskz_loadu_ps(m, w + i)));
    }
  }
}

void rmsnorm_backward_avx512(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                             int64_t r0, int64_t r1, int64_t D) {
  for (int64_t t = r0; t < r1; t++) {
    const float* xr = x + t * D;
    const float* gr = dout + t * D;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      dot = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, gr + i), _mm512_maskz_loadu_ps(m, w + i)),
                            _mm512_maskz_loadu_ps(m, xr + i), dot);
    }
    const float rs = rstd[t];
    const __m512 c = _mm512_set1_ps(hsum(dot) * rs * rs * rs / (float)D), r = _mm512_set1_ps(rs);
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      const __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gr + i), _mm512_maskz_loadu_ps(m, w + i));
      _mm512_mask_storeu_ps(dx + t * D + i, m, _mm512_fnmadd_ps(c, _mm512_maskz_loadu_ps(m, xr + i), _mm512_mul_ps(r, gw)));
    }
  }
}

void rmsnorm_backward_weight_avx512(float* dw, const float* dout, const float* x, const float* rstd, int64_t T,
                                    int64_t c0, int64_t c1, int64_t D) {
  for (int64_t i = c0; i < c1; i += 16) {
    const __mmask16 m = tail16(c1 - i);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t++)
      acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + t * D + i), _mm512_set1_ps(rstd[t])),
                            _mm512_maskz_loadu_ps(m, x + t * D + i), acc);
    _mm512_mask_storeu_ps(dw + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dw + i), acc));
  }
}

__m512 sigmoid512(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}

void swiglu_forward_avx512(float* h, const float* g, const float* u, int64_t r0, int64_t r1, int64_t F) {
  const int64_t e = r1 * F;
  for (int64_t i = r0 * F; i < e; i += 16) {
    const __mmask16 m = tail16(e - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
    _mm512_mask_storeu_ps(h + i, m, _mm512_mul_ps(_mm512_mul_ps(gv, sigmoid512(gv)), _mm512_maskz_loadu_ps(m, u + i)));
  }
}

void swiglu_backward_avx512(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t r0,
                            int64_t r1, int64_t F) {
  const int64_t e = r1 * F;
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = r0 * F; i < e; i += 16) {
    const __mmask16 m = tail16(e - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i), dv = _mm512_maskz_loadu_ps(m, dh + i);
    const __m512 s = sigmoid512(gv);
    _mm512_mask_storeu_ps(du + i, m, _mm512_mul_ps(dv, _mm512_mul_ps(gv, s)));
    const __m512 ds = _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(dg + i, m, _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_maskz_loadu_ps(m, u + i)), ds));
  }
}

void rope_avx512(float* x, int64_t r0, int64_t r1, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse) {
  const int64_t half = hd / 2;
  float cs[512], sn[512];  // (half): hd <= 1024 is checked by train_ops
  for (int64_t t = r0; t < r1; t++) {
    const double pos = (double)(t % seq);
    for (int64_t i = 0; i < half; i++) {
      const double ang = pos * std::pow((double)theta, -2.0 * (double)i / (double)hd);
      cs[i] = (float)std::cos(ang);
      sn[i] = inverse ? -(float)std::sin(ang) : (float)std::sin(ang);
    }
    for (int64_t h = 0; h < H; h++) {
      float* p = x + t * H * hd + h * hd;
      for (int64_t i = 0; i < half; i += 16) {
        const __mmask16 m = tail16(half - i);
        const __m512 a = _mm512_maskz_loadu_ps(m, p + i), b = _mm512_maskz_loadu_ps(m, p + half + i);
        const __m512 c = _mm512_maskz_loadu_ps(m, cs + i), s = _mm512_maskz_loadu_ps(m, sn + i);
        _mm512_mask_storeu_ps(p + i, m, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
        _mm512_mask_storeu_ps(p + half + i, m, _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s)));
      }
    }
  }
}

void causal_softmax_forward_avx512(float* p, int64_t r0, int64_t r1, int64_t S, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t i = r0; i < r1; i++) {
    float* row = p + i * S;
    const int64_t n = i + 1;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16)
      mx = _mm512_mask_max_ps(mx, tail16(n - j), mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail16(n - j), row + j), sc));
    const __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail16(n - j);
      const __m512 e = exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), sc), mv));
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
      _mm512_mask_storeu_ps(row + j, m, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / hsum(sum));
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail16(n - j);
      _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
    }
    if (n < S) memset(row + n, 0, (size_t)(S - n) * sizeof(float));
  }
}

void causal_softmax_backward_avx512(float* dp, const float* p, int64_t r0, int64_t r1, int64_t S, float scale) {
  for (int64_t i = r0; i < r1; i++) {
    float* d = dp + i * S;
    const float* pr = p + i * S;
    const int64_t n = i + 1;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail16(n - j);
      dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, d + j), _mm512_maskz_loadu_ps(m, pr + j), dot);
    }
    const __m512 dv = _mm512_set1_ps(hsum(dot)), sc = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail16(n - j);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_maskz_loadu_ps(m, pr + j)),
                                     _mm512_sub_ps(_mm512_maskz_loadu_ps(m, d + j), dv));
      _mm512_mask_storeu_ps(d + j, m, v);
    }
    if (n < S) memset(d + n, 0, (size_t)(S - n) * sizeof(float));
  }
}

void cross_entropy_forward_avx512(float* loss, float* logits, const int32_t* targets, int64_t r0, int64_t r1,
                                  int64_t V) {
  for (int64_t t = r0; t < r1; t++) {
    float* row = logits + t * V;
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
    const float lse = mxs + std::log(hsum(sum));
    loss[t] = targets[t] < 0 ? 0.f : lse - row[targets[t]];
    const __m512 lv = _mm512_set1_ps(lse);
    for (int64_t v = 0; v < V; v += 16) {
      const __mmask16 m = tail16(V - v);
      _mm512_mask_storeu_ps(row + v, m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + v), lv)));
    }
  }
}

void cross_entropy_backward_avx512(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V,
                                   float scale) {
  for (int64_t t = r0; t < r1; t++) {
    float* row = probs + t * V;
    if (targets[t] < 0) {
      memset(row, 0, (size_t)V * sizeof(float));
      continue;
    }
    row[targets[t]] -= 1.f;
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t v = 0; v < V; v += 16) {
      const __mmask16 m = tail16(V - v);
      _mm512_mask_storeu_ps(row + v, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + v), sc));
    }
  }
}

void embedding_forward_avx512(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t t = r0; t < r1; t++) memcpy(out + t * D, table + (int64_t)ids[t] * D, (size_t)D * sizeof(float));
}

void embedding_backward_avx512(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t v0, int64_t v1,
                               int64_t D) {
  for (int64_t t = 0; t < T; t++) {
    const int64_t v = ids[t];
    if (v < v0 || v >= v1) continue;
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 m = tail16(D - i);
      _mm512_mask_storeu_ps(dtable + v * D + i, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, dtable + v * D + i), _mm512_maskz_loadu_ps(m, dout + t * D + i)));
    }
  }
}

void teq_scale_backward_avx512(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t c0, int64_t c1, int64_t K) {
  for (int64_t k = c0; k < c1; k += 16) {
    const __mmask16 m = tail16(c1 - k);
    __m512 acc = _mm512_setzero_ps(), act = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; n++)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dws + n * K + k), _mm512_maskz_loadu_ps(m, W + n * K + k), acc);
    for (int64_t t = 0; t < T; t++)
      act = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dxs + t * K + k), _mm512_maskz_loadu_ps(m, x + t * K + k), act);
    const __m512 a = _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), m, alpha + k);
    const __m512 d = _mm512_sub_ps(acc, _mm512_div_ps(act, _mm512_mul_ps(a, a)));
    _mm512_mask_storeu_ps(dalpha + k, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dalpha + k), d));
    if (dx)
      for (int64_t t = 0; t < T; t++)
        _mm512_mask_storeu_ps(dx + t * K + k, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, dxs + t * K + k), a));
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

}  // namespace

const TrainKernels train_kernels_avx512 = {
    gemm_avx512,
    rmsnorm_forward_avx512,
    rmsnorm_backward_avx512,
    rmsnorm_backward_weight_avx512,
    swiglu_forward_avx512,
    swiglu_backward_avx512,
    rope_avx512,
    causal_softmax_forward_avx512,
    causal_softmax_backward_avx512,
    cross_entropy_forward_avx512,
    cross_entropy_backward_avx512,
    embedding_forward_avx512,
    embedding_backward_avx512,
    teq_scale_backward_avx512,
    adamw_avx512,
};

}  // namespace qf
