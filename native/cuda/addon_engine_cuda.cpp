// CUDA entry points of the engine family (registered by addon_cuda.cpp).
#include "../addon/napi_util.h"
#include "engine_cuda.h"

namespace qf {
namespace {

// teqScaleBackward(dalpha, dx | null, dxs, x, T, dws, W, N, alpha, K): dalpha accumulated, dx written
Napi::Value teq_scale_backward_js(const Napi::CallbackInfo& info) {
  Span da = arg_span(info, 0, "dalpha", DType::F32);
  Span dx = arg_is_null(info, 1) ? Span{nullptr, 0, DType::F32} : arg_span(info, 1, "dx", DType::F32);
  Span dxs = arg_span(info, 2, "dxs", DType::F32), x = arg_span(info, 3, "x", DType::F32);
  const int64_t T = arg_int(info, 4, "T");
  Span dws = arg_span(info, 5, "dws", DType::F32), W = arg_span(info, 6, "W", DType::F32);
  const int64_t N = arg_int(info, 7, "N");
  Span alpha = arg_span(info, 8, "alpha", DType::F32);
  const int64_t K = arg_int(info, 9, "K");
  auto len = [](const char* name, const Span& s, int64_t want) {
    if ((int64_t)s.len != want)
      throw ArgError{error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                                    " but received " + std::to_string(s.len))};
  };
  if (K <= 0 || T < 0 || N < 0) throw ArgError{error(Code::InvalidArgument, "Expected K > 0 and T, N >= 0")};
  // T * K and N * K are formed below: bound T and N by what the arrays hold first
  if ((size_t)T > x.len / (size_t)K || (size_t)N > W.len / (size_t)K)
    throw ArgError{error(Code::ShapeMismatch, "Expected T * K <= " + std::to_string(x.len) + " and N * K <= " +
                                                  std::to_string(W.len) + " elements but received T=" + std::to_string(T) +
                                                  ", N=" + std::to_string(N) + ", K=" + std::to_string(K))};
  len("dalpha", da, K); len("alpha", alpha, K); len("dxs", dxs, T * K); len("x", x, T * K);
  len("dws", dws, N * K); len("W", W, N * K);
  if (dx.data) len("dx", dx, T * K);
  const Status st = teq_scale_backward_cuda(static_cast<float*>(da.data), static_cast<float*>(dx.data),
                                            static_cast<const float*>(dxs.data), static_cast<const float*>(x.data), T,
                                            static_cast<const float*>(dws.data), static_cast<const float*>(W.data), N,
                                            static_cast<const float*>(alpha.data), K);
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

}  // namespace

void register_engine_cuda(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "teqScaleBackward", teq_scale_backward_js);
}

}  // namespace qf
