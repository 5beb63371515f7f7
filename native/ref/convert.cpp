// Scalar 16-bit float conversions: the definition every tier must match bit for bit.
#include "quantform/convert.h"
#include "quantform/numeric.h"

namespace qf {
namespace {

// numeric.h's f16_to_f32 keeps a signalling NaN signalling (its callers only see
// finite scales); checkpoint widening follows IEEE 754 and the hardware: quiet it.
float f16_to_f32_quiet(uint16_t h) {
  if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0)
    return f32_from_bits(((uint32_t)(h & 0x8000u) << 16) | 0x7fc00000u | ((uint32_t)(h & 0x3ffu) << 13));
  return f16_to_f32(h);
}

void f16_to_f32_ref(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32_quiet(src[i]);
}

void bf16_to_f32_ref(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}

void f32_to_bf16_ref(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

}  // namespace

const ConvertKernels convert_kernels_ref = {f16_to_f32_ref, bf16_to_f32_ref, f32_to_bf16_ref};

}  // namespace qf
