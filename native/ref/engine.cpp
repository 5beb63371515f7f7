// Scalar reference of every engine kernel: the definition of correct that the
// SIMD tiers are tested against, itself tested against float64 oracles and
// finite differences (test/engine-ops.test.ts). Reductions accumulate in double
// so the reference is the accurate side of every comparison.
#include <algorithm>
#include <cmath>

#include "quantform/engine.h"
#include "quantform/formats.h"

namespace qf {
namespace {

void gemm_ref(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
              int64_t n0, int64_t n1, float* pack) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = n0; n < n1; n++) {
      double acc = accumulate ? (double)C[m * ldc + n] : 0.0;
      for (int64_t k = 0; k < K; k++) acc += (double)A.p[m * A.rs + k * A.cs] * (double)B.p[k * B.rs + n * B.cs];
      C[m * ldc + n] = (float)acc;
    }
}

void embedding_forward_ref(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t r = r0; r < r1; r++)
    for (int64_t i = 0; i < D; i++) out[r * D + i] = table[(int64_t)ids[r] * D + i];
}

void embedding_backward_ref(float* dtable, const float* dout, const int32_t* ids, int64_t BT, int64_t v0, int64_t v1,
                            int64_t D) {
  for (int64_t r = 0; r < BT; r++) {
    const int64_t v = ids[r];
    if (v < v0 || v >= v1) continue;
    for (int64_t i = 0; i < D; i++) dtable[v * D + i] += dout[r * D + i];
  }
}

void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                         float eps) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * D;  // (D)
    double ss = 0;
    for (int64_t i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
    const float rs = (float)(1.0 / std::sqrt(ss / (double)D + (double)eps));
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < D; i++) out[r * D + i] = xr[i] * rs * w[i];
  }
}

// y = x r w with r = (mean(x^2) + eps)^-1/2:  dx = r (dy w) - x r^3 / D sum(dy w x)
void rmsnorm_backward_ref(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int64_t r0,
                          int64_t r1, int64_t D) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * D;
    const float* gr = dout + r * D;
    const double rs = rstd[r];
    double dot = 0;
    for (int64_t i = 0; i < D; i++) dot += (double)gr[i] * w[i] * xr[i];
    const double c = dot * rs * rs * rs / (double)D;
    for (int64_t i = 0; i < D; i++) dx[r * D + i] = (float)(rs * gr[i] * w[i] - c * xr[i]);
  }
}

void rmsnorm_backward_weight_ref(float* dw, const float* dout, const float* x, const float* rstd, int64_t BT,
                                 int64_t c0, int64_t c1, int64_t D) {
  for (int64_t i = c0; i < c1; i++) {
    double acc = 0;
    for (int64_t r = 0; r < BT; r++) acc += (double)dout[r * D + i] * x[r * D + i] * rstd[r];
    dw[i] += (float)acc;
  }
}

// The forward rotates (a, b) by +angle; the inverse (the transpose) by -angle.
void rope_ref(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1, int64_t H,
              int64_t hd, bool inverse) {
  const int64_t half = hd / 2;
  for (int64_t r = r0; r < r1; r++) {
    const float* c = cos + (int64_t)pos[r] * half;  // (hd/2)
    const float* s = sin + (int64_t)pos[r] * half;
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (r * H + h) * hd;  // (hd)
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half], si = inverse ? -s[i] : s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = a * si + b * c[i];
      }
    }
  }
}

void attention_forward_ref(float* out, float* probs, const float* q, const float* k, const float* v, int64_t i0,
                           int64_t i1, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0,
                           float* scratch) {
  const int64_t L = pos0 + T, rep = Hq / Hkv, blocks = (T + kAttnChunk - 1) / kAttnChunk;
  const int64_t Dq = Hq * hd, Dkv = Hkv * hd;
  const double scale = 1.0 / std::sqrt((double)hd);
  for (int64_t it = i0; it < i1; it++) {
    const int64_t b = it / (Hq * blocks), h = (it / blocks) % Hq, g = h / rep;
    const int64_t t0 = (it % blocks) * kAttnChunk, t1 = t0 + kAttnChunk < T ? t0 + kAttnChunk : T;
    for (int64_t t = t0; t < t1; t++) {
      const float* qv = q + (b * T + t) * Dq + h * hd;                        // (hd)
      float* p = probs ? probs + ((b * Hq + h) * T + t) * L : scratch;        // (L)
      const int64_t cnt = pos0 + t + 1;
      double mx = -INFINITY;
      for (int64_t j = 0; j < cnt; j++) {
        const float* kv = k + (b * S + j) * Dkv + g * hd;
        double s = 0;
        for (int64_t i = 0; i < hd; i++) s += (double)qv[i] * kv[i];
        scratch[j] = (float)(s * scale);
        if (scratch[j] > mx) mx = scratch[j];
      }
      double sum = 0;
      for (int64_t j = 0; j < cnt; j++) sum += std::exp((double)scratch[j] - mx);
      for (int64_t j = 0; j < cnt; j++) p[j] = (float)(std::exp((double)scratch[j] - mx) / sum);
      if (probs)
        for (int64_t j = cnt; j < L; j++) p[j] = 0.f;
      float* o = out + (b * T + t) * Dq + h * hd;
      for (int64_t i = 0; i < hd; i++) {
        double acc = 0;
        for (int64_t j = 0; j < cnt; j++) acc += (double)p[j] * v[(b * S + j) * Dkv + g * hd + i];
        o[i] = (float)acc;
      }
    }
  }
}

// With P the probabilities of query t, dP[j] = <dout[t], v[j]> and
// dS[j] = scale P[j] (dP[j] - sum_j' P[j'] dP[j']):
//   dq[t] = sum_j dS[j] k[j],  dk[j] = sum_t dS_t[j] q[t],  dv[j] = sum_t P_t[j] dout[t].
// dS is recomputed where needed instead of stored: the reference stays O(T) in memory.
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                            const float* k, const float* v, int64_t i0, int64_t i1, int64_t T, int64_t Hq,
                            int64_t Hkv, int64_t hd, float* scratch) {
  const int64_t rep = Hq / Hkv, Dq = Hq * hd, Dkv = Hkv * hd;
  const double scale = 1.0 / std::sqrt((double)hd);
  // (rep, T) sum_j P dP per query, kept as hi + lo floats: dS = P (dP - rowdot) cancels,
  // so a rounded rowdot would leave a residue where the exact gradient is 0
  float* rowdot_hi = scratch;
  float* rowdot_lo = scratch + rep * T;
  float* col = scratch + 2 * rep * T;  // (rep, T): dS_t[j] of one key j
  auto dP = [&](int64_t b, int64_t h, int64_t g, int64_t t, int64_t j) {
    double s = 0;
    for (int64_t i = 0; i < hd; i++) s += (double)dout[(b * T + t) * Dq + h * hd + i] * v[(b * T + j) * Dkv + g * hd + i];
    return s;
  };
  for (int64_t it = i0; it < i1; it++) {
    const int64_t b = it / Hkv, g = it % Hkv;
    for (int64_t r = 0; r < rep; r++) {
      const int64_t h = g * rep + r;
      for (int64_t t = 0; t < T; t++) {
        const float* P = probs + ((b * Hq + h) * T + t) * T;
        double s = 0;
        for (int64_t j = 0; j <= t; j++) s += (double)P[j] * dP(b, h, g, t, j);
        rowdot_hi[r * T + t] = (float)s;
        rowdot_lo[r * T + t] = (float)(s - (double)rowdot_hi[r * T + t]);
        // dq[t] = sum_j dS[j] k[j]; dS of row t goes to col (free until the key loop)
        for (int64_t j = 0; j <= t; j++) col[j] = (float)(scale * P[j] * (dP(b, h, g, t, j) - s));
        for (int64_t i = 0; i < hd; i++) {
          double acc = 0;
          for (int64_t j = 0; j <= t; j++) acc += (double)col[j] * k[(b * T + j) * Dkv + g * hd + i];
          dq[(b * T + t) * Dq + h * hd + i] = (float)acc;
        }
      }
    }
    for (int64_t j = 0; j < T; j++) {
      for (int64_t r = 0; r < rep; r++) {
        const int64_t h = g * rep + r;
        for (int64_t t = j; t < T; t++) {
          const double Pj = probs[((b * Hq + h) * T + t) * T + j];
          const double rowdot = (double)rowdot_hi[r * T + t] + (double)rowdot_lo[r * T + t];
          col[r * T + t] = (float)(scale * Pj * (dP(b, h, g, t, j) - rowdot));
        }
      }
      for (int64_t i = 0; i < hd; i++) {
        double ak = 0, av = 0;
        for (int64_t r = 0; r < rep; r++) {
          const int64_t h = g * rep + r;
          for (int64_t t = j; t < T; t++) {
            ak += (double)col[r * T + t] * q[(b * T + t) * Dq + h * hd + i];
            av += (double)probs[((b * Hq + h) * T + t) * T + j] * dout[(b * T + t) * Dq + h * hd + i];
          }
        }
        dk[(b * T + j) * Dkv + g * hd + i] = (float)ak;
        dv[(b * T + j) * Dkv + g * hd + i] = (float)av;
      }
    }
  }
}

float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }

void swiglu_forward_ref(float* out, const float* g, const float* u, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i++) out[i] = g[i] * sigmoid(g[i]) * u[i];
}

void swiglu_backward_ref(float* dg, float* du, const float* dout, const float* g, const float* u, int64_t i0,
                         int64_t i1) {
  for (int64_t i = i0; i < i1; i++) {
    const float s = sigmoid(g[i]);
    du[i] = dout[i] * g[i] * s;
    dg[i] = dout[i] * u[i] * (s * (1.f + g[i] * (1.f - s)));
  }
}

void residual_forward_ref(float* out, const float* a, const float* b, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i++) out[i] = a[i] + b[i];
}

void cross_entropy_forward_ref(float* loss, float* logits, const int32_t* targets, int64_t r0, int64_t r1, int64_t V) {
  for (int64_t r = r0; r < r1; r++) {
    float* row = logits + r * V;  // (V)
    float mx = -INFINITY;
    for (int64_t v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double sum = 0;
    for (int64_t v = 0; v < V; v++) sum += std::exp((double)row[v] - mx);
    const double lse = (double)mx + std::log(sum);
    loss[r] = targets[r] < 0 ? 0.f : (float)(lse - (double)row[targets[r]]);
    for (int64_t v = 0; v < V; v++) row[v] = (float)std::exp((double)row[v] - lse);
  }
}

void cross_entropy_backward_ref(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V, float scale) {
  for (int64_t r = r0; r < r1; r++) {
    float* row = probs + r * V;
    if (targets[r] < 0) {
      for (int64_t v = 0; v < V; v++) row[v] = 0.f;
      continue;
    }
    row[targets[r]] -= 1.f;
    for (int64_t v = 0; v < V; v++) row[v] *= scale;
  }
}

void teq_scale_backward_ref(float* dalpha, float* dx, const float* dxs, const float* x, int64_t BT, const float* dws,
                            const float* W, int64_t N, const float* alpha, int64_t c0, int64_t c1, int64_t K) {
  for (int64_t k = c0; k < c1; k++) {
    double acc = 0;
    for (int64_t n = 0; n < N; n++) acc += (double)dws[n * K + k] * W[n * K + k];
    double act = 0;
    for (int64_t r = 0; r < BT; r++) act += (double)dxs[r * K + k] * x[r * K + k];
    const double a = alpha[k];
    dalpha[k] += (float)(acc - act / (a * a));
    if (dx)
      for (int64_t r = 0; r < BT; r++) dx[r * K + k] = dxs[r * K + k] / alpha[k];
  }
}

void learned_fq_backward_ref(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                             const float* zeros, int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t gs = spec.group_size, G = qf_num_groups(K, gs);
  const float lo = spec.symmetric ? -(float)(1 << (spec.bits - 1)) : 0.f;
  const float hi = spec.symmetric ? (float)((1 << (spec.bits - 1)) - 1) : (float)((1 << spec.bits) - 1);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t gi = 0; gi < G; gi++) {
      const int64_t k0 = gi * gs, k1 = std::min(K, k0 + gs);
      const float s = scales[r * G + gi];
      const float z = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + gi]);
      double acc_s = 0, acc_z = 0;
      for (int64_t k = k0; k < k1; k++) {
        const float gk = g[r * K + k];
        const float u = w[r * K + k] / s;
        const float ru = std::nearbyint(u);
        const float q = ru + z;
        if (q < lo || q > hi) {
          acc_s += (double)gk * (double)((q < lo ? lo : hi) - z);
          acc_z -= (double)gk * (double)s;
        } else {
          if (dw) dw[r * K + k] += gk;
          acc_s += (double)gk * (double)(ru - u);
        }
      }
      if (ds) ds[r * G + gi] += (float)acc_s;
      if (dz) dz[r * G + gi] += (float)acc_z;
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

#include "engine_fpt.inc"  // FPTQuant's kernels (QF_FPT_KERNELS)

}  // namespace

// Every kernel: the reference table has no null entry (engine_kernels() fills the
// tiers' gaps from it).
const EngineKernels engine_kernels_ref = {
#define QF_REF_ENTRY(name, sig) name##_ref,
    QF_ENGINE_KERNELS(QF_REF_ENTRY)
#undef QF_REF_ENTRY
};

}  // namespace qf
