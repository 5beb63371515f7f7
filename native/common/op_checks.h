// Argument checks shared by the GPTQ and quantized-linear ops: a length the
// native side did not check is an out-of-bounds write.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

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

// First index of a NaN/Inf in p[0, n), or -1.
inline int64_t first_non_finite(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

}  // namespace qf
