// N-API entry points of GPTQ (gptq.h). Lengths are re-checked by gptq_ops.
#include <memory>
#include <string>

#include "napi_util.h"
#include "quantform/formats.h"
#include "quantform/gptq.h"

namespace qf {
namespace {

[[noreturn]] void fail(std::string msg) { throw ArgError{error(Code::InvalidArgument, std::move(msg))}; }

Napi::Value field(const Napi::Object& o, const char* key) {
  if (!o.Has(key)) fail(std::string("Expected config.") + key + " but it is missing");
  return o.Get(key);
}
int64_t get_int(const Napi::Object& o, const char* key) {
  const Napi::Value v = field(o, key);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : 0.5;
  // range first: casting a double outside int64's range is undefined
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0) || d != (double)(int64_t)d)
    fail(std::string("Expected integer for config.") + key);
  return (int64_t)d;
}
double get_num(const Napi::Object& o, const char* key) {
  const Napi::Value v = field(o, key);
  if (!v.IsNumber()) fail(std::string("Expected number for config.") + key);
  return v.As<Napi::Number>().DoubleValue();
}
bool get_bool(const Napi::Object& o, const char* key) {
  const Napi::Value v = field(o, key);
  if (!v.IsBoolean()) fail(std::string("Expected boolean for config.") + key);
  return v.As<Napi::Boolean>().Value();
}
std::string get_string(const Napi::Object& o, const char* key) {
  const Napi::Value v = field(o, key);
  if (!v.IsString()) fail(std::string("Expected string for config.") + key);
  return v.As<Napi::String>().Utf8Value();
}

// gptqHessianAccumulate(H, x, T, K, rowsBefore, async)
Napi::Value hessian_js(const Napi::CallbackInfo& info) {
  Span H = arg_span(info, 0, "H", DType::F32), x = arg_span(info, 1, "x", DType::F32);
  const int64_t T = arg_int(info, 2, "rows"), K = arg_int(info, 3, "K"), before = arg_int(info, 4, "rowsBefore");
  return run_op(info, arg_bool(info, 5, "async"), {info[0], info[1]},
                [=] { return gptq::hessian_accumulate(H, x, T, K, before); },
                [](Napi::Env env) { return env.Undefined(); });
}

// gptqInverseFactor(U, H, K, damp): U (K, K) written
Napi::Value inverse_factor_js(const Napi::CallbackInfo& info) {
  const Status st = gptq::inverse_factor(arg_span(info, 0, "U", DType::F32), arg_span(info, 1, "H", DType::F32),
                                         arg_int(info, 2, "K"), (float)arg_number(info, 3, "damp"));
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// gptqQuantize(w, H, { rows, cols, bits, groupSize, symmetric, paramDtype, damp, blockSize, paramsFrom, clipNorm? }, async)
//   -> { codes, scales, zeros | null, loss }
Napi::Value quantize_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span w = arg_span(info, 0, "w", DType::F32), H = arg_span(info, 1, "H", DType::F32);
  if (!info[2].IsObject()) fail("Expected a GPTQ config object");
  const Napi::Object o = info[2].As<Napi::Object>();
  gptq::Config c;
  c.N = get_int(o, "rows");
  c.K = get_int(o, "cols");
  c.spec = QuantSpec{(int)get_int(o, "bits"), get_int(o, "groupSize"), get_bool(o, "symmetric"), false};
  if (o.Has("clipNorm")) c.spec.clip_norm = (float)get_num(o, "clipNorm");
  const std::string pd = get_string(o, "paramDtype");
  if (pd != "f32" && pd != "f16") throw ArgError{error(Code::DtypeMismatch, "Expected 'f32' or 'f16' for paramDtype but received '" + pd + "'")};
  c.damp = (float)get_num(o, "damp");
  c.block_size = get_int(o, "blockSize");
  const std::string from = get_string(o, "paramsFrom");
  if (from != "updated" && from != "batch-start") fail("Expected 'updated' or 'batch-start' for paramsFrom but received '" + from + "'");
  c.params_from = from == "updated" ? gptq::ParamSource::Updated : gptq::ParamSource::BatchStart;
  Status st = check_spec(c.spec, c.N, c.K);
  if (!st.ok()) throw ArgError{st};
  const bool async = arg_bool(info, 3, "async");
  // the outputs are sized by (rows, cols): the inputs of that size come first
  QF_PRECHECK(info, async, input_len(w, (size_t)(c.N * c.K), "w"));
  QF_PRECHECK(info, async, input_len(H, (size_t)c.K * (size_t)c.K, "H"));
  const DType pdt = pd == "f16" ? DType::F16 : DType::F32;
  const size_t G = (size_t)qf_num_groups(c.K, c.spec.group_size);
  Span cs, ss{}, zs{nullptr, 0, pdt};
  Napi::Uint8Array codes = make_bytes(env, (size_t)(c.N * qf_packed_row_bytes(c.spec.bits, c.K)), &cs);
  Napi::Object out = Napi::Object::New(env);
  out.Set("codes", codes);
  out.Set("scales", make_float_array(env, pdt, (size_t)c.N * G, &ss));
  out.Set("zeros", c.spec.symmetric ? env.Null() : Napi::Value(make_float_array(env, pdt, (size_t)c.N * G, &zs)));
  auto loss = std::make_shared<double>(0.0);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], out},
                [=] { return gptq::quantize(cs, ss, zs, loss.get(), w, H, c); },
                [ref, loss](Napi::Env e) {
                  Napi::Object r = ref->Value();
                  r.Set("loss", Napi::Number::New(e, *loss));
                  return r;
                });
}

}  // namespace

void register_gptq(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "gptqHessianAccumulate", hessian_js);
  QF_EXPORT(exports, "gptqInverseFactor", inverse_factor_js);
  QF_EXPORT(exports, "gptqQuantize", quantize_js);
}

}  // namespace qf
