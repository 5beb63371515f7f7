// The CPU addon's module: each op family registers its own entry points.
#include "napi_util.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  qf::register_backend(env, exports);
  qf::register_quant(env, exports);
  qf::register_llama(env, exports);
  qf::register_matmul(env, exports);
  qf::register_probe(env, exports);
  qf::register_engine(env, exports);
  qf::register_io(env, exports);
  qf::register_gptq(env, exports);
  qf::register_qlinear(env, exports);
  qf::register_finite(env, exports);
  qf::register_fault(env, exports);
  // 3: main's engine/io/gptq/qlinear (its 2) together with firstNonFinite, external
  // output buffers and refused SharedArrayBuffer views (reliab's 2): a build of either
  // parent is stale and fails to load with the rebuild hint
  exports.Set("abiVersion", Napi::Number::New(env, 3));
  return exports;
}
}  // namespace

NODE_API_MODULE(quantform, Init)
