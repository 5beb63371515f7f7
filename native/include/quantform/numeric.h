// Scalar numeric helpers with internal linkage (static inline): every translation
// unit, ISA-specific ones included, gets its own copy, so the linker can never
// hand an AVX-512-compiled copy to code running on a CPU without AVX-512.
#pragma once
#include <stdint.h>
#include <string.h>

namespace qf {

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// IEEE binary16 -> binary32, exact.
static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return f32_from_bits(sign);
    // subnormal half: renormalize
    int e = -1;
    do { e++; mant <<= 1; } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return f32_from_bits(sign | (uint32_t)(127 - 15 - e) << 23 | (mant << 13));
  }
  return f32_from_bits(sign | (exp + 127 - 15) << 23 | (mant << 13));
}

// binary32 -> binary16, round to nearest even (what F16C's vcvtps2ph with
// _MM_FROUND_TO_NEAREST_INT and CUDA's __float2half_rn do).
static inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (absx < 0x38800000u) {  // result is subnormal or zero
    if (absx < 0x33000000u) return (uint16_t)sign;  // < 2^-25: rounds to 0
    const uint32_t e = absx >> 23;
    uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (113 - e) ... aligns to 2^-24 units
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
    return (uint16_t)(sign | r);
  }
  uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t q = r >> 13;
  const uint32_t rem = r & 0x1fffu;
  uint32_t out = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1))) ? 1 : 0);
  return (uint16_t)(sign | out);
}

static inline float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

// binary32 -> bfloat16, round to nearest even; NaN stays NaN.
static inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  const uint32_t lsb = (x >> 16) & 1u;
  return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

// Round a float to the nearest value representable in binary16.
static inline float round_to_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

}  // namespace qf
