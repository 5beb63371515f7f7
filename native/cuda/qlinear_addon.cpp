// CUDA entry point of the quantized-linear backward (registered by addon_cuda.cpp):
// the CPU op's argument checks, then the CUDA kernels.
#include "../addon/napi_util.h"
#include "qlinear_cuda.h"
#include "quantform/qlinear.h"

namespace qf {
namespace {

// quantLinearBackward(gradInput | null, gradScales | null, gradOutput, x | null, M, codes, scales, zeros | null,
//                     N, K, bits, groupSize, symmetric): the CPU binding's contract, synchronous
Napi::Value quant_linear_backward_js(const Napi::CallbackInfo& info) {
  Span dx = f32_or_null(info, 0, "gradInput"), ds = f32_or_null(info, 1, "gradScales");
  Span dy = arg_span(info, 2, "gradOutput", DType::F32), x = f32_or_null(info, 3, "x");
  const int64_t M = arg_int(info, 4, "M");
  Span codes = arg_bytes(info, 5, "codes"), scales = arg_span(info, 6, "scales", DType::F32);
  const int64_t N = arg_int(info, 8, "N"), K = arg_int(info, 9, "K");
  const QuantSpec spec = arg_quant_spec(info, 10);
  Span zeros = arg_zeros(info, 7, spec.symmetric, DType::F32);
  Status st = check_quant_linear_backward(dx, ds, dy, x, M, codes, scales, zeros, N, K, spec);
  if (st.ok())
    st = quant_linear_backward_cuda(static_cast<float*>(dx.data), static_cast<float*>(ds.data),
                                    static_cast<const float*>(dy.data), static_cast<const float*>(x.data), M,
                                    static_cast<const uint8_t*>(codes.data), static_cast<const float*>(scales.data),
                                    spec.symmetric ? nullptr : static_cast<const float*>(zeros.data), N, K, spec);
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

}  // namespace

void register_qlinear_cuda(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "quantLinearBackward", quant_linear_backward_js);
}

}  // namespace qf
