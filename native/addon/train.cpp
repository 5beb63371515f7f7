// N-API entry points of the training family. Every output buffer is caller-owned
// (allocated once in TS and reused every step); train_ops re-checks all lengths.
#include <string>

#include "napi_util.h"
#include "quantform/train_ops.h"

namespace qf {
namespace {

using namespace train;

[[noreturn]] void fail(std::string msg) { throw ArgError{error(Code::InvalidArgument, std::move(msg))}; }

Span f32(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_span(info, i, name, DType::F32); }
Span f32_or_null(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return arg_is_null(info, i) ? Span{nullptr, 0, DType::F32} : f32(info, i, name);
}

Span i32(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_int32(info, i, name); }

float arg_f(const Napi::CallbackInfo& info, size_t i, const char* name) { return (float)arg_number(info, i, name); }

Napi::Value done(const Napi::CallbackInfo& info, const Status& st) {
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

int64_t get_int(const Napi::Object& o, const char* key) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) fail(std::string("Expected integer for config.") + key);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (d != (double)(int64_t)d) fail(std::string("Expected integer for config.") + key + " but received " + std::to_string(d));
  return (int64_t)d;
}
double get_num(const Napi::Object& o, const char* key) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) fail(std::string("Expected number for config.") + key);
  return v.As<Napi::Number>().DoubleValue();
}
bool get_bool(const Napi::Object& o, const char* key) {
  const Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) fail(std::string("Expected boolean for config.") + key);
  return v.As<Napi::Boolean>().Value();
}

BlockConfig read_config(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsObject()) fail("Expected block config object");
  const Napi::Object o = info[i].As<Napi::Object>();
  BlockConfig c;
  c.B = get_int(o, "batch"); c.S = get_int(o, "seq");
  c.D = get_int(o, "hidden"); c.F = get_int(o, "intermediate");
  c.Hq = get_int(o, "heads"); c.Hkv = get_int(o, "kvHeads"); c.hd = get_int(o, "headDim");
  c.eps = (float)get_num(o, "rmsEps"); c.theta = (float)get_num(o, "ropeTheta");
  const int64_t bits = get_int(o, "bits");
  c.quant = bits != 0;
  c.spec = QuantSpec{(int)bits, get_int(o, "groupSize"), get_bool(o, "symmetric"), true};
  c.teq = get_bool(o, "teq");
  c.teq_extra = o.Has("teqExtra") && get_bool(o, "teqExtra");
  const Status st = check_block_config(c);
  if (!st.ok()) throw ArgError{st};
  return c;
}

Napi::Value gemm_js(const Napi::CallbackInfo& info) {
  return done(info, gemm(f32(info, 0, "C"), f32(info, 1, "A"), f32(info, 2, "B"), arg_int(info, 3, "M"),
                         arg_int(info, 4, "N"), arg_int(info, 5, "K"), arg_bool(info, 6, "transA"),
                         arg_bool(info, 7, "transB"), arg_bool(info, 8, "accumulate")));
}
Napi::Value rmsnorm_forward_js(const Napi::CallbackInfo& info) {
  return done(info, rmsnorm_forward(f32(info, 0, "out"), f32(info, 1, "rstd"), f32(info, 2, "x"), f32(info, 3, "w"),
                                    arg_int(info, 4, "T"), arg_int(info, 5, "D"), arg_f(info, 6, "eps")));
}
Napi::Value rmsnorm_backward_js(const Napi::CallbackInfo& info) {
  return done(info, rmsnorm_backward(f32(info, 0, "dx"), f32(info, 1, "dw"), f32(info, 2, "dout"), f32(info, 3, "x"),
                                     f32(info, 4, "w"), f32(info, 5, "rstd"), arg_int(info, 6, "T"), arg_int(info, 7, "D")));
}
Napi::Value swiglu_forward_js(const Napi::CallbackInfo& info) {
  return done(info, swiglu_forward(f32(info, 0, "h"), f32(info, 1, "g"), f32(info, 2, "u"), arg_int(info, 3, "T"),
                                   arg_int(info, 4, "F")));
}
Napi::Value swiglu_backward_js(const Napi::CallbackInfo& info) {
  return done(info, swiglu_backward(f32(info, 0, "dg"), f32(info, 1, "du"), f32(info, 2, "dh"), f32(info, 3, "g"),
                                    f32(info, 4, "u"), arg_int(info, 5, "T"), arg_int(info, 6, "F")));
}
Napi::Value rope_js(const Napi::CallbackInfo& info) {
  return done(info, rope(f32(info, 0, "x"), arg_int(info, 1, "T"), arg_int(info, 2, "seq"), arg_int(info, 3, "heads"),
                         arg_int(info, 4, "headDim"), arg_f(info, 5, "theta"), arg_bool(info, 6, "inverse")));
}
Napi::Value attention_forward_js(const Napi::CallbackInfo& info) {
  return done(info, attention_forward(f32(info, 0, "out"), f32(info, 1, "probs"), f32(info, 2, "q"), f32(info, 3, "k"),
                                      f32(info, 4, "v"), arg_int(info, 5, "batch"), arg_int(info, 6, "seq"),
                                      arg_int(info, 7, "heads"), arg_int(info, 8, "kvHeads"), arg_int(info, 9, "headDim")));
}
Napi::Value attention_backward_js(const Napi::CallbackInfo& info) {
  return done(info, attention_backward(f32(info, 0, "dq"), f32(info, 1, "dk"), f32(info, 2, "dv"), f32(info, 3, "dout"),
                                       f32(info, 4, "probs"), f32(info, 5, "q"), f32(info, 6, "k"), f32(info, 7, "v"),
                                       arg_int(info, 8, "batch"), arg_int(info, 9, "seq"), arg_int(info, 10, "heads"),
                                       arg_int(info, 11, "kvHeads"), arg_int(info, 12, "headDim")));
}
Napi::Value cross_entropy_forward_js(const Napi::CallbackInfo& info) {
  return done(info, cross_entropy_forward(f32(info, 0, "loss"), f32(info, 1, "logits"), i32(info, 2, "targets"),
                                          arg_int(info, 3, "T"), arg_int(info, 4, "V")));
}
Napi::Value cross_entropy_backward_js(const Napi::CallbackInfo& info) {
  return done(info, cross_entropy_backward(f32(info, 0, "probs"), i32(info, 1, "targets"), arg_int(info, 2, "T"),
                                           arg_int(info, 3, "V"), arg_f(info, 4, "scale")));
}
Napi::Value embedding_forward_js(const Napi::CallbackInfo& info) {
  return done(info, embedding_forward(f32(info, 0, "out"), i32(info, 1, "ids"), f32(info, 2, "table"),
                                      arg_int(info, 3, "T"), arg_int(info, 4, "V"), arg_int(info, 5, "D")));
}
Napi::Value embedding_backward_js(const Napi::CallbackInfo& info) {
  return done(info, embedding_backward(f32(info, 0, "dtable"), f32(info, 1, "dout"), i32(info, 2, "ids"),
                                       arg_int(info, 3, "T"), arg_int(info, 4, "V"), arg_int(info, 5, "D")));
}
Napi::Value teq_scale_backward_js(const Napi::CallbackInfo& info) {
  return done(info, teq_scale_backward(f32(info, 0, "dalpha"), f32_or_null(info, 1, "dx"), f32(info, 2, "dxs"),
                                       f32(info, 3, "x"), arg_int(info, 4, "T"), f32(info, 5, "dws"), f32(info, 6, "W"),
                                       arg_int(info, 7, "N"), f32(info, 8, "alpha"), arg_int(info, 9, "K")));
}

// rtnFakeQuantBackward(g, W, alpha, N, K, bits, groupSize, symmetric): g replaced in place
Napi::Value rtn_fq_backward_js(const Napi::CallbackInfo& info) {
  const QuantSpec spec{(int)arg_int(info, 5, "bits"), arg_int(info, 6, "groupSize"), arg_bool(info, 7, "symmetric"), true};
  return done(info, rtn_fake_quant_backward(f32(info, 0, "gradOutput"), f32(info, 1, "W"), f32(info, 2, "alpha"),
                                            arg_int(info, 3, "N"), arg_int(info, 4, "K"), spec));
}

// adamwStep(arena, P, step, lr, beta1, beta2, eps, weightDecay, minValue, async)
Napi::Value adamw_js(const Napi::CallbackInfo& info) {
  Span arena = f32(info, 0, "arena");
  const int64_t P = arg_int(info, 1, "P"), step = arg_int(info, 2, "step");
  const float lr = arg_f(info, 3, "lr"), b1 = arg_f(info, 4, "beta1"), b2 = arg_f(info, 5, "beta2"),
              eps = arg_f(info, 6, "eps"), wd = arg_f(info, 7, "weightDecay"), pmin = arg_f(info, 8, "minValue");
  return run_op(info, arg_bool(info, 9, "async"), {info[0]},
                [=] { return adamw_step(arena, P, step, lr, b1, b2, eps, wd, pmin); },
                [](Napi::Env env) { return env.Undefined(); });
}

// blockSizes(config) -> { params, activations }
Napi::Value block_sizes_js(const Napi::CallbackInfo& info) {
  const BlockConfig c = read_config(info, 0);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("params", Napi::Number::New(info.Env(), (double)block_param_count(c)));
  o.Set("activations", Napi::Number::New(info.Env(), (double)block_activation_count(c)));
  o.Set("alpha", Napi::Number::New(info.Env(), (double)block_alpha_count(c)));
  return o;
}

// blockForward(config, out, activations, x, params, alpha | null, async)
Napi::Value block_forward_js(const Napi::CallbackInfo& info) {
  const BlockConfig c = read_config(info, 0);
  Span out = f32(info, 1, "out"), acts = f32(info, 2, "activations"), x = f32(info, 3, "x"),
       params = f32(info, 4, "params"), alpha = f32_or_null(info, 5, "alpha");
  return run_op(info, arg_bool(info, 6, "async"), {info[1], info[2], info[3], info[4], info[5]},
                [=] { return block_forward(out, acts, x, params, alpha, c); },
                [](Napi::Env env) { return env.Undefined(); });
}

// blockBackward(config, dx, grads | null, dalpha | null, dout, activations, params, alpha | null, async)
Napi::Value block_backward_js(const Napi::CallbackInfo& info) {
  const BlockConfig c = read_config(info, 0);
  Span dx = f32(info, 1, "dx"), grads = f32_or_null(info, 2, "grads"), dalpha = f32_or_null(info, 3, "dalpha"),
       dout = f32(info, 4, "dout"), acts = f32(info, 5, "activations"), params = f32(info, 6, "params"),
       alpha = f32_or_null(info, 7, "alpha");
  return run_op(info, arg_bool(info, 8, "async"),
                {info[1], info[2], info[3], info[4], info[5], info[6], info[7]},
                [=] { return block_backward(dx, grads, dalpha, dout, acts, params, alpha, c); },
                [](Napi::Env env) { return env.Undefined(); });
}

// lmHeadLoss(nll, dx | null, dnorm | null, dhead | null, x, normWeight, head, targets, T, D, V, eps, lossScale, async)
Napi::Value lm_head_loss_js(const Napi::CallbackInfo& info) {
  Span nll = f32(info, 0, "nll"), dx = f32_or_null(info, 1, "dx"), dnorm = f32_or_null(info, 2, "dnorm"),
       dhead = f32_or_null(info, 3, "dhead"), x = f32(info, 4, "x"), nw = f32(info, 5, "normWeight"),
       head = f32(info, 6, "head"), targets = i32(info, 7, "targets");
  const int64_t T = arg_int(info, 8, "T"), D = arg_int(info, 9, "D"), V = arg_int(info, 10, "V");
  const float eps = arg_f(info, 11, "eps"), scale = arg_f(info, 12, "lossScale");
  return run_op(info, arg_bool(info, 13, "async"),
                {info[0], info[1], info[2], info[3], info[4], info[5], info[6], info[7]},
                [=] { return lm_head_loss(nll, dx, dnorm, dhead, x, nw, head, targets, T, D, V, eps, scale); },
                [](Napi::Env env) { return env.Undefined(); });
}

}  // namespace

// Registered under exports.train: the runtime's forward ops own the top-level names.
void register_train(Napi::Env env, Napi::Object root) {
  Napi::Object exports = Napi::Object::New(env);
  root.Set("train", exports);
  QF_EXPORT(exports, "trainGemm", gemm_js);
  QF_EXPORT(exports, "rmsnormForward", rmsnorm_forward_js);
  QF_EXPORT(exports, "rmsnormBackward", rmsnorm_backward_js);
  QF_EXPORT(exports, "swigluForward", swiglu_forward_js);
  QF_EXPORT(exports, "swigluBackward", swiglu_backward_js);
  QF_EXPORT(exports, "rope", rope_js);
  QF_EXPORT(exports, "attentionForward", attention_forward_js);
  QF_EXPORT(exports, "attentionBackward", attention_backward_js);
  QF_EXPORT(exports, "crossEntropyForward", cross_entropy_forward_js);
  QF_EXPORT(exports, "crossEntropyBackward", cross_entropy_backward_js);
  QF_EXPORT(exports, "embeddingForward", embedding_forward_js);
  QF_EXPORT(exports, "embeddingBackward", embedding_backward_js);
  QF_EXPORT(exports, "teqScaleBackward", teq_scale_backward_js);
  QF_EXPORT(exports, "rtnFakeQuantBackward", rtn_fq_backward_js);
  QF_EXPORT(exports, "adamwStep", adamw_js);
  QF_EXPORT(exports, "blockSizes", block_sizes_js);
  QF_EXPORT(exports, "blockForward", block_forward_js);
  QF_EXPORT(exports, "blockBackward", block_backward_js);
  QF_EXPORT(exports, "lmHeadLoss", lm_head_loss_js);
}

}  // namespace qf
