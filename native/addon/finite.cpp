// firstNonFinite(data, dtype) -> index of the first NaN/Inf, or -1 (quantform/finite.h).
#include "napi_util.h"
#include "quantform/finite.h"

namespace qf {
namespace {

Napi::Value first_non_finite_js(const Napi::CallbackInfo& info) {
  const DType dt = arg_dtype(info, 1, "dtype");
  const Span s = arg_span(info, 0, "data", dt);
  int64_t index = -1;
  const Status st = first_non_finite(s, &index);
  if (!st.ok()) throw ArgError{st};
  return Napi::Number::New(info.Env(), (double)index);
}

}  // namespace

void register_finite(Napi::Env env, Napi::Object exports) { QF_EXPORT(exports, "firstNonFinite", first_non_finite_js); }

}  // namespace qf
