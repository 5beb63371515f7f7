// FPTQuant (engine.h FptTransforms): the parameter layout, the merge of its transforms
// into the weights and the merge's backward (the one place both happen: the training step
// calls the same apply_linear for its effective weights), the residual rotation, its
// whole-tensor ops (checked, then split over the pool onto the active tier's kernels) and
// the end-to-end loss head (final RMSNorm with the S_n carry, LM head, Jensen-Shannon).
#include "engine_fpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "quantform/threadpool.h"
#include "op_checks.h"

namespace qf {

namespace {

std::string num(int64_t v) { return std::to_string(v); }
std::string fnum(double v) {
  char b[32];
  snprintf(b, sizeof b, "%.4g", v);
  return b;
}
float* F(const Span& s) { return static_cast<float*>(s.data); }
int64_t grain_rows(int64_t cols) { return cols >= 8192 ? 1 : 8192 / cols; }
constexpr int64_t kElemGrain = 1 << 14;

using engine_check::count;
using engine_check::need;
using engine_check::need_opt;
using engine_check::positive;

Status need_i8(const char* name, const I8Span& s, int64_t want, const char* shape) {
  if (want < 0) return engine_check::too_large(name, shape);
  if (s.data == nullptr || (int64_t)s.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + num(want) + " int8 elements " + shape + " for " + name +
                                          " but received " + num(s.data ? (int64_t)s.len : 0));
  return Status::Ok();
}
Status need_bits(int64_t bits) {
  if (bits != 4 && bits != 8)
    return error(Code::UnsupportedBits, "Expected 4 or 8 for the activation bits but received " + num(bits));
  return Status::Ok();
}
Status positive_values(const char* name, const Span& s) {
  const float* p = F(s);
  for (size_t i = 0; i < s.len; i++)
    if (!(p[i] > 0.f) || !std::isfinite(p[i]))
      return error(Code::InvalidArgument, std::string("Expected positive finite ") + name + " but " + name + "[" +
                                              num((int64_t)i) + "] is " + std::to_string(p[i]));
  return Status::Ok();
}
bool power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Entry (i, j) of the normalised Sylvester Hadamard matrix of size n (a power of two).
double hadamard_entry(int64_t i, int64_t j, int64_t n) {
  return (__builtin_popcountll((unsigned long long)(i & j)) & 1 ? -1.0 : 1.0) / std::sqrt((double)n);
}

// (rows, cols) of linear j.
void linear_shape(const BlockDims& d, int j, int64_t* rows, int64_t* cols) {
  const int64_t r[kBlockLinears] = {d.Dq(), d.Dkv(), d.Dkv(), d.D, d.F, d.F, d.D};
  const int64_t c[kBlockLinears] = {d.D, d.D, d.D, d.Dq(), d.D, d.D, d.F};
  *rows = r[j];
  *cols = c[j];
}

// Rows [r0, r1) of (rows, K) times s[r] (in place).
void scale_rows(float* w, const float* s, int64_t rows, int64_t K) {
  parallel_for(rows, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t k = 0; k < K; k++) w[r * K + k] *= s[r];
  });
}

// Per-element splitting with one private double accumulator set per slot, summed in slot order
// (deterministic whatever the scheduling).
template <class Fn>
void reduce_slots(int64_t n, int64_t width, double* out, Fn&& fn) {
  const int64_t slots = scratch_slots();
  std::vector<double> part((size_t)(slots * width), 0.0);
  parallel_slots(n, kElemGrain, slots, [&](int64_t s, int64_t i0, int64_t i1) { fn(part.data() + s * width, i0, i1); });
  for (int64_t s = 0; s < slots; s++)
    for (int64_t w = 0; w < width; w++) out[w] += part[(size_t)(s * width + w)];
}

}  // namespace

// ---------------------------------------------------------------------------
// Layout and preparation
// ---------------------------------------------------------------------------

FptLayout fpt_layout(const BlockDims& d) {
  FptLayout L;
  int64_t o = 0;
  auto take = [&o](int64_t n) { const int64_t at = o; o += n; return at; };
  const int64_t half = d.hd / 2;
  L.qk_log_scale = take(d.Hkv * half);
  L.qk_angle = take(d.Hkv * half);
  L.v_lu = take(d.Hkv * d.hd * d.hd);
  L.mlp_log_scale = take(d.F);
  L.act_log_scale = take(FptTransforms::kActInputs);
  L.kv_log_scale = take(2 * d.Hkv);
  L.total = o;
  return L;
}

namespace fpt {

bool transforms_weights(const FptTransforms& f) {
  return f.on && !f.merged && (f.qk || f.v || f.mlp || f.hadamard_block > 0);
}

Status check(const BlockDesc& d) {
  const FptTransforms& f = d.fpt;
  if (!f.on) return Status::Ok();
  if (d.teq.on) return error(Code::InvalidArgument, "Expected TEQ or FPTQuant transforms in one block, not both");
  if (d.learned_fq.active()) return error(Code::InvalidArgument, "Expected learned fake quantization or FPTQuant, not both");
  if (f.act_bits != 0 && f.act_bits != 4 && f.act_bits != 8)
    return error(Code::UnsupportedBits, "Expected activation bits 4, 8 or 16 (fp) but received " + num(f.act_bits));
  for (int i = 0; i < FptTransforms::kActInputs; i++)
    if (f.input_bits[i] != 0 && (f.act_bits == 0 || (f.input_bits[i] != 4 && f.input_bits[i] != 8)))
      return error(Code::UnsupportedBits, "Expected per-input activation bits 4 or 8 (with activation bits set) but input " + num(i) +
                                              " received " + num(f.input_bits[i]) + " with activation bits " + num(f.act_bits));
  if (f.kv_bits != 0 && f.kv_bits != 4 && f.kv_bits != 8)
    return error(Code::UnsupportedBits, "Expected KV-cache bits 4, 8 or 16 (fp) but received " + num(f.kv_bits));
  if (f.hadamard_block != 0 && (!power_of_two(f.hadamard_block) || d.dims.F % f.hadamard_block != 0))
    return error(Code::InvalidArgument, "Expected an online Hadamard block that is a power of two dividing F = " +
                                            num(d.dims.F) + " but received " + num(f.hadamard_block));
  if (f.v_hadamard && (!f.v || !power_of_two(d.dims.hd)))
    return error(Code::InvalidArgument, "Expected the value transform on and a power-of-two hd for a Hadamard-initialised T_v but received hd = " +
                                            num(d.dims.hd) + (f.v ? "" : " with T_v off"));
  if (f.merged && (f.qk || f.v || f.mlp))
    return error(Code::InvalidArgument, "Expected no transform flags on merged weights (they are in the weights already)");
  if (!f.params) return error(Code::InvalidArgument, "Expected FPTQuant parameters (fpt_param_count floats) but received none");
  if (!(f.lp_p >= 1.f) || !std::isfinite(f.lp_p) || f.lp_act < 0.f || f.lp_weight < 0.f)
    return error(Code::InvalidArgument, "Expected lpP >= 1 and non-negative lpAct, lpWeight but received " + fnum(f.lp_p) +
                                            ", " + fnum(f.lp_act) + ", " + fnum(f.lp_weight));
  return Status::Ok();
}

Status prepare(Prep* p, const BlockDims& dims, const FptTransforms& f) {
  p->dims = dims;
  p->f = f;
  p->lay = fpt_layout(dims);
  p->p = f.params;
  const FptLayout& L = p->lay;
  const int64_t half = dims.hd / 2, hd = dims.hd, Hkv = dims.Hkv;
  for (int64_t i = 0; i < L.total; i++)
    if (!std::isfinite(f.params[i]))
      return error(Code::NonFinite, "FPTQuant parameter " + num(i) + " of the block is " + std::to_string(f.params[i]) +
                                        ": a transform or quantizer scale diverged");
  for (int i = 0; i < FptTransforms::kActInputs; i++) p->act[i] = std::exp(f.params[L.act_log_scale + i]);
  p->kv.resize((size_t)(2 * Hkv));
  for (int64_t i = 0; i < 2 * Hkv; i++) p->kv[(size_t)i] = std::exp(f.params[L.kv_log_scale + i]);
  for (float s : p->kv)
    if (!(s > 0.f) || !std::isfinite(s)) return error(Code::NonFinite, "A KV-cache scale is not a positive finite number");
  for (float s : p->act)
    if (!(s > 0.f) || !std::isfinite(s)) return error(Code::NonFinite, "An activation scale is not a positive finite number");
  if (!transforms_weights(f)) return Status::Ok();
  if (f.qk) {
    p->qk_s.resize((size_t)(Hkv * half));
    for (int64_t i = 0; i < Hkv * half; i++) p->qk_s[(size_t)i] = std::exp(f.params[L.qk_log_scale + i]);
  }
  if (f.mlp) {
    p->mlp_s.resize((size_t)dims.F);
    for (int64_t i = 0; i < dims.F; i++) p->mlp_s[(size_t)i] = std::exp(f.params[L.mlp_log_scale + i]);
  }
  for (float s : p->qk_s)
    if (!(s > 0.f) || !std::isfinite(s)) return error(Code::NonFinite, "A T_k scale is not a positive finite number");
  for (float s : p->mlp_s)
    if (!(s > 0.f) || !std::isfinite(s)) return error(Code::NonFinite, "A T_u scale is not a positive finite number");
  if (!f.v) return Status::Ok();
  const size_t hh = (size_t)(hd * hd);
  p->A.assign((size_t)Hkv * hh, 0.f);
  p->Ainv.assign((size_t)Hkv * hh, 0.f);
  p->L.assign((size_t)Hkv * hh, 0.0);
  p->U.assign((size_t)Hkv * hh, 0.0);
  std::vector<double> Li(hh), Ui(hh), A(hh), Ai(hh);
  for (int64_t g = 0; g < Hkv; g++) {
    const float* P = f.params + L.v_lu + g * (int64_t)hh;  // (hd, hd)
    double* Lg = p->L.data() + g * hh;
    double* Ug = p->U.data() + g * hh;
    for (int64_t i = 0; i < hd; i++)
      for (int64_t j = 0; j < hd; j++) {
        const double v = P[i * hd + j];
        Lg[i * hd + j] = i > j ? v : (i == j ? 1.0 : 0.0);
        Ug[i * hd + j] = i < j ? v : (i == j ? std::exp(v) : 0.0);
      }
    // A = L U; L^-1 by forward substitution (unit diagonal), U^-1 by back substitution
    for (int64_t i = 0; i < hd; i++)
      for (int64_t j = 0; j < hd; j++) {
        double s = 0;
        for (int64_t k = 0; k <= std::min(i, j); k++) s += Lg[i * hd + k] * Ug[k * hd + j];
        A[(size_t)(i * hd + j)] = s;
      }
    std::fill(Li.begin(), Li.end(), 0.0);
    std::fill(Ui.begin(), Ui.end(), 0.0);
    for (int64_t j = 0; j < hd; j++) {
      Li[(size_t)(j * hd + j)] = 1.0;
      for (int64_t i = j + 1; i < hd; i++) {
        double s = 0;
        for (int64_t k = j; k < i; k++) s += Lg[i * hd + k] * Li[(size_t)(k * hd + j)];
        Li[(size_t)(i * hd + j)] = -s;
      }
    }
    for (int64_t j = hd - 1; j >= 0; j--) {
      Ui[(size_t)(j * hd + j)] = 1.0 / Ug[j * hd + j];
      for (int64_t i = j - 1; i >= 0; i--) {
        double s = 0;
        for (int64_t k = i + 1; k <= j; k++) s += Ug[i * hd + k] * Ui[(size_t)(k * hd + j)];
        Ui[(size_t)(i * hd + j)] = -s / Ug[i * hd + i];
      }
    }
    for (int64_t i = 0; i < hd; i++)
      for (int64_t j = 0; j < hd; j++) {
        double s = 0;
        for (int64_t k = i; k < hd; k++) s += Ui[(size_t)(i * hd + k)] * Li[(size_t)(k * hd + j)];
        Ai[(size_t)(i * hd + j)] = s;
      }
    if (f.v_hadamard) {
      // A = H (L U), A^-1 = (L U)^-1 H (H symmetric orthogonal)
      std::vector<double> t(hh);
      for (int64_t i = 0; i < hd; i++)
        for (int64_t j = 0; j < hd; j++) {
          double a = 0, b = 0;
          for (int64_t k = 0; k < hd; k++) {
            a += hadamard_entry(i, k, hd) * A[(size_t)(k * hd + j)];
            b += Ai[(size_t)(i * hd + k)] * hadamard_entry(k, j, hd);
          }
          t[(size_t)(i * hd + j)] = a;
          Li[(size_t)(i * hd + j)] = b;  // scratch: the new inverse
        }
      A = t;
      Ai.assign(Li.begin(), Li.end());
    }
    double na = 0, ni = 0;
    for (int64_t j = 0; j < hd; j++) {
      double ca = 0, ci = 0;
      for (int64_t i = 0; i < hd; i++) {
        ca += std::fabs(A[(size_t)(i * hd + j)]);
        ci += std::fabs(Ai[(size_t)(i * hd + j)]);
      }
      na = std::max(na, ca);
      ni = std::max(ni, ci);
    }
    const double cond = na * ni;
    if (!std::isfinite(cond) || cond > kFptMaxCond)
      return error(Code::NonFinite, "The value transform T_v of kv head " + num(g) + " became singular: cond_1(A) = " +
                                        fnum(cond) + " (limit " + fnum(kFptMaxCond) + ")");
    for (size_t i = 0; i < hh; i++) {
      p->A[g * hh + i] = (float)A[i];
      p->Ainv[g * hh + i] = (float)Ai[i];
    }
  }
  return Status::Ok();
}

void apply_linear(int j, float* out, const float* W, const Prep& p, float* pack, int64_t slots) {
  const BlockDims& d = p.dims;
  const FptTransforms& f = p.f;
  int64_t rows, cols;
  linear_shape(d, j, &rows, &cols);
  const int64_t hd = d.hd, half = hd / 2, rep = d.Hq / d.Hkv, D = d.D;
  const bool tk = f.qk && (j == kWq || j == kWk);
  const bool tv = f.v && (j == kWv || j == kWo);
  const bool tu = f.mlp && (j == kWUp || j == kWDown);
  const bool had = f.hadamard_block > 0 && j == kWDown;
  if (!tk && !tv) std::memcpy(out, W, (size_t)(rows * cols) * sizeof(float));
  if (tk) {
    // (heads, pairs) rows of q (Hq heads, factor 1/s) or k (Hkv heads, factor s)
    const float* ang = p.p + p.lay.qk_angle;
    const int64_t H = j == kWq ? d.Hq : d.Hkv;
    parallel_for(H * half, std::max<int64_t>(1, 8192 / cols), [&](int64_t i0, int64_t i1) {
      for (int64_t it = i0; it < i1; it++) {
        const int64_t h = it / half, i = it % half, g = j == kWq ? h / rep : h;
        const float s = p.qk_s[(size_t)(g * half + i)], fct = j == kWq ? 1.f / s : s;
        const float co = std::cos(ang[g * half + i]), si = std::sin(ang[g * half + i]);
        const float* a = W + (h * hd + i) * cols;
        const float* b = W + (h * hd + i + half) * cols;
        float* oa = out + (h * hd + i) * cols;
        float* ob = out + (h * hd + i + half) * cols;
        for (int64_t c = 0; c < cols; c++) {
          const float va = a[c], vb = b[c];
          oa[c] = fct * (co * va - si * vb);
          ob[c] = fct * (si * va + co * vb);
        }
      }
    });
  }
  if (tv) {
    const size_t hh = (size_t)(hd * hd);
    if (j == kWv) {
      for (int64_t g = 0; g < d.Hkv; g++)  // out rows of head g (hd, D) = A_g (hd, hd) . W rows (hd, D)
        gemm_run(out + g * hd * D, D, StridedMat{p.A.data() + g * hh, hd, 1}, StridedMat{W + g * hd * D, D, 1}, hd, D, hd,
                 false, pack, slots);
    } else {
      const int64_t Dq = d.Dq();
      for (int64_t h = 0; h < d.Hq; h++)  // out columns of q head h (D, hd) = W columns (D, hd) . A_g^-1
        gemm_run(out + h * hd, Dq, StridedMat{W + h * hd, Dq, 1}, StridedMat{p.Ainv.data() + (h / rep) * hh, hd, 1}, D,
                 hd, hd, false, pack, slots);
    }
  }
  if (tu) {
    if (j == kWUp) {
      scale_rows(out, p.mlp_s.data(), rows, cols);
    } else {
      const float* s = p.mlp_s.data();
      parallel_for(rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++)
          for (int64_t c = 0; c < cols; c++) out[r * cols + c] /= s[c];
      });
    }
  }
  if (had) {
    const EngineKernels& k = engine_kernels();
    parallel_for(rows, grain_rows(cols), [&](int64_t r0, int64_t r1) { k.fwht(out, r0, r1, cols, f.hadamard_block); });
  }
}

namespace {

// dparams of the LU parameters of head g from dA_in (hd, hd), the gradient w.r.t. A = [H] L U.
void lu_backward(float* dP, const double* dA_in, const Prep& p, int64_t g) {
  const int64_t hd = p.dims.hd;
  const size_t hh = (size_t)(hd * hd);
  const double* Lg = p.L.data() + g * hh;
  const double* Ug = p.U.data() + g * hh;
  std::vector<double> hdA;  // with the Hadamard start: the gradient w.r.t. L U is H^T dA = H dA
  const double* dA = dA_in;
  if (p.f.v_hadamard) {
    hdA.assign(hh, 0.0);
    for (int64_t i = 0; i < hd; i++)
      for (int64_t j = 0; j < hd; j++) {
        double s = 0;
        for (int64_t k = 0; k < hd; k++) s += hadamard_entry(i, k, hd) * dA_in[k * hd + j];
        hdA[(size_t)(i * hd + j)] = s;
      }
    dA = hdA.data();
  }
  for (int64_t i = 0; i < hd; i++)
    for (int64_t j = 0; j < hd; j++) {
      double s = 0;
      if (i > j) {  // dL = dA U^T, strictly lower
        for (int64_t k = j; k < hd; k++) s += dA[i * hd + k] * Ug[j * hd + k];
      } else {  // dU = L^T dA, upper; the diagonal is exp(d)
        for (int64_t k = i; k < hd; k++) s += Lg[k * hd + i] * dA[k * hd + j];
        if (i == j) s *= Ug[i * hd + i];
      }
      dP[i * hd + j] += (float)s;
    }
}

}  // namespace

namespace {

// The CPU's contractions (FptContractions), with the GEMM scratch of the caller.
void pair_dots_cpu(double* sl, double* sp, const float* Wm, const float* dWm, int64_t H, int64_t hd, int64_t cols) {
  parallel_for(H * (hd / 2), std::max<int64_t>(1, 8192 / cols), [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; it++) fpt_pair_dot(sl, sp, Wm, dWm, it, hd, cols);
  });
}

void v_gram_cpu(float* G, const float* dWv, const float* Wv, int64_t Hkv, int64_t hd, int64_t D, float* pack, int64_t slots) {
  for (int64_t g = 0; g < Hkv; g++)  // (hd, D) . (D, hd)
    gemm_run(G + g * hd * hd, hd, StridedMat{dWv + g * hd * D, D, 1}, StridedMat{Wv + g * hd * D, 1, D}, hd, hd, D, false,
             pack, slots);
}

void o_gram_cpu(float* G, const float* Wo, const float* dWo, int64_t Hkv, int64_t rep, int64_t hd, int64_t D, float* pack,
                int64_t slots) {
  const int64_t Dq = Hkv * rep * hd;
  for (int64_t g = 0; g < Hkv; g++)
    for (int64_t r = 0; r < rep; r++) {  // (hd, D) . (D, hd), accumulated over the group's q heads
      const int64_t h = g * rep + r;
      gemm_run(G + g * hd * hd, hd, StridedMat{Wo + h * hd, 1, Dq}, StridedMat{dWo + h * hd, Dq, 1}, hd, hd, D, r > 0, pack,
               slots);
    }
}

void row_dots_cpu(double* acc, const float* dW, const float* W, int64_t rows, int64_t cols) {
  parallel_for(rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      double s = 0;
      for (int64_t c = 0; c < cols; c++) s += (double)dW[r * cols + c] * W[r * cols + c];
      acc[r] = s;
    }
  });
}

void col_dots_cpu(double* acc, const float* dW, const float* W, int64_t rows, int64_t cols) {
  std::fill(acc, acc + cols, 0.0);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) acc[c] += (double)dW[r * cols + c] * W[r * cols + c];
}

}  // namespace

Status linear_backward(int j, float* dparams, float* dWm, const float* Wm, const float* W, const Prep& p, float* pack,
                       int64_t slots, const FptContractions* gpu) {
  const BlockDims& d = p.dims;
  const FptTransforms& f = p.f;
  const FptLayout& L = p.lay;
  int64_t rows, cols;
  linear_shape(d, j, &rows, &cols);
  const int64_t hd = d.hd, half = hd / 2, rep = d.Hq / d.Hkv, D = d.D;
  if (f.qk && (j == kWq || j == kWk)) {
    // per (g, i): dlambda = +-sum dr'.r' (k: factor s, q: 1/s), dphi = sum (dr'_b r'_a - dr'_a r'_b)
    const int64_t H = j == kWq ? d.Hq : d.Hkv;
    std::vector<double> dl((size_t)(H * half)), dp((size_t)(H * half));
    if (gpu) QF_TRY(gpu->pair_dots(dl.data(), dp.data(), Wm, dWm, H, hd, cols));
    else pair_dots_cpu(dl.data(), dp.data(), Wm, dWm, H, hd, cols);
    for (int64_t it = 0; it < H * half; it++) {  // in order: q heads of a group add up deterministically
      const int64_t h = it / half, i = it % half, g = j == kWq ? h / rep : h;
      dparams[L.qk_log_scale + g * half + i] += (float)(j == kWq ? -dl[(size_t)it] : dl[(size_t)it]);
      dparams[L.qk_angle + g * half + i] += (float)dp[(size_t)it];
    }
  }
  if (f.v && (j == kWv || j == kWo)) {
    const size_t hh = (size_t)(hd * hd);
    std::vector<float> G((size_t)(d.Hkv * (int64_t)hh));  // (Hkv, hd, hd)
    // value rows: dA = dV' V^T; output columns: dA^-1 = sum over the group's q heads of O_h^T dO'_h
    if (j == kWv) {
      if (gpu) QF_TRY(gpu->v_gram(G.data(), dWm, W, d.Hkv, hd, D));
      else v_gram_cpu(G.data(), dWm, W, d.Hkv, hd, D, pack, slots);
    } else {
      if (gpu) QF_TRY(gpu->o_gram(G.data(), W, dWm, d.Hkv, rep, hd, D));
      else o_gram_cpu(G.data(), W, dWm, d.Hkv, rep, hd, D, pack, slots);
    }
    std::vector<double> dA(hh);
    for (int64_t g = 0; g < d.Hkv; g++) {
      const float* Gg = G.data() + g * (int64_t)hh;
      if (j == kWv) {
        for (size_t i = 0; i < hh; i++) dA[i] = Gg[i];
      } else {
        // dA = -A^-T dA^-1 A^-T
        const float* Ai = p.Ainv.data() + g * hh;
        std::vector<double> T(hh);
        for (int64_t a = 0; a < hd; a++)  // T = A^-T G
          for (int64_t b = 0; b < hd; b++) {
            double s = 0;
            for (int64_t k = 0; k < hd; k++) s += (double)Ai[k * hd + a] * Gg[k * hd + b];
            T[(size_t)(a * hd + b)] = s;
          }
        for (int64_t a = 0; a < hd; a++)  // dA = -T A^-T
          for (int64_t b = 0; b < hd; b++) {
            double s = 0;
            for (int64_t k = 0; k < hd; k++) s += T[(size_t)(a * hd + k)] * Ai[b * hd + k];
            dA[(size_t)(a * hd + b)] = -s;
          }
      }
      lu_backward(dparams + L.v_lu + g * (int64_t)hh, dA.data(), p, g);
    }
  }
  if (j == kWDown && f.hadamard_block > 0) {
    // W' = Z H: dZ = dW' H (H symmetric), and Z = W' H
    const EngineKernels& k = engine_kernels();
    parallel_for(rows, grain_rows(cols), [&](int64_t r0, int64_t r1) { k.fwht(dWm, r0, r1, cols, f.hadamard_block); });
  }
  if (f.mlp && (j == kWUp || j == kWDown)) {
    // up: dmu_f = sum_k dW'[f, k] W'[f, k];  down: Z = W diag(1/s), dmu_f = -sum_n dZ[n, f] Z[n, f]
    float* dmu = dparams + L.mlp_log_scale;
    if (j == kWUp) {
      std::vector<double> acc((size_t)rows);
      if (gpu) QF_TRY(gpu->row_dots(acc.data(), dWm, Wm, rows, cols));
      else row_dots_cpu(acc.data(), dWm, Wm, rows, cols);
      for (int64_t r = 0; r < rows; r++) dmu[r] += (float)acc[(size_t)r];
    } else {
      const float* s = p.mlp_s.data();
      std::vector<double> acc((size_t)cols);
      if (gpu) QF_TRY(gpu->col_dots(acc.data(), dWm, W, rows, cols));
      else col_dots_cpu(acc.data(), dWm, W, rows, cols);
      for (int64_t c = 0; c < cols; c++) dmu[c] -= (float)(acc[(size_t)c] / s[c]);
    }
  }
  return Status::Ok();
}

double lp_ratio_acc(float* dx, const float* x, int64_t n, int64_t group, float p, float scale) {
  const int64_t G = n / group;
  std::vector<double> A((size_t)G), B((size_t)G);
  const bool four = p == 4.f;
  parallel_for(G, std::max<int64_t>(1, kElemGrain / group), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; g++) {
      double a = 0, b = 0;
      for (int64_t i = g * group; i < (g + 1) * group; i++) {
        const double v = x[i], v2 = v * v;
        a += four ? v2 * v2 : std::pow(std::fabs(v), (double)p);
        b += v2;
      }
      A[(size_t)g] = a / (double)group;
      B[(size_t)g] = b / (double)group;
    }
  });
  double total = 0;
  for (int64_t g = 0; g < G; g++)
    if (B[(size_t)g] > 0) total += A[(size_t)g] / std::pow(B[(size_t)g], 0.5 * p);
  const double sc = (double)scale / (double)G;
  if (dx)
    // d/dx_i of A B^(-p/2) = (p / group) B^(-p/2) (|x|^(p-2) x - (A / B) x)
    parallel_for(G, std::max<int64_t>(1, kElemGrain / group), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; g++) {
        const double Bg = B[(size_t)g], Ag = A[(size_t)g];
        if (!(Bg > 0)) continue;
        const double k = sc * (double)p / (double)group * std::pow(Bg, -0.5 * p), ab = Ag / Bg;
        for (int64_t i = g * group; i < (g + 1) * group; i++) {
          const double v = x[i];
          const double pw = four ? v * v : std::pow(std::fabs(v), (double)p - 2.0);
          dx[i] += (float)(k * (pw * v - ab * v));
        }
      }
    });
  return total * sc;
}

}  // namespace fpt

// ---------------------------------------------------------------------------
// Merge, merge backward, residual rotation
// ---------------------------------------------------------------------------

namespace {

Status check_fpt_dims(const BlockDims& d) {
  QF_TRY(positive("D", d.D));
  QF_TRY(positive("F", d.F));
  QF_TRY(positive("Hq", d.Hq));
  QF_TRY(positive("Hkv", d.Hkv));
  QF_TRY(positive("hd", d.hd));
  if (d.Hq % d.Hkv != 0 || d.hd % 2 != 0)
    return error(Code::InvalidArgument, "Expected Hkv dividing Hq and an even hd but received Hq=" + num(d.Hq) + ", Hkv=" +
                                            num(d.Hkv) + ", hd=" + num(d.hd));
  return Status::Ok();
}

Status check_merge_args(const BlockDims& d, const FptTransforms& f, int64_t* total) {
  QF_TRY(check_fpt_dims(d));
  BlockDesc desc;
  desc.dims = d;
  desc.dims.B = desc.dims.T = 1;
  desc.fpt = f;
  desc.fpt.on = true;
  desc.fpt.residual_scaling = false;  // a merge reads no carry
  QF_TRY(fpt::check(desc));
  if (f.merged) return error(Code::InvalidArgument, "Expected unmerged weights to merge FPTQuant transforms into");
  *total = block_layout(d).total;
  return Status::Ok();
}

}  // namespace

Status fpt_merge(Span arena, Span rotation, const BlockDims& d, const FptTransforms& f) {
  int64_t total;
  QF_TRY(check_merge_args(d, f, &total));
  QF_TRY(need("arena", arena, total, "(block_param_count)"));
  QF_TRY(need_opt("rotation", rotation, d.D * d.D, "(D, D)"));
  fpt::Prep p;
  QF_TRY(fpt::prepare(&p, d, f));
  const BlockLayout L = block_layout(d);
  const int64_t slots = scratch_slots(), D = d.D;
  int64_t maxw = 0;
  for (int j = 0; j < kBlockLinears; j++) maxw = std::max(maxw, L.linear[j].rows * L.linear[j].cols);
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * kGemmPackFloats + maxw), "fpt_merge"));
  float* pack = ws.data();
  float* tmp = pack + slots * kGemmPackFloats;  // (rows, cols) one linear
  float* w = F(arena);
  if (rotation.data) {
    const float* Q = F(rotation);
    // norms into the linears that read them, then W Q (inputs) and Q^T W (outputs)
    auto fuse = [&](const BlockTensorSlot& norm, std::initializer_list<int> js) {
      float* g = w + norm.offset;
      for (int j : js) {
        const BlockTensorSlot& t = L.linear[j];
        float* m = w + t.offset;
        parallel_for(t.rows, grain_rows(t.cols), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; r++)
            for (int64_t c = 0; c < t.cols; c++) m[r * t.cols + c] *= g[c];
        });
      }
      std::fill(g, g + D, 1.f);
    };
    fuse(L.attn_norm, {kWq, kWk, kWv});
    fuse(L.ffn_norm, {kWGate, kWUp});
    for (int j : {kWq, kWk, kWv, kWGate, kWUp}) {
      const BlockTensorSlot& t = L.linear[j];
      std::memcpy(tmp, w + t.offset, (size_t)(t.rows * t.cols) * sizeof(float));
      gemm_run(w + t.offset, D, StridedMat{tmp, D, 1}, StridedMat{Q, D, 1}, t.rows, D, D, false, pack, slots);
    }
    for (int j : {kWo, kWDown}) {
      const BlockTensorSlot& t = L.linear[j];
      std::memcpy(tmp, w + t.offset, (size_t)(t.rows * t.cols) * sizeof(float));
      gemm_run(w + t.offset, t.cols, StridedMat{Q, 1, D}, StridedMat{tmp, t.cols, 1}, D, t.cols, D, false, pack, slots);
    }
  }
  if (fpt::transforms_weights(f))
    for (int j = 0; j < kBlockLinears; j++) {
      const BlockTensorSlot& t = L.linear[j];
      std::memcpy(tmp, w + t.offset, (size_t)(t.rows * t.cols) * sizeof(float));
      fpt::apply_linear(j, w + t.offset, tmp, p, pack, slots);
    }
  return Status::Ok();
}

Status fpt_merge_backward(Span dparams, Span deff, Span arena, const BlockDims& d, const FptTransforms& f,
                          const FptContractions* contractions) {
  int64_t total;
  QF_TRY(check_merge_args(d, f, &total));
  QF_TRY(need("arena", arena, total, "(block_param_count)"));
  QF_TRY(need("deff", deff, total, "(block_param_count)"));
  QF_TRY(need("dparams", dparams, fpt_layout(d).total, "(fpt_param_count)"));
  fpt::Prep p;
  QF_TRY(fpt::prepare(&p, d, f));
  if (!fpt::transforms_weights(f)) return Status::Ok();
  const BlockLayout L = block_layout(d);
  const int64_t slots = scratch_slots();
  int64_t maxw = 0;
  for (int j = 0; j < kBlockLinears; j++) maxw = std::max(maxw, L.linear[j].rows * L.linear[j].cols);
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * kGemmPackFloats + 2 * maxw), "fpt_merge_backward"));
  float* pack = ws.data();
  float* wm = pack + slots * kGemmPackFloats;  // merged weight (rows, cols)
  float* dw = wm + maxw;                       // its gradient, overwritten by the backward
  for (int j = 0; j < kBlockLinears; j++) {
    const BlockTensorSlot& t = L.linear[j];
    const float* W = F(arena) + t.offset;
    fpt::apply_linear(j, wm, W, p, pack, slots);
    std::memcpy(dw, F(deff) + t.offset, (size_t)(t.rows * t.cols) * sizeof(float));
    QF_TRY(fpt::linear_backward(j, F(dparams), dw, wm, W, p, pack, slots, contractions));
  }
  return Status::Ok();
}

Status fpt_check_params(Span params, const BlockDims& d, const FptTransforms& f) {
  QF_TRY(check_fpt_dims(d));
  QF_TRY(need("fptParams", params, fpt_layout(d).total, "(fpt_param_count)"));
  FptTransforms t = f;
  t.params = F(params);
  fpt::Prep p;
  return fpt::prepare(&p, d, t);
}

Status fpt_rotate_rows(Span table, Span norm, Span rotation, int64_t rows, int64_t D) {
  QF_TRY(positive("rows", rows));
  QF_TRY(positive("D", D));
  QF_TRY(need("table", table, rows * D, "(rows, D)"));
  QF_TRY(need_opt("norm", norm, D, "(D)"));
  QF_TRY(need("rotation", rotation, D * D, "(D, D)"));
  const int64_t slots = scratch_slots(), chunk = std::min<int64_t>(rows, 4096);
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * kGemmPackFloats + chunk * D), "fpt_rotate_rows"));
  float* pack = ws.data();
  float* tmp = pack + slots * kGemmPackFloats;  // (chunk, D)
  float* t = F(table);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    std::memcpy(tmp, t + r0 * D, (size_t)(n * D) * sizeof(float));
    if (norm.data)
      for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < D; c++) tmp[r * D + c] *= F(norm)[c];
    gemm_run(t + r0 * D, D, StridedMat{tmp, D, 1}, StridedMat{F(rotation), D, 1}, n, D, D, false, pack, slots);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Whole-tensor ops
// ---------------------------------------------------------------------------

Status rmsnorm_scaled_forward(Span out, Span rstd, Span x, Span w, Span c, int64_t BT, int64_t D, float eps) {
  QF_TRY(engine_check::rmsnorm_args(out, rstd, x, w, BT, D, eps));
  QF_TRY(need_opt("c", c, BT, "(BT)"));
  if (c.data) QF_TRY(positive_values("c", c));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_scaled_forward(F(out), F(rstd), F(x), F(w), F(c), r0, r1, D, eps);
  });
  return Status::Ok();
}

Status check_rmsnorm_scaled_backward(const Span& dx, const Span& dc, const Span& dout, const Span& x, const Span& w,
                                     const Span& rstd, const Span& c, const Span& drstd, int64_t BT, int64_t D) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  QF_TRY(need("dx", dx, BT * D, "(BT, D)"));
  QF_TRY(need_opt("dc", dc, BT, "(BT)"));
  QF_TRY(need("dout", dout, BT * D, "(BT, D)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  QF_TRY(need("w", w, D, "(D)"));
  QF_TRY(need("rstd", rstd, BT, "(BT)"));
  QF_TRY(need_opt("c", c, BT, "(BT)"));
  QF_TRY(need_opt("drstd", drstd, BT, "(BT)"));
  if (c.data) QF_TRY(positive_values("c", c));
  return Status::Ok();
}

Status rmsnorm_scaled_backward(Span dx, Span dc, Span dout, Span x, Span w, Span rstd, Span c, Span drstd, int64_t BT,
                               int64_t D, float eps) {
  QF_TRY(check_rmsnorm_scaled_backward(dx, dc, dout, x, w, rstd, c, drstd, BT, D));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_scaled_backward(F(dx), F(dc), F(dout), F(x), F(w), F(rstd), F(c), F(drstd), r0, r1, D, eps);
  });
  return Status::Ok();
}

Status residual_scaled_forward(Span out, Span a, Span m, Span b, int64_t BT, int64_t D) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  QF_TRY(need("out", out, BT * D, "(BT, D)"));
  QF_TRY(need("a", a, BT * D, "(BT, D)"));
  QF_TRY(need("m", m, BT, "(BT)"));
  QF_TRY(need("b", b, BT * D, "(BT, D)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.residual_scaled_forward(F(out), F(a), F(m), F(b), r0, r1, D); });
  return Status::Ok();
}

namespace {
Status check_fq(const Span& scale, int64_t n, int64_t nscale, int64_t inner, int64_t bits) {
  QF_TRY(positive("n", n));
  QF_TRY(positive("nscale", nscale));
  QF_TRY(positive("inner", inner));
  QF_TRY(need_bits(bits));
  if (n % inner != 0) return error(Code::InvalidArgument, "Expected inner dividing n but received n=" + num(n) + ", inner=" + num(inner));
  QF_TRY(need("scale", scale, nscale, "(nscale)"));
  return positive_values("scale", scale);
}
}  // namespace

Status act_fake_quant_forward(Span out, Span x, Span scale, int64_t n, int64_t nscale, int64_t inner, int64_t bits) {
  QF_TRY(check_fq(scale, n, nscale, inner, bits));
  QF_TRY(need("out", out, n, "(n)"));
  QF_TRY(need("x", x, n, "(n)"));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  parallel_for(n, kElemGrain, [&](int64_t i0, int64_t i1) { k.act_fake_quant_forward(F(out), F(x), F(scale), nscale, inner, qmax, i0, i1); });
  return Status::Ok();
}

Status check_act_fake_quant_backward(const Span& dx, const Span& dscale, const Span& dout, const Span& x,
                                     const Span& scale, int64_t n, int64_t nscale, int64_t inner, int64_t bits) {
  QF_TRY(check_fq(scale, n, nscale, inner, bits));
  QF_TRY(need("dx", dx, n, "(n)"));
  QF_TRY(need("dscale", dscale, nscale, "(nscale)"));
  QF_TRY(need("dout", dout, n, "(n)"));
  return need("x", x, n, "(n)");
}

Status act_fake_quant_backward(Span dx, Span dscale, Span dout, Span x, Span scale, int64_t n, int64_t nscale,
                               int64_t inner, int64_t bits) {
  QF_TRY(check_act_fake_quant_backward(dx, dscale, dout, x, scale, n, nscale, inner, bits));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  std::vector<double> ds((size_t)nscale, 0.0);
  reduce_slots(n, nscale, ds.data(), [&](double* acc, int64_t i0, int64_t i1) {
    k.act_fake_quant_backward(F(dx), acc, F(dout), F(x), F(scale), nscale, inner, qmax, i0, i1);
  });
  for (int64_t i = 0; i < nscale; i++) F(dscale)[i] += (float)ds[(size_t)i];
  return Status::Ok();
}

Status act_quant_error(Span err, Span x, Span cand, int64_t n, int64_t bits, float p) {
  QF_TRY(positive("n", n));
  QF_TRY(need_bits(bits));
  if (!(p > 0.f) || !std::isfinite(p)) return error(Code::InvalidArgument, "Expected positive finite p but received " + fnum(p));
  if (!cand.data || cand.len == 0) return error(Code::InvalidArgument, "Expected at least one candidate scale");
  QF_TRY(need("candidates", cand, (int64_t)cand.len, "(ncand)"));
  QF_TRY(positive_values("candidates", cand));
  QF_TRY(need("err", err, (int64_t)cand.len, "(ncand)"));
  QF_TRY(need("x", x, n, "(n)"));
  const int64_t nc = (int64_t)cand.len;
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  std::vector<double> e((size_t)nc, 0.0);
  reduce_slots(n, nc, e.data(), [&](double* acc, int64_t i0, int64_t i1) { k.act_quant_error(acc, F(x), F(cand), nc, qmax, p, i0, i1); });
  for (int64_t c = 0; c < nc; c++) F(err)[c] = (float)e[(size_t)c];
  return Status::Ok();
}

Status fwht(Span x, int64_t rows, int64_t F_, int64_t block) {
  QF_TRY(positive("rows", rows));
  QF_TRY(positive("F", F_));
  if (!power_of_two(block) || F_ % block != 0)
    return error(Code::InvalidArgument, "Expected a Hadamard block that is a power of two dividing F = " + num(F_) +
                                            " but received " + num(block));
  QF_TRY(need("x", x, rows * F_, "(rows, F)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(rows, grain_rows(F_), [&](int64_t r0, int64_t r1) { k.fwht(F(x), r0, r1, F_, block); });
  return Status::Ok();
}

namespace {
Status check_quant_rows(const I8Span& xq, const Span& xsumq, int64_t rows, int64_t K, int64_t KP, int64_t gs,
                        int64_t bits, float scale) {
  QF_TRY(positive("rows", rows));
  QF_TRY(positive("K", K));
  QF_TRY(positive("groupSize", gs));
  QF_TRY(need_bits(bits));
  if (KP < K || KP % 8 != 0 || KP > K + 7)
    return error(Code::InvalidArgument, "Expected KP = K rounded up to a multiple of 8 (" + num((K + 7) / 8 * 8) +
                                            ") but received " + num(KP));
  if (gs % 8 != 0 && gs < K)
    return error(Code::InvalidArgument, "Expected groupSize a multiple of 8 or at least K = " + num(K) +
                                            " (the int8 kernels' layout) but received " + num(gs));
  if (!(scale > 0.f) || !std::isfinite(scale))
    return error(Code::InvalidArgument, "Expected a positive finite scale but received " + fnum(scale));
  QF_TRY(need_i8("xq", xq, rows * KP, "(rows, KP)"));
  return need("xsumq", xsumq, rows * ((K + gs - 1) / gs), "(rows, G)");
}
}  // namespace

Status check_act_quant_rows(I8Span xq, Span xsumq, Span x, Span m, float scale, int64_t rows, int64_t K, int64_t KP,
                            int64_t gs, int64_t bits) {
  QF_TRY(check_quant_rows(xq, xsumq, rows, K, KP, gs, bits, scale));
  QF_TRY(need("x", x, rows * K, "(rows, K)"));
  return need_opt("m", m, rows, "(rows)");
}

Status act_quant_rows(I8Span xq, Span xsumq, Span x, Span m, float scale, int64_t rows, int64_t K, int64_t KP,
                      int64_t gs, int64_t bits) {
  QF_TRY(check_act_quant_rows(xq, xsumq, x, m, scale, rows, K, KP, gs, bits));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  parallel_for(rows, grain_rows(K), [&](int64_t r0, int64_t r1) {
    k.act_quant_rows(xq.data, F(xsumq), F(x), F(m), scale, qmax, r0, r1, K, KP, gs);
  });
  return Status::Ok();
}

Status rmsnorm_quant(I8Span xq, Span xsumq, Span rstd, Span x, Span w, Span c, float scale, int64_t BT, int64_t D,
                     int64_t KP, int64_t gs, int64_t bits, float eps) {
  QF_TRY(check_quant_rows(xq, xsumq, BT, D, KP, gs, bits, scale));
  if (!(eps >= 0.f) || !std::isfinite(eps))
    return error(Code::InvalidArgument, "Expected non-negative finite eps but received " + std::to_string(eps));
  QF_TRY(need("rstd", rstd, BT, "(BT)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  QF_TRY(need("w", w, D, "(D)"));
  QF_TRY(need_opt("c", c, BT, "(BT)"));
  if (c.data) QF_TRY(positive_values("c", c));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_quant(xq.data, F(xsumq), F(rstd), F(x), F(w), F(c), scale, qmax, r0, r1, D, KP, gs, eps);
  });
  return Status::Ok();
}

Status swiglu_quant(I8Span xq, Span xsumq, Span g, Span u, Span m, float scale, int64_t rows, int64_t F_, int64_t KP,
                    int64_t gs, int64_t bits, int64_t block) {
  QF_TRY(check_quant_rows(xq, xsumq, rows, F_, KP, gs, bits, scale));
  if (block != 0 && (!power_of_two(block) || F_ % block != 0))
    return error(Code::InvalidArgument, "Expected 0 or a Hadamard block that is a power of two dividing F = " + num(F_) +
                                            " but received " + num(block));
  QF_TRY(need("g", g, rows * F_, "(rows, F)"));
  QF_TRY(need("u", u, rows * F_, "(rows, F)"));
  QF_TRY(need_opt("m", m, rows, "(rows)"));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  const int64_t slots = scratch_slots();
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * F_), "swiglu_quant"));
  parallel_slots(rows, grain_rows(F_), slots, [&](int64_t s, int64_t r0, int64_t r1) {
    k.swiglu_quant(xq.data, F(xsumq), F(g), F(u), F(m), scale, qmax, block, r0, r1, F_, KP, gs, ws.data() + s * F_);
  });
  return Status::Ok();
}

Status quant_heads(I8Span q, Span x, Span scale, int64_t rows, int64_t H, int64_t hd, int64_t bits) {
  QF_TRY(positive("rows", rows));
  QF_TRY(positive("H", H));
  QF_TRY(positive("hd", hd));
  QF_TRY(need_bits(bits));
  QF_TRY(need_i8("q", q, count({rows, H, hd}), "(rows, H, hd)"));
  QF_TRY(need("x", x, count({rows, H, hd}), "(rows, H, hd)"));
  QF_TRY(need("scale", scale, H, "(H)"));
  QF_TRY(positive_values("scale", scale));
  const EngineKernels& k = engine_kernels();
  const float qmax = fpt::qmax_of((int)bits);
  parallel_for(rows, grain_rows(H * hd), [&](int64_t r0, int64_t r1) { k.quant_heads(q.data, F(x), F(scale), qmax, r0, r1, H, hd); });
  return Status::Ok();
}

Status check_attention_forward_q8(Span out, Span q, I8Span kq, I8Span vq, Span kscale, Span vscale, int64_t B, int64_t T,
                                  int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0) {
  QF_TRY(positive("B", B));
  QF_TRY(positive("T", T));
  QF_TRY(positive("Hq", Hq));
  QF_TRY(positive("Hkv", Hkv));
  QF_TRY(positive("hd", hd));
  QF_TRY(positive("S", S));
  if (Hq % Hkv != 0)
    return error(Code::InvalidArgument, "Expected Hkv dividing Hq but received Hq=" + num(Hq) + ", Hkv=" + num(Hkv));
  if (pos0 < 0 || pos0 + T > S)
    return error(Code::InvalidArgument, "Expected pos0 >= 0 and pos0 + T <= S but received pos0=" + num(pos0) +
                                            ", T=" + num(T) + ", S=" + num(S));
  QF_TRY(need("out", out, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need("q", q, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need_i8("kq", kq, count({B, S, Hkv, hd}), "(B, S, Hkv, hd)"));
  QF_TRY(need_i8("vq", vq, count({B, S, Hkv, hd}), "(B, S, Hkv, hd)"));
  QF_TRY(need("kscale", kscale, Hkv, "(Hkv)"));
  QF_TRY(need("vscale", vscale, Hkv, "(Hkv)"));
  QF_TRY(positive_values("kscale", kscale));
  return positive_values("vscale", vscale);
}

Status attention_forward_q8(Span out, Span q, I8Span kq, I8Span vq, Span kscale, Span vscale, int64_t B, int64_t T,
                            int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0) {
  QF_TRY(check_attention_forward_q8(out, q, kq, vq, kscale, vscale, B, T, Hq, Hkv, hd, S, pos0));
  const int64_t L = pos0 + T, slots = scratch_slots(), per = attention_q8_scratch_floats(L, hd);
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * per), "attention_forward_q8"));
  const EngineKernels& kt = engine_kernels();
  const int64_t items = B * Hq * ((T + kAttnChunk - 1) / kAttnChunk);
  parallel_slots(items, 1, slots, [&](int64_t s, int64_t i0, int64_t i1) {
    kt.attention_forward_q8(F(out), F(q), kq.data, vq.data, F(kscale), F(vscale), i0, i1, T, Hq, Hkv, hd, S, pos0,
                            ws.data() + s * per);
  });
  return Status::Ok();
}

Status check_jsd_forward_backward(const Span& loss, const Span& logits, const Span& tprobs, int64_t BT, int64_t V) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("V", V));
  QF_TRY(need("loss", loss, BT, "(BT)"));
  QF_TRY(need("logits", logits, BT * V, "(BT, V)"));
  return need("tprobs", tprobs, BT * V, "(BT, V)");
}

Status jsd_forward_backward(Span loss, Span logits, Span tprobs, int64_t BT, int64_t V, float scale) {
  QF_TRY(check_jsd_forward_backward(loss, logits, tprobs, BT, V));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) { k.jsd_forward_backward(F(loss), F(logits), F(tprobs), r0, r1, V, scale); });
  return Status::Ok();
}

Status lp_ratio(Span loss, Span dx, Span x, int64_t n, int64_t group, float p, float scale) {
  QF_TRY(positive("n", n));
  QF_TRY(positive("group", group));
  if (n % group != 0) return error(Code::InvalidArgument, "Expected group dividing n but received n=" + num(n) + ", group=" + num(group));
  if (!(p >= 1.f) || !std::isfinite(p)) return error(Code::InvalidArgument, "Expected p >= 1 but received " + fnum(p));
  QF_TRY(need("loss", loss, 1, "(1)"));
  QF_TRY(need_opt("dx", dx, n, "(n)"));
  QF_TRY(need("x", x, n, "(n)"));
  F(loss)[0] += (float)fpt::lp_ratio_acc(F(dx), F(x), n, group, p, scale);
  return Status::Ok();
}

Status lm_head_jsd(Span loss, Span dx, Span dc, Span x, Span c, Span norm_w, Span head, Span tprobs, int64_t BT,
                   int64_t D, int64_t V, float eps, float scale) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  QF_TRY(positive("V", V));
  QF_TRY(need("loss", loss, BT, "(BT)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  QF_TRY(need_opt("c", c, BT, "(BT)"));
  if (c.data) QF_TRY(positive_values("c", c));
  QF_TRY(need("normWeight", norm_w, D, "(D)"));
  QF_TRY(need("head", head, V * D, "(V, D)"));
  QF_TRY(need("tprobs", tprobs, BT * V, "(BT, V)"));
  const bool backward = dx.data != nullptr;
  if (backward) QF_TRY(need("dx", dx, BT * D, "(BT, D)"));
  QF_TRY(need_opt("dc", dc, BT, "(BT)"));
  if (dc.data && !c.data) return error(Code::InvalidArgument, "Expected the carry c together with its gradient dc");
  const int64_t slots = scratch_slots();
  Workspace ws;
  const size_t want = (size_t)(slots * kGemmPackFloats + 2 * BT * D + BT + BT * V + 64);
  QF_TRY(ws.reserve(want, "lm_head_jsd"));
  float* pack = ws.data();
  float* n = pack + slots * kGemmPackFloats;  // (BT, D) normed input
  float* dn = n + BT * D;                     // (BT, D)
  float* rstd = dn + BT * D;                  // (BT)
  float* logits = rstd + BT;                  // (BT, V)
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_scaled_forward(n, rstd, F(x), F(norm_w), F(c), r0, r1, D, eps);
  });
  gemm_run(logits, V, StridedMat{n, D, 1}, StridedMat{F(head), 1, D}, BT, V, D, false, pack, slots);
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) { k.jsd_forward_backward(F(loss), logits, F(tprobs), r0, r1, V, scale); });
  if (!backward) return Status::Ok();
  gemm_run(dn, D, StridedMat{logits, V, 1}, StridedMat{F(head), D, 1}, BT, D, V, false, pack, slots);
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_scaled_backward(F(dx), F(dc), dn, F(x), F(norm_w), rstd, F(c), nullptr, r0, r1, D, eps);
  });
  return Status::Ok();
}

}  // namespace qf
