// CUDA quantization family: same arithmetic as native/ref/quant.cpp (IEEE division,
// round-half-even rintf, same clamp order), so codes match the reference bit for
// bit. Host pointers in, host pointers out; lengths were checked by the caller.
#pragma once
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/status.h"

namespace qf {

// w (N, K) f32 -> codes (N, row_bytes), scales (N, G), zeros (N, G) (asymmetric). f32 params.
Status quantize_cuda(uint8_t* codes, float* scales, float* zeros, const float* w, int64_t N, int64_t K,
                     const QuantSpec& spec);
// -> w (N, K) f32
Status dequantize_cuda(float* w, const uint8_t* codes, const float* scales, const float* zeros, int64_t N,
                       int64_t K, const QuantSpec& spec);
Status fake_quant_forward_cuda(float* out, const float* w, const float* scales, const float* zeros, int64_t N,
                               int64_t K, const QuantSpec& spec);
Status fake_quant_backward_cuda(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                                const float* zeros, int64_t N, int64_t K, const QuantSpec& spec);

}  // namespace qf
