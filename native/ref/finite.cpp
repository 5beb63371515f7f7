// Scalar non-finite scans: a float is NaN or Inf exactly when its exponent bits are
// all ones (binary32 0x7f800000, binary16 0x7c00, bfloat16 0x7f80).
#include <cstring>

#include "quantform/finite.h"

namespace qf {
namespace {

int64_t first_non_finite_f32_ref(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return i;
  }
  return -1;
}

}  // namespace

int64_t first_non_finite_f16_ref(const uint16_t* p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if ((p[i] & 0x7c00u) == 0x7c00u) return i;
  return -1;
}

int64_t first_non_finite_bf16_ref(const uint16_t* p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if ((p[i] & 0x7f80u) == 0x7f80u) return i;
  return -1;
}

const FiniteKernels finite_kernels_ref = {first_non_finite_f32_ref};

}  // namespace qf
