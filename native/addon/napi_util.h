// Argument unwrapping for the addon: every typed array is checked for its kind,
// its attachment and its length before native code sees a pointer; every Status
// becomes a JS Error whose `code` is the status name (lib/errors.ts).
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

// Thrown while unwrapping arguments; the entry point turns it into a JS error.
struct ArgError {
  Status status;
};

Napi::Error to_js_error(Napi::Env env, const Status& st);

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name);
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name);
DType arg_dtype(const Napi::CallbackInfo& info, size_t i, const char* name);
// A Float32Array (f32) or Uint16Array (f16/bf16, as `dtype` says) or Uint8Array (bytes).
Span arg_span(const Napi::CallbackInfo& info, size_t i, const char* name, DType dtype);
Span arg_bytes(const Napi::CallbackInfo& info, size_t i, const char* name);
struct I8Span;  // quantform/engine.h
// An Int8Array (activation codes; engine.h I8Span).
I8Span arg_int8(const Napi::CallbackInfo& info, size_t i, const char* name);
// An Int32Array (token ids, targets), carried as a Span of 4-byte elements.
Span arg_int32(const Napi::CallbackInfo& info, size_t i, const char* name);
// The same checks for a typed array that is not an argument itself (a config
// object's field): kind, SharedArrayBuffer refused, detached refused.
Span value_span(Napi::Env env, const Napi::Value& v, const char* name, DType dtype);
Span value_int32(Napi::Env env, const Napi::Value& v, const char* name);
// Any one element type (want_name for the message: "Int8Array"), the same checks.
Span value_typed(Napi::Env env, const Napi::Value& v, const char* name, napi_typedarray_type want, const char* want_name);
bool arg_is_null(const Napi::CallbackInfo& info, size_t i);
// An optional Float32Array: null or undefined is an absent buffer (null data, length 0).
Span f32_or_null(const Napi::CallbackInfo& info, size_t i, const char* name);
struct I32Array {
  int32_t* data;
  size_t len;
};
// An Int32Array at info[i]; with `optional`, null or undefined gives {nullptr, 0}.
I32Array arg_int32_array(const Napi::CallbackInfo& info, size_t i, const char* name, bool optional);
// (bits, groupSize, symmetric) at info[i], info[i + 1], info[i + 2]; f16_params false.
QuantSpec arg_quant_spec(const Napi::CallbackInfo& info, size_t i);

// o.inputBits (optional): FptTransforms::input_bits, an array of 4 integers (0 = the activation bits),
// read into out (4); absent leaves out as it is.
void fpt_input_bits(const Napi::Object& o, int* out);
// Zero points at info[i]: an empty span when symmetric, else a required array of `dtype`.
Span arg_zeros(const Napi::CallbackInfo& info, size_t i, bool symmetric, DType dtype);

// Runs `compute` now (sync) or on a libuv worker (async, returns a Promise).
// `keep` holds the JS inputs/outputs alive while the worker runs; `compute`
// must not touch N-API. `result` builds the return value on the main thread.
Napi::Value run_op(const Napi::CallbackInfo& info, bool async, std::vector<Napi::Value> keep,
                   std::function<Status()> compute, std::function<Napi::Value(Napi::Env)> result);

// The addon's one exception boundary. Whatever a C++ frame threw becomes a Status
// that names the op: ArgError keeps its own status, std::bad_alloc (and
// std::length_error, a size no allocator can serve) is QF_OUT_OF_MEMORY, anything
// else QF_INTERNAL. Used by guarded() on the main thread and by run_op's worker.
Status status_from_exception(const std::exception_ptr& e, const char* op);
// Throws `st` into JS; falls back to N-API's C calls when building the error
// itself fails (a real out-of-memory), so nothing escapes into Node's frames.
void throw_js(Napi::Env env, const Status& st);

// The op whose entry point runs on this thread (guarded sets it; run_op copies it
// into its worker so async failures name the op too).
class OpScope {
 public:
  explicit OpScope(const char* op);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
  static const char* current();

 private:
  const char* prev_;
};

// Runs an entry point's body behind the boundary. A Napi::Error is a JS exception
// already pending: node-addon-api's wrapper rethrows it into JS.
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, const char* op, F&& fn) {
  OpScope scope(op);
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw_js(info.Env(), status_from_exception(std::current_exception(), op));
  }
  return info.Env().Undefined();
}

// Output arrays (zeroed). A length beyond kMaxOutputElements is an ArgError; an
// allocation failure std::bad_alloc: never V8's process abort.
constexpr size_t kMaxOutputElements = size_t(1) << 32;
Napi::Value make_typed_array(Napi::Env env, napi_typedarray_type type, size_t n, void** data);
Napi::Object make_float_array(Napi::Env env, DType dtype, size_t n, Span* out);
Napi::Uint8Array make_bytes(Napi::Env env, size_t n, Span* out);
// Inputs whose length sizes an output are checked before the output is allocated
// (the kernels check again); the message matches the kernels' own.
Status input_len(const Span& s, size_t want, const char* name, const char* unit = "elements");
// A failed check: thrown for a sync call, a rejected promise for an async one.
Napi::Value fail_op(const Napi::CallbackInfo& info, bool async, const Status& st);
#define QF_PRECHECK(info, async, expr)                                   \
  do {                                                                   \
    const ::qf::Status qf_pre_ = (expr);                                 \
    if (!qf_pre_.ok()) return ::qf::fail_op((info), (async), qf_pre_);   \
  } while (0)

void register_backend(Napi::Env env, Napi::Object exports);
void register_quant(Napi::Env env, Napi::Object exports);
void register_llama(Napi::Env env, Napi::Object exports);
void register_matmul(Napi::Env env, Napi::Object exports);
void register_probe(Napi::Env env, Napi::Object exports);
void register_engine(Napi::Env env, Napi::Object exports);
void register_io(Napi::Env env, Napi::Object exports);
void register_gptq(Napi::Env env, Napi::Object exports);
void register_qlinear(Napi::Env env, Napi::Object exports);
void register_finite(Napi::Env env, Napi::Object exports);
// faultAlloc(n), exported only when QUANTFORM_FAULT_ALLOC is set at load (fault_alloc.cpp)
void register_fault(Napi::Env env, Napi::Object exports);

}  // namespace qf

// Registers an entry point. Its boundary starts before node-addon-api builds the
// CallbackInfo (which allocates for more than six arguments), so even that failure
// is a QF_OUT_OF_MEMORY error naming the op.
// QF_EXPORT_IN: an entry point of a nested object (exports.engine, exports.io); its
// errors name it "<ns>.<name>".
#define QF_EXPORT(exports, name, fn) ::qf::export_function(env, exports, name, fn)
#define QF_EXPORT_IN(exports, ns, name, fn) ::qf::export_function(env, exports, name, fn, ns)

namespace qf {
void export_function(Napi::Env env, Napi::Object exports, const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&),
                     const char* ns = nullptr);
}  // namespace qf
