// N-API entry point of the quantized-linear backward (qlinear.h). Lengths are
// re-checked by qlinear_ops.
#include "napi_util.h"
#include "quantform/qlinear.h"

namespace qf {
namespace {

// quantLinearBackward(gradInput | null, gradScales | null, gradOutput, x | null, M, codes, scales, zeros | null,
//                     N, K, bits, groupSize, symmetric, async): gradInput overwritten, gradScales accumulated
Napi::Value quant_linear_backward_js(const Napi::CallbackInfo& info) {
  Span dx = f32_or_null(info, 0, "gradInput"), ds = f32_or_null(info, 1, "gradScales");
  Span dy = arg_span(info, 2, "gradOutput", DType::F32), x = f32_or_null(info, 3, "x");
  const int64_t M = arg_int(info, 4, "M");
  Span codes = arg_bytes(info, 5, "codes"), scales = arg_span(info, 6, "scales", DType::F32);
  const int64_t N = arg_int(info, 8, "N"), K = arg_int(info, 9, "K");
  const QuantSpec spec = arg_quant_spec(info, 10);
  Span zeros = arg_zeros(info, 7, spec.symmetric, DType::F32);
  return run_op(info, arg_bool(info, 13, "async"), {info[0], info[1], info[2], info[3], info[5], info[6], info[7]},
                [=] { return quant_linear_backward(dx, ds, dy, x, M, codes, scales, zeros, N, K, spec); },
                [](Napi::Env env) { return env.Undefined(); });
}

}  // namespace

void register_qlinear(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "quantLinearBackward", quant_linear_backward_js);
}

}  // namespace qf
