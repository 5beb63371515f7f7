// The Llama block step (engine.h): layouts, the forward that the runtime model and
// the trainer share, its backward, TEQ's fake quantization and merge, and the LM
// head loss. Buffers of one call come from a Workspace reserved here, on the
// calling thread, before any parallel work.
#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine_fpt.h"
#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/qlinear.h"
#include "quantform/threadpool.h"
#include "op_checks.h"

namespace qf {

const char* const kBlockLinearNames[kBlockLinears] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};

namespace {

std::string num(int64_t v) { return std::to_string(v); }

using engine_check::need;
using engine_check::positive;

float* F(const Span& s) { return static_cast<float*>(s.data); }
int64_t grain_rows(int64_t cols) { return cols >= 8192 ? 1 : 8192 / cols; }

// (rows, cols) of linear j.
void linear_shape(const BlockDims& d, int j, int64_t* rows, int64_t* cols) {
  const int64_t r[kBlockLinears] = {d.Dq(), d.Dkv(), d.Dkv(), d.D, d.F, d.F, d.D};
  const int64_t c[kBlockLinears] = {d.D, d.D, d.D, d.Dq(), d.D, d.D, d.F};
  *rows = r[j];
  *cols = c[j];
}

int64_t max_linear(const BlockDims& d) {
  int64_t m = 0, r, c;
  for (int j = 0; j < kBlockLinears; j++) {
    linear_shape(d, j, &r, &c);
    m = std::max(m, r * c);
  }
  return m;
}

// Effective weights differ from the stored ones: Q(W diag(alpha)), Q(FPTQuant's merge of W) or the
// learned fake quant.
bool has_eff(const BlockDesc& d) { return d.rtn || d.teq.on || fpt::transforms_weights(d.fpt) || d.learned_fq.active(); }

bool is_quantized(const WeightSource& s) { return s.kind == WeightSource::Kind::Quantized; }

// The learned quantizer's spec for a linear with K inputs: the group size capped at K (per-channel
// groups of any size mean one group per row).
QuantSpec fq_spec(const LearnedFakeQuant& fq, int64_t K) {
  QuantSpec s = fq.spec;
  s.group_size = std::min<int64_t>(s.group_size, K);
  s.f16_params = false;
  return s;
}

// Floats of clamped step sizes + zero points the largest linear needs (learned fake quant).
int64_t fq_param_floats(const BlockDesc& d) {
  if (!d.learned_fq.active()) return 0;
  int64_t m = 0, r, c;
  for (int j = 0; j < kBlockLinears; j++) {
    linear_shape(d.dims, j, &r, &c);
    m = std::max(m, 2 * r * qf_num_groups(c, fq_spec(d.learned_fq, c).group_size));
  }
  return m;
}

// Saved activations of one training forward (floats), in order (engine.h).
using SavedLayout = BlockSavedLayout;

SavedLayout saved_layout(const BlockDesc& d) {
  const BlockDims& m = d.dims;
  const int64_t BT = m.BT(), D = m.D, F_ = m.F, Dq = m.Dq(), Dkv = m.Dkv();
  const bool teq = d.teq.on, extra = d.teq.on && d.teq.extra;
  const FptTransforms& fp = d.fpt;
  const bool sn = fp.on && fp.residual_scaling, aq = fp.on && fp.act_bits > 0, kvq = fp.on && fp.kv_bits > 0,
             had = fp.on && fp.hadamard_block > 0;
  SavedLayout L;
  int64_t o = 0;
  auto take = [&o](int64_t n) { const int64_t at = o; o += n; return at; };
  L.x = take(BT * D);                               // (BT, D) block input
  L.c = sn ? take(BT) : L.x;                        // (BT) S_n carry in
  L.rstd1 = take(BT);                               // (BT)
  L.xn1 = take(BT * D);                             // (BT, D) rmsnorm(x) * attn_norm
  L.xs1 = teq || aq ? take(BT * D) : L.xn1;         // (BT, D) the q/k/v input: xn1 / alpha1 (TEQ), quantized (FPT)
  L.q = take(BT * Dq);                              // (B, T, Hq, hd) after RoPE
  L.k = take(BT * Dkv);                             // (B, T, Hkv, hd) after RoPE
  L.v = take(BT * Dkv);                             // (B, T, Hkv, hd)
  L.kr = kvq ? take(BT * Dkv) : L.k;                // (B, T, Hkv, hd) before the KV quantizer
  L.vr = kvq ? take(BT * Dkv) : L.v;
  L.probs = take(m.B * m.Hq * m.T * m.T);           // (B, Hq, T, T)
  L.att = take(BT * Dq);                            // (BT, Dq) attention output
  L.ao = sn ? take(BT * Dq) : L.att;                // (BT, Dq) att / (c r~1) (S_n)
  L.atts = extra || aq ? take(BT * Dq) : L.ao;      // (BT, Dq) the o_proj input
  L.h = take(BT * D);                               // (BT, D) x + attention half
  L.rstd2 = take(BT);                               // (BT)
  L.xn2 = take(BT * D);                             // (BT, D)
  L.xs2 = teq || aq ? take(BT * D) : L.xn2;         // (BT, D) the gate/up input
  L.g = take(BT * F_);                              // (BT, F)
  L.u = take(BT * F_);                              // (BT, F)
  L.a = take(BT * F_);                              // (BT, F) silu(g) * u
  L.ah = sn || had ? take(BT * F_) : L.a;           // (BT, F) Hadamard(a) / (c r~2)
  L.as = extra || aq ? take(BT * F_) : L.ah;        // (BT, F) the down_proj input
  L.eff = has_eff(d) ? take(block_param_count(m)) : 0;  // effective weights, parameter-arena layout
  L.total = o;
  return L;
}

// Pointers to one forward's activations: into the saved buffer (training) or the
// workspace (inference, where x, rstd, probabilities and effective weights are null).
struct Acts {
  float *x, *rstd1, *xn1, *xs1, *q, *k, *v, *probs, *att, *atts, *h, *rstd2, *xn2, *xs2, *g, *u, *a, *as, *eff, *c,
      *kr, *vr, *ao, *ah;
};

Acts acts_in(float* s, const SavedLayout& L) {
  return Acts{s + L.x,   s + L.rstd1, s + L.xn1, s + L.xs1, s + L.q,  s + L.k,    s + L.v,    s + L.probs,
              s + L.att, s + L.atts,  s + L.h,   s + L.rstd2, s + L.xn2, s + L.xs2, s + L.g,  s + L.u,
              s + L.a,   s + L.as,    s + L.eff, s + L.c,   s + L.kr,  s + L.vr,  s + L.ao, s + L.ah};
}

// A bump allocator over a Workspace: sizes are summed first (plan), the workspace
// reserved once, then the same sequence of takes hands out pointers.
class Carve {
 public:
  explicit Carve(float* base) : base_(base) {}
  float* take(int64_t n) {
    float* p = base_ ? base_ + used_ : nullptr;
    used_ += (n + 15) / 16 * 16;  // 64-byte aligned slices
    return p;
  }
  int64_t used() const { return used_; }

 private:
  float* base_;
  int64_t used_ = 0;
};

void widen_bf16(float* dst, const uint16_t* src, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) dst[i] = bf16_to_f32(src[i]);
  });
}

// The f32 values of a norm or linear: the source itself, or widened into `scratch`.
const float* f32_of(const WeightSource& s, int64_t n, float* scratch) {
  if (s.kind == WeightSource::Kind::F32) return static_cast<const float*>(s.data);
  widen_bf16(scratch, static_cast<const uint16_t*>(s.data), n);
  return scratch;
}

// dst (rows, K) = src / scale per column (scale null: copy).
void scale_cols_div(float* dst, const float* src, const float* scale, int64_t rows, int64_t K) {
  parallel_for(rows, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t k = 0; k < K; k++) dst[r * K + k] = src[r * K + k] / scale[k];
  });
}

// ws (N, K) = Q(W . diag(alpha)) (alpha null: W; Q off: no rounding) for linear j; ws may alias W.
// Learned fake quant: Q(W) at the clamped parameters, written into fqp (fq_param_floats).
Status effective_weight(float* ws, const float* W, const float* alpha, int j, int64_t N, int64_t K, const BlockDesc& d,
                        float* fqp) {
  const LearnedFakeQuant& fq = d.learned_fq;
  if (fq.active()) {
    if (!fq.scales[j]) {
      if (ws != W) std::memcpy(ws, W, (size_t)(N * K) * sizeof(float));
      return Status::Ok();
    }
    const QuantSpec spec = fq_spec(fq, K);
    const int64_t NG = N * qf_num_groups(K, spec.group_size);
    float* sc = fqp;
    float* zc = spec.symmetric ? nullptr : fqp + NG;
    learned_fq_params(sc, zc, fq.scales[j], fq.zeros[j], NG, spec);
    return fake_quant_forward(Span{ws, (size_t)(N * K), DType::F32}, Span{(void*)W, (size_t)(N * K), DType::F32},
                              Span{sc, (size_t)NG, DType::F32}, Span{zc, zc ? (size_t)NG : 0, DType::F32}, N, K, spec);
  }
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; n++)
      for (int64_t k = 0; k < K; k++) ws[n * K + k] = alpha ? W[n * K + k] * alpha[k] : W[n * K + k];
  });
  if (!d.rtn) return Status::Ok();
  QuantSpec spec = d.rtn_spec;
  spec.group_size = std::min<int64_t>(spec.group_size, K);
  const int64_t G = qf_num_groups(K, spec.group_size);
  std::vector<uint8_t> codes((size_t)(N * qf_packed_row_bytes(spec.bits, K)));
  std::vector<uint16_t> s16((size_t)(N * G)), z16((size_t)(N * G));
  std::vector<float> s32, z32;
  const DType pd = spec.f16_params ? DType::F16 : DType::F32;
  void* sp = s16.data();
  void* zp = z16.data();
  if (pd == DType::F32) {
    s32.resize((size_t)(N * G));
    z32.resize((size_t)(N * G));
    sp = s32.data();
    zp = z32.data();
  }
  const Span cs{codes.data(), codes.size(), DType::F32}, ss{sp, (size_t)(N * G), pd},
      zs{spec.symmetric ? nullptr : zp, spec.symmetric ? 0 : (size_t)(N * G), pd}, wsp{ws, (size_t)(N * K), DType::F32};
  QF_TRY(quantize(cs, ss, zs, wsp, N, K, spec));
  return dequantize(wsp, cs, ss, zs, N, K, spec);
}

// Backward of v -> Q(v), the RTN fake quant of v = W diag(alpha) with parameters chosen
// from v itself, as the TEQ reference computes it: rounding is straight-through (dv = g
// inside the range, 0 where clamped), the step size s = (max - min) / qmax (symmetric:
// max|v| / (2^(b-1) - 1)) gets the LSQ term ds = sum g (round(v/s) - v/s) (clamped:
// g (bound - z)) and passes it to the group's extreme elements; the zero point is
// rounded, so it carries no gradient. g (N, K) is replaced by dv.
Status rtn_backward(float* g, const float* W, const float* alpha, int64_t N, int64_t K, const QuantSpec& spec_in) {
  QuantSpec spec = spec_in;
  spec.group_size = std::min<int64_t>(spec.group_size, K);
  const int64_t G = qf_num_groups(K, spec.group_size);
  std::vector<float> v((size_t)(N * K)), dv((size_t)(N * K)), ds((size_t)(N * G)), dz((size_t)(N * G));  // (N, K), (N, G)
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; n++)
      for (int64_t k = 0; k < K; k++) v[(size_t)(n * K + k)] = alpha ? W[n * K + k] * alpha[k] : W[n * K + k];
  });
  std::vector<uint8_t> codes((size_t)(N * qf_packed_row_bytes(spec.bits, K)));
  std::vector<uint16_t> sh((size_t)(N * G)), zh((size_t)(N * G));
  const Span cs{codes.data(), codes.size(), DType::F32}, ss{sh.data(), sh.size(), DType::F16},
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
        const float dd = ds[(size_t)(n * G + gi)] / qmax;
        const int64_t k0 = gi * spec.group_size, k1 = std::min(K, k0 + spec.group_size);
        int64_t imax = k0, imin = k0;
        for (int64_t k = k0; k < k1; k++) {
          if (v[(size_t)(n * K + k)] > v[(size_t)(n * K + imax)]) imax = k;
          if (v[(size_t)(n * K + k)] < v[(size_t)(n * K + imin)]) imin = k;
        }
        const float hi = v[(size_t)(n * K + imax)], lo = v[(size_t)(n * K + imin)];
        if (spec.symmetric) {
          // s = max(|lo|, |hi|) / qmax
          if (-lo > hi) dv[(size_t)(n * K + imin)] -= dd;
          else if (hi > 0.f) dv[(size_t)(n * K + imax)] += dd;
        } else {
          // s = (max(hi, 0) - min(lo, 0)) / qmax
          if (hi > 0.f) dv[(size_t)(n * K + imax)] += dd;
          if (lo < 0.f) dv[(size_t)(n * K + imin)] -= dd;
        }
      }
      std::copy(dv.begin() + n * K, dv.begin() + (n + 1) * K, g + n * K);
    }
  });
  return Status::Ok();
}

Status check_sources(const BlockDesc& d, bool training) {
  const BlockDims& m = d.dims;
  for (const WeightSource* s : {&d.attn_norm, &d.ffn_norm}) {
    if (s->kind == WeightSource::Kind::Quantized)
      return error(Code::InvalidArgument, "Expected F32 or BF16 norm weights but received a quantized source");
    if (!s->data) return error(Code::InvalidArgument, "Expected norm weights but received none");
  }
  for (int j = 0; j < kBlockLinears; j++) {
    const WeightSource& s = d.linear[j];
    int64_t rows, cols;
    linear_shape(m, j, &rows, &cols);
    if (s.kind != WeightSource::Kind::Quantized) {
      if (!s.data) return error(Code::InvalidArgument, std::string("Expected weights for ") + kBlockLinearNames[j] + " but received none");
      continue;
    }
    if (!s.canon && !s.prepared)
      return error(Code::InvalidArgument, std::string("Expected a quantized weight for ") + kBlockLinearNames[j] + " but received none");
    const int64_t N = s.prepared ? s.prepared->N : s.canon->N, K = s.prepared ? s.prepared->K : s.canon->K;
    if (N != rows || K != cols)
      return error(Code::ShapeMismatch, std::string("Expected a (") + num(rows) + ", " + num(cols) + ") weight for " +
                                            kBlockLinearNames[j] + " but received (" + num(N) + ", " + num(K) + ")");
    if (has_eff(d))
      return error(Code::InvalidArgument, std::string("Quantized weight sources run as stored, but ") + kBlockLinearNames[j] +
                                              " is quantized in a block with TEQ or fake quantization");
    // E2E-QP: the step sizes train, so they (and the zero points) are the canonical f32 ones
    if (training && (s.prepared || !s.canon || s.canon->scales.dtype != DType::F32 ||
                     (!s.canon->spec.symmetric && s.canon->zeros.dtype != DType::F32)))
      return error(Code::InvalidArgument, std::string("Expected canonical codes with f32 scales and zeros for the trained "
                                                      "quantized weight ") + kBlockLinearNames[j]);
  }
  return Status::Ok();
}

// y (M, N) = x (M, K) . W^T for W (N, K) f32.
void matmul_nt(float* y, const float* x, const float* W, int64_t M, int64_t N, int64_t K, bool acc, float* pack,
               int64_t slots) {
  gemm_run(y, N, StridedMat{x, K, 1}, StridedMat{W, 1, K}, M, N, K, acc, pack, slots);
}
// dx (M, K) [+]= dy (M, N) . W (N, K)
void matmul_nn(float* dx, const float* dy, const float* W, int64_t M, int64_t N, int64_t K, bool acc, float* pack,
               int64_t slots) {
  gemm_run(dx, K, StridedMat{dy, N, 1}, StridedMat{W, K, 1}, M, K, N, acc, pack, slots);
}
// dW (N, K) [+]= dy (M, N)^T . x (M, K)
void matmul_tn(float* dW, const float* dy, const float* x, int64_t M, int64_t N, int64_t K, bool acc, float* pack,
               int64_t slots) {
  gemm_run(dW, K, StridedMat{dy, 1, N}, StridedMat{x, K, 1}, N, K, M, acc, pack, slots);
}

}  // namespace

// ---------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------

BlockLayout block_layout(const BlockDims& d) {
  BlockLayout L;
  int64_t o = 0;
  auto slot = [&o](const char* name, int64_t rows, int64_t cols) {
    const BlockTensorSlot s{name, o, rows, cols};
    o += rows * cols;
    return s;
  };
  int64_t r, c;
  L.attn_norm = slot("attn_norm", 1, d.D);
  for (int j = kWq; j <= kWo; j++) {
    linear_shape(d, j, &r, &c);
    L.linear[j] = slot(kBlockLinearNames[j], r, c);
  }
  L.ffn_norm = slot("ffn_norm", 1, d.D);
  for (int j = kWGate; j <= kWDown; j++) {
    linear_shape(d, j, &r, &c);
    L.linear[j] = slot(kBlockLinearNames[j], r, c);
  }
  L.total = o;
  return L;
}

int64_t block_param_count(const BlockDims& d) { return block_layout(d).total; }

int64_t block_alpha_count(const BlockDesc& d) {
  if (!d.teq.on) return 0;
  return 2 * d.dims.D + (d.teq.extra ? d.dims.Dkv() + d.dims.F : 0);
}

int64_t block_saved_count(const BlockDesc& d) { return saved_layout(d).total; }
BlockSavedLayout block_saved_layout(const BlockDesc& d) { return saved_layout(d); }

Status check_block(const BlockDesc& d) {
  const BlockDims& m = d.dims;
  QF_TRY(positive("B", m.B));
  QF_TRY(positive("T", m.T));
  QF_TRY(positive("D", m.D));
  QF_TRY(positive("F", m.F));
  QF_TRY(positive("Hq", m.Hq));
  QF_TRY(positive("Hkv", m.Hkv));
  QF_TRY(positive("hd", m.hd));
  if (m.Hq % m.Hkv != 0)
    return error(Code::InvalidArgument, "Expected Hkv dividing Hq but received Hq=" + num(m.Hq) + ", Hkv=" + num(m.Hkv));
  if (m.hd % 2 != 0) return error(Code::InvalidArgument, "Expected even hd but received " + num(m.hd));
  if (!(d.eps > 0.f) || !std::isfinite(d.eps))
    return error(Code::InvalidArgument, "Expected positive finite eps but received " + std::to_string(d.eps));
  if (d.teq.extra && !d.teq.on) return error(Code::InvalidArgument, "Expected teq together with teqExtra");
  if (d.rtn) {
    if (!qf_bits_supported(d.rtn_spec.bits))
      return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + num(d.rtn_spec.bits));
    if (d.rtn_spec.group_size <= 0)
      return error(Code::InvalidArgument, "Expected positive groupSize but received " + num(d.rtn_spec.group_size));
  }
  if (d.learned_fq.active()) {
    const QuantSpec& q = d.learned_fq.spec;
    if (!qf_bits_supported(q.bits)) return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + num(q.bits));
    if (q.group_size <= 0) return error(Code::InvalidArgument, "Expected positive groupSize but received " + num(q.group_size));
    if (d.rtn || d.teq.on)
      return error(Code::InvalidArgument, "Expected learned fake quantization (EfficientQAT) without TEQ or RTN fake quantization");
    for (int j = 0; j < kBlockLinears; j++)
      if (d.learned_fq.scales[j] && !q.symmetric && !d.learned_fq.zeros[j])
        return error(Code::InvalidArgument, std::string("Expected zero points for ") + kBlockLinearNames[j] + " (asymmetric)");
  }
  // BT, Dq, Dkv and the arena are formed in int64 from here on: bound them in double
  // first (each dim alone may be anything up to 2^53)
  const double bt = (double)m.B * (double)m.T, dq = (double)m.Hq * (double)m.hd, dkv = (double)m.Hkv * (double)m.hd;
  const double params = 2.0 * (double)m.D + (double)m.D * (2.0 * dq + 2.0 * dkv + 3.0 * (double)m.F);
  if (bt > 2147483648.0 || dq > 2147483648.0 || params > 1099511627776.0)
    return error(Code::ShapeMismatch, "Expected B*T and Hq*hd below 2^31 and a parameter arena below 2^40 floats but received B=" +
                                          num(m.B) + ", T=" + num(m.T) + ", D=" + num(m.D) + ", F=" + num(m.F) + ", Hq=" +
                                          num(m.Hq) + ", Hkv=" + num(m.Hkv) + ", hd=" + num(m.hd));
  QF_TRY(fpt::check(d));
  // (B, Hq, T, T) probabilities and friends: refuse sizes no buffer could hold
  const double saved = (double)m.B * (double)m.Hq * (double)m.T * (double)m.T + 12.0 * bt * ((double)m.D + (double)m.F + dq);
  if (saved > 4.0e9) {
    char floats[32];
    std::snprintf(floats, sizeof floats, "%.3g", saved);
    return error(Code::OutOfMemory, "A block step of B=" + num(m.B) + ", T=" + num(m.T) + " needs " + floats +
                                        " floats of activations, above the 4e9 limit");
  }
  return Status::Ok();
}

Status block_bind_arena(BlockDesc* d, Span arena) {
  const BlockLayout L = block_layout(d->dims);
  if (arena.dtype == DType::F16) return error(Code::DtypeMismatch, "Expected an f32 or bf16 parameter arena but received f16");
  if ((int64_t)arena.len != L.total)
    return error(Code::ShapeMismatch, "Expected " + num(L.total) + " elements for the block parameter arena but received " +
                                          num((int64_t)arena.len));
  const WeightSource::Kind kind = arena.dtype == DType::BF16 ? WeightSource::Kind::BF16 : WeightSource::Kind::F32;
  const size_t esize = dtype_size(arena.dtype);
  auto at = [&](const BlockTensorSlot& s) {
    WeightSource w;
    w.kind = kind;
    w.data = static_cast<const uint8_t*>(arena.data) + (size_t)s.offset * esize;
    return w;
  };
  d->attn_norm = at(L.attn_norm);
  d->ffn_norm = at(L.ffn_norm);
  for (int j = 0; j < kBlockLinears; j++) d->linear[j] = at(L.linear[j]);
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

Status block_forward(Span out, Span saved, Span x, const BlockDesc& d, const KvCache* cache, Workspace* ws) {
  QF_TRY(check_block(d));
  const bool training = saved.data != nullptr;
  if (training && cache) return error(Code::InvalidArgument, "Expected saved activations or a KV cache, not both");
  QF_TRY(check_sources(d, training));
  const BlockDims& m = d.dims;
  const int64_t B = m.B, T = m.T, BT = m.BT(), D = m.D, F_ = m.F, Dq = m.Dq(), Dkv = m.Dkv(), hd = m.hd;
  QF_TRY(need("out", out, BT * D, "(BT, D)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  const SavedLayout SL = saved_layout(d);
  if (training) QF_TRY(need("saved", saved, SL.total, "(block_saved_count)"));
  // FPTQuant: S_n carry, static activation / KV quantizers, online Hadamard (engine.h FptTransforms)
  const FptTransforms& fp = d.fpt;
  const bool sn = fp.on && fp.residual_scaling, aq = fp.on && fp.act_bits > 0, kvq = fp.on && fp.kv_bits > 0;
  const int64_t hb = fp.on ? fp.hadamard_block : 0;
  if (sn && !fp.c_out) return error(Code::InvalidArgument, "Expected an output buffer (BT) for the S_n carry c");
  const bool qcache = cache && kvq;  // int8 KV cache
  const int64_t pos0 = cache ? cache->pos0 : 0, S = cache ? cache->S : T, L = pos0 + T;
  if (cache && (pos0 < 0 || L > S || (qcache ? !cache->kq || !cache->vq : !cache->k || !cache->v)))
    return error(Code::InvalidArgument, std::string("Expected a ") + (qcache ? "quantized " : "") +
                                            "KV cache with pos0 + T <= S but received pos0=" + num(pos0) + ", T=" + num(T) +
                                            ", S=" + num(S));
  if (!d.rope_cos || !d.rope_sin || d.rope_len < L)
    return error(Code::InvalidArgument, "Expected RoPE tables covering positions [0, " + num(L) + ") but received " +
                                            num(d.rope_len) + " positions");
  const int64_t NA = block_alpha_count(d);
  if (d.teq.on) {
    if (!d.teq.alpha) return error(Code::InvalidArgument, "Expected TEQ scales alpha but received none");
    for (int64_t i = 0; i < NA; i++)
      if (!(d.teq.alpha[i] > 0.f))
        return error(Code::InvalidArgument, "Expected positive alpha but alpha[" + num(i) + "] is " + std::to_string(d.teq.alpha[i]));
  }
  fpt::Prep prep;
  if (fp.on) QF_TRY(fpt::prepare(&prep, m, fp));
  // The integer path (FPTQuant inference): INT4 weights in the kernels' layout, activations quantized
  // with their static scales in the epilogue of the op that produces them, int8 x int4 GEMMs. Training
  // on packed weights (E2E-QP of an FPTQuant model) fake-quantizes the activations instead, on the
  // dequant-matmul, which is what the integer path computes up to its int32 sums' rounding.
  int n_quantized = 0;
  for (const WeightSource& w : d.linear) n_quantized += w.kind == WeightSource::Kind::Quantized;
  const bool ints = aq && n_quantized > 0 && !training;
  if (ints)
    for (int j = 0; j < kBlockLinears; j++)
      if (d.linear[j].kind != WeightSource::Kind::Quantized || !d.linear[j].prepared)
        return error(Code::Unsupported, std::string("Static ") + std::to_string(fp.act_bits) +
                                            "-bit activations run on INT4 weights in the int8 kernels' layout (group size a "
                                            "multiple of 8 or one group per row), but " + kBlockLinearNames[j] + " is " +
                                            (d.linear[j].kind == WeightSource::Kind::Quantized ? "in another format" : "not quantized"));
  if (ints)
    for (const auto& pr : {std::make_pair(kWk, kWq), std::make_pair(kWv, kWq), std::make_pair(kWUp, kWGate)})
      if (d.linear[pr.first].prepared->group_size != d.linear[pr.second].prepared->group_size)
        return error(Code::Unsupported, std::string("Linears that share an input share its quantized codes: ") +
                                            kBlockLinearNames[pr.first] + " and " + kBlockLinearNames[pr.second] +
                                            " need one group size but have " + num(d.linear[pr.first].prepared->group_size) +
                                            " and " + num(d.linear[pr.second].prepared->group_size));
  const bool bf16 = d.attn_norm.kind == WeightSource::Kind::BF16 || d.ffn_norm.kind == WeightSource::Kind::BF16 ||
                    std::any_of(d.linear, d.linear + kBlockLinears,
                                [](const WeightSource& w) { return w.kind == WeightSource::Kind::BF16; });
  const bool extra = d.teq.on && d.teq.extra;
  const bool fw = fpt::transforms_weights(fp);
  const int64_t slots = scratch_slots();
  const int64_t KPmax = (std::max(std::max(D, Dq), F_) + 7) / 8 * 8;
  int64_t Gmax = 1;
  if (ints)
    for (const WeightSource& w : d.linear) Gmax = std::max(Gmax, w.prepared->G);
  const int64_t per_slot = std::max(std::max(kGemmPackFloats, qcache ? attention_q8_scratch_floats(L, hd) : attention_scratch_floats(L)),
                                    ints ? (matmul_int8_run_scratch_bytes(BT, KPmax) + 3) / 4 : 0);

  // Workspace: slot scratch, widened weights and, without a saved buffer, the activations
  // (the saved layout minus x, rstd, probabilities and effective weights; a overwrites g; the
  // FPTQuant quantizers and scalings work in place).
  Acts A;
  float *pack, *norms, *wide, *wraw, *ao, *fqp, *cb, *c2, *mul, *xsv, *xsum;
  int8_t* xq = nullptr;
  auto carve = [&](Carve& c) {
    pack = c.take(slots * per_slot);
    norms = c.take(bf16 ? 2 * D : 0);                                      // (2, D) widened norms
    wide = c.take(bf16 || (!training && has_eff(d)) ? max_linear(m) : 0);  // (N, K) one linear at a time
    wraw = c.take(bf16 && fw && !training ? max_linear(m) : 0);            // (N, K) its widened stored weight
    ao = c.take(extra ? Dq : 0);                                           // (Dq) expanded alpha_v
    fqp = c.take(fq_param_floats(d));                                      // (2, N, G) clamped s', z' of one linear
    cb = c.take(sn && !training ? BT : 0);                                 // (BT) S_n carry in (training: saved)
    c2 = c.take(sn ? BT : 0);                                              // (BT) carry after the attention half
    mul = c.take(sn ? BT : 0);                                             // (BT) per-token input scale of o / down
    xsv = c.take(ints ? BT : 0);                                           // (BT) the static scale, per row
    xsum = c.take(ints ? BT * Gmax : 0);                                   // (BT, G) group sums of the codes
    xq = reinterpret_cast<int8_t*>(c.take(ints ? (BT * KPmax + 3) / 4 : 0));  // (BT, KP) int8 codes
    if (training) {
      A = acts_in(F(saved), SL);
      return;
    }
    A = Acts{};
    A.rstd1 = sn || ints ? c.take(BT) : nullptr;
    A.rstd2 = sn || ints ? c.take(BT) : nullptr;
    A.xn1 = ints ? nullptr : c.take(BT * D);
    A.xs1 = d.teq.on ? c.take(BT * D) : A.xn1;
    A.q = c.take(BT * Dq);
    A.k = c.take(BT * Dkv);
    A.v = c.take(BT * Dkv);
    A.kr = A.k;
    A.vr = A.v;
    A.att = c.take(BT * Dq);
    A.ao = A.att;
    A.atts = extra ? c.take(BT * Dq) : A.ao;
    A.h = c.take(BT * D);
    A.xn2 = ints ? nullptr : c.take(BT * D);
    A.xs2 = d.teq.on ? c.take(BT * D) : A.xn2;
    A.g = c.take(BT * F_);
    A.u = c.take(BT * F_);
    A.a = A.g;
    A.ah = A.a;
    A.as = extra ? c.take(BT * F_) : A.ah;
    A.c = cb;
  };
  {
    Carve plan(nullptr);
    carve(plan);
    QF_TRY(ws->reserve((size_t)plan.used(), "block_forward"));
  }
  Carve c(ws->data());
  carve(c);

  const float* g1 = f32_of(d.attn_norm, D, norms);
  const float* g2 = f32_of(d.ffn_norm, D, norms + D);
  const float* a1 = d.teq.on ? d.teq.alpha : nullptr;
  const float* a2 = d.teq.on ? d.teq.alpha + D : nullptr;
  const float* ad = extra ? d.teq.alpha + 2 * D + Dkv : nullptr;
  if (extra) QF_TRY(teq_expand_v_scales(Span{ao, (size_t)Dq, DType::F32}, Span{(void*)(d.teq.alpha + 2 * D), (size_t)Dkv, DType::F32},
                                        m.Hq, m.Hkv, hd));
  const float* aop = extra ? ao : nullptr;
  const float* alpha_in[kBlockLinears] = {a1, a1, a1, aop, a2, a2, ad};
  const BlockLayout PL = block_layout(m);
  double lp = 0;  // FPTQuant's local outlier penalty (training)
  const bool lp_on = training && fp.on && (fp.lp_act > 0.f || fp.lp_weight > 0.f);

  // Effective weights: training computes all seven up front into the saved buffer (the
  // backward reads them); otherwise one at a time into `wide` just before its GEMM.
  if (training && has_eff(d)) {
    for (int j = 0; j < kBlockLinears; j++) {
      int64_t rows, cols;
      linear_shape(m, j, &rows, &cols);
      float* e = A.eff + PL.linear[j].offset;
      const float* w = f32_of(d.linear[j], rows * cols, wide);
      if (fw) {
        fpt::apply_linear(j, e, w, prep, pack, slots);  // the merge, as fpt_merge applies it
        if (lp_on && fp.lp_weight > 0.f) lp += fpt::lp_ratio_acc(nullptr, e, rows * cols, cols, fp.lp_p, fp.lp_weight);
        w = e;
      }
      QF_TRY(effective_weight(e, w, alpha_in[j], j, rows, cols, d, fqp));
    }
  }
  // y (BT, rows) = xin (BT, cols) . W_j^T
  auto linear = [&](int j, float* y, const float* xin) -> Status {
    int64_t rows, cols;
    linear_shape(m, j, &rows, &cols);
    const WeightSource& src = d.linear[j];
    if (src.kind == WeightSource::Kind::Quantized)
      return dequant_matmul(Span{y, (size_t)(BT * rows), DType::F32}, Span{(void*)xin, (size_t)(BT * cols), DType::F32},
                            BT, src.canon, src.prepared, d.accuracy);
    const float* w;
    if (training && has_eff(d)) {
      w = A.eff + PL.linear[j].offset;
    } else if (fw) {
      // merged out of place into `wide` (bf16: from its widened copy), then fake-quantized there
      fpt::apply_linear(j, wide, f32_of(src, rows * cols, wraw), prep, pack, slots);
      QF_TRY(effective_weight(wide, wide, nullptr, j, rows, cols, d, fqp));
      w = wide;
    } else if (has_eff(d)) {
      // bf16: widened into `wide`, then scaled and fake-quantized there in place
      QF_TRY(effective_weight(wide, f32_of(src, rows * cols, wide), alpha_in[j], j, rows, cols, d, fqp));
      w = wide;
    } else {
      w = f32_of(src, rows * cols, wide);
    }
    matmul_nt(y, xin, w, BT, rows, cols, false, pack, slots);
    return Status::Ok();
  };
  // y (BT, rows) = (codes in xq, scale s) . W_j^T on the int8 kernels
  auto linear_q = [&](int j, float* y, float s) {
    std::fill(xsv, xsv + BT, s);
    matmul_int8_prequantized(y, xq, xsv, xsum, BT, *d.linear[j].prepared, reinterpret_cast<uint8_t*>(pack));
  };
  const EngineKernels& k = engine_kernels();
  const float qkv = kvq ? fpt::qmax_of(fp.kv_bits) : 0.f;
  float qa[FptTransforms::kActInputs] = {};  // per input (bits_at)
  for (int i = 0; i < FptTransforms::kActInputs; i++) qa[i] = aq ? fpt::qmax_of(fp.bits_at(i)) : 0.f;
  // out = FQ(x) over n elements with one scale (or one per kv head: inner hd, nscale Hkv)
  auto fake_quant = [&](float* o, const float* xi, int64_t n, const float* sc, int64_t nscale, int64_t inner, float qmax) {
    parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) { k.act_fake_quant_forward(o, xi, sc, nscale, inner, qmax, i0, i1); });
  };
  auto lp_act = [&](const float* v, int64_t n) {
    if (lp_on && fp.lp_act > 0.f) lp += fpt::lp_ratio_acc(nullptr, v, n, n, fp.lp_p, fp.lp_act);
  };
  std::vector<int32_t> pos((size_t)BT);  // (B, T) positions pos0 + t
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) pos[(size_t)(b * T + t)] = (int32_t)(pos0 + t);

  const float* xin = F(x);
  float* xs = training ? A.x : const_cast<float*>(xin);
  if (training) std::memcpy(xs, xin, (size_t)(BT * D) * sizeof(float));
  const float* cin = nullptr;  // (BT) S_n carry
  if (sn) {
    if (fp.c_in) std::memcpy(A.c, fp.c_in, (size_t)BT * sizeof(float));
    else std::fill(A.c, A.c + BT, 1.f);
    for (int64_t r = 0; r < BT; r++)
      if (!(A.c[r] > 0.f) || !std::isfinite(A.c[r]))
        return error(Code::InvalidArgument, "Expected a positive finite S_n carry but c[" + num(r) + "] is " + std::to_string(A.c[r]));
    cin = A.c;
  }
  // ---- attention half ----
  float* rstd1 = A.rstd1;
  float* xn1 = A.xn1;
  if (ints) {
    const PreparedInt4& wq = *d.linear[kWq].prepared;
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      k.rmsnorm_quant(xq, xsum, rstd1, xs, g1, cin, prep.act[FptTransforms::kActQkv], qa[FptTransforms::kActQkv], r0, r1, D,
                      wq.KP, wq.group_size, d.eps);
    });
  } else if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_scaled_forward(xn1, rstd1, xs, g1, cin, r0, r1, D, d.eps); });
  } else {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_forward(xn1, rstd1, xs, g1, r0, r1, D, d.eps); });
  }
  float* xs1 = A.xs1;
  if (a1) scale_cols_div(xs1, xn1, a1, BT, D);
  if (aq && !ints) {
    lp_act(xn1, BT * D);
    fake_quant(xs1, xn1, BT * D, &prep.act[FptTransforms::kActQkv], 1, 1, qa[FptTransforms::kActQkv]);
  }
  float* q = A.q;
  float* kk = A.kr;
  float* vv = A.vr;
  if (ints) {
    const float s = prep.act[FptTransforms::kActQkv];
    linear_q(kWq, q, s);
    linear_q(kWk, kk, s);
    linear_q(kWv, vv, s);
  } else {
    QF_TRY(linear(kWq, q, xs1));
    QF_TRY(linear(kWk, kk, xs1));
    QF_TRY(linear(kWv, vv, xs1));
  }
  parallel_for(BT, grain_rows(Dq), [&](int64_t r0, int64_t r1) {
    k.rope(q, pos.data(), d.rope_cos, d.rope_sin, r0, r1, m.Hq, hd, false);
    k.rope(kk, pos.data(), d.rope_cos, d.rope_sin, r0, r1, m.Hkv, hd, false);
  });
  const float* ksc = kvq ? prep.kv.data() : nullptr;  // (Hkv) key scales, then (Hkv) value scales
  const float* kc = kk;
  const float* vc = vv;
  if (kvq && !qcache) {
    lp_act(kk, BT * Dkv);
    lp_act(vv, BT * Dkv);
    fake_quant(A.k, kk, BT * Dkv, ksc, m.Hkv, hd, qkv);
    fake_quant(A.v, vv, BT * Dkv, ksc + m.Hkv, m.Hkv, hd, qkv);
    kc = A.k;
    vc = A.v;
  }
  if (qcache) {
    for (int64_t b = 0; b < B; b++) {
      int8_t* kd = cache->kq + (b * S + pos0) * Dkv;
      int8_t* vd = cache->vq + (b * S + pos0) * Dkv;
      const float* ks = kk + b * T * Dkv;
      const float* vs = vv + b * T * Dkv;
      parallel_for(T, grain_rows(Dkv), [&](int64_t r0, int64_t r1) {
        k.quant_heads(kd, ks, ksc, qkv, r0, r1, m.Hkv, hd);
        k.quant_heads(vd, vs, ksc + m.Hkv, qkv, r0, r1, m.Hkv, hd);
      });
    }
  } else if (cache) {
    for (int64_t b = 0; b < B; b++) {
      std::memcpy(cache->k + (b * S + pos0) * Dkv, kc + b * T * Dkv, (size_t)(T * Dkv) * sizeof(float));
      std::memcpy(cache->v + (b * S + pos0) * Dkv, vc + b * T * Dkv, (size_t)(T * Dkv) * sizeof(float));
    }
    kc = cache->k;
    vc = cache->v;
  }
  float* att = A.att;
  float* probs = A.probs;
  const int64_t items = B * m.Hq * ((T + kAttnChunk - 1) / kAttnChunk);
  if (qcache)
    parallel_slots(items, 1, slots, [&](int64_t sl, int64_t i0, int64_t i1) {
      k.attention_forward_q8(att, q, cache->kq, cache->vq, ksc, ksc + m.Hkv, i0, i1, T, m.Hq, m.Hkv, hd, S, pos0,
                             pack + sl * per_slot);
    });
  else
    parallel_slots(items, 1, slots, [&](int64_t sl, int64_t i0, int64_t i1) {
      k.attention_forward(att, probs, q, kc, vc, i0, i1, T, m.Hq, m.Hkv, hd, S, pos0, pack + sl * per_slot);
    });
  // S_n: o_proj reads att / (c r~1) = att * rstd1 / c
  if (sn)
    for (int64_t r = 0; r < BT; r++) mul[r] = rstd1[r] / cin[r];
  float* aoo = A.ao;
  if (sn && !ints)
    parallel_for(BT, grain_rows(Dq), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < Dq; i++) aoo[r * Dq + i] = att[r * Dq + i] * mul[r];
    });
  float* atts = A.atts;
  if (aop) scale_cols_div(atts, att, aop, BT, Dq);
  float* h = A.h;
  if (ints) {
    const PreparedInt4& wo = *d.linear[kWo].prepared;
    parallel_for(BT, grain_rows(Dq), [&](int64_t r0, int64_t r1) {
      k.act_quant_rows(xq, xsum, att, sn ? mul : nullptr, prep.act[FptTransforms::kActO], qa[FptTransforms::kActO], r0, r1, Dq,
                       wo.KP, wo.group_size);
    });
    linear_q(kWo, h, prep.act[FptTransforms::kActO]);
  } else {
    if (aq) {
      lp_act(aoo, BT * Dq);
      fake_quant(atts, aoo, BT * Dq, &prep.act[FptTransforms::kActO], 1, 1, qa[FptTransforms::kActO]);
    }
    QF_TRY(linear(kWo, h, atts));
  }
  float* cmid = nullptr;  // (BT) carry after the attention half
  if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.residual_scaled_forward(h, xs, rstd1, h, r0, r1, D); });
    for (int64_t r = 0; r < BT; r++) c2[r] = cin[r] / rstd1[r];
    cmid = c2;
  } else {
    parallel_for(BT * D, 1 << 14, [&](int64_t i0, int64_t i1) { k.residual_forward(h, h, xs, i0, i1); });
  }
  // ---- MLP half ----
  float* rstd2 = A.rstd2;
  float* xn2 = A.xn2;
  if (ints) {
    const PreparedInt4& wg = *d.linear[kWGate].prepared;
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      k.rmsnorm_quant(xq, xsum, rstd2, h, g2, cmid, prep.act[FptTransforms::kActGateUp], qa[FptTransforms::kActGateUp], r0, r1,
                      D, wg.KP, wg.group_size, d.eps);
    });
  } else if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_scaled_forward(xn2, rstd2, h, g2, cmid, r0, r1, D, d.eps); });
  } else {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_forward(xn2, rstd2, h, g2, r0, r1, D, d.eps); });
  }
  float* xs2 = A.xs2;
  if (a2) scale_cols_div(xs2, xn2, a2, BT, D);
  if (aq && !ints) {
    lp_act(xn2, BT * D);
    fake_quant(xs2, xn2, BT * D, &prep.act[FptTransforms::kActGateUp], 1, 1, qa[FptTransforms::kActGateUp]);
  }
  float* gg = A.g;
  float* uu = A.u;
  if (ints) {
    const float s = prep.act[FptTransforms::kActGateUp];
    linear_q(kWGate, gg, s);
    linear_q(kWUp, uu, s);
  } else {
    QF_TRY(linear(kWGate, gg, xs2));
    QF_TRY(linear(kWUp, uu, xs2));
  }
  if (sn)
    for (int64_t r = 0; r < BT; r++) mul[r] = rstd2[r] / cmid[r];
  float* o = F(out);  // may alias x: x is not read after the residual above
  if (ints) {
    const PreparedInt4& wd = *d.linear[kWDown].prepared;
    parallel_slots(BT, grain_rows(F_), slots, [&](int64_t sl, int64_t r0, int64_t r1) {
      k.swiglu_quant(xq, xsum, gg, uu, sn ? mul : nullptr, prep.act[FptTransforms::kActDown], qa[FptTransforms::kActDown], hb, r0, r1, F_, wd.KP,
                     wd.group_size, pack + sl * per_slot);
    });
    linear_q(kWDown, o, prep.act[FptTransforms::kActDown]);
  } else {
    float* aa = A.a;
    parallel_for(BT * F_, 1 << 14, [&](int64_t i0, int64_t i1) { k.swiglu_forward(aa, gg, uu, i0, i1); });
    float* ah = A.ah;
    if (ah != aa) std::memcpy(ah, aa, (size_t)(BT * F_) * sizeof(float));
    if (hb > 0) parallel_for(BT, grain_rows(F_), [&](int64_t r0, int64_t r1) { k.fwht(ah, r0, r1, F_, hb); });
    if (sn)
      parallel_for(BT, grain_rows(F_), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++)
          for (int64_t i = 0; i < F_; i++) ah[r * F_ + i] *= mul[r];
      });
    float* as = A.as;
    if (ad) scale_cols_div(as, aa, ad, BT, F_);
    if (aq) {
      lp_act(ah, BT * F_);
      fake_quant(as, ah, BT * F_, &prep.act[FptTransforms::kActDown], 1, 1, qa[FptTransforms::kActDown]);
    }
    QF_TRY(linear(kWDown, o, as));
  }
  if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.residual_scaled_forward(o, h, rstd2, o, r0, r1, D); });
    for (int64_t r = 0; r < BT; r++) fp.c_out[r] = cmid[r] / rstd2[r];
  } else {
    parallel_for(BT * D, 1 << 14, [&](int64_t i0, int64_t i1) { k.residual_forward(o, o, h, i0, i1); });
  }
  if (lp_on && fp.lp_out) fp.lp_out[0] = (float)lp;
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

Status block_backward(Span dx_s, const BlockGrads& grads, Span dout_s, Span saved, const BlockDesc& d, Workspace* ws) {
  QF_TRY(check_block(d));
  QF_TRY(check_sources(d, true));
  const BlockDims& m = d.dims;
  const int64_t BT = m.BT(), T = m.T, D = m.D, F_ = m.F, Dq = m.Dq(), Dkv = m.Dkv(), hd = m.hd;
  const SavedLayout SL = saved_layout(d);
  QF_TRY(need("dx", dx_s, BT * D, "(BT, D)"));
  QF_TRY(need("dout", dout_s, BT * D, "(BT, D)"));
  QF_TRY(need("saved", saved, SL.total, "(block_saved_count)"));
  if (!d.rope_cos || !d.rope_sin || d.rope_len < T)
    return error(Code::InvalidArgument, "Expected RoPE tables covering positions [0, " + num(T) + ") but received " +
                                            num(d.rope_len) + " positions");
  if (d.teq.on && (!d.teq.alpha || !grads.alpha))
    return error(Code::InvalidArgument, "Expected TEQ scales alpha and their gradient dalpha but received none");
  const FptTransforms& fp = d.fpt;
  const bool sn = fp.on && fp.residual_scaling, aq = fp.on && fp.act_bits > 0, kvq = fp.on && fp.kv_bits > 0;
  const int64_t hb = fp.on ? fp.hadamard_block : 0;
  const bool fw = fpt::transforms_weights(fp);
  if (fp.on && !grads.fpt) return error(Code::InvalidArgument, "Expected a gradient buffer for the FPTQuant parameters but received none");
  if (sn && !grads.dc) return error(Code::InvalidArgument, "Expected dc (BT), the gradient of the S_n carry, but received none");
  if (fw && grads.params)
    return error(Code::InvalidArgument, "FPTQuant trains its transforms with the weights fixed: expected no weight gradient buffer");
  fpt::Prep prep;
  if (fp.on) QF_TRY(fpt::prepare(&prep, m, fp));
  const bool lp_on = fp.on && (fp.lp_act > 0.f || fp.lp_weight > 0.f);
  const Acts A = acts_in(F(saved), SL);
  const BlockLayout PL = block_layout(m);
  const bool extra = d.teq.on && d.teq.extra, eff = has_eff(d);
  const bool bf16 = d.attn_norm.kind == WeightSource::Kind::BF16 || d.ffn_norm.kind == WeightSource::Kind::BF16 ||
                    std::any_of(d.linear, d.linear + kBlockLinears,
                                [](const WeightSource& w) { return w.kind == WeightSource::Kind::BF16; });
  const int64_t slots = scratch_slots(), rep = m.Hq / m.Hkv;
  const int64_t per_slot = std::max(kGemmPackFloats, attention_backward_scratch_floats(T, rep));
  const int64_t maxw = max_linear(m);
  const bool lfq = d.learned_fq.active();
  const bool packed = std::any_of(d.linear, d.linear + kBlockLinears, [](const WeightSource& w) { return is_quantized(w); });

  float *pack, *norms, *wide, *wgrad, *fqp, *qdx, *ao, *dao, *da, *das, *dg, *du, *dn, *dnp, *dh, *datt, *datts, *dq, *dk, *dv;
  float *deff, *wm, *dco, *dc2, *dci, *drs1, *drs2;
  auto carve = [&](Carve& c) {
    pack = c.take(slots * per_slot);
    norms = c.take(bf16 ? 2 * D : 0);          // (2, D) widened norms
    wide = c.take(bf16 ? maxw : 0);            // (N, K) one linear's widened weights at a time
    wgrad = c.take(d.teq.on || lfq ? maxw : 0);  // (N, K) gradient of an effective weight
    fqp = c.take(fq_param_floats(d));          // (2, N, G) clamped s', z' of one linear
    qdx = c.take(packed ? BT * std::max(D, F_) : 0);  // (BT, K) a packed linear's input gradient before it is added
    ao = c.take(extra ? Dq : 0);               // (Dq) expanded alpha_v
    dao = c.take(extra ? Dq : 0);              // (Dq) its gradient
    da = c.take(BT * F_);                      // (BT, F)
    das = c.take(extra ? BT * F_ : 0);         // (BT, F) gradient of a / alpha_d
    dg = c.take(BT * F_);
    du = c.take(BT * F_);
    dn = c.take(BT * D);                       // (BT, D)
    dnp = c.take(BT * D);
    dh = c.take(BT * D);
    datt = c.take(BT * Dq);                    // (BT, Dq)
    datts = c.take(extra ? BT * Dq : 0);
    dq = c.take(BT * Dq);
    dk = c.take(BT * Dkv);                     // (BT, Dkv)
    dv = c.take(BT * Dkv);
    deff = c.take(fw ? block_param_count(m) : 0);  // gradients of the effective (merged) weights, arena layout
    wm = c.take(fw ? maxw : 0);                    // (N, K) one merged weight, recomputed
    dco = c.take(sn ? BT : 0);                     // (BT) dL/dc_out
    dc2 = c.take(sn ? BT : 0);                     // (BT) dL/dc after the attention half
    dci = c.take(sn ? BT : 0);                     // (BT) dL/dc_in
    drs1 = c.take(sn ? BT : 0);                    // (BT) outside gradients of rstd1, rstd2
    drs2 = c.take(sn ? BT : 0);
  };
  {
    Carve plan(nullptr);
    carve(plan);
    QF_TRY(ws->reserve((size_t)plan.used(), "block_backward"));
  }
  Carve cv(ws->data());
  carve(cv);

  const float* g1 = f32_of(d.attn_norm, D, norms);
  const float* g2 = f32_of(d.ffn_norm, D, norms + D);
  const float* a1 = d.teq.on ? d.teq.alpha : nullptr;
  const float* a2 = d.teq.on ? d.teq.alpha + D : nullptr;
  const float* ad = extra ? d.teq.alpha + 2 * D + Dkv : nullptr;
  if (extra) {
    QF_TRY(teq_expand_v_scales(Span{ao, (size_t)Dq, DType::F32}, Span{(void*)(d.teq.alpha + 2 * D), (size_t)Dkv, DType::F32},
                               m.Hq, m.Hkv, hd));
    std::fill(dao, dao + Dq, 0.f);
  }
  const float* aop = extra ? ao : nullptr;
  float* gr = grads.params;
  float* dalpha = grads.alpha;
  const float* dout = F(dout_s);
  float* dx = F(dx_s);
  const EngineKernels& k = engine_kernels();

  // The weights the forward multiplied by: effective (saved) or stored (widened when bf16).
  int widened = -1;  // the linear `wide` holds
  auto raw = [&](int j) -> const float* {
    int64_t rows, cols;
    linear_shape(m, j, &rows, &cols);
    if (d.linear[j].kind == WeightSource::Kind::F32) return static_cast<const float*>(d.linear[j].data);
    if (widened != j) f32_of(d.linear[j], rows * cols, wide);
    widened = j;
    return wide;
  };
  auto used = [&](int j) { return eff ? A.eff + PL.linear[j].offset : raw(j); };
  Status status;
  // dxo (BT, K) [+]= dy (BT, N) . W_j, W_j the weight the forward used; a packed one is decoded a
  // tile at a time by the quantized-linear backward (it overwrites, so a sum goes through qdx).
  auto input_grad = [&](int j, float* dxo, const float* dy, bool acc) {
    int64_t N, K;
    linear_shape(m, j, &N, &K);
    if (!is_quantized(d.linear[j])) {
      matmul_nn(dxo, dy, used(j), BT, N, K, acc, pack, slots);
      return;
    }
    if (!status.ok()) return;
    const CanonicalWeight& cw = *d.linear[j].canon;
    float* to = acc ? qdx : dxo;
    status = quant_linear_backward(Span{to, (size_t)(BT * K), DType::F32}, Span{nullptr, 0, DType::F32},
                                   Span{(void*)dy, (size_t)(BT * N), DType::F32}, Span{nullptr, 0, DType::F32}, BT,
                                   cw.codes, cw.scales, cw.zeros, N, K, cw.spec);
    if (acc && status.ok())
      parallel_for(BT * K, 1 << 14, [&](int64_t i0, int64_t i1) { k.residual_forward(dxo, dxo, qdx, i0, i1); });
  };
  // dW_j from dy (BT, N) and the linear's input xin (BT, K). Without a scale the
  // effective weight's gradient passes straight to W (accumulated into grads); with one,
  // it goes through the fake quant's backward, then to the scale and (times alpha) to W.
  // FPTQuant keeps it (deff) for the merge's backward at the end. Learned fake quant: dW_q through
  // learned_fq_backward to W, s and z; a packed linear: only its step sizes, from the codes.
  auto weight_grad = [&](int j, const float* dy, const float* xin, const float* alpha, float* dalpha_grp) {
    int64_t N, K;
    linear_shape(m, j, &N, &K);
    const int64_t off = PL.linear[j].offset;
    if (is_quantized(d.linear[j])) {
      if (!grads.fq_scales[j] || !status.ok()) return;
      const CanonicalWeight& cw = *d.linear[j].canon;
      const int64_t NG = N * qf_num_groups(K, cw.spec.group_size);
      status = quant_linear_backward(Span{nullptr, 0, DType::F32}, Span{grads.fq_scales[j], (size_t)NG, DType::F32},
                                     Span{(void*)dy, (size_t)(BT * N), DType::F32}, Span{(void*)xin, (size_t)(BT * K), DType::F32},
                                     BT, cw.codes, cw.scales, cw.zeros, N, K, cw.spec);
      return;
    }
    if (fw) {
      matmul_tn(deff + off, dy, xin, BT, N, K, false, pack, slots);
      return;
    }
    if (lfq && d.learned_fq.scales[j]) {
      matmul_tn(wgrad, dy, xin, BT, N, K, false, pack, slots);  // d W_q (N, K)
      const QuantSpec spec = fq_spec(d.learned_fq, K);
      const int64_t NG = N * qf_num_groups(K, spec.group_size);
      float* sc = fqp;
      float* zc = spec.symmetric ? nullptr : fqp + NG;
      learned_fq_params(sc, zc, d.learned_fq.scales[j], d.learned_fq.zeros[j], NG, spec);
      const float* W = raw(j);
      float* dw = gr ? gr + off : nullptr;
      float* ds = grads.fq_scales[j];
      float* dz = spec.symmetric ? nullptr : grads.fq_zeros[j];
      parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
        k.learned_fq_backward(dw, ds, dz, wgrad, W, sc, zc, r0, r1, K, spec);
      });
      return;
    }
    if (!alpha) {
      if (gr) matmul_tn(gr + off, dy, xin, BT, N, K, true, pack, slots);
      return;
    }
    matmul_tn(wgrad, dy, xin, BT, N, K, false, pack, slots);  // d Q(W diag a) (N, K)
    const float* W = raw(j);
    if (d.rtn && status.ok()) status = rtn_backward(wgrad, W, alpha, N, K, d.rtn_spec);  // -> d (W diag a)
    parallel_for((K + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      k.teq_scale_backward(dalpha_grp, nullptr, nullptr, nullptr, 0, wgrad, W, N, alpha, b0 * 16, std::min(K, b1 * 16), K);
    });
    if (gr)
      parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
        for (int64_t n = r0; n < r1; n++)
          for (int64_t c = 0; c < K; c++) gr[off + n * K + c] += wgrad[n * K + c] * alpha[c];
      });
  };
  // The activation side of a scale: dalpha += -sum dxs x / alpha^2, dx = dxs / alpha.
  auto scale_grad = [&](float* dalpha_grp, float* dxo, const float* dxs, const float* xin, const float* alpha, int64_t K) {
    parallel_for((K + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      k.teq_scale_backward(dalpha_grp, dxo, dxs, xin, BT, nullptr, nullptr, 0, alpha, b0 * 16, std::min(K, b1 * 16), K);
    });
  };
  auto rmsnorm_bwd = [&](float* dxo, float* dw, const float* dy, const float* xin, const float* w, const float* rstd) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_backward(dxo, dy, xin, w, rstd, r0, r1, D); });
    if (dw)
      parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
        k.rmsnorm_backward_weight(dw, dy, xin, rstd, BT, b0 * 16, std::min(D, b1 * 16), D);
      });
  };
  // FPTQuant's quantizers: dxq (n) in place becomes the gradient before the quantizer (straight
  // through inside the range); the LSQ step-size gradient goes to the log-scale parameters at
  // `at` (ds * s), and the local outlier penalty's gradient on the pre-quantizer values is added.
  const float qkv = kvq ? fpt::qmax_of(fp.kv_bits) : 0.f;
  float qa[FptTransforms::kActInputs] = {};  // per input (bits_at)
  for (int i = 0; i < FptTransforms::kActInputs; i++) qa[i] = aq ? fpt::qmax_of(fp.bits_at(i)) : 0.f;
  auto fq_back = [&](float* dxq, const float* xpre, int64_t n, const float* sc, int64_t nscale, int64_t inner, float qmax,
                     int64_t at) {
    std::vector<double> part((size_t)(slots * nscale), 0.0);
    parallel_slots(n, 1 << 14, slots, [&](int64_t sl, int64_t i0, int64_t i1) {
      k.act_fake_quant_backward(dxq, part.data() + sl * nscale, dxq, xpre, sc, nscale, inner, qmax, i0, i1);
    });
    for (int64_t i = 0; i < nscale; i++) {
      double sum = 0;
      for (int64_t sl = 0; sl < slots; sl++) sum += part[(size_t)(sl * nscale + i)];
      grads.fpt[at + i] += (float)(sum * sc[i]);
    }
    if (lp_on && fp.lp_act > 0.f) fpt::lp_ratio_acc(dxq, xpre, n, n, fp.lp_p, fp.lp_act);
  };
  // rows r of v (BT, K) times mul[r]: the backward gives dmul[r] = sum dy v_unscaled and dv = dy mul
  // (v_scaled = v_unscaled mul, so sum dy v_scaled / mul; mul > 0)
  auto row_scale_back = [&](float* dmul, float* dy, const float* v_unscaled, const float* mul, int64_t K) {
    parallel_for(BT, grain_rows(K), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        double s = 0;
        for (int64_t i = 0; i < K; i++) s += (double)dy[r * K + i] * v_unscaled[r * K + i];
        dmul[r] = (float)s;
        for (int64_t i = 0; i < K; i++) dy[r * K + i] *= mul[r];
      }
    });
  };
  const FptLayout FL = fpt_layout(m);
  const float* cin = sn ? A.c : nullptr;
  std::vector<float> cmid, mul, dmul;  // (BT) the carry after the attention half, a row multiplier, its gradient
  if (sn) {
    std::memcpy(dco, grads.dc, (size_t)BT * sizeof(float));
    cmid.resize((size_t)BT);
    mul.resize((size_t)BT);
    dmul.resize((size_t)BT);
    for (int64_t r = 0; r < BT; r++) cmid[(size_t)r] = cin[r] / A.rstd1[r];
    // out = h rstd2 + y2, c_out = c2 / rstd2: drstd2 = <dout, h> - dc_out c2 / rstd2^2, dc2 = dc_out / rstd2
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        double s = 0;
        for (int64_t i = 0; i < D; i++) s += (double)dout[r * D + i] * A.h[r * D + i];
        const float rs = A.rstd2[r];
        drs2[r] = (float)(s - (double)dco[r] * cmid[(size_t)r] / ((double)rs * rs));
        dc2[r] = dco[r] / rs;
      }
    });
  }

  // ---- MLP half: out = h + down(silu(g) * u) ----
  if (ad) {
    input_grad(kWDown, das, dout, false);
    weight_grad(kWDown, dout, A.as, ad, dalpha + 2 * D + Dkv);
    scale_grad(dalpha + 2 * D + Dkv, da, das, A.a, ad, F_);
  } else {
    input_grad(kWDown, da, dout, false);
    weight_grad(kWDown, dout, A.as, nullptr, nullptr);
    if (aq)
      fq_back(da, A.ah, BT * F_, &prep.act[FptTransforms::kActDown], 1, 1, qa[FptTransforms::kActDown],
              FL.act_log_scale + FptTransforms::kActDown);
    if (sn) {
      // ah = H(a) * rstd2 / c2 (H(a) = ah / mul)
      for (int64_t r = 0; r < BT; r++) mul[(size_t)r] = A.rstd2[r] / cmid[(size_t)r];
      std::vector<float> had((size_t)(BT * F_));
      for (int64_t r = 0; r < BT; r++)
        for (int64_t i = 0; i < F_; i++) had[(size_t)(r * F_ + i)] = A.ah[r * F_ + i] / mul[(size_t)r];
      row_scale_back(dmul.data(), da, had.data(), mul.data(), F_);
      for (int64_t r = 0; r < BT; r++) {
        drs2[r] += dmul[(size_t)r] / cmid[(size_t)r];
        dc2[r] -= (float)((double)dmul[(size_t)r] * A.rstd2[r] / ((double)cmid[(size_t)r] * cmid[(size_t)r]));
      }
    }
    if (hb > 0) parallel_for(BT, grain_rows(F_), [&](int64_t r0, int64_t r1) { k.fwht(da, r0, r1, F_, hb); });
  }
  parallel_for(BT * F_, 1 << 14, [&](int64_t i0, int64_t i1) { k.swiglu_backward(dg, du, da, A.g, A.u, i0, i1); });
  input_grad(kWGate, dn, dg, false);
  input_grad(kWUp, dn, du, true);
  weight_grad(kWGate, dg, A.xs2, a2, a2 ? dalpha + D : nullptr);
  weight_grad(kWUp, du, A.xs2, a2, a2 ? dalpha + D : nullptr);
  if (aq)
    fq_back(dn, A.xn2, BT * D, &prep.act[FptTransforms::kActGateUp], 1, 1, qa[FptTransforms::kActGateUp],
            FL.act_log_scale + FptTransforms::kActGateUp);
  const float* dn2 = dn;
  if (a2) {
    scale_grad(dalpha + D, dnp, dn, A.xn2, a2, D);
    dn2 = dnp;
  }
  if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      k.rmsnorm_scaled_backward(dh, dc2, dn2, A.h, g2, A.rstd2, cmid.data(), drs2, r0, r1, D, d.eps);
    });
    if (gr)
      parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
        k.rmsnorm_backward_weight(gr + PL.ffn_norm.offset, dn2, A.h, A.rstd2, BT, b0 * 16, std::min(D, b1 * 16), D);
      });
    // the residual's direct path: out = h rstd2 + ...
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < D; i++) dh[r * D + i] += dout[r * D + i] * A.rstd2[r];
    });
    // h = x rstd1 + y1, c2 = c / rstd1: drstd1 = <dh, x> - dc2 c / rstd1^2, dc = dc2 / rstd1
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        double s = 0;
        for (int64_t i = 0; i < D; i++) s += (double)dh[r * D + i] * A.x[r * D + i];
        const float rs = A.rstd1[r];
        drs1[r] = (float)(s - (double)dc2[r] * cin[r] / ((double)rs * rs));
        dci[r] = dc2[r] / rs;
      }
    });
  } else {
    rmsnorm_bwd(dh, gr ? gr + PL.ffn_norm.offset : nullptr, dn2, A.h, g2, A.rstd2);
    parallel_for(BT * D, 1 << 14, [&](int64_t i0, int64_t i1) { k.residual_forward(dh, dh, dout, i0, i1); });
  }

  // ---- attention half: h = x + o(attn(rope(q xs1), rope(k xs1), v xs1)) ----
  if (aop) {
    input_grad(kWo, datts, dh, false);
    weight_grad(kWo, dh, A.atts, aop, dao);
    scale_grad(dao, datt, datts, A.att, aop, Dq);
    // the q heads sharing a kv head share its v-channel scales
    float* dav = dalpha + 2 * D;
    for (int64_t h = 0; h < m.Hq; h++)
      for (int64_t i = 0; i < hd; i++) dav[(h / rep) * hd + i] += dao[h * hd + i];
  } else {
    input_grad(kWo, datt, dh, false);
    weight_grad(kWo, dh, A.atts, nullptr, nullptr);
    if (aq)
      fq_back(datt, A.ao, BT * Dq, &prep.act[FptTransforms::kActO], 1, 1, qa[FptTransforms::kActO],
              FL.act_log_scale + FptTransforms::kActO);
    if (sn) {
      // ao = att * rstd1 / c
      for (int64_t r = 0; r < BT; r++) mul[(size_t)r] = A.rstd1[r] / cin[r];
      row_scale_back(dmul.data(), datt, A.att, mul.data(), Dq);
      for (int64_t r = 0; r < BT; r++) {
        drs1[r] += dmul[(size_t)r] / cin[r];
        dci[r] -= (float)((double)dmul[(size_t)r] * A.rstd1[r] / ((double)cin[r] * cin[r]));
      }
    }
  }
  parallel_slots(m.B * m.Hkv, 1, slots, [&](int64_t sl, int64_t i0, int64_t i1) {
    k.attention_backward(dq, dk, dv, datt, A.probs, A.q, A.k, A.v, i0, i1, T, m.Hq, m.Hkv, hd, pack + sl * per_slot);
  });
  if (kvq) {
    fq_back(dk, A.kr, BT * Dkv, prep.kv.data(), m.Hkv, hd, qkv, FL.kv_log_scale);
    fq_back(dv, A.vr, BT * Dkv, prep.kv.data() + m.Hkv, m.Hkv, hd, qkv, FL.kv_log_scale + m.Hkv);
  }
  std::vector<int32_t> pos((size_t)BT);  // (B, T) positions t
  for (int64_t r = 0; r < BT; r++) pos[(size_t)r] = (int32_t)(r % T);
  parallel_for(BT, grain_rows(Dq), [&](int64_t r0, int64_t r1) {
    k.rope(dq, pos.data(), d.rope_cos, d.rope_sin, r0, r1, m.Hq, hd, true);
    k.rope(dk, pos.data(), d.rope_cos, d.rope_sin, r0, r1, m.Hkv, hd, true);
  });
  input_grad(kWq, dn, dq, false);
  input_grad(kWk, dn, dk, true);
  input_grad(kWv, dn, dv, true);
  weight_grad(kWq, dq, A.xs1, a1, dalpha);
  weight_grad(kWk, dk, A.xs1, a1, dalpha);
  weight_grad(kWv, dv, A.xs1, a1, dalpha);
  if (aq)
    fq_back(dn, A.xn1, BT * D, &prep.act[FptTransforms::kActQkv], 1, 1, qa[FptTransforms::kActQkv],
            FL.act_log_scale + FptTransforms::kActQkv);
  const float* dn1 = dn;
  if (a1) {
    scale_grad(dalpha, dnp, dn, A.xn1, a1, D);
    dn1 = dnp;
  }
  if (sn) {
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      k.rmsnorm_scaled_backward(dx, dci, dn1, A.x, g1, A.rstd1, cin, drs1, r0, r1, D, d.eps);
    });
    if (gr)
      parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
        k.rmsnorm_backward_weight(gr + PL.attn_norm.offset, dn1, A.x, A.rstd1, BT, b0 * 16, std::min(D, b1 * 16), D);
      });
    parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < D; i++) dx[r * D + i] += dh[r * D + i] * A.rstd1[r];
    });
    std::memcpy(grads.dc, dci, (size_t)BT * sizeof(float));
  } else {
    rmsnorm_bwd(dx, gr ? gr + PL.attn_norm.offset : nullptr, dn1, A.x, g1, A.rstd1);
    parallel_for(BT * D, 1 << 14, [&](int64_t i0, int64_t i1) { k.residual_forward(dx, dx, dh, i0, i1); });
  }
  // ---- FPTQuant: through the weight quantizer and the merge to the transforms ----
  if (fw && status.ok()) {
    for (int j = 0; j < kBlockLinears; j++) {
      int64_t rows, cols;
      linear_shape(m, j, &rows, &cols);
      const float* W = raw(j);
      fpt::apply_linear(j, wm, W, prep, pack, slots);
      float* dW = deff + PL.linear[j].offset;
      if (d.rtn) QF_TRY(rtn_backward(dW, wm, nullptr, rows, cols, d.rtn_spec));
      if (lp_on && fp.lp_weight > 0.f) fpt::lp_ratio_acc(dW, wm, rows * cols, cols, fp.lp_p, fp.lp_weight);
      QF_TRY(fpt::linear_backward(j, grads.fpt, dW, wm, W, prep, pack, slots));
    }
  }
  return status;
}

// ---------------------------------------------------------------------------
// Merges, RTN backward op, LM head
// ---------------------------------------------------------------------------

Status block_merge_scales(Span arena, Span alpha, const BlockDims& d, bool extra) {
  BlockDesc desc;
  desc.dims = d;
  desc.eps = 1.f;
  desc.teq.on = true;
  desc.teq.extra = extra;
  QF_TRY(check_block(desc));
  const BlockLayout L = block_layout(d);
  QF_TRY(need("arena", arena, L.total, "(block_param_count)"));
  const int64_t NA = block_alpha_count(desc), D = d.D, Dq = d.Dq(), Dkv = d.Dkv();
  QF_TRY(need("alpha", alpha, NA, "(block_alpha_count)"));
  const float* a = F(alpha);
  for (int64_t i = 0; i < NA; i++)
    if (!(a[i] > 0.f) || !std::isfinite(a[i]))
      return error(Code::InvalidArgument, "Expected positive finite alpha but alpha[" + num(i) + "] is " + std::to_string(a[i]));
  float* w = F(arena);
  // W (rows, K) *= diag(s) (columns) or rows /= s
  auto scale_cols = [&](const BlockTensorSlot& t, const float* sc) {
    float* p = w + t.offset;
    parallel_for(t.rows, grain_rows(t.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < t.cols; c++) p[r * t.cols + c] *= sc[c];
    });
  };
  auto div_rows = [&](const BlockTensorSlot& t, const float* sc) {
    float* p = w + t.offset;
    parallel_for(t.rows, grain_rows(t.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < t.cols; c++) p[r * t.cols + c] /= sc[r];
    });
  };
  const float* a1 = a;
  const float* a2 = a + D;
  for (int64_t i = 0; i < D; i++) w[L.attn_norm.offset + i] /= a1[i];
  for (int j : {kWq, kWk, kWv}) scale_cols(L.linear[j], a1);
  for (int64_t i = 0; i < D; i++) w[L.ffn_norm.offset + i] /= a2[i];
  for (int j : {kWGate, kWUp}) scale_cols(L.linear[j], a2);
  if (!extra) return Status::Ok();
  const float* av = a + 2 * D;
  const float* ad = a + 2 * D + Dkv;
  std::vector<float> ao((size_t)Dq);  // (Dq)
  QF_TRY(teq_expand_v_scales(Span{ao.data(), ao.size(), DType::F32}, Span{(void*)av, (size_t)Dkv, DType::F32}, d.Hq, d.Hkv, d.hd));
  div_rows(L.linear[kWv], av);
  scale_cols(L.linear[kWo], ao.data());
  div_rows(L.linear[kWUp], ad);
  scale_cols(L.linear[kWDown], ad);
  return Status::Ok();
}

Status rtn_fake_quant_backward(Span g, Span W, Span alpha, int64_t N, int64_t K, int64_t bits, int64_t group_size,
                               bool symmetric) {
  const QuantSpec spec{(int)bits, group_size, symmetric, true};
  if (bits < 0 || bits > 64) return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + num(bits));
  QF_TRY(check_spec(spec, N, K));
  QF_TRY(need("g", g, N * K, "(N, K)"));
  QF_TRY(need("W", W, N * K, "(N, K)"));
  QF_TRY(need("alpha", alpha, K, "(K)"));
  return rtn_backward(F(g), F(W), F(alpha), N, K, spec);
}

void learned_fq_params(float* s_out, float* z_out, const float* s, const float* z, int64_t n, const QuantSpec& spec) {
  const float hi = spec.symmetric ? 0.f : (float)((1 << spec.bits) - 1);
  for (int64_t i = 0; i < n; i++) {
    s_out[i] = std::min(std::max(s[i], 1e-4f), 1e4f);  // NaN stays NaN (the loss reports it)
    if (!spec.symmetric) z_out[i] = std::min(std::max(std::nearbyint(z[i]), 0.f), hi);
  }
}

namespace {

// The checks every learned-fake-quant op shares: the spec, then w (N, K) and s, z (N, G).
Status check_learned(const QuantSpec& spec, Span w, Span scales, Span zeros, int64_t N, int64_t K, int64_t bits) {
  if (bits < 0 || bits > 64) return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + num(bits));
  QF_TRY(check_spec(spec, N, K));
  const int64_t NG = N * qf_num_groups(K, spec.group_size);
  QF_TRY(need("w", w, N * K, "(N, K)"));
  QF_TRY(need("scales", scales, NG, "(N, G)"));
  if (!spec.symmetric) QF_TRY(need("zeros", zeros, NG, "(N, G)"));
  return Status::Ok();
}

}  // namespace

Status learned_fq_init(Span scales, Span zeros, Span w, int64_t N, int64_t K, int64_t bits, int64_t group_size,
                       bool symmetric) {
  const QuantSpec spec{(int)bits, group_size, symmetric, false};
  QF_TRY(check_learned(spec, w, scales, zeros, N, K, bits));
  const int64_t G = qf_num_groups(K, group_size);
  const float qmax = symmetric ? (float)((1 << (bits - 1)) - 1) : (float)((1 << bits) - 1);
  const float* W = F(w);
  float* S = F(scales);
  float* Z = symmetric ? nullptr : F(zeros);
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t g = 0; g < G; g++) {
        const int64_t k0 = g * group_size, k1 = std::min(K, k0 + group_size);
        float lo = W[r * K + k0], hi = lo, amax = 0.f;
        for (int64_t k = k0; k < k1; k++) {
          lo = std::min(lo, W[r * K + k]);
          hi = std::max(hi, W[r * K + k]);
          amax = std::max(amax, std::fabs(W[r * K + k]));
        }
        const float s = std::min(std::max((symmetric ? amax : hi - lo) / qmax, 1e-4f), 1e4f);
        S[r * G + g] = s;
        if (Z) Z[r * G + g] = std::nearbyint(-std::min(std::max(lo / s, -1e4f), 1e4f));
      }
  });
  return Status::Ok();
}

Status check_learned_fq_backward(const Span& dw, const Span& ds, const Span& dz, const Span& g, const Span& w,
                                 const Span& scales, const Span& zeros, int64_t N, int64_t K, int64_t bits,
                                 int64_t group_size, bool symmetric) {
  const QuantSpec spec{(int)bits, group_size, symmetric, false};
  QF_TRY(check_learned(spec, w, scales, zeros, N, K, bits));
  const int64_t NG = N * qf_num_groups(K, group_size);
  QF_TRY(need("g", g, N * K, "(N, K)"));
  if (dw.data) QF_TRY(need("dw", dw, N * K, "(N, K)"));
  if (ds.data) QF_TRY(need("ds", ds, NG, "(N, G)"));
  if (dz.data) {
    if (symmetric) return error(Code::InvalidArgument, "Expected dz null for symmetric quantization (no zero points)");
    QF_TRY(need("dz", dz, NG, "(N, G)"));
  }
  return Status::Ok();
}

Status learned_fq_backward(Span dw, Span ds, Span dz, Span g, Span w, Span scales, Span zeros, int64_t N, int64_t K,
                           int64_t bits, int64_t group_size, bool symmetric) {
  QF_TRY(check_learned_fq_backward(dw, ds, dz, g, w, scales, zeros, N, K, bits, group_size, symmetric));
  const QuantSpec spec{(int)bits, group_size, symmetric, false};
  const int64_t NG = N * qf_num_groups(K, group_size);
  std::vector<float> p((size_t)(2 * NG));  // (2, N, G) clamped s', z'
  learned_fq_params(p.data(), p.data() + NG, F(scales), symmetric ? nullptr : F(zeros), NG, spec);
  const EngineKernels& k = engine_kernels();
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    k.learned_fq_backward(F(dw), F(ds), F(dz), F(g), F(w), p.data(), symmetric ? nullptr : p.data() + NG, r0, r1, K, spec);
  });
  return Status::Ok();
}

Status learned_fq_codes(Span codes, Span w, Span scales, Span zeros, int64_t N, int64_t K, int64_t bits,
                        int64_t group_size, bool symmetric) {
  const QuantSpec spec{(int)bits, group_size, symmetric, false};
  QF_TRY(check_learned(spec, w, scales, zeros, N, K, bits));
  QF_TRY(need("codes", codes, N * K, "(N, K)"));
  const int64_t G = qf_num_groups(K, group_size), NG = N * G;
  std::vector<float> p((size_t)(2 * NG));  // (2, N, G) clamped s', z'
  learned_fq_params(p.data(), p.data() + NG, F(scales), symmetric ? nullptr : F(zeros), NG, spec);
  const float lo = symmetric ? -(float)(1 << (bits - 1)) : 0.f;
  const float hi = symmetric ? (float)((1 << (bits - 1)) - 1) : (float)((1 << bits) - 1);
  const float shift = symmetric ? (float)(1 << (bits - 1)) : 0.f;  // signed codes stored unsigned
  const float* W = F(w);
  float* C = F(codes);
  parallel_for(N, grain_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t k = 0; k < K; k++) {
        const int64_t i = r * G + k / group_size;
        const float z = symmetric ? 0.f : p[(size_t)(NG + i)];
        const float q = std::nearbyint(W[r * K + k] / p[(size_t)i]) + z;
        C[r * K + k] = (q < lo ? lo : (q > hi ? hi : q)) + shift;
      }
  });
  return Status::Ok();
}

Status lm_head_loss(Span nll, Span dx, Span dnorm, Span dhead, Span x, Span norm_w, Span head, IdSpan targets,
                    int64_t BT, int64_t D, int64_t V, float eps, float loss_scale) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  QF_TRY(positive("V", V));
  QF_TRY(need("nll", nll, BT, "(BT)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  QF_TRY(need("normWeight", norm_w, D, "(D)"));
  QF_TRY(need("head", head, V * D, "(V, D)"));
  if (!targets.data || (int64_t)targets.len != BT)
    return error(Code::ShapeMismatch, "Expected " + num(BT) + " ids for targets but received " + num((int64_t)targets.len));
  for (int64_t i = 0; i < BT; i++)
    if (targets.data[i] >= V)
      return error(Code::InvalidArgument, "Expected targets in [0, " + num(V) + ") but targets[" + num(i) + "] is " +
                                              num(targets.data[i]));
  const bool backward = dx.data != nullptr;
  if (backward) QF_TRY(need("dx", dx, BT * D, "(BT, D)"));
  if (dnorm.data) QF_TRY(need("dnorm", dnorm, D, "(D)"));
  if (dhead.data) QF_TRY(need("dhead", dhead, V * D, "(V, D)"));
  const int64_t slots = scratch_slots();
  float *pack, *n, *rstd, *logits, *dn;
  auto carve = [&](Carve& c) {
    pack = c.take(slots * kGemmPackFloats);
    n = c.take(BT * D);        // (BT, D) normed input
    rstd = c.take(BT);         // (BT)
    logits = c.take(BT * V);   // (BT, V)
    dn = c.take(backward ? BT * D : 0);
  };
  Workspace ws;
  {
    Carve plan(nullptr);
    carve(plan);
    QF_TRY(ws.reserve((size_t)plan.used(), "lm_head_loss"));
  }
  Carve cv(ws.data());
  carve(cv);
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_forward(n, rstd, F(x), F(norm_w), r0, r1, D, eps); });
  matmul_nt(logits, n, F(head), BT, V, D, false, pack, slots);
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) { k.cross_entropy_forward(F(nll), logits, targets.data, r0, r1, V); });
  if (!backward) return Status::Ok();
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) {
    k.cross_entropy_backward(logits, targets.data, r0, r1, V, loss_scale);
  });
  matmul_nn(dn, logits, F(head), BT, V, D, false, pack, slots);
  if (dhead.data) matmul_tn(F(dhead), logits, n, BT, V, D, true, pack, slots);
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_backward(F(dx), dn, F(x), F(norm_w), rstd, r0, r1, D); });
  if (dnorm.data)
    parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      k.rmsnorm_backward_weight(F(dnorm), dn, F(x), rstd, BT, b0 * 16, std::min(D, b1 * 16), D);
    });
  return Status::Ok();
}

}  // namespace qf
