// AVX2 Llama forward ops where AVX2 pays off cheaply: the GEMM (the whole cost of a
// forward pass), RMSNorm and the residual add. The other ops forward to the scalar
// reference table at call time (they are a small share of the time).
#include <immintrin.h>

#include <cmath>

#include "quantform/llama_ops.h"

namespace qf {
namespace {

constexpr int64_t kNR = 32;  // columns of one packed weight panel: 4 ymm

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
  float s = hsum256(_mm256_add_ps(acc0, acc1));
  for (; k < K; k++) s += a[k] * b[k];
  return s;
}

void embedding_forward_avx2(float* out, const int32_t* tokens, const float* wte, int64_t r0, int64_t r1, int64_t C) {
  llama_kernels_ref.embedding_forward(out, tokens, wte, r0, r1, C);
}

void rmsnorm_forward_avx2(float* out, float* rstd, const float* inp, const float* weight, int64_t r0, int64_t r1,
                          int64_t C, float eps) {
  for (int64_t n = r0; n < r1; n++) {
    const float* x = inp + n * C;
    const float s = 1.0f / std::sqrt(dot256(x, x, C) / (float)C + eps);
    if (rstd) rstd[n] = s;
    for (int64_t c = 0; c < C; c++) out[n * C + c] = weight[c] * (s * x[c]);
  }
}

// C (MR, 32) (+)= A (MR, kc) @ Bp (kc, 32); 4*MR accumulators of the 16 ymm registers.
template <int MR>
void gemm_micro(float* c, int64_t ldc, const float* a, int64_t lda, const float* bp, int64_t kc, bool first) {
  __m256 acc[MR][4];
  #pragma GCC unroll 32
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 32
    for (int j = 0; j < 4; j++) acc[r][j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * ldc + 8 * j);
  for (int64_t k = 0; k < kc; k++) {
    #pragma GCC unroll 32
    for (int j = 0; j < 4; j++) {
      const __m256 b = _mm256_loadu_ps(bp + k * kNR + 8 * j);
      #pragma GCC unroll 32
      for (int r = 0; r < MR; r++) acc[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * lda + k), b, acc[r][j]);
    }
  }
  #pragma GCC unroll 32
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 32
    for (int j = 0; j < 4; j++) _mm256_storeu_ps(c + r * ldc + 8 * j, acc[r][j]);
}

void matmul_forward_avx2(float* out, const float* inp, const float* weight, const float* bias, int64_t M,
                         int64_t N, int64_t K, int64_t n0, int64_t n1, float* scratch) {
  if (M < 4) {
    for (int64_t n = n0; n < n1; n++)
      for (int64_t m = 0; m < M; m++) {
        const float v = dot256(inp + m * K, weight + n * K, K);
        out[m * N + n] = bias ? v + bias[n] : v;
      }
    return;
  }
  float tile[3 * kNR];  // (3, 32) staging for panels narrower than 32 columns
  for (int64_t nc0 = n0; nc0 < n1; nc0 += kMatmulNC) {
    const int64_t ncols = n1 - nc0 < kMatmulNC ? n1 - nc0 : kMatmulNC;
    const int64_t panels = (ncols + kNR - 1) / kNR;
    for (int64_t kc0 = 0; kc0 < K; kc0 += kMatmulKC) {
      const int64_t kc = K - kc0 < kMatmulKC ? K - kc0 : kMatmulKC;
      for (int64_t p = 0; p < panels; p++) {
        float* dst = scratch + p * kc * kNR;  // (kc, 32)
        for (int64_t j = 0; j < kNR; j++) {
          const int64_t n = nc0 + p * kNR + j;
          for (int64_t k = 0; k < kc; k++) dst[k * kNR + j] = n < nc0 + ncols ? weight[n * K + kc0 + k] : 0.0f;
        }
      }
      for (int64_t m0 = 0; m0 < M; m0 += 3) {
        const int rows = (int)(M - m0 < 3 ? M - m0 : 3);
        for (int64_t p = 0; p < panels; p++) {
          const int64_t cols = ncols - p * kNR < kNR ? ncols - p * kNR : kNR;
          float* c = out + m0 * N + nc0 + p * kNR;
          const bool full = cols == kNR;
          float* cc = full ? c : tile;
          const int64_t ldc = full ? N : kNR;
          if (!full && kc0 != 0)
            #pragma GCC unroll 32
            for (int r = 0; r < rows; r++)
              for (int64_t j = 0; j < cols; j++) tile[r * kNR + j] = c[r * N + j];
          const float* a = inp + m0 * K + kc0;
          const float* bp = scratch + p * kc * kNR;
          if (rows == 3) gemm_micro<3>(cc, ldc, a, K, bp, kc, kc0 == 0);
          else if (rows == 2) gemm_micro<2>(cc, ldc, a, K, bp, kc, kc0 == 0);
          else gemm_micro<1>(cc, ldc, a, K, bp, kc, kc0 == 0);
          if (!full)
            #pragma GCC unroll 32
            for (int r = 0; r < rows; r++)
              for (int64_t j = 0; j < cols; j++) c[r * N + j] = tile[r * kNR + j];
        }
      }
    }
    if (bias)
      for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < ncols; j++) out[m * N + nc0 + j] += bias[nc0 + j];
  }
}

void rope_forward_avx2(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1,
                       int64_t H, int64_t HS) {
  llama_kernels_ref.rope_forward(x, pos, cos, sin, r0, r1, H, HS);
}

void attention_forward_avx2(float* out, float* att, const float* q, const float* kc, const float* vc, int64_t r0,
                            int64_t r1, int64_t T, int64_t NH, int64_t NKV, int64_t HS, int64_t S, int64_t pos0) {
  llama_kernels_ref.attention_forward(out, att, q, kc, vc, r0, r1, T, NH, NKV, HS, S, pos0);
}

void swiglu_forward_avx2(float* out, const float* gate, const float* up, int64_t r0, int64_t r1) {
  llama_kernels_ref.swiglu_forward(out, gate, up, r0, r1);
}

void residual_forward_avx2(float* out, const float* a, const float* b, int64_t r0, int64_t r1) {
  int64_t i = r0;
  for (; i + 8 <= r1; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < r1; i++) out[i] = a[i] + b[i];
}

}  // namespace

const LlamaKernels llama_kernels_avx2 = {
    embedding_forward_avx2, rmsnorm_forward_avx2, matmul_forward_avx2,   rope_forward_avx2,
    attention_forward_avx2, swiglu_forward_avx2,  residual_forward_avx2,
};

}  // namespace qf
