// Scalar reference for the quantization family: the definition of correct that
// every SIMD and CUDA variant is tested against (bit-exact for codes).
//
// Numerics shared by every variant, so they agree to the bit:
//   symmetric:  s = max|w| / (2^(b-1) - 1),             c = clamp(rint(w / s), -2^(b-1), 2^(b-1) - 1), q = c + 2^(b-1)
//   asymmetric: lo = min(min w, 0), hi = max(max w, 0),  s = (hi - lo) / (2^b - 1),
//               z = clamp(rint(-lo / s), 0, 2^b - 1),      q = clamp(rint(w / s) + z, 0, 2^b - 1)
// rint = round half to even (torch.round, vrndscaleps, cvt.rni). The range
// includes 0 so that z is an integer code (GPTQ's convention, exportable).
// s == 0 (an all-zero group) stores s = 0 and codes equal to the zero point.
#include <cmath>

#include "quant_common.h"

namespace qf {
namespace {

int64_t quantize_ref(uint8_t* codes, float* scales, float* zeros, const float* w, int64_t r0,
                     int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  uint8_t codes8[QF_MAX_ROW_CHUNK];
  for (int64_t r = r0; r < r1; r++) {
    const float* wr = w + r * K;
    for (int64_t i = 0; i < rb; i++) codes[r * rb + i] = 0;
    for (int64_t k = 0; k < K; k++)
      if (!std::isfinite(wr[k])) return r;
    for (int64_t g = 0; g < G; g++) {
      const int64_t k0 = g * spec.group_size;
      const int64_t k1 = k0 + spec.group_size < K ? k0 + spec.group_size : K;
      float lo = 0.f, hi = 0.f;
      for (int64_t k = k0; k < k1; k++) {
        lo = wr[k] < lo ? wr[k] : lo;
        hi = wr[k] > hi ? wr[k] : hi;
      }
      const GroupParams p = choose_group_params(lo, hi, spec);
      scales[r * G + g] = p.scale;
      if (!spec.symmetric) zeros[r * G + g] = p.zero;
      // codes are produced chunk by chunk into a small buffer, then packed
      for (int64_t c0 = k0; c0 < k1; c0 += QF_MAX_ROW_CHUNK) {
        const int64_t c1 = c0 + QF_MAX_ROW_CHUNK < k1 ? c0 + QF_MAX_ROW_CHUNK : k1;
        for (int64_t k = c0; k < c1; k++) codes8[k - c0] = quantize_one(wr[k], p);
        pack_span(codes + r * rb, codes8, c0, c1, spec.bits);
      }
    }
  }
  return -1;
}

void pack_ref(uint8_t* codes, const uint8_t* codes8, int64_t r0, int64_t r1, int64_t K, int bits) {
  const int64_t rb = qf_packed_row_bytes(bits, K);
  for (int64_t r = r0; r < r1; r++) {
    uint8_t* dst = codes + r * rb;
    for (int64_t i = 0; i < rb; i++) dst[i] = 0;
    pack_span(dst, codes8 + r * K, 0, K, bits);
  }
}

void unpack_ref(uint8_t* codes8, const uint8_t* codes, int64_t r0, int64_t r1, int64_t K, int bits) {
  const int64_t rb = qf_packed_row_bytes(bits, K);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t k = 0; k < K; k++) codes8[r * K + k] = (uint8_t)get_code(codes + r * rb, k, bits);
}

void dequantize_ref(float* w, const uint8_t* codes, const float* scales, const float* zeros,
                    int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  const float zsym = (float)(1 << (spec.bits - 1));
  for (int64_t r = r0; r < r1; r++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t g = k / spec.group_size;
      const float s = scales[r * G + g];
      const float z = spec.symmetric ? zsym : zeros[r * G + g];
      w[r * K + k] = ((float)get_code(codes + r * rb, k, spec.bits) - z) * s;
    }
}

void fake_quant_forward_ref(float* out, const float* w, const float* scales, const float* zeros,
                            int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  const FakeQuantRange qr = fake_quant_range(spec);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t g = k / spec.group_size;
      const float s = scales[r * G + g];
      const float z = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + g]);
      if (s == 0.f) { out[r * K + k] = 0.f; continue; }
      float q = std::nearbyint(w[r * K + k] / s) + z;
      q = q < qr.lo ? qr.lo : (q > qr.hi ? qr.hi : q);
      out[r * K + k] = (q - z) * s;
    }
}

void fake_quant_backward_ref(float* dw, float* ds, float* dz, const float* gout, const float* w,
                             const float* scales, const float* zeros, int64_t r0, int64_t r1,
                             int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  const FakeQuantRange qr = fake_quant_range(spec);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t k0 = g * spec.group_size;
      const int64_t k1 = k0 + spec.group_size < K ? k0 + spec.group_size : K;
      const float s = scales[r * G + g];
      const float z = spec.symmetric ? 0.f : std::nearbyint(zeros[r * G + g]);
      // group sums accumulate in double so the reference is the accurate one
      double acc_s = 0, acc_z = 0;
      for (int64_t k = k0; k < k1; k++) {
        const float gk = gout[r * K + k];
        if (s == 0.f) { dw[r * K + k] = gk; continue; }
        const float u = w[r * K + k] / s;
        const float ru = std::nearbyint(u);
        const float q = ru + z;
        if (q < qr.lo || q > qr.hi) {
          const float bound = q < qr.lo ? qr.lo : qr.hi;
          dw[r * K + k] = 0.f;
          acc_s += (double)gk * (double)(bound - z);
          acc_z -= (double)gk * (double)s;
        } else {
          dw[r * K + k] = gk;
          acc_s += (double)gk * (double)(ru - u);
        }
      }
      ds[r * G + g] = (float)acc_s;
      if (!spec.symmetric) dz[r * G + g] = (float)acc_z;
    }
}

}  // namespace

const QuantKernels quant_kernels_ref = {quantize_ref,           pack_ref, unpack_ref, dequantize_ref,
                                        fake_quant_forward_ref, fake_quant_backward_ref};

}  // namespace qf
