// Memory bandwidth probe for benchmarks: the machine's own limit, measured in the
// same run as the kernels it judges. Streams a buffer far larger than the caches
// on every pool thread; read = sum of 64-bit words (the compiler vectorizes it),
// copy = memcpy (glibc's wide-register copy).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "napi_util.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

// measureMemoryBandwidth(mode: 'read'|'copy', bytes, iters) -> { gbps: number[] } (one per iteration)
Napi::Value measure_js(const Napi::CallbackInfo& info) {
  const std::string mode = arg_string(info, 0, "mode");
  const int64_t bytes = arg_int(info, 1, "bytes");
  const int64_t iters = arg_int(info, 2, "iters");
  if (mode != "read" && mode != "copy")
    throw ArgError{error(Code::InvalidArgument, "Expected 'read' or 'copy' for mode but received '" + mode + "'")};
  if (bytes < (1 << 20) || bytes > (int64_t(1) << 34))
    throw ArgError{error(Code::InvalidArgument, "Expected bytes in [1 MiB, 16 GiB] but received " + std::to_string(bytes))};
  if (iters < 1 || iters > 1000)
    throw ArgError{error(Code::InvalidArgument, "Expected iters in [1, 1000] but received " + std::to_string(iters))};
  const size_t words = (size_t)bytes / 8;
  std::vector<uint64_t> src(words), dst(mode == "copy" ? words : 0);
  // touch every page first, on the pool threads, so first-touch placement matches the measurement
  parallel_for((int64_t)words, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) src[(size_t)i] = (uint64_t)i * 0x9e3779b97f4a7c15ull;
    if (!dst.empty()) memset(dst.data() + b, 0, (size_t)(e - b) * 8);
  });
  Napi::Array out = Napi::Array::New(info.Env());
  volatile uint64_t sink = 0;
  for (int64_t it = 0; it < iters; it++) {
    std::vector<uint64_t> partial((size_t)num_threads() * 8, 0);
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for((int64_t)words, 1 << 16, [&](int64_t b, int64_t e) {
      if (mode == "copy") {
        memcpy(dst.data() + b, src.data() + b, (size_t)(e - b) * 8);
        return;
      }
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) {
        a0 += src[(size_t)i]; a1 += src[(size_t)i + 1]; a2 += src[(size_t)i + 2]; a3 += src[(size_t)i + 3];
      }
      for (; i < e; i++) a0 += src[(size_t)i];
      sink = sink + a0 + a1 + a2 + a3;
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // copy moves each byte twice (read + write)
    const double moved = (double)bytes * (mode == "copy" ? 2.0 : 1.0);
    out.Set((uint32_t)it, Napi::Number::New(info.Env(), moved / s / 1e9));
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("gbps", out);
  return o;
}

}  // namespace

void register_membw(Napi::Env env, Napi::Object exports) { QF_EXPORT(exports, "measureMemoryBandwidth", measure_js); }

}  // namespace qf
