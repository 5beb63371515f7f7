// CUDA entry points of the engine family (registered by addon_cuda.cpp).
#include <vector>

#include "../addon/napi_util.h"
#include "engine_cuda.h"
#include "quantform/engine.h"
#include "quantform/formats.h"

namespace qf {
namespace {

// teqScaleBackward(dalpha, dx | null, dxs, x, T, dws, W, N, alpha, K): dalpha accumulated, dx written
Napi::Value teq_scale_backward_js(const Napi::CallbackInfo& info) {
  Span da = arg_span(info, 0, "dalpha", DType::F32);
  Span dx = arg_is_null(info, 1) ? Span{nullptr, 0, DType::F32} : arg_span(info, 1, "dx", DType::F32);
  Span dxs = arg_span(info, 2, "dxs", DType::F32), x = arg_span(info, 3, "x", DType::F32);
  const int64_t T = arg_int(info, 4, "T");
  Span dws = arg_span(info, 5, "dws", DType::F32), W = arg_span(info, 6, "W", DType::F32);
  const int64_t N = arg_int(info, 7, "N");
  Span alpha = arg_span(info, 8, "alpha", DType::F32);
  const int64_t K = arg_int(info, 9, "K");
  auto len = [](const char* name, const Span& s, int64_t want) {
    if ((int64_t)s.len != want)
      throw ArgError{error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                                    " but received " + std::to_string(s.len))};
  };
  if (K <= 0 || T < 0 || N < 0) throw ArgError{error(Code::InvalidArgument, "Expected K > 0 and T, N >= 0")};
  // T * K and N * K are formed below: bound T and N by what the arrays hold first
  if ((size_t)T > x.len / (size_t)K || (size_t)N > W.len / (size_t)K)
    throw ArgError{error(Code::ShapeMismatch, "Expected T * K <= " + std::to_string(x.len) + " and N * K <= " +
                                                  std::to_string(W.len) + " elements but received T=" + std::to_string(T) +
                                                  ", N=" + std::to_string(N) + ", K=" + std::to_string(K))};
  len("dalpha", da, K); len("alpha", alpha, K); len("dxs", dxs, T * K); len("x", x, T * K);
  len("dws", dws, N * K); len("W", W, N * K);
  if (dx.data) len("dx", dx, T * K);
  const Status st = teq_scale_backward_cuda(static_cast<float*>(da.data), static_cast<float*>(dx.data),
                                            static_cast<const float*>(dxs.data), static_cast<const float*>(x.data), T,
                                            static_cast<const float*>(dws.data), static_cast<const float*>(W.data), N,
                                            static_cast<const float*>(alpha.data), K);
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// learnedFqBackward(dw | null, ds | null, dz | null, g, w, scales, zeros | null, N, K, bits, groupSize, symmetric):
// the CPU op's contract (engine.learnedFqBackward), its checks, the parameters clamped as there
Napi::Value learned_fq_backward_js(const Napi::CallbackInfo& info) {
  const Span dw = f32_or_null(info, 0, "dw"), ds = f32_or_null(info, 1, "ds"), dz = f32_or_null(info, 2, "dz");
  const Span g = arg_span(info, 3, "g", DType::F32), w = arg_span(info, 4, "w", DType::F32);
  const Span scales = arg_span(info, 5, "scales", DType::F32), zeros = f32_or_null(info, 6, "zeros");
  const int64_t N = arg_int(info, 7, "N"), K = arg_int(info, 8, "K"), bits = arg_int(info, 9, "bits"), gs = arg_int(info, 10, "groupSize");
  const bool sym = arg_bool(info, 11, "symmetric");
  Status st = check_learned_fq_backward(dw, ds, dz, g, w, scales, zeros, N, K, bits, gs, sym);
  if (st.ok()) {
    const QuantSpec spec{(int)bits, gs, sym, false};
    const int64_t NG = N * qf_num_groups(K, gs);
    std::vector<float> p((size_t)(2 * NG));  // (2, N, G) clamped s', z'
    learned_fq_params(p.data(), p.data() + NG, static_cast<const float*>(scales.data), sym ? nullptr : static_cast<const float*>(zeros.data), NG, spec);
    st = learned_fq_backward_cuda(static_cast<float*>(dw.data), static_cast<float*>(ds.data), static_cast<float*>(dz.data),
                                  static_cast<const float*>(g.data), static_cast<const float*>(w.data), p.data(),
                                  sym ? nullptr : p.data() + NG, N, K, spec);
  }
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// A grid of one block per row: at most 2^31 - 1 of them.
void check_rows(const char* name, int64_t rows) {
  if (rows > 0x7fffffffLL)
    throw ArgError{error(Code::InvalidArgument, std::string("Expected ") + name + " <= 2147483647 (one CUDA block per row) but received " +
                                                    std::to_string(rows))};
}

// rmsnormScaledBackward(dx, dc | null, dout, x, w, rstd, c | null, drstd | null, BT, D, eps): engine.rmsnormScaledBackward's contract
Napi::Value rmsnorm_scaled_backward_js(const Napi::CallbackInfo& info) {
  const Span dx = arg_span(info, 0, "dx", DType::F32), dc = f32_or_null(info, 1, "dc");
  const Span dout = arg_span(info, 2, "dout", DType::F32), x = arg_span(info, 3, "x", DType::F32);
  const Span w = arg_span(info, 4, "w", DType::F32), rstd = arg_span(info, 5, "rstd", DType::F32);
  const Span c = f32_or_null(info, 6, "c"), drstd = f32_or_null(info, 7, "drstd");
  const int64_t BT = arg_int(info, 8, "BT"), D = arg_int(info, 9, "D");
  const float eps = (float)arg_number(info, 10, "eps");
  Status st = check_rmsnorm_scaled_backward(dx, dc, dout, x, w, rstd, c, drstd, BT, D);
  if (st.ok()) {
    check_rows("BT", BT);
    st = rmsnorm_scaled_backward_cuda(static_cast<float*>(dx.data), static_cast<float*>(dc.data), static_cast<const float*>(dout.data),
                                      static_cast<const float*>(x.data), static_cast<const float*>(w.data),
                                      static_cast<const float*>(rstd.data), static_cast<const float*>(c.data),
                                      static_cast<const float*>(drstd.data), BT, D, eps);
  }
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// actFakeQuantBackward(dx, dscale, dout, x, scale, n, nscale, inner, bits): engine.actFakeQuantBackward's contract
Napi::Value act_fake_quant_backward_js(const Napi::CallbackInfo& info) {
  const Span dx = arg_span(info, 0, "dx", DType::F32), ds = arg_span(info, 1, "dscale", DType::F32);
  const Span dout = arg_span(info, 2, "dout", DType::F32), x = arg_span(info, 3, "x", DType::F32);
  const Span scale = arg_span(info, 4, "scale", DType::F32);
  const int64_t n = arg_int(info, 5, "n"), nscale = arg_int(info, 6, "nscale"), inner = arg_int(info, 7, "inner"),
                bits = arg_int(info, 8, "bits");
  Status st = check_act_fake_quant_backward(dx, ds, dout, x, scale, n, nscale, inner, bits);
  if (st.ok())
    st = act_fake_quant_backward_cuda(static_cast<float*>(dx.data), static_cast<float*>(ds.data), static_cast<const float*>(dout.data),
                                      static_cast<const float*>(x.data), static_cast<const float*>(scale.data), n, nscale,
                                      inner, (float)((1 << (bits - 1)) - 1));
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// jsdForwardBackward(loss, logits, tprobs, BT, V, scale): engine.jsdForwardBackward's contract
Napi::Value jsd_forward_backward_js(const Napi::CallbackInfo& info) {
  const Span loss = arg_span(info, 0, "loss", DType::F32), logits = arg_span(info, 1, "logits", DType::F32);
  const Span tprobs = arg_span(info, 2, "tprobs", DType::F32);
  const int64_t BT = arg_int(info, 3, "BT"), V = arg_int(info, 4, "V");
  const float scale = (float)arg_number(info, 5, "scale");
  Status st = check_jsd_forward_backward(loss, logits, tprobs, BT, V);
  if (st.ok()) {
    check_rows("BT", BT);
    st = jsd_forward_backward_cuda(static_cast<float*>(loss.data), static_cast<float*>(logits.data),
                                   static_cast<const float*>(tprobs.data), BT, V, scale);
  }
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// attentionForwardQ8(out, q, kq, vq, kscale, vscale, B, T, Hq, Hkv, hd, S, pos0): the CPU op's contract
// (engine.attentionForwardQ8) and checks
Napi::Value attention_forward_q8_js(const Napi::CallbackInfo& info) {
  const Span out = arg_span(info, 0, "out", DType::F32), q = arg_span(info, 1, "q", DType::F32);
  const I8Span kq = arg_int8(info, 2, "kq"), vq = arg_int8(info, 3, "vq");
  const Span ks = arg_span(info, 4, "kscale", DType::F32), vs = arg_span(info, 5, "vscale", DType::F32);
  const int64_t B = arg_int(info, 6, "B"), T = arg_int(info, 7, "T"), Hq = arg_int(info, 8, "Hq"), Hkv = arg_int(info, 9, "Hkv");
  const int64_t hd = arg_int(info, 10, "hd"), S = arg_int(info, 11, "S"), pos0 = arg_int(info, 12, "pos0");
  Status st = check_attention_forward_q8(out, q, kq, vq, ks, vs, B, T, Hq, Hkv, hd, S, pos0);
  if (st.ok())
    st = attention_forward_q8_cuda(static_cast<float*>(out.data), static_cast<const float*>(q.data), kq.data, vq.data,
                                   static_cast<const float*>(ks.data), static_cast<const float*>(vs.data), B, T, Hq, Hkv,
                                   hd, S, pos0);
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// fptMergeBackward(dFpt, deff, arena, fptParams, D, F, Hq, Hkv, hd, qk, v, vHadamard, mlp, hadamardBlock):
// engine.fptMergeBackward's contract (the block's dims and transform flags as arguments), its checks;
// the contractions of each weight with its gradient on the GPU, the small algebra on the CPU
Napi::Value fpt_merge_backward_js(const Napi::CallbackInfo& info) {
  const Span dfpt = arg_span(info, 0, "dFpt", DType::F32), deff = arg_span(info, 1, "deff", DType::F32);
  const Span arena = arg_span(info, 2, "arena", DType::F32), fparams = arg_span(info, 3, "fptParams", DType::F32);
  const char* names[5] = {"D", "F", "Hq", "Hkv", "hd"};
  const int64_t limit[5] = {1 << 20, 1 << 20, 1 << 14, 1 << 14, 1 << 12};  // fpt_layout's products stay in int64
  int64_t dim[5];
  for (int i = 0; i < 5; i++) {
    dim[i] = arg_int(info, 4 + (size_t)i, names[i]);
    if (dim[i] < 1 || dim[i] > limit[i])
      throw ArgError{error(Code::InvalidArgument, std::string("Expected ") + names[i] + " in [1, " + std::to_string(limit[i]) +
                                                      "] but received " + std::to_string(dim[i]))};
  }
  const BlockDims d{1, 1, dim[0], dim[1], dim[2], dim[3], dim[4]};
  FptTransforms f;
  f.on = true;
  f.qk = arg_bool(info, 9, "qk");
  f.v = arg_bool(info, 10, "v");
  f.v_hadamard = arg_bool(info, 11, "vHadamard");
  f.mlp = arg_bool(info, 12, "mlp");
  f.hadamard_block = arg_int(info, 13, "hadamardBlock");
  Status st = fpt_check_params(fparams, d, f);
  if (st.ok()) {
    f.params = static_cast<const float*>(fparams.data);
    st = fpt_merge_backward(dfpt, deff, arena, d, f, &fpt_contractions_cuda);
  }
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

}  // namespace

void register_engine_cuda(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "fptMergeBackward", fpt_merge_backward_js);
  QF_EXPORT(exports, "attentionForwardQ8", attention_forward_q8_js);
  QF_EXPORT(exports, "teqScaleBackward", teq_scale_backward_js);
  QF_EXPORT(exports, "learnedFqBackward", learned_fq_backward_js);
  QF_EXPORT(exports, "rmsnormScaledBackward", rmsnorm_scaled_backward_js);
  QF_EXPORT(exports, "actFakeQuantBackward", act_fake_quant_backward_js);
  QF_EXPORT(exports, "jsdForwardBackward", jsd_forward_backward_js);
}

}  // namespace qf
