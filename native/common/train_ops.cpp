#include "quantform/train_ops.h"

#include <cmath>
#include <string>
#include <vector>

#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/threadpool.h"
#include "quantform/train.h"

namespace qf {
namespace train {
namespace {

// Four-byte elements (f32, or int32 ids/targets carried as raw words).
Status need(const char* name, const Span& s, int64_t want) {
  if (s.data == nullptr && want > 0)
    return error(Code::InvalidArgument, std::string("Expected a buffer for ") + name + " but received none");
  if ((int64_t)s.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                          " but received " + std::to_string(s.len));
  return Status::Ok();
}

#define QF_TRY(expr)                  \
  do {                                \
    Status st_ = (expr);              \
    if (!st_.ok()) return st_;        \
  } while (0)

Status positive(const char* name, int64_t v) {
  if (v <= 0 || v > (int64_t(1) << 31))
    return error(Code::InvalidArgument, std::string("Expected positive dimension for ") + name + " but received " +
                                            std::to_string(v));
  return Status::Ok();
}

float* F(const Span& s) { return static_cast<float*>(s.data); }
const int32_t* I(const Span& s) { return static_cast<const int32_t*>(s.data); }

int64_t grain_rows(int64_t cols) { return cols >= 8192 ? 1 : 8192 / cols; }

// Per-thread gemm packing scratch, reused across calls (tiny models call gemm
// thousands of times per step; a fresh 640 KB buffer each time would page-fault).
float* pack_scratch() {
  static thread_local std::vector<float> buf;
  if (buf.empty()) buf.resize((size_t)kGemmPackFloats);
  return buf.data();
}

// C (M, N) ldc = [C +] A . B, columns split over the pool in multiples of 32.
void gemm_par(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool acc) {
  const TrainKernels& kt = train_kernels();
  const int64_t blocks = (N + 31) / 32;
  const int64_t work = M * N * (K > 0 ? K : 1);
  const int64_t grain = work < (int64_t)1 << 18 ? blocks : 1;
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * 32, n1 = b1 * 32 < N ? b1 * 32 : N;
    kt.gemm(C, ldc, A, B, M, N, K, acc, n0, n1, pack_scratch());
  });
}

// Serial gemm for callers already inside parallel_for.
void gemm_serial(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool acc) {
  train_kernels().gemm(C, ldc, A, B, M, N, K, acc, 0, N, pack_scratch());
}

// y (T, N) = x (T, K) . W (N, K)^T
void linear_forward(float* y, const float* x, const float* W, int64_t T, int64_t N, int64_t K) {
  gemm_par(y, N, StridedMat{x, K, 1}, StridedMat{W, 1, K}, T, N, K, false);
}
// dx (T, K) [+]= dy (T, N) . W (N, K)
void linear_backward_input(float* dx, const float* dy, const float* W, int64_t T, int64_t N, int64_t K, bool acc) {
  gemm_par(dx, K, StridedMat{dy, N, 1}, StridedMat{W, K, 1}, T, K, N, acc);
}
// dW (N, K) [+]= dy (T, N)^T . x (T, K)
void linear_backward_weight(float* dW, const float* dy, const float* x, int64_t T, int64_t N, int64_t K, bool acc) {
  gemm_par(dW, K, StridedMat{dy, 1, N}, StridedMat{x, K, 1}, N, K, T, acc);
}

void rmsnorm_fwd(float* out, float* rstd, const float* x, const float* w, int64_t T, int64_t D, float eps) {
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(D), [&](int64_t r0, int64_t r1) { kt.rmsnorm_forward(out, rstd, x, w, r0, r1, D, eps); });
}

void rmsnorm_bwd(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd, int64_t T,
                 int64_t D) {
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(D), [&](int64_t r0, int64_t r1) { kt.rmsnorm_backward(dx, dout, x, w, rstd, r0, r1, D); });
  if (dw)
    parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      kt.rmsnorm_backward_weight(dw, dout, x, rstd, T, b0 * 16, b1 * 16 < D ? b1 * 16 : D, D);
    });
}

// Causal attention skips the upper triangle: query rows come in blocks of
// kAttnBlock, and a block only multiplies against keys 0 .. its last row.
constexpr int64_t kAttnBlock = 64;

void attention_fwd(float* out, float* probs, const float* q, const float* k, const float* v, int64_t B, int64_t S,
                   int64_t Hq, int64_t Hkv, int64_t hd) {
  const TrainKernels& kt = train_kernels();
  const int64_t Dq = Hq * hd, Dkv = Hkv * hd, rep = Hq / Hkv;
  const float scale = 1.f / std::sqrt((float)hd);
  parallel_for(B * Hq, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      const int64_t b = i / Hq, h = i % Hq, g = h / rep;
      float* P = probs + i * S * S;  // (S, S)
      const float* qh = q + b * S * Dq + h * hd;
      const float* kh = k + b * S * Dkv + g * hd;
      const float* vh = v + b * S * Dkv + g * hd;
      float* oh = out + b * S * Dq + h * hd;
      for (int64_t r0 = 0; r0 < S; r0 += kAttnBlock) {
        const int64_t r1 = r0 + kAttnBlock < S ? r0 + kAttnBlock : S;
        // scores (r1 - r0, r1) = Q[r0:r1] . K[0:r1]^T
        gemm_serial(P + r0 * S, S, StridedMat{qh + r0 * Dq, Dq, 1}, StridedMat{kh, 1, Dkv}, r1 - r0, r1, hd, false);
        kt.causal_softmax_forward(P, r0, r1, S, scale);
        gemm_serial(oh + r0 * Dq, Dq, StridedMat{P + r0 * S, S, 1}, StridedMat{vh, Dkv, 1}, r1 - r0, hd, r1, false);
      }
    }
  });
}

void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                   const float* k, const float* v, int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd) {
  const TrainKernels& kt = train_kernels();
  const int64_t Dq = Hq * hd, Dkv = Hkv * hd, rep = Hq / Hkv;
  const float scale = 1.f / std::sqrt((float)hd);
  // one task per (sequence, kv head): the q heads sharing it accumulate into its dk, dv
  parallel_for(B * Hkv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> dS((size_t)(S * S));  // (S, S)
    for (int64_t i = i0; i < i1; i++) {
      const int64_t b = i / Hkv, g = i % Hkv;
      const float* kh = k + b * S * Dkv + g * hd;
      const float* vh = v + b * S * Dkv + g * hd;
      float* dkh = dk + b * S * Dkv + g * hd;
      float* dvh = dv + b * S * Dkv + g * hd;
      for (int64_t r = 0; r < rep; r++) {
        const int64_t h = g * rep + r;
        const float* P = probs + (b * Hq + h) * S * S;
        const float* qh = q + b * S * Dq + h * hd;
        const float* doh = dout + b * S * Dq + h * hd;
        float* dqh = dq + b * S * Dq + h * hd;
        const bool acc = r > 0;
        for (int64_t r0 = 0; r0 < S; r0 += kAttnBlock) {
          const int64_t r1 = r0 + kAttnBlock < S ? r0 + kAttnBlock : S;
          // dP[r0:r1, 0:r1] = dO . V^T, then dS in place, then dQ = dS . K
          gemm_serial(dS.data() + r0 * S, S, StridedMat{doh + r0 * Dq, Dq, 1}, StridedMat{vh, 1, Dkv}, r1 - r0, r1, hd, false);
          kt.causal_softmax_backward(dS.data(), P, r0, r1, S, scale);
          gemm_serial(dqh + r0 * Dq, Dq, StridedMat{dS.data() + r0 * S, S, 1}, StridedMat{kh, Dkv, 1}, r1 - r0, hd, r1, false);
        }
        for (int64_t c0 = 0; c0 < S; c0 += kAttnBlock) {
          const int64_t c1 = c0 + kAttnBlock < S ? c0 + kAttnBlock : S;
          // key rows [c0, c1) see query rows c0 .. S-1: dV += P^T . dO, dK += dS^T . Q
          gemm_serial(dvh + c0 * Dkv, Dkv, StridedMat{P + c0 * S + c0, 1, S}, StridedMat{doh + c0 * Dq, Dq, 1}, c1 - c0, hd,
                      S - c0, acc);
          gemm_serial(dkh + c0 * Dkv, Dkv, StridedMat{dS.data() + c0 * S + c0, 1, S}, StridedMat{qh + c0 * Dq, Dq, 1}, c1 - c0,
                      hd, S - c0, acc);
        }
      }
    }
  });
}

void rope_par(float* x, int64_t T, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse) {
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(H * hd), [&](int64_t r0, int64_t r1) { kt.rope(x, r0, r1, seq, H, hd, theta, inverse); });
}

void teq_bwd(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws, const float* W,
             int64_t N, const float* alpha, int64_t K) {
  const TrainKernels& kt = train_kernels();
  parallel_for((K + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
    kt.teq_scale_backward(dalpha, dx, dxs, x, T, dws, W, N, alpha, b0 * 16, b1 * 16 < K ? b1 * 16 : K, K);
  });
}

}  // namespace

// ---------------- single ops ----------------

Status gemm(Span C, Span A, Span B, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b, bool accumulate) {
  QF_TRY(positive("M", M)); QF_TRY(positive("N", N)); QF_TRY(positive("K", K));
  QF_TRY(need("C", C, M * N)); QF_TRY(need("A", A, M * K)); QF_TRY(need("B", B, K * N));
  const StridedMat a = trans_a ? StridedMat{F(A), 1, M} : StridedMat{F(A), K, 1};
  const StridedMat b = trans_b ? StridedMat{F(B), 1, K} : StridedMat{F(B), N, 1};
  gemm_par(F(C), N, a, b, M, N, K, accumulate);
  return Status::Ok();
}

Status rmsnorm_forward(Span out, Span rstd, Span x, Span w, int64_t T, int64_t D, float eps) {
  QF_TRY(positive("T", T)); QF_TRY(positive("D", D));
  QF_TRY(need("out", out, T * D)); QF_TRY(need("rstd", rstd, T)); QF_TRY(need("x", x, T * D)); QF_TRY(need("w", w, D));
  rmsnorm_fwd(F(out), F(rstd), F(x), F(w), T, D, eps);
  return Status::Ok();
}

Status rmsnorm_backward(Span dx, Span dw, Span dout, Span x, Span w, Span rstd, int64_t T, int64_t D) {
  QF_TRY(positive("T", T)); QF_TRY(positive("D", D));
  QF_TRY(need("dx", dx, T * D)); QF_TRY(need("dw", dw, D)); QF_TRY(need("dout", dout, T * D));
  QF_TRY(need("x", x, T * D)); QF_TRY(need("w", w, D)); QF_TRY(need("rstd", rstd, T));
  rmsnorm_bwd(F(dx), F(dw), F(dout), F(x), F(w), F(rstd), T, D);
  return Status::Ok();
}

Status swiglu_forward(Span h, Span g, Span u, int64_t T, int64_t F_) {
  QF_TRY(positive("T", T)); QF_TRY(positive("F", F_));
  QF_TRY(need("h", h, T * F_)); QF_TRY(need("g", g, T * F_)); QF_TRY(need("u", u, T * F_));
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(F_), [&](int64_t r0, int64_t r1) { kt.swiglu_forward(F(h), F(g), F(u), r0, r1, F_); });
  return Status::Ok();
}

Status swiglu_backward(Span dg, Span du, Span dh, Span g, Span u, int64_t T, int64_t F_) {
  QF_TRY(positive("T", T)); QF_TRY(positive("F", F_));
  QF_TRY(need("dg", dg, T * F_)); QF_TRY(need("du", du, T * F_)); QF_TRY(need("dh", dh, T * F_));
  QF_TRY(need("g", g, T * F_)); QF_TRY(need("u", u, T * F_));
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(F_), [&](int64_t r0, int64_t r1) {
    kt.swiglu_backward(F(dg), F(du), F(dh), F(g), F(u), r0, r1, F_);
  });
  return Status::Ok();
}

Status rope(Span x, int64_t T, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse) {
  QF_TRY(positive("T", T)); QF_TRY(positive("seq", seq)); QF_TRY(positive("H", H)); QF_TRY(positive("headDim", hd));
  if (hd % 2 != 0 || hd > 1024)
    return error(Code::InvalidArgument, "Expected an even headDim <= 1024 but received " + std::to_string(hd));
  if (!(theta > 0.f)) return error(Code::InvalidArgument, "Expected positive ropeTheta but received " + std::to_string(theta));
  QF_TRY(need("x", x, T * H * hd));
  rope_par(F(x), T, seq, H, hd, theta, inverse);
  return Status::Ok();
}

namespace {
Status check_attention(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd) {
  QF_TRY(positive("batch", B)); QF_TRY(positive("seq", S)); QF_TRY(positive("heads", Hq));
  QF_TRY(positive("kvHeads", Hkv)); QF_TRY(positive("headDim", hd));
  if (Hq % Hkv != 0)
    return error(Code::InvalidArgument, "Expected heads (" + std::to_string(Hq) + ") to be a multiple of kvHeads (" +
                                            std::to_string(Hkv) + ")");
  return Status::Ok();
}
}  // namespace

Status attention_forward(Span out, Span probs, Span q, Span k, Span v, int64_t B, int64_t S, int64_t Hq, int64_t Hkv,
                         int64_t hd) {
  QF_TRY(check_attention(B, S, Hq, Hkv, hd));
  const int64_t T = B * S;
  QF_TRY(need("out", out, T * Hq * hd)); QF_TRY(need("probs", probs, B * Hq * S * S));
  QF_TRY(need("q", q, T * Hq * hd)); QF_TRY(need("k", k, T * Hkv * hd)); QF_TRY(need("v", v, T * Hkv * hd));
  attention_fwd(F(out), F(probs), F(q), F(k), F(v), B, S, Hq, Hkv, hd);
  return Status::Ok();
}

Status attention_backward(Span dq, Span dk, Span dv, Span dout, Span probs, Span q, Span k, Span v, int64_t B,
                          int64_t S, int64_t Hq, int64_t Hkv, int64_t hd) {
  QF_TRY(check_attention(B, S, Hq, Hkv, hd));
  const int64_t T = B * S;
  QF_TRY(need("dq", dq, T * Hq * hd)); QF_TRY(need("dk", dk, T * Hkv * hd)); QF_TRY(need("dv", dv, T * Hkv * hd));
  QF_TRY(need("dout", dout, T * Hq * hd)); QF_TRY(need("probs", probs, B * Hq * S * S));
  QF_TRY(need("q", q, T * Hq * hd)); QF_TRY(need("k", k, T * Hkv * hd)); QF_TRY(need("v", v, T * Hkv * hd));
  attention_bwd(F(dq), F(dk), F(dv), F(dout), F(probs), F(q), F(k), F(v), B, S, Hq, Hkv, hd);
  return Status::Ok();
}

namespace {
Status check_ids(const char* name, const Span& ids, int64_t T, int64_t V, bool allow_negative) {
  QF_TRY(need(name, ids, T));
  const int32_t* p = I(ids);
  for (int64_t t = 0; t < T; t++)
    if (p[t] >= V || (p[t] < 0 && !allow_negative))
      return error(Code::InvalidArgument, std::string("Expected ") + name + " in [0, " + std::to_string(V) +
                                              ") but " + name + "[" + std::to_string(t) + "] is " + std::to_string(p[t]));
  return Status::Ok();
}
}  // namespace

Status cross_entropy_forward(Span loss, Span logits, Span targets, int64_t T, int64_t V) {
  QF_TRY(positive("T", T)); QF_TRY(positive("V", V));
  QF_TRY(need("loss", loss, T)); QF_TRY(need("logits", logits, T * V)); QF_TRY(check_ids("targets", targets, T, V, true));
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(V), [&](int64_t r0, int64_t r1) {
    kt.cross_entropy_forward(F(loss), F(logits), I(targets), r0, r1, V);
  });
  return Status::Ok();
}

Status cross_entropy_backward(Span probs, Span targets, int64_t T, int64_t V, float scale) {
  QF_TRY(positive("T", T)); QF_TRY(positive("V", V));
  QF_TRY(need("probs", probs, T * V)); QF_TRY(check_ids("targets", targets, T, V, true));
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(V), [&](int64_t r0, int64_t r1) {
    kt.cross_entropy_backward(F(probs), I(targets), r0, r1, V, scale);
  });
  return Status::Ok();
}

Status embedding_forward(Span out, Span ids, Span table, int64_t T, int64_t V, int64_t D) {
  QF_TRY(positive("T", T)); QF_TRY(positive("V", V)); QF_TRY(positive("D", D));
  QF_TRY(need("out", out, T * D)); QF_TRY(need("table", table, V * D)); QF_TRY(check_ids("ids", ids, T, V, false));
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(D), [&](int64_t r0, int64_t r1) {
    kt.embedding_forward(F(out), I(ids), F(table), r0, r1, D);
  });
  return Status::Ok();
}

Status embedding_backward(Span dtable, Span dout, Span ids, int64_t T, int64_t V, int64_t D) {
  QF_TRY(positive("T", T)); QF_TRY(positive("V", V)); QF_TRY(positive("D", D));
  QF_TRY(need("dtable", dtable, V * D)); QF_TRY(need("dout", dout, T * D)); QF_TRY(check_ids("ids", ids, T, V, false));
  const TrainKernels& kt = train_kernels();
  parallel_for(V, 64, [&](int64_t v0, int64_t v1) {
    kt.embedding_backward(F(dtable), F(dout), I(ids), T, v0, v1, D);
  });
  return Status::Ok();
}

Status teq_scale_backward(Span dalpha, Span dx, Span dxs, Span x, int64_t T, Span dws, Span W, int64_t N, Span alpha,
                          int64_t K) {
  QF_TRY(positive("K", K));
  if (T < 0 || N < 0) return error(Code::InvalidArgument, "Expected non-negative T and N");
  QF_TRY(need("dalpha", dalpha, K)); QF_TRY(need("alpha", alpha, K));
  QF_TRY(need("dxs", dxs, T * K)); QF_TRY(need("x", x, T * K));
  if (dx.data) QF_TRY(need("dx", dx, T * K));
  QF_TRY(need("dws", dws, N * K)); QF_TRY(need("W", W, N * K));
  const float* a = F(alpha);
  for (int64_t k = 0; k < K; k++)
    if (!(a[k] > 0.f))
      return error(Code::InvalidArgument, "Expected positive alpha but alpha[" + std::to_string(k) + "] is " +
                                              std::to_string(a[k]));
  teq_bwd(F(dalpha), F(dx), F(dxs), F(x), T, F(dws), F(W), N, a, K);
  return Status::Ok();
}

Status adamw_step(Span arena, int64_t P, int64_t step, float lr, float b1, float b2, float eps, float wd, float pmin) {
  QF_TRY(positive("P", P));
  QF_TRY(need("arena", arena, 4 * P));
  if (step < 1) return error(Code::InvalidArgument, "Expected step >= 1 but received " + std::to_string(step));
  const TrainKernels& kt = train_kernels();
  parallel_for(P, 4096, [&](int64_t i0, int64_t i1) { kt.adamw(F(arena), P, i0, i1, step, lr, b1, b2, eps, wd, pmin); });
  return Status::Ok();
}

Status rtn_fake_quant_backward(Span g, Span W, Span alpha, int64_t N, int64_t K, const QuantSpec& spec) {
  QF_TRY(check_spec(spec, N, K));
  QF_TRY(need("gradOutput", g, N * K)); QF_TRY(need("W", W, N * K)); QF_TRY(need("alpha", alpha, K));
  return rtn_backward(F(g), F(W), F(alpha), N, K, spec);
}

// ---------------- Llama block ----------------

namespace {

struct BlockLayout {
  int64_t g1, wq, wk, wv, wo, g2, wg, wu, wd, total;
};

BlockLayout param_layout(const BlockConfig& c) {
  BlockLayout L;
  const int64_t Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
  int64_t o = 0;
  L.g1 = o; o += c.D;
  L.wq = o; o += Dq * c.D;
  L.wk = o; o += Dkv * c.D;
  L.wv = o; o += Dkv * c.D;
  L.wo = o; o += c.D * Dq;
  L.g2 = o; o += c.D;
  L.wg = o; o += c.F * c.D;
  L.wu = o; o += c.F * c.D;
  L.wd = o; o += c.D * c.F;
  L.total = o;
  return L;
}

bool has_eff(const BlockConfig& c) { return c.quant || c.teq; }

struct ActLayout {
  int64_t x, rstd1, n1p, n1, q, k, v, P, att, atts, h, rstd2, n2p, n2, g, u, a, as, eff, total;
};

ActLayout act_layout(const BlockConfig& c) {
  ActLayout L;
  const int64_t T = c.B * c.S, Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
  int64_t o = 0;
  L.x = o; o += T * c.D;
  L.rstd1 = o; o += T;
  L.n1p = o; o += T * c.D;
  L.n1 = o; o += T * c.D;
  L.q = o; o += T * Dq;
  L.k = o; o += T * Dkv;
  L.v = o; o += T * Dkv;
  L.P = o; o += c.B * c.Hq * c.S * c.S;
  L.att = o; o += T * Dq;
  L.atts = o; o += c.teq_extra ? T * Dq : 0;  // att / alpha_o: o_proj's input
  L.h = o; o += T * c.D;
  L.rstd2 = o; o += T;
  L.n2p = o; o += T * c.D;
  L.n2 = o; o += T * c.D;
  L.g = o; o += T * c.F;
  L.u = o; o += T * c.F;
  L.a = o; o += T * c.F;
  L.as = o; o += c.teq_extra ? T * c.F : 0;  // a / alpha_d: down_proj's input
  // effective weights, laid out as the parameter arena (norm slots unused)
  L.eff = o; o += has_eff(c) ? param_layout(c).total : 0;
  L.total = o;
  return L;
}

// ws (N, K) = Q(W . diag(alpha)) (alpha may be null, quant may be off).
Status effective_weight(float* ws, const float* W, const float* alpha, int64_t N, int64_t K, const BlockConfig& c) {
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; n++)
      for (int64_t k = 0; k < K; k++) ws[n * K + k] = alpha ? W[n * K + k] * alpha[k] : W[n * K + k];
  });
  if (!c.quant) return Status::Ok();
  QuantSpec spec = c.spec;
  spec.group_size = spec.group_size < K ? spec.group_size : K;
  const int64_t G = qf_num_groups(K, spec.group_size);
  std::vector<uint8_t> codes((size_t)(N * qf_packed_row_bytes(spec.bits, K)));
  std::vector<uint16_t> scales((size_t)(N * G)), zeros((size_t)(N * G));
  const DType pd = spec.f16_params ? DType::F16 : DType::F32;
  std::vector<float> s32, z32;
  void* sp = scales.data();
  void* zp = zeros.data();
  if (pd == DType::F32) {
    s32.resize((size_t)(N * G)); z32.resize((size_t)(N * G));
    sp = s32.data(); zp = z32.data();
  }
  Span cs{codes.data(), codes.size(), DType::F32}, ss{sp, (size_t)(N * G), pd},
      zs{spec.symmetric ? nullptr : zp, spec.symmetric ? 0 : (size_t)(N * G), pd}, wsp{ws, (size_t)(N * K), DType::F32};
  QF_TRY(quantize(cs, ss, zs, wsp, N, K, spec));
  return dequantize(wsp, cs, ss, zs, N, K, spec);
}

}  // namespace

// Backward of v -> Q(v) = RTN fake-quant of v = W diag(alpha) with parameters chosen
// from v itself, as the TEQ reference computes it: rounding is straight-through
// (dv = g inside the range, 0 where clamped), the step size s = (max - min) / qmax
// (symmetric: max|v| / (2^(b-1) - 1)) gets the LSQ term ds = sum g (round(v/s) - v/s)
// (clamped: g (bound - z)) and passes it to the group's extreme elements; the zero
// point is rounded, so it carries no gradient. g (N, K) is replaced by dv.
Status rtn_backward(float* g, const float* W, const float* alpha, int64_t N, int64_t K, const QuantSpec& spec_in) {
  QuantSpec spec = spec_in;
  spec.group_size = spec.group_size < K ? spec.group_size : K;
  const int64_t G = qf_num_groups(K, spec.group_size);
  std::vector<float> v((size_t)(N * K)), dv((size_t)(N * K)), ds((size_t)(N * G)), dz((size_t)(N * G));  // (N, K), (N, G)
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; n++)
      for (int64_t k = 0; k < K; k++) v[(size_t)(n * K + k)] = W[n * K + k] * alpha[k];
  });
  std::vector<uint8_t> codes((size_t)(N * qf_packed_row_bytes(spec.bits, K)));
  std::vector<uint16_t> sh((size_t)(N * G)), zh((size_t)(N * G));
  Span cs{codes.data(), codes.size(), DType::F32}, ss{sh.data(), sh.size(), DType::F16},
      zs{spec.symmetric ? nullptr : zh.data(), spec.symmetric ? 0 : zh.size(), DType::F16}, vs{v.data(), v.size(), DType::F32};
  QF_TRY(quantize(cs, ss, zs, vs, N, K, spec));
  std::vector<float> s32((size_t)(N * G)), z32((size_t)(N * G));
  for (size_t i = 0; i < sh.size(); i++) {
    s32[i] = f16_to_f32(sh[i]);
    z32[i] = spec.symmetric ? 0.f : f16_to_f32(zh[i]);
  }
  QuantSpec fq = spec;
  fq.f16_params = false;
  QF_TRY(fake_quant_backward(Span{dv.data(), dv.size(), DType::F32}, Span{ds.data(), ds.size(), DType::F32},
                             Span{spec.symmetric ? nullptr : dz.data(), spec.symmetric ? 0 : dz.size(), DType::F32},
                             Span{g, (size_t)(N * K), DType::F32}, vs, Span{s32.data(), s32.size(), DType::F32},
                             Span{spec.symmetric ? nullptr : z32.data(), spec.symmetric ? 0 : z32.size(), DType::F32}, N, K, fq));
  const float qmax = spec.symmetric ? (float)((1 << (spec.bits - 1)) - 1) : (float)((1 << spec.bits) - 1);
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; n++) {
      for (int64_t gi = 0; gi < G; gi++) {
        const float d = ds[(size_t)(n * G + gi)] / qmax;
        const int64_t k0 = gi * spec.group_size, k1 = k0 + spec.group_size < K ? k0 + spec.group_size : K;
        int64_t imax = k0, imin = k0;
        for (int64_t k = k0; k < k1; k++) {
          if (v[(size_t)(n * K + k)] > v[(size_t)(n * K + imax)]) imax = k;
          if (v[(size_t)(n * K + k)] < v[(size_t)(n * K + imin)]) imin = k;
        }
        const float hi = v[(size_t)(n * K + imax)], lo = v[(size_t)(n * K + imin)];
        if (spec.symmetric) {
          // s = max(|lo|, |hi|) / qmax
          if (-lo > hi) dv[(size_t)(n * K + imin)] -= d;
          else if (hi > 0.f) dv[(size_t)(n * K + imax)] += d;
        } else {
          // s = (max(hi, 0) - min(lo, 0)) / qmax
          if (hi > 0.f) dv[(size_t)(n * K + imax)] += d;
          if (lo < 0.f) dv[(size_t)(n * K + imin)] -= d;
        }
      }
      std::copy(dv.begin() + n * K, dv.begin() + (n + 1) * K, g + n * K);
    }
  });
  return Status::Ok();
}

int64_t block_param_count(const BlockConfig& c) { return param_layout(c).total; }
int64_t block_alpha_count(const BlockConfig& c) {
  return c.teq ? 2 * c.D + (c.teq_extra ? c.Hkv * c.hd + c.F : 0) : 0;
}

namespace {
// alpha_o (Dq): the v-channel scales repeated for every q head that reads that kv head.
std::vector<float> expand_v_scales(const float* av, const BlockConfig& c) {
  const int64_t rep = c.Hq / c.Hkv;
  std::vector<float> ao((size_t)(c.Hq * c.hd));
  for (int64_t h = 0; h < c.Hq; h++)
    for (int64_t d = 0; d < c.hd; d++) ao[(size_t)(h * c.hd + d)] = av[(h / rep) * c.hd + d];
  return ao;
}
}  // namespace
int64_t block_activation_count(const BlockConfig& c) { return act_layout(c).total; }

Status check_block_config(const BlockConfig& c) {
  QF_TRY(check_attention(c.B, c.S, c.Hq, c.Hkv, c.hd));
  QF_TRY(positive("hidden", c.D)); QF_TRY(positive("intermediate", c.F));
  if (c.hd % 2 != 0 || c.hd > 1024)
    return error(Code::InvalidArgument, "Expected an even headDim <= 1024 but received " + std::to_string(c.hd));
  if (!(c.eps > 0.f)) return error(Code::InvalidArgument, "Expected positive rmsEps");
  if (!(c.theta > 0.f)) return error(Code::InvalidArgument, "Expected positive ropeTheta");
  if (c.teq_extra && !c.teq) return error(Code::InvalidArgument, "Expected teq together with teqExtra");
  if (c.quant) {
    if (!qf_bits_supported(c.spec.bits))
      return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + std::to_string(c.spec.bits));
    if (c.spec.group_size <= 0)
      return error(Code::InvalidArgument, "Expected positive groupSize but received " + std::to_string(c.spec.group_size));
  }
  const double acts = (double)act_layout(c).total;
  if (acts > 4.0e9) return error(Code::OutOfMemory, "Block activations of " + std::to_string(acts) + " floats exceed the limit");
  return Status::Ok();
}

Status block_forward(Span out, Span acts, Span x, Span params, Span alpha, const BlockConfig& c) {
  QF_TRY(check_block_config(c));
  const BlockLayout P = param_layout(c);
  const ActLayout A = act_layout(c);
  const int64_t T = c.B * c.S, D = c.D, Fd = c.F, Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
  QF_TRY(need("out", out, T * D)); QF_TRY(need("activations", acts, A.total)); QF_TRY(need("x", x, T * D));
  QF_TRY(need("params", params, P.total));
  const int64_t NA = block_alpha_count(c);
  if (c.teq) {
    QF_TRY(need("alpha", alpha, NA));
    for (int64_t i = 0; i < NA; i++)
      if (!(F(alpha)[i] > 0.f))
        return error(Code::InvalidArgument, "Expected positive alpha but alpha[" + std::to_string(i) + "] is " +
                                                std::to_string(F(alpha)[i]));
  }
  const float* w = F(params);
  float* s = F(acts);
  const float* a1 = c.teq ? F(alpha) : nullptr;
  const float* a2 = c.teq ? F(alpha) + D : nullptr;
  const float* ad = c.teq_extra ? F(alpha) + 2 * D + Dkv : nullptr;
  const std::vector<float> ao = c.teq_extra ? expand_v_scales(F(alpha) + 2 * D, c) : std::vector<float>();
  const float* aop = c.teq_extra ? ao.data() : nullptr;
  // effective weights: Q(W diag(alpha)) for the alpha groups, Q(W) for o and down (unless teq_extra)
  const float* wq = w + P.wq; const float* wk = w + P.wk; const float* wv = w + P.wv; const float* wo = w + P.wo;
  const float* wg = w + P.wg; const float* wu = w + P.wu; const float* wdn = w + P.wd;
  if (has_eff(c)) {
    float* e = s + A.eff;
    QF_TRY(effective_weight(e + P.wq, wq, a1, Dq, D, c));
    QF_TRY(effective_weight(e + P.wk, wk, a1, Dkv, D, c));
    QF_TRY(effective_weight(e + P.wv, wv, a1, Dkv, D, c));
    QF_TRY(effective_weight(e + P.wo, wo, aop, D, Dq, c));
    QF_TRY(effective_weight(e + P.wg, wg, a2, Fd, D, c));
    QF_TRY(effective_weight(e + P.wu, wu, a2, Fd, D, c));
    QF_TRY(effective_weight(e + P.wd, wdn, ad, D, Fd, c));
    wq = e + P.wq; wk = e + P.wk; wv = e + P.wv; wo = e + P.wo; wg = e + P.wg; wu = e + P.wu; wdn = e + P.wd;
  }
  const float* xin = F(x);
  float* xs = s + A.x;
  std::copy(xin, xin + T * D, xs);
  // attention half
  rmsnorm_fwd(s + A.n1p, s + A.rstd1, xs, w + P.g1, T, D, c.eps);
  float* n1 = s + A.n1;
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < D; i++) n1[t * D + i] = a1 ? s[A.n1p + t * D + i] / a1[i] : s[A.n1p + t * D + i];
  linear_forward(s + A.q, n1, wq, T, Dq, D);
  linear_forward(s + A.k, n1, wk, T, Dkv, D);
  linear_forward(s + A.v, n1, wv, T, Dkv, D);
  rope_par(s + A.q, T, c.S, c.Hq, c.hd, c.theta, false);
  rope_par(s + A.k, T, c.S, c.Hkv, c.hd, c.theta, false);
  attention_fwd(s + A.att, s + A.P, s + A.q, s + A.k, s + A.v, c.B, c.S, c.Hq, c.Hkv, c.hd);
  const float* o_in = s + A.att;
  if (aop) {
    float* atts = s + A.atts;
    for (int64_t t = 0; t < T; t++)
      for (int64_t j = 0; j < Dq; j++) atts[t * Dq + j] = s[A.att + t * Dq + j] / aop[j];
    o_in = atts;
  }
  float* h = s + A.h;
  linear_forward(h, o_in, wo, T, D, Dq);
  for (int64_t i = 0; i < T * D; i++) h[i] += xs[i];
  // MLP half
  rmsnorm_fwd(s + A.n2p, s + A.rstd2, h, w + P.g2, T, D, c.eps);
  float* n2 = s + A.n2;
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < D; i++) n2[t * D + i] = a2 ? s[A.n2p + t * D + i] / a2[i] : s[A.n2p + t * D + i];
  linear_forward(s + A.g, n2, wg, T, Fd, D);
  linear_forward(s + A.u, n2, wu, T, Fd, D);
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(Fd), [&](int64_t r0, int64_t r1) { kt.swiglu_forward(s + A.a, s + A.g, s + A.u, r0, r1, Fd); });
  const float* d_in = s + A.a;
  if (ad) {
    float* as = s + A.as;
    for (int64_t t = 0; t < T; t++)
      for (int64_t j = 0; j < Fd; j++) as[t * Fd + j] = s[A.a + t * Fd + j] / ad[j];
    d_in = as;
  }
  float* o = F(out);
  linear_forward(o, d_in, wdn, T, D, Fd);
  for (int64_t i = 0; i < T * D; i++) o[i] += h[i];
  return Status::Ok();
}

Status block_backward(Span dx_s, Span grads, Span dalpha, Span dout_s, Span acts, Span params, Span alpha,
                      const BlockConfig& c) {
  QF_TRY(check_block_config(c));
  const BlockLayout P = param_layout(c);
  const ActLayout A = act_layout(c);
  const int64_t T = c.B * c.S, D = c.D, Fd = c.F, Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
  QF_TRY(need("dx", dx_s, T * D)); QF_TRY(need("dout", dout_s, T * D)); QF_TRY(need("activations", acts, A.total));
  QF_TRY(need("params", params, P.total));
  if (grads.data) QF_TRY(need("grads", grads, P.total));
  const int64_t NA = block_alpha_count(c);
  if (c.teq) { QF_TRY(need("alpha", alpha, NA)); QF_TRY(need("dalpha", dalpha, NA)); }
  const float* w = F(params);
  const float* s = F(acts);
  float* gr = F(grads);
  const float* a1 = c.teq ? F(alpha) : nullptr;
  const float* a2 = c.teq ? F(alpha) + D : nullptr;
  const float* ad = c.teq_extra ? F(alpha) + 2 * D + Dkv : nullptr;
  const std::vector<float> ao = c.teq_extra ? expand_v_scales(F(alpha) + 2 * D, c) : std::vector<float>();
  const float* aop = c.teq_extra ? ao.data() : nullptr;
  std::vector<float> dao(c.teq_extra ? (size_t)Dq : 0, 0.f);  // (Dq) gradient of the expanded v scales
  const float* e = has_eff(c) ? s + A.eff : w;  // the weights the forward used
  const float* dout = F(dout_s);
  float* dx = F(dx_s);
  const TrainKernels& kt = train_kernels();

  // Gradients of effective weights: into the grads arena directly when there is
  // no alpha (straight-through: dW = dWeff), else into scratch for dalpha first.
  std::vector<float> scratch;
  Status status;  // first error of weight_grad
  auto weight_grad = [&](int64_t off, int64_t N, int64_t K, const float* dy, const float* xin, const float* alpha_grp,
                         float* dalpha_grp) {
    if (!alpha_grp) {
      if (gr) linear_backward_weight(gr + off, dy, xin, T, N, K, true);
      return;
    }
    scratch.resize((size_t)(N * K));
    linear_backward_weight(scratch.data(), dy, xin, T, N, K, false);  // d Q(W diag a) (N, K)
    if (c.quant && status.ok()) status = rtn_backward(scratch.data(), w + off, alpha_grp, N, K, c.spec);  // -> d (W diag a)
    teq_bwd(dalpha_grp, nullptr, nullptr, nullptr, 0, scratch.data(), w + off, N, alpha_grp, K);
    if (gr)
      parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
        for (int64_t n = r0; n < r1; n++)
          for (int64_t k = 0; k < K; k++) gr[off + n * K + k] += scratch[(size_t)(n * K + k)] * alpha_grp[k];
      });
  };

  // ---- MLP half: out = h + down(silu(g) * u) ----
  std::vector<float> da((size_t)(T * Fd)), dg((size_t)(T * Fd)), du((size_t)(T * Fd));  // (T, F)
  if (ad) {
    float* dad = F(dalpha) + 2 * D + Dkv;
    std::vector<float> das((size_t)(T * Fd));  // (T, F) gradient of a / alpha_d
    linear_backward_input(das.data(), dout, e + P.wd, T, D, Fd, false);
    weight_grad(P.wd, D, Fd, dout, s + A.as, ad, dad);
    teq_bwd(dad, da.data(), das.data(), s + A.a, T, nullptr, nullptr, 0, ad, Fd);
  } else {
    linear_backward_input(da.data(), dout, e + P.wd, T, D, Fd, false);
    weight_grad(P.wd, D, Fd, dout, s + A.a, nullptr, nullptr);
  }
  parallel_for(T, grain_rows(Fd), [&](int64_t r0, int64_t r1) {
    kt.swiglu_backward(dg.data(), du.data(), da.data(), s + A.g, s + A.u, r0, r1, Fd);
  });
  std::vector<float> dn((size_t)(T * D)), dnp((size_t)(T * D));  // (T, D)
  linear_backward_input(dn.data(), dg.data(), e + P.wg, T, Fd, D, false);
  linear_backward_input(dn.data(), du.data(), e + P.wu, T, Fd, D, true);
  weight_grad(P.wg, Fd, D, dg.data(), s + A.n2, a2, a2 ? F(dalpha) + D : nullptr);
  weight_grad(P.wu, Fd, D, du.data(), s + A.n2, a2, a2 ? F(dalpha) + D : nullptr);
  if (a2)
    teq_bwd(F(dalpha) + D, dnp.data(), dn.data(), s + A.n2p, T, nullptr, nullptr, 0, a2, D);
  else
    dnp.swap(dn);
  std::vector<float> dh((size_t)(T * D));  // (T, D)
  rmsnorm_bwd(dh.data(), gr ? gr + P.g2 : nullptr, dnp.data(), s + A.h, w + P.g2, s + A.rstd2, T, D);
  for (int64_t i = 0; i < T * D; i++) dh[(size_t)i] += dout[i];

  // ---- attention half: h = x + o(attn(rope(q n1), rope(k n1), v n1)) ----
  std::vector<float> datt((size_t)(T * Dq)), dq((size_t)(T * Dq)), dk((size_t)(T * Dkv)), dv((size_t)(T * Dkv));
  if (aop) {
    std::vector<float> datts((size_t)(T * Dq));  // (T, Dq) gradient of att / alpha_o
    linear_backward_input(datts.data(), dh.data(), e + P.wo, T, D, Dq, false);
    weight_grad(P.wo, D, Dq, dh.data(), s + A.atts, aop, dao.data());
    teq_bwd(dao.data(), datt.data(), datts.data(), s + A.att, T, nullptr, nullptr, 0, aop, Dq);
    // the q heads sharing a kv head share its v-channel scales
    float* dav = F(dalpha) + 2 * D;
    const int64_t rep = c.Hq / c.Hkv;
    for (int64_t h = 0; h < c.Hq; h++)
      for (int64_t d = 0; d < c.hd; d++) dav[(h / rep) * c.hd + d] += dao[(size_t)(h * c.hd + d)];
  } else {
    linear_backward_input(datt.data(), dh.data(), e + P.wo, T, D, Dq, false);
    weight_grad(P.wo, D, Dq, dh.data(), s + A.att, nullptr, nullptr);
  }
  attention_bwd(dq.data(), dk.data(), dv.data(), datt.data(), s + A.P, s + A.q, s + A.k, s + A.v, c.B, c.S, c.Hq,
                c.Hkv, c.hd);
  rope_par(dq.data(), T, c.S, c.Hq, c.hd, c.theta, true);
  rope_par(dk.data(), T, c.S, c.Hkv, c.hd, c.theta, true);
  dn.assign((size_t)(T * D), 0.f);
  linear_backward_input(dn.data(), dq.data(), e + P.wq, T, Dq, D, false);
  linear_backward_input(dn.data(), dk.data(), e + P.wk, T, Dkv, D, true);
  linear_backward_input(dn.data(), dv.data(), e + P.wv, T, Dkv, D, true);
  float* da1 = a1 ? F(dalpha) : nullptr;
  weight_grad(P.wq, Dq, D, dq.data(), s + A.n1, a1, da1);
  weight_grad(P.wk, Dkv, D, dk.data(), s + A.n1, a1, da1);
  weight_grad(P.wv, Dkv, D, dv.data(), s + A.n1, a1, da1);
  dnp.resize((size_t)(T * D));
  if (a1)
    teq_bwd(F(dalpha), dnp.data(), dn.data(), s + A.n1p, T, nullptr, nullptr, 0, a1, D);
  else
    dnp.swap(dn);
  rmsnorm_bwd(dx, gr ? gr + P.g1 : nullptr, dnp.data(), s + A.x, w + P.g1, s + A.rstd1, T, D);
  for (int64_t i = 0; i < T * D; i++) dx[i] += dh[(size_t)i];
  return status;
}

Status lm_head_loss(Span nll, Span dx, Span dnorm, Span dhead, Span x, Span norm_w, Span head, Span targets, int64_t T,
                    int64_t D, int64_t V, float eps, float loss_scale) {
  QF_TRY(positive("T", T)); QF_TRY(positive("D", D)); QF_TRY(positive("V", V));
  QF_TRY(need("nll", nll, T)); QF_TRY(need("x", x, T * D)); QF_TRY(need("normWeight", norm_w, D));
  QF_TRY(need("head", head, V * D)); QF_TRY(check_ids("targets", targets, T, V, true));
  const bool backward = dx.data != nullptr;
  if (backward) QF_TRY(need("dx", dx, T * D));
  if (dnorm.data) QF_TRY(need("dnorm", dnorm, D));
  if (dhead.data) QF_TRY(need("dhead", dhead, V * D));
  std::vector<float> n((size_t)(T * D)), rstd((size_t)T), logits((size_t)(T * V));  // (T, D), (T), (T, V)
  rmsnorm_fwd(n.data(), rstd.data(), F(x), F(norm_w), T, D, eps);
  linear_forward(logits.data(), n.data(), F(head), T, V, D);
  const TrainKernels& kt = train_kernels();
  parallel_for(T, grain_rows(V), [&](int64_t r0, int64_t r1) {
    kt.cross_entropy_forward(F(nll), logits.data(), I(targets), r0, r1, V);
  });
  if (!backward) return Status::Ok();
  parallel_for(T, grain_rows(V), [&](int64_t r0, int64_t r1) {
    kt.cross_entropy_backward(logits.data(), I(targets), r0, r1, V, loss_scale);
  });
  std::vector<float> dn((size_t)(T * D));
  linear_backward_input(dn.data(), logits.data(), F(head), T, V, D, false);
  if (dhead.data) linear_backward_weight(F(dhead), logits.data(), n.data(), T, V, D, true);
  rmsnorm_bwd(F(dx), dnorm.data ? F(dnorm) : nullptr, dn.data(), F(x), F(norm_w), rstd.data(), T, D);
  return Status::Ok();
}

}  // namespace train
}  // namespace qf
