// The CPU addon's module: each op family registers its own entry points.
#include "napi_util.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  qf::register_backend(env, exports);
  qf::register_quant(env, exports);
  qf::register_llama(env, exports);
  qf::register_matmul(env, exports);
  qf::register_probe(env, exports);
  qf::register_train(env, exports);
  qf::register_finite(env, exports);
  qf::register_fault(env, exports);
  // 2: firstNonFinite; outputs in external buffers; SharedArrayBuffer views refused
  exports.Set("abiVersion", Napi::Number::New(env, 2));
  return exports;
}
}  // namespace

NODE_API_MODULE(quantform, Init)
