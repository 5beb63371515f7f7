// Scalar reference for the training family: the definition of correct that the
// AVX-512 variants are tested against, itself tested against finite differences.
// Reductions accumulate in double so the reference is the accurate side.
#include <cmath>

#include "quantform/train.h"

namespace qf {
namespace {

void gemm_ref(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
              int64_t n0, int64_t n1, float* pack) {
  (void)N; (void)pack;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = n0; n < n1; n++) {
      double acc = accumulate ? (double)C[m * ldc + n] : 0.0;
      for (int64_t k = 0; k < K; k++) acc += (double)A.p[m * A.rs + k * A.cs] * (double)B.p[k * B.rs + n * B.cs];
      C[m * ldc + n] = (float)acc;
    }
}

void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                         float eps) {
  for (int64_t t = r0; t < r1; t++) {
    const float* xr = x + t * D;
    double ss = 0;
    for (int64_t i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
    const float rs = (float)(1.0 / std::sqrt(ss / (double)D + (double)eps));
    rstd[t] = rs;
    for (int64_t i = 0; i < D; i++) out[t * D + i] = xr[i] * rs * w[i];
  }
}

// y = x * r * w with r = (mean(x^2) + eps)^-1/2:
//   dx = r * (dy*w) - x * r^3 / D * sum(dy * w * x)
void rmsnorm_backward_ref(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int64_t r0,
                          int64_t r1, int64_t D) {
  for (int64_t t = r0; t < r1; t++) {
    const float* xr = x + t * D;
    const float* gr = dout + t * D;
    const double rs = rstd[t];
    double dot = 0;
    for (int64_t i = 0; i < D; i++) dot += (double)gr[i] * w[i] * xr[i];
    const double c = dot * rs * rs * rs / (double)D;
    for (int64_t i = 0; i < D; i++) dx[t * D + i] = (float)(rs * gr[i] * w[i] - c * xr[i]);
  }
}

void rmsnorm_backward_weight_ref(float* dw, const float* dout, const float* x, const float* rstd, int64_t T,
                                 int64_t c0, int64_t c1, int64_t D) {
  for (int64_t i = c0; i < c1; i++) {
    double acc = 0;
    for (int64_t t = 0; t < T; t++) acc += (double)dout[t * D + i] * x[t * D + i] * rstd[t];
    dw[i] += (float)acc;
  }
}

float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }

void swiglu_forward_ref(float* h, const float* g, const float* u, int64_t r0, int64_t r1, int64_t F) {
  for (int64_t i = r0 * F; i < r1 * F; i++) h[i] = g[i] * sigmoid(g[i]) * u[i];
}

// d silu(g)/dg = s * (1 + g * (1 - s)), s = sigmoid(g)
void swiglu_backward_ref(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t r0, int64_t r1,
                         int64_t F) {
  for (int64_t i = r0 * F; i < r1 * F; i++) {
    const float s = sigmoid(g[i]);
    du[i] = dh[i] * g[i] * s;
    dg[i] = dh[i] * u[i] * (s * (1.f + g[i] * (1.f - s)));
  }
}

void rope_ref(float* x, int64_t r0, int64_t r1, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse) {
  const int64_t half = hd / 2;
  for (int64_t t = r0; t < r1; t++) {
    const double pos = (double)(t % seq);
    for (int64_t i = 0; i < half; i++) {
      const double ang = pos * std::pow((double)theta, -2.0 * (double)i / (double)hd);
      const float c = (float)std::cos(ang), s = inverse ? -(float)std::sin(ang) : (float)std::sin(ang);
      for (int64_t h = 0; h < H; h++) {
        float* p = x + t * H * hd + h * hd;
        const float a = p[i], b = p[i + half];
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
      }
    }
  }
}

void causal_softmax_forward_ref(float* p, int64_t r0, int64_t r1, int64_t S, float scale) {
  for (int64_t i = r0; i < r1; i++) {
    float* row = p + i * S;
    float mx = -INFINITY;
    for (int64_t j = 0; j <= i; j++) mx = row[j] * scale > mx ? row[j] * scale : mx;
    double sum = 0;
    for (int64_t j = 0; j <= i; j++) sum += std::exp((double)(row[j] * scale - mx));
    for (int64_t j = 0; j <= i; j++) row[j] = (float)(std::exp((double)(row[j] * scale - mx)) / sum);
    for (int64_t j = i + 1; j < S; j++) row[j] = 0.f;
  }
}

void causal_softmax_backward_ref(float* dp, const float* p, int64_t r0, int64_t r1, int64_t S, float scale) {
  for (int64_t i = r0; i < r1; i++) {
    float* d = dp + i * S;
    const float* pr = p + i * S;
    double dot = 0;
    for (int64_t j = 0; j <= i; j++) dot += (double)d[j] * pr[j];
    for (int64_t j = 0; j <= i; j++) d[j] = (float)((double)scale * pr[j] * ((double)d[j] - dot));
    for (int64_t j = i + 1; j < S; j++) d[j] = 0.f;
  }
}

void cross_entropy_forward_ref(float* loss, float* logits, const int32_t* targets, int64_t r0, int64_t r1, int64_t V) {
  for (int64_t t = r0; t < r1; t++) {
    float* row = logits + t * V;
    float mx = -INFINITY;
    for (int64_t v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double sum = 0;
    for (int64_t v = 0; v < V; v++) sum += std::exp((double)row[v] - mx);
    const double lse = (double)mx + std::log(sum);
    loss[t] = targets[t] < 0 ? 0.f : (float)(lse - (double)row[targets[t]]);
    for (int64_t v = 0; v < V; v++) row[v] = (float)std::exp((double)row[v] - lse);
  }
}

void cross_entropy_backward_ref(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V, float scale) {
  for (int64_t t = r0; t < r1; t++) {
    float* row = probs + t * V;
    if (targets[t] < 0) {
      for (int64_t v = 0; v < V; v++) row[v] = 0.f;
      continue;
    }
    row[targets[t]] -= 1.f;
    for (int64_t v = 0; v < V; v++) row[v] *= scale;
  }
}

void embedding_forward_ref(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t t = r0; t < r1; t++)
    for (int64_t i = 0; i < D; i++) out[t * D + i] = table[(int64_t)ids[t] * D + i];
}

void embedding_backward_ref(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t v0, int64_t v1,
                            int64_t D) {
  for (int64_t t = 0; t < T; t++) {
    const int64_t v = ids[t];
    if (v < v0 || v >= v1) continue;
    for (int64_t i = 0; i < D; i++) dtable[v * D + i] += dout[t * D + i];
  }
}

void teq_scale_backward_ref(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                            const float* W, int64_t N, const float* alpha, int64_t c0, int64_t c1, int64_t K) {
  for (int64_t k = c0; k < c1; k++) {
    double acc = 0;
    for (int64_t n = 0; n < N; n++) acc += (double)dws[n * K + k] * W[n * K + k];
    double act = 0;
    for (int64_t t = 0; t < T; t++) act += (double)dxs[t * K + k] * x[t * K + k];
    const double a = alpha[k];
    dalpha[k] += (float)(acc - act / (a * a));
    if (dx)
      for (int64_t t = 0; t < T; t++) dx[t * K + k] = dxs[t * K + k] / alpha[k];
  }
}

void adamw_ref(float* arena, int64_t P, int64_t i0, int64_t i1, int64_t step, float lr, float b1, float b2, float eps,
               float wd, float pmin) {
  float* p = arena;
  const float* g = arena + P;
  float* m = arena + 2 * P;
  float* v = arena + 3 * P;
  const float bc1 = (float)(1.0 - std::pow((double)b1, (double)step));
  const float bc2 = (float)(1.0 - std::pow((double)b2, (double)step));
  for (int64_t i = i0; i < i1; i++) {
    m[i] = b1 * m[i] + (1.f - b1) * g[i];
    v[i] = b2 * v[i] + (1.f - b2) * (g[i] * g[i]);
    const float upd = (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps) + wd * p[i];
    const float np = p[i] - lr * upd;
    p[i] = np < pmin ? pmin : np;
  }
}

}  // namespace

const TrainKernels train_kernels_ref = {
    gemm_ref,
    rmsnorm_forward_ref,
    rmsnorm_backward_ref,
    rmsnorm_backward_weight_ref,
    swiglu_forward_ref,
    swiglu_backward_ref,
    rope_ref,
    causal_softmax_forward_ref,
    causal_softmax_backward_ref,
    cross_entropy_forward_ref,
    cross_entropy_backward_ref,
    embedding_forward_ref,
    embedding_backward_ref,
    teq_scale_backward_ref,
    adamw_ref,
};

}  // namespace qf
