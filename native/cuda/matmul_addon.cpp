// N-API entry points of the CUDA dequant-matmul (matmul_cuda.h). Arguments arrive
// validated by lib/ops/matmul.ts and are re-checked here; a GPU weight is a
// type-tagged External owning a CudaInt4Weight.
#include <memory>
#include <vector>

#include "../addon/napi_util.h"
#include "matmul_cuda.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"

namespace qf {
namespace {

const napi_type_tag kCudaWeightTag = {0x7166'6375'6461'6d6dULL, 0x696e'7434'7765'6967ULL};

using WeightPtr = std::shared_ptr<const CudaInt4Weight>;

WeightPtr* weight_slot(const Napi::CallbackInfo& info, size_t i) {
  const Napi::Value v = info[i];
  bool ok = false;
  if (v.IsExternal()) napi_check_object_type_tag(info.Env(), v, &kCudaWeightTag, &ok);
  if (!ok) throw ArgError{error(Code::InvalidArgument, "Expected a CUDA weight handle (from prepareMatmulWeightCuda) for weight")};
  return v.As<Napi::External<WeightPtr>>().Data();
}

// A running async matmul holds its own reference, so disposing never frees memory in use.
WeightPtr arg_weight(const Napi::CallbackInfo& info, size_t i) {
  WeightPtr w = *weight_slot(info, i);
  if (!w) throw ArgError{error(Code::InvalidArgument, "Expected a live CUDA weight but it was disposed")};
  return w;
}

// cudaMatmulDispose(handle): frees the device buffers now (GPU memory is not
// visible to V8's collector); later use is an error.
Napi::Value dispose_js(const Napi::CallbackInfo& info) {
  weight_slot(info, 0)->reset();
  return info.Env().Undefined();
}

std::vector<float> widen(const Span& s) {
  std::vector<float> out(s.len);
  for (size_t i = 0; i < s.len; i++)
    out[i] = s.dtype == DType::F32 ? static_cast<const float*>(s.data)[i] : f16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
  return out;
}

Status expect_len(const char* name, size_t got, size_t want) {
  if (got == want) return Status::Ok();
  return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                        " but received " + std::to_string(got));
}

// cudaMatmulPrepare(codes, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric) -> External
Napi::Value prepare_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Span codes = arg_bytes(info, 0, "codes");
  const DType pd = arg_dtype(info, 3, "paramDtype");
  Span scales = arg_span(info, 1, "scales", pd);
  const int64_t N = arg_int(info, 4, "N"), K = arg_int(info, 5, "K");
  const int bits = (int)arg_int(info, 6, "bits");
  const int64_t gs = arg_int(info, 7, "groupSize");
  const bool sym = arg_bool(info, 8, "symmetric");
  if (bits != 4) throw ArgError{error(Code::UnsupportedBits, "CUDA matmul supports bits=4 only but received bits=" + std::to_string(bits))};
  Status st = check_spec(QuantSpec{bits, gs, sym, pd == DType::F16}, N, K);
  if (!st.ok()) throw ArgError{st};
  const int64_t G = qf_num_groups(K, gs);
  if (!(st = expect_len("codes", codes.len, (size_t)(N * qf_packed_row_bytes(4, K)))).ok()) throw ArgError{st};
  if (!(st = expect_len("scales", scales.len, (size_t)(N * G))).ok()) throw ArgError{st};
  std::vector<float> s32 = widen(scales), z32((size_t)(N * G), 8.f);
  if (!sym) {
    Span zeros = arg_zeros(info, 2, sym, pd);
    if (!(st = expect_len("zeros", zeros.len, (size_t)(N * G))).ok()) throw ArgError{st};
    z32 = widen(zeros);
  }
  auto w = std::make_shared<CudaInt4Weight>();
  st = cuda_upload_int4(w.get(), static_cast<const uint8_t*>(codes.data), s32.data(), z32.data(), N, K, gs);
  if (!st.ok()) throw ArgError{st};
  Napi::External<WeightPtr> ext =
      Napi::External<WeightPtr>::New(env, new WeightPtr(std::move(w)), [](Napi::Env, WeightPtr* d) { delete d; });
  napi_type_tag_object(env, ext, &kCudaWeightTag);
  return ext;
}

// cudaMatmul(handle, x, xDtype, M, async) -> Float32Array (M, N)
Napi::Value matmul_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const WeightPtr w = arg_weight(info, 0);
  const DType xd = arg_dtype(info, 2, "xDtype");
  Span x = arg_span(info, 1, "x", xd);
  const int64_t M = arg_int(info, 3, "M");
  const bool async = arg_bool(info, 4, "async");
  if (M <= 0 || (size_t)M > x.len / (size_t)w->K || x.len != (size_t)(M * w->K))
    throw ArgError{error(Code::ShapeMismatch, "Expected " + std::to_string(M * w->K) + " elements for x (M=" + std::to_string(M) +
                                                  ", K=" + std::to_string(w->K) + ") but received " + std::to_string(x.len))};
  const CudaXType xt = xd == DType::F32 ? CudaXType::F32 : xd == DType::F16 ? CudaXType::F16 : CudaXType::BF16;
  Span ys;
  Napi::Object y = make_float_array(env, DType::F32, (size_t)(M * w->N), &ys);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(y));
  return run_op(info, async, {info[1], y},
                [=] { return cuda_dequant_matmul(static_cast<float*>(ys.data), x.data, xt, M, *w); },
                [ref](Napi::Env) { return ref->Value(); });
}

}  // namespace

void register_cuda_matmul(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "cudaMatmulPrepare", prepare_js);
  QF_EXPORT(exports, "cudaMatmul", matmul_js);
  QF_EXPORT(exports, "cudaMatmulDispose", dispose_js);
}

}  // namespace qf
