// measureMachine(bytes, reps, seconds, parts, async): the machine limits benchmarks
// report their numbers against (quantform/probe.h); parts is a ProbePart bitmask.
#include <memory>

#include "napi_util.h"
#include "quantform/probe.h"

namespace qf {
namespace {

Napi::Value measure_js(const Napi::CallbackInfo& info) {
  const int64_t bytes = arg_int(info, 0, "bytes");
  const int64_t reps = arg_int(info, 1, "reps");
  const double seconds = arg_number(info, 2, "seconds");
  const int64_t parts = arg_int(info, 3, "parts");
  const bool async = arg_bool(info, 4, "async");
  if (parts < 1 || parts > kProbeAll)
    throw ArgError{error(Code::InvalidArgument, "Expected integer in [1, 31] for parts but received " + std::to_string(parts))};
  if (reps < 1 || reps > 1000)
    throw ArgError{error(Code::InvalidArgument, "Expected integer in [1, 1000] for reps but received " + std::to_string(reps))};
  if (!(seconds > 0 && seconds <= 60))
    throw ArgError{error(Code::InvalidArgument, "Expected number in (0, 60] for seconds but received " + std::to_string(seconds))};
  auto lim = std::make_shared<MachineLimits>();
  return run_op(info, async, {}, [=] { return measure_machine(lim.get(), bytes, (int)reps, seconds, (unsigned)parts); },
                [lim](Napi::Env env) {
                  Napi::Object o = Napi::Object::New(env);
                  o.Set("readGBps", lim->read_gbps);
                  o.Set("readBytes", (double)lim->read_bytes);
                  o.Set("copyGBps", lim->copy_gbps);
                  o.Set("fmaGflops", lim->fma_gflops);
                  o.Set("vnniGops", lim->vnni_gops > 0 ? Napi::Value(Napi::Number::New(env, lim->vnni_gops)) : env.Null());
                  o.Set("amxInt8Gops", lim->amx_int8_gops > 0 ? Napi::Value(Napi::Number::New(env, lim->amx_int8_gops)) : env.Null());
                  o.Set("threads", lim->threads);
                  return o;
                });
}

}  // namespace

void register_probe(Napi::Env env, Napi::Object exports) { QF_EXPORT(exports, "measureMachine", measure_js); }

}  // namespace qf
