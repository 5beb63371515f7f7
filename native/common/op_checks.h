// Argument checks shared by the GPTQ and quantized-linear ops: a length the
// native side did not check is an out-of-bounds write.
#pragma once
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "quantform/finite.h"  // first_non_finite, which the checks of these ops call
#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

// s holds exactly `want` elements of `dtype` (a buffer unless want == 0).
inline Status need_span(const char* name, const Span& s, int64_t want, DType dtype) {
  if (s.dtype != dtype)
    return error(Code::DtypeMismatch, std::string("Expected ") + dtype_name(dtype) + " for " + name + " but received " +
                                          dtype_name(s.dtype));
  if (s.data == nullptr && want > 0)
    return error(Code::InvalidArgument, std::string("Expected a buffer for ") + name + " but received none");
  if ((int64_t)s.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                          " but received " + std::to_string(s.len));
  return Status::Ok();
}

// A dimension in [1, 2^20]: products of two stay far from overflow.
inline Status check_dim(const char* name, int64_t v) {
  if (v <= 0 || v > (int64_t(1) << 20))
    return error(Code::InvalidArgument, std::string("Expected ") + name + " in [1, 1048576] but received " + std::to_string(v));
  return Status::Ok();
}

// The engine's checks (engine_ops, engine_block, engine_fpt): dims positive and below
// 2^31, so a product of two stays exact in int64 (a longer one goes through count()); f32
// buffers of an exact length.
namespace engine_check {

// The element count of a shape of checked dims, or -1 (a length no buffer has, so the check that
// reads it fails) once the product passes 2^62: formed without ever overflowing.
inline int64_t count(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || (d > 0 && n > ((int64_t)1 << 62) / d)) return -1;
    n *= d;
  }
  return n;
}

inline Status positive(const char* name, int64_t v) {
  if (v <= 0 || v > ((int64_t)1 << 31))
    return error(Code::InvalidArgument, std::string("Expected positive integer below 2^31 for ") + name +
                                            " but received " + std::to_string(v));
  return Status::Ok();
}

// A shape whose count() passed 2^62.
inline Status too_large(const char* name, const char* shape) {
  return error(Code::InvalidArgument, std::string("Expected a shape ") + shape + " of at most 2^62 elements for " + name +
                                          " but its dims multiply past that");
}

inline Status need(const char* name, const Span& s, int64_t want, const char* shape) {
  if (want < 0) return too_large(name, shape);
  if (s.dtype != DType::F32) return error(Code::DtypeMismatch, std::string("Expected f32 for ") + name);
  if (s.data == nullptr && want > 0)
    return error(Code::InvalidArgument, std::string("Expected a buffer ") + shape + " for " + name + " but received none");
  if ((int64_t)s.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements " + shape + " for " +
                                          name + " but received " + std::to_string((int64_t)s.len));
  return Status::Ok();
}

// An optional buffer: absent (null) or exactly `want` long.
inline Status need_opt(const char* name, const Span& s, int64_t want, const char* shape) {
  return s.data == nullptr ? Status::Ok() : need(name, s, want, shape);
}

// The arguments every RMSNorm forward takes: out, x (BT, D); rstd (BT) or null; w (D); eps finite >= 0.
inline Status rmsnorm_args(const Span& out, const Span& rstd, const Span& x, const Span& w, int64_t BT, int64_t D, float eps) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  if (!(eps >= 0.f) || !std::isfinite(eps))
    return error(Code::InvalidArgument, "Expected non-negative finite eps but received " + std::to_string(eps));
  QF_TRY(need("out", out, BT * D, "(BT, D)"));
  QF_TRY(need_opt("rstd", rstd, BT, "(BT)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  return need("w", w, D, "(D)");
}

}  // namespace engine_check

}  // namespace qf
