#include "napi_util.h"

#include "quantform/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
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

Span f32_or_null(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return arg_is_null(info, i) ? Span{nullptr, 0, DType::F32} : arg_span(info, i, name, DType::F32);
}

namespace {
struct View {
  napi_typedarray_type type;
  void* data;
  size_t len;
};

// A typed array's element type, data and length, or an ArgError: not a typed array,
// backed by a SharedArrayBuffer (another thread may write it while a kernel reads,
// and N-API gives no ArrayBuffer view of it), or detached.
View typed_array(napi_env env, const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray()) fail(Code::InvalidArgument, std::string("Expected typed array for ") + name + " but received " + js_type(v));
  View r{};
  napi_value ab = nullptr;
  size_t offset = 0;
  if (napi_get_typedarray_info(env, v, &r.type, &r.len, &r.data, &ab, &offset) != napi_ok)
    fail(Code::InvalidArgument, std::string("Cannot read the typed array passed for ") + name);
  bool is_ab = false, detached = false;
  napi_is_arraybuffer(env, ab, &is_ab);
  if (!is_ab) fail(Code::InvalidArgument, std::string("Expected a non-shared buffer for ") + name + " but received a SharedArrayBuffer view");
  if (napi_is_detached_arraybuffer(env, ab, &detached) != napi_ok || detached)
    fail(Code::InvalidArgument, std::string("Expected attached buffer for ") + name + " but it is detached");
  if (r.len == 0) r.data = nullptr;
  return r;
}
}  // namespace

Span value_span(Napi::Env env, const Napi::Value& v, const char* name, DType dtype) {
  const View ta = typed_array(env, v, name);
  const napi_typedarray_type want = dtype == DType::F32 ? napi_float32_array : napi_uint16_array;
  if (ta.type != want)
    fail(Code::DtypeMismatch, std::string("Expected ") + (dtype == DType::F32 ? "Float32Array" : "Uint16Array") +
                                  " for " + name + " (" + dtype_name(dtype) + ")");
  return Span{ta.data, ta.len, dtype};
}

Span value_typed(Napi::Env env, const Napi::Value& v, const char* name, napi_typedarray_type want, const char* want_name) {
  const View ta = typed_array(env, v, name);
  if (ta.type != want) fail(Code::DtypeMismatch, std::string("Expected ") + want_name + " for " + name);
  return Span{ta.data, ta.len, DType::F32};
}

Span value_int32(Napi::Env env, const Napi::Value& v, const char* name) { return value_typed(env, v, name, napi_int32_array, "Int32Array"); }

Span arg_span(const Napi::CallbackInfo& info, size_t i, const char* name, DType dtype) {
  return value_span(info.Env(), info[i], name, dtype);
}

I8Span arg_int8(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Span s = value_typed(info.Env(), info[i], name, napi_int8_array, "Int8Array");
  return I8Span{static_cast<int8_t*>(s.data), s.len};
}

Span arg_bytes(const Napi::CallbackInfo& info, size_t i, const char* name) { return value_typed(info.Env(), info[i], name, napi_uint8_array, "Uint8Array"); }

Span arg_int32(const Napi::CallbackInfo& info, size_t i, const char* name) { return value_int32(info.Env(), info[i], name); }

I32Array arg_int32_array(const Napi::CallbackInfo& info, size_t i, const char* name, bool optional) {
  if (optional && arg_is_null(info, i)) return I32Array{nullptr, 0};
  const Span s = arg_int32(info, i, name);
  return I32Array{static_cast<int32_t*>(s.data), s.len};
}

void fpt_input_bits(const Napi::Object& o, int* out) {
  const Napi::Value v = o.Get("inputBits");
  if (v.IsUndefined() || v.IsNull()) return;
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 4)
    throw ArgError{error(Code::InvalidArgument, "Expected an array of 4 integers (qkv, o_proj, gate_up, down_proj) for inputBits")};
  const Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < 4; i++) {
    const Napi::Value e = a.Get(i);
    const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 0 && d <= 16) || d != (double)(int)d)
      throw ArgError{error(Code::InvalidArgument, "Expected an integer in [0, 16] for inputBits[" + std::to_string(i) + "]")};
    out[i] = (int)d;
  }
}

QuantSpec arg_quant_spec(const Napi::CallbackInfo& info, size_t i) {
  return QuantSpec{(int)arg_int(info, i, "bits"), arg_int(info, i + 1, "groupSize"), arg_bool(info, i + 2, "symmetric"), false};
}

Span arg_zeros(const Napi::CallbackInfo& info, size_t i, bool symmetric, DType dtype) {
  if (symmetric) return Span{nullptr, 0, dtype};
  if (arg_is_null(info, i)) fail(Code::InvalidArgument, "Expected zeros for asymmetric quantization but received null");
  return arg_span(info, i, "zeros", dtype);
}

// V8 aborts the process, rather than throwing, when ArrayBuffer::New cannot allocate
// or a typed array is longer than it allows; so outputs are zeroed native memory
// (calloc: a failure is QF_OUT_OF_MEMORY) handed to V8 as an external ArrayBuffer.
Napi::Value make_typed_array(Napi::Env env, napi_typedarray_type type, size_t n, void** data) {
  const size_t elem = type == napi_float32_array || type == napi_int32_array ? 4 : type == napi_uint16_array ? 2 : 1;
  if (n > kMaxOutputElements)
    throw ArgError{error(Code::ShapeMismatch, "An output of " + std::to_string(n) + " elements exceeds the " +
                                                  std::to_string(kMaxOutputElements) + " a typed array can hold")};
  void* p = std::calloc(std::max<size_t>(n, 1), elem);
  if (!p) throw std::bad_alloc();
  napi_value ab = nullptr, ta = nullptr;
  napi_status st = napi_create_external_arraybuffer(env, p, n * elem, [](napi_env, void* d, void*) { std::free(d); }, nullptr, &ab);
  if (st != napi_ok) {
    std::free(p);
    NAPI_THROW_IF_FAILED(env, st, Napi::Value());
  }
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, n, ab, 0, &ta), Napi::Value());
  *data = p;
  return Napi::Value(env, ta);
}

Napi::Object make_float_array(Napi::Env env, DType dtype, size_t n, Span* out) {
  void* p = nullptr;
  Napi::Value a = make_typed_array(env, dtype == DType::F32 ? napi_float32_array : napi_uint16_array, n, &p);
  *out = Span{p, n, dtype};
  return a.As<Napi::Object>();
}

Napi::Uint8Array make_bytes(Napi::Env env, size_t n, Span* out) {
  void* p = nullptr;
  Napi::Value a = make_typed_array(env, napi_uint8_array, n, &p);
  *out = Span{p, n, DType::F32};
  return a.As<Napi::Uint8Array>();
}

Status input_len(const Span& s, size_t want, const char* name, const char* unit) {
  if (s.len == want) return Status::Ok();
  return error(Code::ShapeMismatch, "Expected " + std::to_string(want) + " " + unit + " for " + name + " but received " +
                                        std::to_string(s.len));
}

Napi::Value fail_op(const Napi::CallbackInfo& info, bool async, const Status& st) {
  if (!async) throw ArgError{st};
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(info.Env());
  d.Reject(to_js_error(info.Env(), st).Value());
  return d.Promise();
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
  std::string op;  // the name errors carry: "<ns>.<name>" for a nested export
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};

napi_value call_entry(napi_env env, napi_callback_info cbinfo) noexcept {
  void* data = nullptr;
  napi_get_cb_info(env, cbinfo, nullptr, nullptr, nullptr, &data);
  const Entry* e = static_cast<const Entry*>(data);
  try {
    Napi::CallbackInfo info(env, cbinfo);
    return guarded(info, e->op.c_str(), [&] { return e->fn(info); });
  } catch (const Napi::Error& err) {
    err.ThrowAsJavaScriptException();
  } catch (...) {
    throw_js(Napi::Env(env), status_from_exception(std::current_exception(), e->op.c_str()));
  }
  return nullptr;
}
}  // namespace

void export_function(Napi::Env env, Napi::Object exports, const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&),
                     const char* ns) {
  auto entry = std::make_unique<Entry>(Entry{ns ? std::string(ns) + "." + name : std::string(name), fn});
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
