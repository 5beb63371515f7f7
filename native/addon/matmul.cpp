// N-API entry points of the dequant-matmul family. Arguments arrive validated by
// lib/ops/matmul.ts; matmul_ops re-checks every length before a kernel runs. A
// prepared weight is a type-tagged External owning a PreparedInt4.
#include <memory>

#include "napi_util.h"
#include "quantform/formats.h"
#include "quantform/matmul_ops.h"

namespace qf {
namespace {

const napi_type_tag kPreparedTag = {0x7166'6d61'746d'756cULL, 0x7072'6570'6172'6564ULL};

using PreparedPtr = std::shared_ptr<const PreparedInt4>;

int64_t prepared_bytes(const PreparedInt4& p) {
  return (int64_t)(p.codes.size() * 4 + (p.scales32.size() + p.zeros32.size()) * 4 +
                   (p.scales16.size() + p.zeros16.size()) * 2);
}

PreparedPtr* prepared_slot(const Napi::CallbackInfo& info, size_t i) {
  const Napi::Value v = info[i];
  bool ok = false;
  if (v.IsExternal()) napi_check_object_type_tag(info.Env(), v, &kPreparedTag, &ok);
  if (!ok) throw ArgError{error(Code::InvalidArgument, "Expected a prepared weight handle (from prepareMatmulWeight) for weight")};
  return v.As<Napi::External<PreparedPtr>>().Data();
}

// A running async matmul holds its own reference, so disposing never frees memory in use.
PreparedPtr arg_prepared(const Napi::CallbackInfo& info, size_t i) {
  PreparedPtr p = *prepared_slot(info, i);
  if (!p) throw ArgError{error(Code::InvalidArgument, "Expected a live prepared weight but it was disposed")};
  return p;
}

// codes, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric at [i, i + 9)
CanonicalWeight arg_canonical(const Napi::CallbackInfo& info, size_t i) {
  CanonicalWeight w;
  w.codes = arg_bytes(info, i, "codes");
  const DType pd = arg_dtype(info, i + 3, "paramDtype");
  w.scales = arg_span(info, i + 1, "scales", pd);
  w.N = arg_int(info, i + 4, "N");
  w.K = arg_int(info, i + 5, "K");
  w.spec = arg_quant_spec(info, i + 6);
  w.spec.f16_params = pd == DType::F16;
  w.zeros = arg_zeros(info, i + 2, w.spec.symmetric, pd);
  return w;
}

MatmulAccuracy arg_accuracy(const Napi::CallbackInfo& info, size_t i) {
  const std::string s = arg_string(info, i, "accuracy");
  if (s == "fp32") return MatmulAccuracy::F32;
  if (s == "int8") return MatmulAccuracy::Int8;
  throw ArgError{error(Code::InvalidArgument, "Expected 'fp32' or 'int8' for accuracy but received '" + s + "'")};
}

// matmulPrepare(codes, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric) -> External
Napi::Value prepare_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CanonicalWeight w = arg_canonical(info, 0);
  auto p = std::make_shared<PreparedInt4>();
  Status st = prepare_int4(p.get(), w);
  if (!st.ok()) throw ArgError{st};
  // V8 is told about the memory so it collects dropped handles; disposal frees it
  // at once (finalizers run only on a later turn of the event loop)
  const int64_t bytes = prepared_bytes(*p);
  Napi::External<PreparedPtr> ext = Napi::External<PreparedPtr>::New(
      env, new PreparedPtr(std::move(p)), [bytes](Napi::Env e, PreparedPtr* d) {
        if (*d) Napi::MemoryManagement::AdjustExternalMemory(e, -bytes);
        delete d;
      });
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  napi_type_tag_object(env, ext, &kPreparedTag);
  return ext;
}

// matmulDispose(handle): frees the repacked weight now; later use is an error.
Napi::Value dispose_js(const Napi::CallbackInfo& info) {
  PreparedPtr* slot = prepared_slot(info, 0);
  if (*slot) {
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -prepared_bytes(**slot));
    slot->reset();
  }
  return info.Env().Undefined();
}

// matmulUnprepare(handle) -> { codes, scales, zeros | null } in the canonical layout
Napi::Value unprepare_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const PreparedPtr p = arg_prepared(info, 0);
  const size_t G = (size_t)p->G;
  Span cs, ss{}, zs{nullptr, 0, p->param_dtype};
  Napi::Uint8Array codes = make_bytes(env, (size_t)(p->N * qf_packed_row_bytes(4, p->K)), &cs);
  Napi::Object out = Napi::Object::New(env);
  out.Set("codes", codes);
  out.Set("scales", make_float_array(env, p->param_dtype, (size_t)p->N * G, &ss));
  out.Set("zeros", p->symmetric ? env.Null() : Napi::Value(make_float_array(env, p->param_dtype, (size_t)p->N * G, &zs)));
  Status st = unprepare_int4(*p, cs, ss, zs);
  if (!st.ok()) throw ArgError{st};
  return out;
}

// matmul(x, xDtype, M, handle|null, codes, scales, zeros|null, paramDtype, N, K, bits, groupSize,
//        symmetric, accuracy, async) -> Float32Array (M, N)
Napi::Value matmul_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType xd = arg_dtype(info, 1, "xDtype");
  Span x = arg_span(info, 0, "x", xd);
  const int64_t M = arg_int(info, 2, "M");
  PreparedPtr prep;
  if (!arg_is_null(info, 3)) prep = arg_prepared(info, 3);
  const CanonicalWeight w = arg_canonical(info, 4);
  const MatmulAccuracy acc = arg_accuracy(info, 13);
  const bool async = arg_bool(info, 14, "async");
  if (M <= 0 || w.N <= 0 || w.K <= 0 || M > (int64_t(1) << 40) / w.N)
    throw ArgError{error(Code::ShapeMismatch, "Expected M in [1, 2^40 / N] but received " + std::to_string(M))};
  QF_PRECHECK(info, async, input_len(x, (size_t)(M * w.K), "x"));
  QF_PRECHECK(info, async, input_len(w.codes, (size_t)(w.N * qf_packed_row_bytes(w.spec.bits, w.K)), "codes", "bytes"));
  Span ys;
  Napi::Object y = make_float_array(env, DType::F32, (size_t)(M * w.N), &ys);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(y));
  return run_op(info, async, {info[0], info[4], info[5], info[6], y},
                [=] { return dequant_matmul(ys, x, M, &w, prep.get(), acc); },
                [ref](Napi::Env) { return ref->Value(); });
}

// sgemm(x, w, M, N, K, async) -> Float32Array (M, N): the fp32 baseline
Napi::Value sgemm_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span x = arg_span(info, 0, "x", DType::F32);
  Span w = arg_span(info, 1, "w", DType::F32);
  const int64_t M = arg_int(info, 2, "M"), N = arg_int(info, 3, "N"), K = arg_int(info, 4, "K");
  const bool async = arg_bool(info, 5, "async");
  if (M <= 0 || N <= 0 || K <= 0 || M > (int64_t(1) << 40) / N || M > (int64_t(1) << 40) / K || N > (int64_t(1) << 40) / K)
    throw ArgError{error(Code::ShapeMismatch, "Expected positive M, N, K but received M=" + std::to_string(M) +
                                                  ", N=" + std::to_string(N) + ", K=" + std::to_string(K))};
  QF_PRECHECK(info, async, input_len(x, (size_t)(M * K), "x"));
  QF_PRECHECK(info, async, input_len(w, (size_t)(N * K), "w"));
  Span ys;
  Napi::Object y = make_float_array(env, DType::F32, (size_t)(M * N), &ys);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(y));
  return run_op(info, async, {info[0], info[1], y}, [=] { return sgemm_nt(ys, x, w, M, N, K); },
                [ref](Napi::Env) { return ref->Value(); });
}

}  // namespace

void register_matmul(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "matmulPrepare", prepare_js);
  QF_EXPORT(exports, "matmulUnprepare", unprepare_js);
  QF_EXPORT(exports, "matmulDispose", dispose_js);
  QF_EXPORT(exports, "matmul", matmul_js);
  QF_EXPORT(exports, "sgemm", sgemm_js);
}

}  // namespace qf
