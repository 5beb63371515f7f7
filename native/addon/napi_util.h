// Argument unwrapping for the addon: every typed array is checked for its kind,
// its attachment and its length before native code sees a pointer; every Status
// becomes a JS Error whose `code` is the status name (lib/errors.ts).
#pragma once
#include <napi.h>

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
bool arg_is_null(const Napi::CallbackInfo& info, size_t i);
// (bits, groupSize, symmetric) at info[i], info[i + 1], info[i + 2]; f16_params false.
QuantSpec arg_quant_spec(const Napi::CallbackInfo& info, size_t i);
// Zero points at info[i]: an empty span when symmetric, else a required array of `dtype`.
Span arg_zeros(const Napi::CallbackInfo& info, size_t i, bool symmetric, DType dtype);

// Runs `compute` now (sync) or on a libuv worker (async, returns a Promise).
// `keep` holds the JS inputs/outputs alive while the worker runs; `compute`
// must not touch N-API. `result` builds the return value on the main thread.
Napi::Value run_op(const Napi::CallbackInfo& info, bool async, std::vector<Napi::Value> keep,
                   std::function<Status()> compute, std::function<Napi::Value(Napi::Env)> result);

// Wraps an entry point: ArgError and std::bad_alloc become JS errors.
Napi::Value guarded(const Napi::CallbackInfo& info, Napi::Value (*fn)(const Napi::CallbackInfo&));

Napi::Object make_float_array(Napi::Env env, DType dtype, size_t n, Span* out);

void register_backend(Napi::Env env, Napi::Object exports);
void register_quant(Napi::Env env, Napi::Object exports);
void register_llama(Napi::Env env, Napi::Object exports);
void register_matmul(Napi::Env env, Napi::Object exports);
void register_probe(Napi::Env env, Napi::Object exports);
void register_train(Napi::Env env, Napi::Object exports);
void register_gptq(Napi::Env env, Napi::Object exports);
void register_qlinear(Napi::Env env, Napi::Object exports);

}  // namespace qf

#define QF_EXPORT(exports, name, fn)                                                                  \
  exports.Set(name, Napi::Function::New(                                                              \
                        env, [](const Napi::CallbackInfo& info) { return ::qf::guarded(info, fn); }, name))
