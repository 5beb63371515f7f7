// Quantization kernel family: RTN quantize (fused with packing), pack, unpack,
// dequantize, fake-quant forward and backward. Layouts: formats.h.
//
// Every function works on the rows [r0, r1) of an [N, K] matrix so the thread
// pool can split rows; arguments have been validated by the caller (quant_api.cpp)
// and kernels trust them. One table per tier: _ref (native/ref/quant.cpp, the
// definition of correct), _avx2, _avx512.
#pragma once
#include <cstdint>

namespace qf {

struct QuantSpec {
  int bits;            // 2, 3, 4 or 8
  int64_t group_size;  // 1..K; K means per-channel
  bool symmetric;      // true: no zeros, zero point 2^(bits-1)
  bool f16_params;     // scales/zeros are rounded to binary16 before codes are chosen
  // GPTQ's clipping search (> 0: its norm p; quant_common.h search_group_params): each group's
  // range shrunk to the one minimising sum |dequant(quant(w)) - w|^p instead of min/max. 0: off.
  float clip_norm = 0.f;
};

struct QuantKernels {
  // RTN: w (N, K) f32 -> codes (N, row_bytes) packed, scales (N, G), zeros (N, G)
  // (zeros untouched when symmetric). Returns -1, or the first row in [r0, r1)
  // holding a NaN/Inf (that row's outputs are unspecified).
  int64_t (*quantize)(uint8_t* codes, float* scales, float* zeros, const float* w,
                      int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec);
  // codes8 (N, K) one unsigned code per byte -> codes (N, row_bytes) packed.
  void (*pack)(uint8_t* codes, const uint8_t* codes8, int64_t r0, int64_t r1, int64_t K, int bits);
  // codes (N, row_bytes) packed -> codes8 (N, K).
  void (*unpack)(uint8_t* codes8, const uint8_t* codes, int64_t r0, int64_t r1, int64_t K, int bits);
  // codes (N, row_bytes), scales (N, G), zeros (N, G) or null -> w (N, K) f32.
  void (*dequantize)(float* w, const uint8_t* codes, const float* scales, const float* zeros,
                     int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec);
  // Fake quantization with given (trainable) scales/zeros:
  //   q = clamp(round(w / s) + round(z), lo, hi), wq = (q - round(z)) * s
  // symmetric: z = 0, [lo, hi] = [-2^(b-1), 2^(b-1) - 1]; asymmetric: [0, 2^b - 1].
  // out (N, K); w (N, K); scales, zeros (N, G); zeros null when symmetric.
  void (*fake_quant_forward)(float* out, const float* w, const float* scales, const float* zeros,
                             int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec);
  // Straight-through / LSQ backward of fake_quant_forward:
  //   inside [lo, hi]: dw = g, ds += g * (round(w/s) - w/s), dz += 0
  //   clamped to B:    dw = 0, ds += g * (B - round(z)),    dz += -g * s
  // dw (N, K); ds, dz (N, G) overwritten (dz null when symmetric); g, w (N, K).
  // Groups with s == 0 get ds = 0 and pass g straight through.
  void (*fake_quant_backward)(float* dw, float* ds, float* dz, const float* g, const float* w,
                              const float* scales, const float* zeros, int64_t r0, int64_t r1,
                              int64_t K, const QuantSpec& spec);
};

extern const QuantKernels quant_kernels_ref;
extern const QuantKernels quant_kernels_avx2;
extern const QuantKernels quant_kernels_avx512;

const QuantKernels& quant_kernels();  // the active tier's table

}  // namespace qf
