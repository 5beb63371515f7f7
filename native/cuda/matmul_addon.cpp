// N-API entry points of the CUDA dequant-matmul (matmul_cuda.h). Arguments arrive
// validated by lib/ops/matmul.ts and are re-checked here; a GPU weight is a
// type-tagged External owning a CudaInt4Weight.
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "../addon/napi_util.h"
#include "matmul_cuda.h"
#include "quantform/engine.h"
#include "quantform/finite.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "w4a8_cuda.h"

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

int arg_act_bits(const Napi::CallbackInfo& info, size_t i) {
  const int64_t bits = arg_int(info, i, "bits");
  if (bits != 4 && bits != 8)
    throw ArgError{error(Code::UnsupportedBits, "Expected 4 or 8 for the activation bits but received " + std::to_string(bits))};
  return (int)bits;
}

Status finite_rows(const char* name, const float* x, int64_t rows, int64_t K) {
  const int64_t bad = first_non_finite(x, rows * K);
  if (bad < 0) return Status::Ok();
  return error(Code::NonFinite, std::string("Expected finite ") + name + " but row " + std::to_string(bad / K) + " holds NaN or Inf");
}

// cudaActQuantRows(xq, xsumq, x, m | null, scale, rows, K, KP, groupSize, bits): the CPU op's
// contract (engine.actQuantRows) and checks, synchronous; x (and m) must be finite.
Napi::Value act_quant_rows_js(const Napi::CallbackInfo& info) {
  const I8Span xq = arg_int8(info, 0, "xq");
  const Span xsumq = arg_span(info, 1, "xsumq", DType::F32), x = arg_span(info, 2, "x", DType::F32);
  const Span m = f32_or_null(info, 3, "m");
  const float scale = (float)arg_number(info, 4, "scale");
  const int64_t rows = arg_int(info, 5, "rows"), K = arg_int(info, 6, "K"), KP = arg_int(info, 7, "KP");
  const int64_t gs = arg_int(info, 8, "groupSize"), bits = arg_int(info, 9, "bits");
  Status st = check_act_quant_rows(xq, xsumq, x, m, scale, rows, K, KP, gs, bits);
  if (st.ok()) st = finite_rows("x", static_cast<const float*>(x.data), rows, K);
  if (st.ok() && m.data) st = finite_rows("m", static_cast<const float*>(m.data), rows, 1);
  if (st.ok())
    st = cuda_act_quant_rows(xq.data, static_cast<float*>(xsumq.data), static_cast<const float*>(x.data),
                             static_cast<const float*>(m.data), scale, rows, K, KP, gs, (int)bits);
  if (!st.ok()) throw ArgError{st};
  return info.Env().Undefined();
}

// M against an array's length before M * K is formed.
void check_rows(const char* name, size_t len, int64_t M, int64_t K) {
  if (M <= 0 || (size_t)M > len / (size_t)K || len != (size_t)(M * K))
    throw ArgError{error(Code::ShapeMismatch, "Expected " + std::to_string(M > 0 ? M * K : 0) + " elements for " + name +
                                                  " (M=" + std::to_string(M) + ", " + std::to_string(K) + " per row) but received " +
                                                  std::to_string(len))};
}

Napi::Value matmul_result(const Napi::CallbackInfo& info, bool async, std::vector<Napi::Value> keep, int64_t M, int64_t N,
                          std::function<Status(float*)> run) {
  Span ys;
  Napi::Object y = make_float_array(info.Env(), DType::F32, (size_t)(M * N), &ys);
  keep.push_back(y);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(y));
  return run_op(info, async, std::move(keep), [=] { return run(static_cast<float*>(ys.data)); },
                [ref](Napi::Env) { return ref->Value(); });
}

// cudaMatmulInt8(handle, xq Int8Array (M, KP), xs Float32Array (1 | M), M, bits, async) -> Float32Array (M, N):
// codes quantized by the caller in the CPU int8 layout (w4a8_cuda.h); 4-bit codes must lie in [-8, 7].
Napi::Value matmul_int8_js(const Napi::CallbackInfo& info) {
  const WeightPtr w = arg_weight(info, 0);
  const I8Span xq = arg_int8(info, 1, "xq");
  const Span xs = arg_span(info, 2, "xs", DType::F32);
  const int64_t M = arg_int(info, 3, "M");
  const int bits = arg_act_bits(info, 4);
  const bool async = arg_bool(info, 5, "async");
  const int64_t KP = (w->K + 7) / 8 * 8;
  check_rows("xq", xq.len, M, KP);
  if (xs.len != 1 && xs.len != (size_t)M)
    throw ArgError{error(Code::ShapeMismatch, "Expected 1 (per tensor) or M = " + std::to_string(M) +
                                                  " (per row) elements for xs but received " + std::to_string(xs.len))};
  for (size_t i = 0; i < xs.len; i++) {
    const float v = static_cast<const float*>(xs.data)[i];
    if (!(v > 0.f) || !std::isfinite(v))
      throw ArgError{error(Code::InvalidArgument, "Expected positive finite xs but xs[" + std::to_string(i) + "] = " + std::to_string(v))};
  }
  if (bits == 4)
    for (size_t i = 0; i < xq.len; i++)
      if (xq.data[i] < -8 || xq.data[i] > 7)
        throw ArgError{error(Code::InvalidArgument, "Expected 4-bit activation codes in [-8, 7] but xq[" + std::to_string(i) +
                                                        "] = " + std::to_string((int)xq.data[i]))};
  CudaInt8Kernel k;
  QF_PRECHECK(info, async, cuda_int8_kernel(&k, M, bits, *w));
  const float* xsp = static_cast<const float*>(xs.data);
  const int64_t nxs = (int64_t)xs.len;
  return matmul_result(info, async, {info[1], info[2]}, M, w->N,
                       [=](float* y) { return cuda_matmul_int8(y, xq.data, xsp, nxs, M, bits, *w, nullptr); });
}

// cudaMatmulStatic(handle, x Float32Array (M, K), m Float32Array (M) | null, scale, M, bits, async) -> Float32Array (M, N):
// x m quantized on the GPU with the static scale, then the int8 matmul; x and m must be finite.
Napi::Value matmul_static_js(const Napi::CallbackInfo& info) {
  const WeightPtr w = arg_weight(info, 0);
  const Span x = arg_span(info, 1, "x", DType::F32), m = f32_or_null(info, 2, "m");
  const double scale = arg_number(info, 3, "scale");
  const int64_t M = arg_int(info, 4, "M");
  const int bits = arg_act_bits(info, 5);
  const bool async = arg_bool(info, 6, "async");
  check_rows("x", x.len, M, w->K);
  if (m.data && m.len != (size_t)M)
    throw ArgError{error(Code::ShapeMismatch, "Expected M = " + std::to_string(M) + " elements for m but received " + std::to_string(m.len))};
  if (!(scale > 0) || !std::isfinite((float)scale))
    throw ArgError{error(Code::InvalidArgument, "Expected a positive finite scale but received " + std::to_string(scale))};
  CudaInt8Kernel k;
  QF_PRECHECK(info, async, cuda_int8_kernel(&k, M, bits, *w));
  const float* xp = static_cast<const float*>(x.data);
  const float* mp = static_cast<const float*>(m.data);
  const float s = (float)scale;
  const int64_t K = w->K;
  return matmul_result(info, async, {info[1], info[2]}, M, w->N, [=](float* y) {
    QF_TRY(finite_rows("x", xp, M, K));
    if (mp) QF_TRY(finite_rows("m", mp, M, 1));
    return cuda_matmul_static(y, xp, mp, s, M, bits, *w, nullptr);
  });
}

// cudaMatmulInt8Kernel(handle, M, bits) -> 'dp4a-gemv' | 'mma-s8' | 'mma-s4': what the int8 matmul runs here.
Napi::Value matmul_int8_kernel_js(const Napi::CallbackInfo& info) {
  const WeightPtr w = arg_weight(info, 0);
  const int64_t M = arg_int(info, 1, "M");
  const int bits = arg_act_bits(info, 2);
  CudaInt8Kernel k;
  const Status st = cuda_int8_kernel(&k, M, bits, *w);
  if (!st.ok()) throw ArgError{st};
  return Napi::String::New(info.Env(), cuda_int8_kernel_name(k));
}

}  // namespace

void register_cuda_matmul(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "cudaActQuantRows", act_quant_rows_js);
  QF_EXPORT(exports, "cudaMatmulInt8", matmul_int8_js);
  QF_EXPORT(exports, "cudaMatmulStatic", matmul_static_js);
  QF_EXPORT(exports, "cudaMatmulInt8Kernel", matmul_int8_kernel_js);
  QF_EXPORT(exports, "cudaMatmulPrepare", prepare_js);
  QF_EXPORT(exports, "cudaMatmul", matmul_js);
  QF_EXPORT(exports, "cudaMatmulDispose", dispose_js);
}

}  // namespace qf
