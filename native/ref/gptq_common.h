// Scalar pieces of GPTQ's column loop shared by the reference and the SIMD
// variants. Internal linkage only (static), see numeric.h for why.
#pragma once
#include <cstdint>

#include "quant_common.h"

namespace qf {

// Group parameters at column c of a row: min/max (or the clipping search, spec.clip_norm) over
// the group's columns [c, ce), the batch's own columns [c0, c1) read from `batch` (the row's
// updated values) unless batch_start, everything else from the row of W. T: the batch's element type.
template <class T>
static inline GroupParams gptq_group_params(const T* batch, const float* wr, int64_t c, int64_t c0, int64_t c1,
                                            int64_t ce, bool batch_start, const QuantSpec& spec) {
  auto value = [&](int64_t k) { return (k < c1 && !batch_start) ? (float)batch[k - c0] : wr[k]; };
  float lo = 0.f, hi = 0.f;
  for (int64_t k = c; k < ce; k++) {
    const float v = value(k);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  return search_group_params(lo, hi, spec, ce - c, [&](int64_t k) { return value(c + k); });
}

// The parameters in force at the first column c0 of a batch that starts inside a group.
static inline GroupParams gptq_stored_params(const float* scales, const float* zeros, int64_t idx,
                                             const QuantSpec& spec) {
  return GroupParams{scales[idx], spec.symmetric ? (float)(1 << (spec.bits - 1)) : zeros[idx], (1 << spec.bits) - 1};
}

}  // namespace qf
