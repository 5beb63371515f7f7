// Per-group scalar pieces of the quantization family, shared by the reference
// and used by SIMD variants for group parameters and ragged tails. Internal
// linkage only (static inline): see numeric.h for why.
#pragma once
#include <cmath>
#include <cstdint>

#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/quant.h"

// Codes are produced in chunks of this many before packing (a multiple of 8 so
// chunks never split an INT3 block or an INT2/INT4 byte).
#define QF_MAX_ROW_CHUNK 256

namespace qf {

struct GroupParams {
  float scale;
  float zero;   // asymmetric: integer-valued zero point; symmetric: 2^(bits-1)
  int qmax;     // 2^bits - 1
};

// lo <= 0 <= hi are the group's min and max with 0 included.
static inline GroupParams choose_group_params(float lo, float hi, const QuantSpec& spec) {
  GroupParams p;
  p.qmax = (1 << spec.bits) - 1;
  if (spec.symmetric) {
    const float amax = -lo > hi ? -lo : hi;
    float s = amax / (float)((1 << (spec.bits - 1)) - 1);
    if (spec.f16_params) s = round_to_f16(s);
    p.scale = s;
    p.zero = (float)(1 << (spec.bits - 1));
  } else {
    float s = (hi - lo) / (float)p.qmax;
    if (spec.f16_params) s = round_to_f16(s);
    p.scale = s;
    float z = s == 0.f ? 0.f : std::nearbyint(-lo / s);
    z = z <= 0.f ? 0.f : (z > (float)p.qmax ? (float)p.qmax : z);  // <= also turns -0 into +0
    p.zero = z;
  }
  return p;
}

static inline uint8_t quantize_one(float w, const GroupParams& p) {
  if (p.scale == 0.f) return (uint8_t)p.zero;
  float q = std::nearbyint(w / p.scale) + p.zero;
  q = q < 0.f ? 0.f : (q > (float)p.qmax ? (float)p.qmax : q);
  return (uint8_t)q;
}

// The clipping grid of IST-DASLab/gptq's Quantizer (quant.py find_params with mse: grid 100,
// maxshrink 0.8): the range [lo, hi] shrunk by 1 - i / 100 for i in [0, 80).
constexpr int kClipGrid = 100, kClipSteps = 80;

// Group parameters by the clipping search when spec.clip_norm > 0, else by min/max: the shrink
// of [lo, hi] with the smallest sum over the n group values get(k) of |dequant(quant(v)) - v|^p
// (the first on ties, so the full range wins when clipping never helps). p = 2 is squared.
template <class Get>
static inline GroupParams search_group_params(float lo, float hi, const QuantSpec& spec, int64_t n, Get&& get) {
  GroupParams best = choose_group_params(lo, hi, spec);
  if (!(spec.clip_norm > 0.f)) return best;
  const double p = spec.clip_norm;
  double best_err = 0;
  for (int i = 0; i < kClipSteps; i++) {
    const float f = 1.f - (float)i / (float)kClipGrid;
    const GroupParams g = i == 0 ? best : choose_group_params(f * lo, f * hi, spec);
    double err = 0;
    for (int64_t k = 0; k < n; k++) {
      const float v = get(k);
      const double e = std::fabs((double)(((float)quantize_one(v, g) - g.zero) * g.scale) - (double)v);
      err += p == 2.0 ? e * e : std::pow(e, p);
    }
    if (i == 0 || err < best_err) {
      best_err = err;
      best = g;
    }
  }
  return best;
}

struct FakeQuantRange { float lo, hi; };
static inline FakeQuantRange fake_quant_range(const QuantSpec& spec) {
  if (spec.symmetric) return {-(float)(1 << (spec.bits - 1)), (float)((1 << (spec.bits - 1)) - 1)};
  return {0.f, (float)((1 << spec.bits) - 1)};
}

static inline unsigned get_code(const uint8_t* row, int64_t k, int bits) {
  switch (bits) {
    case 8: return row[k];
    case 4: return (row[k >> 1] >> ((k & 1) * 4)) & 0xf;
    case 2: return (row[k >> 2] >> ((k & 3) * 2)) & 0x3;
    default: {  // 3
      const uint8_t* b = row + (k >> 3) * 3;
      const uint32_t word = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
      return (word >> ((k & 7) * 3)) & 0x7;
    }
  }
}

// ORs codes8[0 .. k1-k0) into row positions [k0, k1). The row bytes covering
// those positions must be zero beforehand, except for neighbours' bits.
static inline void or_code(uint8_t* row, int64_t k, unsigned q, int bits) {
  switch (bits) {
    case 8: row[k] = (uint8_t)q; break;
    case 4: row[k >> 1] |= (uint8_t)(q << ((k & 1) * 4)); break;
    case 2: row[k >> 2] |= (uint8_t)(q << ((k & 3) * 2)); break;
    default: {
      uint8_t* b = row + (k >> 3) * 3;
      const uint32_t v = q << ((k & 7) * 3);
      b[0] |= (uint8_t)v; b[1] |= (uint8_t)(v >> 8); b[2] |= (uint8_t)(v >> 16);
    }
  }
}

// Writes codes for positions [k0, k1) of a packed row, clearing those bits first.
static inline void pack_span(uint8_t* row, const uint8_t* codes8, int64_t k0, int64_t k1, int bits) {
  for (int64_t k = k0; k < k1; k++) {
    // clear this code's bits, then OR it in
    switch (bits) {
      case 8: break;
      case 4: row[k >> 1] &= (uint8_t)~(0xfu << ((k & 1) * 4)); break;
      case 2: row[k >> 2] &= (uint8_t)~(0x3u << ((k & 3) * 2)); break;
      default: {
        uint8_t* b = row + (k >> 3) * 3;
        const uint32_t m = ~(0x7u << ((k & 7) * 3));
        b[0] &= (uint8_t)m; b[1] &= (uint8_t)(m >> 8); b[2] &= (uint8_t)(m >> 16);
      }
    }
    or_code(row, k, codes8[k - k0], bits);
  }
}

}  // namespace qf
