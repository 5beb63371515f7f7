// backendInfo(), setKernelPolicy(), setThreads(): what the CPU addon runs on.
#include <cstdlib>

#include "napi_util.h"
#include "quantform/dispatch.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

Napi::Value backend_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures& f = cpu_features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("tier", tier_name(active_tier()));
  o.Set("bestTier", tier_name(best_supported_tier()));
  o.Set("threads", num_threads());
  o.Set("vendor", f.vendor);
  o.Set("cpu", f.brand);
  Napi::Object feats = Napi::Object::New(env);
  feats.Set("avx2", f.avx2 && f.os_ymm);
  feats.Set("fma", f.fma);
  feats.Set("f16c", f.f16c);
  feats.Set("bmi2", f.bmi2);
  feats.Set("avx512f", f.avx512f && f.os_zmm);
  feats.Set("avx512bw", f.avx512bw && f.os_zmm);
  feats.Set("avx512vl", f.avx512vl && f.os_zmm);
  feats.Set("avx512dq", f.avx512dq && f.os_zmm);
  feats.Set("avx512vnni", f.avx512vnni && f.os_zmm);
  feats.Set("avx512bf16", f.avx512bf16 && f.os_zmm);
  feats.Set("amxBf16", f.amx_tile && f.amx_bf16 && f.os_amx);
  feats.Set("amxInt8", f.amx_tile && f.amx_int8 && f.os_amx);
  o.Set("features", feats);
  // whether the bf16 matmul runs on AMX tiles now, and why not
  Napi::Object amx = Napi::Object::New(env);
  amx.Set("active", amx_available());
  const std::string why = amx_status();
  amx.Set("reason", why.empty() ? env.Null() : Napi::Value(Napi::String::New(env, why)));
  o.Set("amx", amx);
  const char* env_policy = getenv("QUANTFORM_KERNELS");
  o.Set("envPolicy", env_policy ? Napi::Value(Napi::String::New(env, env_policy)) : env.Null());
  return o;
}

Napi::Value set_policy(const Napi::CallbackInfo& info) {
  const std::string s = arg_string(info, 0, "policy");
  Tier t;
  if (s == "auto") t = best_supported_tier();
  else if (!parse_tier(s, &t))
    throw ArgError{error(Code::InvalidArgument, "Expected 'auto', 'ref', 'avx2' or 'avx512' for policy but received '" + s + "'")};
  if (!set_kernel_policy(t))
    throw ArgError{error(Code::Unsupported, "Kernel tier '" + s + "' is not supported by this CPU (best: " +
                                                tier_name(best_supported_tier()) + ")")};
  return Napi::String::New(info.Env(), tier_name(active_tier()));
}

Napi::Value set_threads(const Napi::CallbackInfo& info) {
  const int64_t n = arg_int(info, 0, "threads");
  if (n < 0 || n > 1024)
    throw ArgError{error(Code::InvalidArgument, "Expected integer in [0, 1024] for threads but received " + std::to_string(n))};
  set_num_threads((int)n);
  return Napi::Number::New(info.Env(), num_threads());
}

Napi::Value set_amx(const Napi::CallbackInfo& info) {
  set_amx_enabled(arg_bool(info, 0, "enabled"));
  return Napi::Boolean::New(info.Env(), amx_available());
}

}  // namespace

void register_backend(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "setAmx", set_amx);
  QF_EXPORT(exports, "backendInfo", backend_info);
  QF_EXPORT(exports, "setKernelPolicy", set_policy);
  QF_EXPORT(exports, "setThreads", set_threads);
}

}  // namespace qf
