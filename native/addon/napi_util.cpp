#include "napi_util.h"

#include <cmath>
#include <new>

namespace qf {

Napi::Error to_js_error(Napi::Env env, const Status& st) {
  Napi::Error e = Napi::Error::New(env, st.message);
  e.Set("code", Napi::String::New(env, code_name(st.code)));
  return e;
}

namespace {
[[noreturn]] void fail(Code c, std::string msg) { throw ArgError{error(c, std::move(msg))}; }

const char* js_type(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "boolean";
    case napi_number: return "number";
    case napi_string: return "string";
    case napi_object: return v.IsTypedArray() ? "typed array" : "object";
    case napi_function: return "function";
    default: return "value";
  }
}
}  // namespace

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber()) fail(Code::InvalidArgument, std::string("Expected integer for ") + name + " but received " + js_type(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9007199254740991.0)
    fail(Code::InvalidArgument, std::string("Expected integer for ") + name + " but received " + std::to_string(d));
  return (int64_t)d;
}

double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber()) fail(Code::InvalidArgument, std::string("Expected number for ") + name + " but received " + js_type(v));
  return v.As<Napi::Number>().DoubleValue();
}

bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsBoolean()) fail(Code::InvalidArgument, std::string("Expected boolean for ") + name + " but received " + js_type(v));
  return v.As<Napi::Boolean>().Value();
}

std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsString()) fail(Code::InvalidArgument, std::string("Expected string for ") + name + " but received " + js_type(v));
  return v.As<Napi::String>().Utf8Value();
}

DType arg_dtype(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const std::string s = arg_string(info, i, name);
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  fail(Code::DtypeMismatch, std::string("Expected 'f32', 'f16' or 'bf16' for ") + name + " but received '" + s + "'");
}

bool arg_is_null(const Napi::CallbackInfo& info, size_t i) { return info[i].IsNull() || info[i].IsUndefined(); }

namespace {
Napi::TypedArray typed_array(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsTypedArray()) fail(Code::InvalidArgument, std::string("Expected typed array for ") + name + " but received " + js_type(v));
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.ArrayBuffer().IsDetached()) fail(Code::InvalidArgument, std::string("Expected attached buffer for ") + name + " but it is detached");
  return ta;
}
}  // namespace

Span arg_span(const Napi::CallbackInfo& info, size_t i, const char* name, DType dtype) {
  Napi::TypedArray ta = typed_array(info, i, name);
  const napi_typedarray_type want = dtype == DType::F32 ? napi_float32_array : napi_uint16_array;
  if (ta.TypedArrayType() != want)
    fail(Code::DtypeMismatch, std::string("Expected ") + (dtype == DType::F32 ? "Float32Array" : "Uint16Array") +
                                  " for " + name + " (" + dtype_name(dtype) + ")");
  uint8_t* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  return Span{base, ta.ElementLength(), dtype};
}

Span arg_bytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::TypedArray ta = typed_array(info, i, name);
  if (ta.TypedArrayType() != napi_uint8_array)
    fail(Code::DtypeMismatch, std::string("Expected Uint8Array for ") + name);
  uint8_t* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  return Span{base, ta.ElementLength(), DType::F32};
}

I32Array arg_int32_array(const Napi::CallbackInfo& info, size_t i, const char* name, bool optional) {
  if (optional && arg_is_null(info, i)) return I32Array{nullptr, 0};
  Napi::TypedArray ta = typed_array(info, i, name);
  if (ta.TypedArrayType() != napi_int32_array) fail(Code::DtypeMismatch, std::string("Expected Int32Array for ") + name);
  return I32Array{reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset()), ta.ElementLength()};
}

QuantSpec arg_quant_spec(const Napi::CallbackInfo& info, size_t i) {
  return QuantSpec{(int)arg_int(info, i, "bits"), arg_int(info, i + 1, "groupSize"), arg_bool(info, i + 2, "symmetric"), false};
}

Span arg_zeros(const Napi::CallbackInfo& info, size_t i, bool symmetric, DType dtype) {
  if (symmetric) return Span{nullptr, 0, dtype};
  if (arg_is_null(info, i)) fail(Code::InvalidArgument, "Expected zeros for asymmetric quantization but received null");
  return arg_span(info, i, "zeros", dtype);
}

Napi::Object make_float_array(Napi::Env env, DType dtype, size_t n, Span* out) {
  if (dtype == DType::F32) {
    Napi::Float32Array a = Napi::Float32Array::New(env, n);
    *out = Span{a.Data(), n, dtype};
    return a;
  }
  Napi::Uint16Array a = Napi::Uint16Array::New(env, n);
  *out = Span{a.Data(), n, dtype};
  return a;
}

namespace {
class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, std::vector<Napi::Value> keep, std::function<Status()> compute,
           std::function<Napi::Value(Napi::Env)> result)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)),
        compute_(std::move(compute)), result_(std::move(result)) {
    for (auto& v : keep)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      status_ = compute_();
    } catch (const std::bad_alloc&) {
      status_ = error(Code::OutOfMemory, "Out of memory");
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    if (!status_.ok()) { deferred_.Reject(to_js_error(Env(), status_).Value()); return; }
    deferred_.Resolve(result_(Env()));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<Status()> compute_;
  std::function<Napi::Value(Napi::Env)> result_;
  std::vector<Napi::ObjectReference> refs_;
  Status status_;
};
}  // namespace

Napi::Value run_op(const Napi::CallbackInfo& info, bool async, std::vector<Napi::Value> keep,
                   std::function<Status()> compute, std::function<Napi::Value(Napi::Env)> result) {
  Napi::Env env = info.Env();
  if (!async) {
    Status st;
    try {
      st = compute();
    } catch (const std::bad_alloc&) {
      st = error(Code::OutOfMemory, "Out of memory");
    }
    if (!st.ok()) throw ArgError{st};
    return result(env);
  }
  OpWorker* w = new OpWorker(env, std::move(keep), std::move(compute), std::move(result));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value guarded(const Napi::CallbackInfo& info, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
  try {
    return fn(info);
  } catch (const ArgError& e) {
    to_js_error(info.Env(), e.status).ThrowAsJavaScriptException();
  } catch (const std::bad_alloc&) {
    to_js_error(info.Env(), error(Code::OutOfMemory, "Out of memory")).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

}  // namespace qf
