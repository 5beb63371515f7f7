#include "napi_util.h"

#include <cmath>
#include <memory>
#include <new>
#include <stdexcept>

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
thread_local const char* t_op = "native call";

// What the error path may still do when memory is exhausted: N-API's C calls only.
napi_value fallback_error(napi_env env) {
  napi_value code = nullptr, msg = nullptr, err = nullptr;
  napi_create_string_utf8(env, "QF_OUT_OF_MEMORY", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, "out of memory while reporting an error", NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &err);
  if (err && code) napi_set_named_property(env, err, "code", code);
  return err;
}

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, const char* op, std::vector<Napi::Value> keep, std::function<Status()> compute,
           std::function<Napi::Value(Napi::Env)> result)
      : Napi::AsyncWorker(env), op_(op), deferred_(Napi::Promise::Deferred::New(env)),
        compute_(std::move(compute)), result_(std::move(result)) {
    for (auto& v : keep)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  // runs on a libuv thread: nothing may escape it
  void Execute() override {
    try {
      status_ = compute_();
    } catch (...) {
      status_ = status_from_exception(std::current_exception(), op_);
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    try {
      if (!status_.ok()) { deferred_.Reject(to_js_error(Env(), status_).Value()); return; }
      deferred_.Resolve(result_(Env()));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (...) {
      reject_plain(status_from_exception(std::current_exception(), op_));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void reject_plain(const Status& st) {
    try {
      deferred_.Reject(to_js_error(Env(), st).Value());
    } catch (...) {
      napi_value e = fallback_error(Env());
      if (e) deferred_.Reject(Napi::Value(Env(), e));
    }
  }

  const char* op_;
  Napi::Promise::Deferred deferred_;
  std::function<Status()> compute_;
  std::function<Napi::Value(Napi::Env)> result_;
  std::vector<Napi::ObjectReference> refs_;
  Status status_;
};
}  // namespace

OpScope::OpScope(const char* op) : prev_(t_op) { t_op = op; }
OpScope::~OpScope() { t_op = prev_; }
const char* OpScope::current() { return t_op; }

Status status_from_exception(const std::exception_ptr& e, const char* op) {
  const std::string who = op ? op : "native call";
  try {
    std::rethrow_exception(e);
  } catch (const ArgError& a) {
    return a.status;
  } catch (const std::bad_alloc&) {
    return error(Code::OutOfMemory, who + ": out of memory (std::bad_alloc)");
  } catch (const std::length_error& l) {
    return error(Code::OutOfMemory, who + ": out of memory (" + l.what() + ")");
  } catch (const std::exception& x) {
    return error(Code::Internal, who + ": internal error: " + x.what());
  } catch (...) {
    return error(Code::Internal, who + ": internal error (unknown exception)");
  }
}

void throw_js(Napi::Env env, const Status& st) {
  try {
    to_js_error(env, st).ThrowAsJavaScriptException();
  } catch (...) {
    if (napi_value e = fallback_error(env)) napi_throw(env, e);
  }
}

namespace {
struct Entry {
  const char* name;
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};

napi_value call_entry(napi_env env, napi_callback_info cbinfo) noexcept {
  void* data = nullptr;
  napi_get_cb_info(env, cbinfo, nullptr, nullptr, nullptr, &data);
  const Entry* e = static_cast<const Entry*>(data);
  try {
    Napi::CallbackInfo info(env, cbinfo);
    return guarded(info, e->name, [&] { return e->fn(info); });
  } catch (const Napi::Error& err) {
    err.ThrowAsJavaScriptException();
  } catch (...) {
    throw_js(Napi::Env(env), status_from_exception(std::current_exception(), e->name));
  }
  return nullptr;
}
}  // namespace

void export_function(Napi::Env env, Napi::Object exports, const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
  auto entry = std::make_unique<Entry>(Entry{name, fn});
  napi_value f = nullptr;
  NAPI_THROW_IF_FAILED_VOID(env, napi_create_function(env, name, NAPI_AUTO_LENGTH, call_entry, entry.get(), &f));
  // one Entry per function object (each worker_thread loads the module anew)
  NAPI_THROW_IF_FAILED_VOID(env, napi_add_finalizer(env, f, entry.get(),
                                                    [](napi_env, void* d, void*) { delete static_cast<Entry*>(d); },
                                                    nullptr, nullptr));
  entry.release();
  exports.Set(name, Napi::Value(env, f));
}

Napi::Value run_op(const Napi::CallbackInfo& info, bool async, std::vector<Napi::Value> keep,
                   std::function<Status()> compute, std::function<Napi::Value(Napi::Env)> result) {
  Napi::Env env = info.Env();
  if (!async) {
    const Status st = compute();  // exceptions: guarded() maps them with the op's name
    if (!st.ok()) throw ArgError{st};
    return result(env);
  }
  OpWorker* w = new OpWorker(env, OpScope::current(), std::move(keep), std::move(compute), std::move(result));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace qf
