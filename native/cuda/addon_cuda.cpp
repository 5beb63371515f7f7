// The CUDA module, quantform_cuda.node: cudaInfo() never fails (no driver, no GPU
// and too old a GPU all come back as available: false with the reason), and each
// CUDA op family registers its entry points here.
#include <cuda_runtime.h>

#include <string>

#include "../addon/napi_util.h"

namespace qf {
void register_cuda_matmul(Napi::Env env, Napi::Object exports);

namespace {

// Kernels are built for sm_80 and sm_90 (+ PTX for newer): older GPUs cannot run them.
constexpr int kMinMajor = 8;

Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int driver = 0, runtime = 0, count = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  o.Set("driverVersion", driver);
  o.Set("runtimeVersion", runtime);
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    o.Set("available", false);
    o.Set("reason", e != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e) : std::string("no CUDA device"));
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return o;
  }
  cudaDeviceProp p;
  const cudaError_t pe = cudaGetDeviceProperties(&p, 0);
  if (pe != cudaSuccess) {
    o.Set("available", false);
    o.Set("reason", std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(pe));
    return o;
  }
  o.Set("device", p.name);
  o.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
  o.Set("memoryBytes", (double)p.totalGlobalMem);
  if (p.major < kMinMajor) {
    o.Set("available", false);
    o.Set("reason", std::string("compute capability ") + std::to_string(p.major) + "." + std::to_string(p.minor) +
                        " is below 8.0, the oldest this build has kernels for");
    return o;
  }
  o.Set("available", true);
  return o;
}

}  // namespace

void register_cuda_info(Napi::Env env, Napi::Object exports) { QF_EXPORT(exports, "cudaInfo", cuda_info); }

}  // namespace qf

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  qf::register_cuda_info(env, exports);
  qf::register_cuda_matmul(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(quantform_cuda, Init)
