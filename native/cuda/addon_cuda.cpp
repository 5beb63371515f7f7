// quantform_cuda.node: the optional CUDA module. Loading it never fails for lack
// of a GPU or driver (the runtime is linked statically and finds the driver at
// run time); cudaInfo() reports availability and, if unavailable, why.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "../addon/napi_util.h"
#include "quant_cuda.h"
#include "quantform/finite.h"
#include "quantform/formats.h"

namespace qf {
void register_engine_cuda(Napi::Env env, Napi::Object exports);  // addon_engine_cuda.cpp
void register_qlinear_cuda(Napi::Env env, Napi::Object exports);  // qlinear_addon.cpp
namespace {

Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int runtime = 0, driver = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  o.Set("runtimeVersion", runtime);
  o.Set("driverVersion", driver);
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    o.Set("available", false);
    // the static runtime reports a missing libcuda.so as "driver version is insufficient"
    o.Set("reason", driver == 0 ? std::string("no NVIDIA driver found (libcuda.so could not be loaded)")
                    : e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e)
                                       : std::string("no CUDA device found"));
    return o;
  }
  cudaDeviceProp p;
  const cudaError_t pe = cudaGetDeviceProperties(&p, 0);
  if (pe != cudaSuccess) {
    o.Set("available", false);
    o.Set("reason", std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(pe));
    return o;
  }
  o.Set("available", true);
  o.Set("device", p.name);
  o.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
  o.Set("memoryBytes", (double)p.totalGlobalMem);
  o.Set("devices", count);
  return o;
}

Status expect(const char* name, const Span& s, size_t n) {
  if (s.len != n)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(n) + " elements for " + name +
                                          " but received " + std::to_string(s.len));
  return Status::Ok();
}

void check(const Status& st) {
  if (!st.ok()) throw ArgError{st};
}

// The spec, and the per-group parameters' lengths: scales (N, G), zeros (N, G) unless symmetric.
void check_params(const Span& ss, const Span& zs, int64_t N, int64_t K, const QuantSpec& spec) {
  check(check_spec(spec, N, K));
  const size_t G = (size_t)qf_num_groups(K, spec.group_size);
  check(expect("scales", ss, (size_t)N * G));
  if (!spec.symmetric) check(expect("zeros", zs, (size_t)N * G));
}

// quantize(w f32, N, K, bits, groupSize, symmetric, async) -> { codes, scales, zeros | null } (f32 params)
Napi::Value quantize_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span w = arg_span(info, 0, "weights", DType::F32);
  const int64_t N = arg_int(info, 1, "N"), K = arg_int(info, 2, "K");
  const QuantSpec spec = arg_quant_spec(info, 3);
  const bool async = arg_bool(info, 6, "async");
  check(check_spec(spec, N, K));
  QF_PRECHECK(info, async, expect("w", w, (size_t)(N * K)));
  const size_t G = (size_t)qf_num_groups(K, spec.group_size);
  Span cs, ss, zs{nullptr, 0, DType::F32};
  Napi::Uint8Array codes = make_bytes(env, (size_t)(N * qf_packed_row_bytes(spec.bits, K)), &cs);
  Napi::Object out = Napi::Object::New(env);
  out.Set("codes", codes);
  out.Set("scales", make_float_array(env, DType::F32, (size_t)N * G, &ss));
  out.Set("zeros", spec.symmetric ? env.Null() : Napi::Value(make_float_array(env, DType::F32, (size_t)N * G, &zs)));
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], out},
                [=]() -> Status {
                  const float* wp = static_cast<const float*>(w.data);
                  const int64_t bad = first_non_finite(wp, N * K);
                  if (bad >= 0)
                    return error(Code::NonFinite, "Expected finite weights but row " + std::to_string(bad / K) + " holds NaN or Inf");
                  return quantize_cuda(static_cast<uint8_t*>(cs.data), static_cast<float*>(ss.data),
                                       static_cast<float*>(zs.data), wp, N, K, spec);
                },
                [ref](Napi::Env) { return ref->Value(); });
}

// dequantize(codes, scales, zeros|null, N, K, bits, groupSize, symmetric, async) -> Float32Array
Napi::Value dequantize_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span cs = arg_bytes(info, 0, "codes");
  Span ss = arg_span(info, 1, "scales", DType::F32);
  const int64_t N = arg_int(info, 3, "N"), K = arg_int(info, 4, "K");
  const QuantSpec spec = arg_quant_spec(info, 5);
  Span zs = arg_zeros(info, 2, spec.symmetric, DType::F32);
  const bool async = arg_bool(info, 8, "async");
  check_params(ss, zs, N, K, spec);
  check(expect("codes", cs, (size_t)(N * qf_packed_row_bytes(spec.bits, K))));
  Span os;
  Napi::Object out = make_float_array(env, DType::F32, (size_t)(N * K), &os);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], out},
                [=] {
                  return dequantize_cuda(static_cast<float*>(os.data), static_cast<const uint8_t*>(cs.data),
                                         static_cast<const float*>(ss.data), static_cast<const float*>(zs.data), N, K, spec);
                },
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
  check_params(ss, zs, N, K, spec);
  check(expect("w", w, (size_t)(N * K)));
  Span os;
  Napi::Object out = make_float_array(env, DType::F32, (size_t)(N * K), &os);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], out},
                [=] {
                  return fake_quant_forward_cuda(static_cast<float*>(os.data), static_cast<const float*>(w.data),
                                                 static_cast<const float*>(ss.data), static_cast<const float*>(zs.data),
                                                 N, K, spec);
                },
                [ref](Napi::Env) { return ref->Value(); });
}

// fakeQuantBackward(g, w, scales, zeros|null, N, K, bits, groupSize, symmetric, async) -> { gradW, gradScales, gradZeros }
Napi::Value fq_backward_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span g = arg_span(info, 0, "gradOutput", DType::F32);
  Span w = arg_span(info, 1, "weights", DType::F32);
  Span ss = arg_span(info, 2, "scales", DType::F32);
  const int64_t N = arg_int(info, 4, "N"), K = arg_int(info, 5, "K");
  const QuantSpec spec = arg_quant_spec(info, 6);
  Span zs = arg_zeros(info, 3, spec.symmetric, DType::F32);
  const bool async = arg_bool(info, 9, "async");
  check_params(ss, zs, N, K, spec);
  const size_t G = (size_t)qf_num_groups(K, spec.group_size);
  check(expect("gradOutput", g, (size_t)(N * K)));
  check(expect("w", w, (size_t)(N * K)));
  Span dws, dss, dzs{nullptr, 0, DType::F32};
  Napi::Object out = Napi::Object::New(env);
  out.Set("gradW", make_float_array(env, DType::F32, (size_t)(N * K), &dws));
  out.Set("gradScales", make_float_array(env, DType::F32, (size_t)N * G, &dss));
  out.Set("gradZeros", spec.symmetric ? env.Null() : Napi::Value(make_float_array(env, DType::F32, (size_t)N * G, &dzs)));
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  return run_op(info, async, {info[0], info[1], info[2], info[3], out},
                [=] {
                  return fake_quant_backward_cuda(static_cast<float*>(dws.data), static_cast<float*>(dss.data),
                                                  static_cast<float*>(dzs.data), static_cast<const float*>(g.data),
                                                  static_cast<const float*>(w.data), static_cast<const float*>(ss.data),
                                                  static_cast<const float*>(zs.data), N, K, spec);
                },
                [ref](Napi::Env) { return ref->Value(); });
}

}  // namespace

void register_cuda_matmul(Napi::Env env, Napi::Object exports);

}  // namespace qf

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace qf;
  register_cuda_matmul(env, exports);
  QF_EXPORT(exports, "cudaInfo", cuda_info);
  QF_EXPORT(exports, "quantize", quantize_js);
  QF_EXPORT(exports, "dequantize", dequantize_js);
  QF_EXPORT(exports, "fakeQuantForward", fq_forward_js);
  QF_EXPORT(exports, "fakeQuantBackward", fq_backward_js);
  register_engine_cuda(env, exports);
  register_qlinear_cuda(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}
}  // namespace

NODE_API_MODULE(quantform_cuda, Init)
