// N-API entry points of the quantization family. Arguments arrive validated by
// lib/ops/quant.ts; quant_ops re-checks every length before a kernel runs.
#include "napi_util.h"
#include "quantform/formats.h"

namespace qf {
namespace {

// quantize(w, wDtype, N, K, bits, groupSize, symmetric, paramDtype, async)
//   -> { codes: Uint8Array, scales, zeros | null }
Napi::Value quantize_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wd = arg_dtype(info, 1, "dtype");
  Span w = arg_span(info, 0, "weights", wd);
  const int64_t N = arg_int(info, 2, "N"), K = arg_int(info, 3, "K");
  const QuantSpec spec = arg_quant_spec(info, 4);
  const DType pd = arg_dtype(info, 7, "paramDtype");
  const bool async = arg_bool(info, 8, "async");
  Status st = check_spec(spec, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(w, (size_t)(N * K), "w"));
  const size_t G = (size_t)qf_num_groups(K, spec.group_size);
  Span cs, ss{}, zs{nullptr, 0, pd};
  Napi::Uint8Array codes = make_bytes(env, (size_t)(N * qf_packed_row_bytes(spec.bits, K)), &cs);
  Napi::Object scales = make_float_array(env, pd, (size_t)N * G, &ss);
  Napi::Value zeros = env.Null();
  if (!spec.symmetric) zeros = make_float_array(env, pd, (size_t)N * G, &zs);
  Napi::Object out = Napi::Object::New(env);
  out.Set("codes", codes);
  out.Set("scales", scales);
  out.Set("zeros", zeros);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], out}, [=] { return quantize(cs, ss, zs, w, N, K, spec); },
                [ref](Napi::Env) { return ref->Value(); });
}

// pack(codes8, N, K, bits, async) -> Uint8Array
Napi::Value pack_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span c8 = arg_bytes(info, 0, "codes");
  const int64_t N = arg_int(info, 1, "N"), K = arg_int(info, 2, "K");
  const int bits = (int)arg_int(info, 3, "bits");
  const bool async = arg_bool(info, 4, "async");
  Status st = check_spec(QuantSpec{bits, 1, true, false}, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(c8, (size_t)(N * K), "codes", "codes"));
  Span os;
  Napi::Uint8Array out = make_bytes(env, (size_t)(N * qf_packed_row_bytes(bits, K)), &os);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
  return run_op(info, async, {info[0], out}, [=] { return pack(os, c8, N, K, bits); },
                [ref](Napi::Env) { return ref->Value(); });
}

// unpack(codes, N, K, bits, async) -> Uint8Array (N*K)
Napi::Value unpack_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span cs = arg_bytes(info, 0, "codes");
  const int64_t N = arg_int(info, 1, "N"), K = arg_int(info, 2, "K");
  const int bits = (int)arg_int(info, 3, "bits");
  const bool async = arg_bool(info, 4, "async");
  Status st = check_spec(QuantSpec{bits, 1, true, false}, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(cs, (size_t)(N * qf_packed_row_bytes(bits, K)), "codes", "bytes"));
  Span os;
  Napi::Uint8Array out = make_bytes(env, (size_t)(N * K), &os);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
  return run_op(info, async, {info[0], out}, [=] { return unpack(os, cs, N, K, bits); },
                [ref](Napi::Env) { return ref->Value(); });
}

// dequantize(codes, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric, outDtype, async, out?)
// `out`, when given, is a caller-owned array of outDtype's kind that receives the result.
Napi::Value dequantize_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span cs = arg_bytes(info, 0, "codes");
  const DType pd = arg_dtype(info, 3, "paramDtype");
  Span ss = arg_span(info, 1, "scales", pd);
  const int64_t N = arg_int(info, 4, "N"), K = arg_int(info, 5, "K");
  const QuantSpec spec = arg_quant_spec(info, 6);
  Span zs = arg_zeros(info, 2, spec.symmetric, pd);
  const DType od = arg_dtype(info, 9, "outDtype");
  const bool async = arg_bool(info, 10, "async");
  Status st = check_spec(spec, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(cs, (size_t)(N * qf_packed_row_bytes(spec.bits, K)), "codes", "bytes"));
  Span os;
  Napi::Object out;
  if (info.Length() > 11 && !arg_is_null(info, 11)) {
    os = arg_span(info, 11, "out", od);  // its length is checked by dequantize()
    out = info[11].As<Napi::Object>();
  } else {
    out = make_float_array(env, od, (size_t)(N * K), &os);
  }
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], out}, [=] { return dequantize(os, cs, ss, zs, N, K, spec); },
                [ref](Napi::Env) { return ref->Value(); });
}

// fakeQuantForward(w, scales, zeros|null, N, K, bits, groupSize, symmetric, async) -> Float32Array
Napi::Value fq_forward_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span w = arg_span(info, 0, "weights", DType::F32);
  Span ss = arg_span(info, 1, "scales", DType::F32);
  const int64_t N = arg_int(info, 3, "N"), K = arg_int(info, 4, "K");
  const QuantSpec spec = arg_quant_spec(info, 5);
  Span zs = arg_zeros(info, 2, spec.symmetric, DType::F32);
  const bool async = arg_bool(info, 8, "async");
  Status st = check_spec(spec, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(w, (size_t)(N * K), "w"));
  Span os;
  Napi::Object out = make_float_array(env, DType::F32, (size_t)(N * K), &os);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], out}, [=] { return fake_quant_forward(os, w, ss, zs, N, K, spec); },
                [ref](Napi::Env) { return ref->Value(); });
}

// fakeQuantBackward(gradOut, w, scales, zeros|null, N, K, bits, groupSize, symmetric, async)
//   -> { gradW, gradScales, gradZeros | null }
Napi::Value fq_backward_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span g = arg_span(info, 0, "gradOutput", DType::F32);
  Span w = arg_span(info, 1, "weights", DType::F32);
  Span ss = arg_span(info, 2, "scales", DType::F32);
  const int64_t N = arg_int(info, 4, "N"), K = arg_int(info, 5, "K");
  const QuantSpec spec = arg_quant_spec(info, 6);
  Span zs = arg_zeros(info, 3, spec.symmetric, DType::F32);
  const bool async = arg_bool(info, 9, "async");
  Status st = check_spec(spec, N, K);
  if (!st.ok()) throw ArgError{st};
  QF_PRECHECK(info, async, input_len(g, (size_t)(N * K), "gradOutput"));
  const size_t G = (size_t)qf_num_groups(K, spec.group_size);
  Span dws, dss, dzs{nullptr, 0, DType::F32};
  Napi::Object out = Napi::Object::New(env);
  out.Set("gradW", make_float_array(env, DType::F32, (size_t)(N * K), &dws));
  out.Set("gradScales", make_float_array(env, DType::F32, (size_t)N * G, &dss));
  out.Set("gradZeros", spec.symmetric ? env.Null() : Napi::Value(make_float_array(env, DType::F32, (size_t)N * G, &dzs)));
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], info[3], out},
                [=] { return fake_quant_backward(dws, dss, dzs, g, w, ss, zs, N, K, spec); },
                [ref](Napi::Env) { return ref->Value(); });
}

}  // namespace

void register_quant(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "quantize", quantize_js);
  QF_EXPORT(exports, "pack", pack_js);
  QF_EXPORT(exports, "unpack", unpack_js);
  QF_EXPORT(exports, "dequantize", dequantize_js);
  QF_EXPORT(exports, "fakeQuantForward", fq_forward_js);
  QF_EXPORT(exports, "fakeQuantBackward", fq_backward_js);
}

}  // namespace qf
