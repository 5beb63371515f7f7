// Scalar reference of the Llama forward ops: the definition of correct. Sums run
// in the order llama2.c's run.c uses (k ascending, float accumulators).
#include <cmath>

#include "quantform/llama_ops.h"

namespace qf {
namespace {

void embedding_forward_ref(float* out, const int32_t* tokens, const float* wte, int64_t r0, int64_t r1,
                           int64_t C) {
  for (int64_t n = r0; n < r1; n++) {
    const float* row = wte + (int64_t)tokens[n] * C;  // (C)
    for (int64_t c = 0; c < C; c++) out[n * C + c] = row[c];
  }
}

void rmsnorm_forward_ref(float* out, float* rstd, const float* inp, const float* weight, int64_t r0, int64_t r1,
                         int64_t C, float eps) {
  for (int64_t n = r0; n < r1; n++) {
    const float* x = inp + n * C;
    float ss = 0.0f;
    for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
    const float s = 1.0f / std::sqrt(ss / (float)C + eps);
    if (rstd) rstd[n] = s;
    for (int64_t c = 0; c < C; c++) out[n * C + c] = weight[c] * (s * x[c]);
  }
}

void matmul_forward_ref(float* out, const float* inp, const float* weight, const float* bias, int64_t M,
                        int64_t N, int64_t K, int64_t n0, int64_t n1, float* scratch) {
  for (int64_t m = 0; m < M; m++) {
    const float* x = inp + m * K;  // (K)
    for (int64_t n = n0; n < n1; n++) {
      const float* w = weight + n * K;  // (K)
      float acc = 0.0f;
      for (int64_t k = 0; k < K; k++) acc += w[k] * x[k];
      out[m * N + n] = bias ? acc + bias[n] : acc;
    }
  }
}

void rope_forward_ref(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1,
                      int64_t H, int64_t HS) {
  const int64_t half = HS / 2;
  for (int64_t n = r0; n < r1; n++) {
    const float* c = cos + (int64_t)pos[n] * half;  // (HS/2)
    const float* s = sin + (int64_t)pos[n] * half;
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (n * H + h) * HS;  // (HS)
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = a * s[i] + b * c[i];
      }
    }
  }
}

void attention_forward_ref(float* out, float* att, const float* q, const float* kc, const float* vc, int64_t r0,
                           int64_t r1, int64_t T, int64_t NH, int64_t NKV, int64_t HS, int64_t S, int64_t pos0) {
  const int64_t L = pos0 + T, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
  for (int64_t bh = r0; bh < r1; bh++) {
    const int64_t b = bh / NH, h = bh % NH, kvh = h / group;
    for (int64_t t = 0; t < T; t++) {
      const float* qv = q + ((b * T + t) * NH + h) * HS;  // (HS)
      float* a = att + ((b * NH + h) * T + t) * L;         // (L)
      const int64_t last = pos0 + t;
      float mx = -INFINITY;
      for (int64_t j = 0; j <= last; j++) {
        const float* kv = kc + ((b * S + j) * NKV + kvh) * HS;
        float s = 0.0f;
        for (int64_t i = 0; i < HS; i++) s += qv[i] * kv[i];
        s *= scale;
        a[j] = s;
        if (s > mx) mx = s;
      }
      float sum = 0.0f;
      for (int64_t j = 0; j <= last; j++) {
        a[j] = std::exp(a[j] - mx);
        sum += a[j];
      }
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j <= last; j++) a[j] *= inv;
      for (int64_t j = last + 1; j < L; j++) a[j] = 0.0f;
      float* o = out + ((b * T + t) * NH + h) * HS;  // (HS)
      for (int64_t i = 0; i < HS; i++) o[i] = 0.0f;
      for (int64_t j = 0; j <= last; j++) {
        const float* vv = vc + ((b * S + j) * NKV + kvh) * HS;
        for (int64_t i = 0; i < HS; i++) o[i] += a[j] * vv[i];
      }
    }
  }
}

void swiglu_forward_ref(float* out, const float* gate, const float* up, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; i++) {
    const float g = gate[i];
    out[i] = g * (1.0f / (1.0f + std::exp(-g))) * up[i];
  }
}

void residual_forward_ref(float* out, const float* a, const float* b, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; i++) out[i] = a[i] + b[i];
}

}  // namespace

const LlamaKernels llama_kernels_ref = {
    embedding_forward_ref, rmsnorm_forward_ref, matmul_forward_ref, rope_forward_ref,
    attention_forward_ref, swiglu_forward_ref,  residual_forward_ref,
};

}  // namespace qf
