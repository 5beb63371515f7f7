// CUDA quantized-linear backward (same definition as qlinear.h's quant_linear_backward,
// native/ref/qlinear.cpp). Host pointers in and out; lengths were checked by the caller
// (check_quant_linear_backward). Compiled in CI; not yet run on a GPU.
#pragma once
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/status.h"

namespace qf {

// dx (M, K) or null, overwritten; ds (N, G) or null, accumulated; dy (M, N); x (M, K)
// (read when ds != null); codes (N, row_bytes); scales (N, G); zeros (N, G) or null.
Status quant_linear_backward_cuda(float* dx, float* ds, const float* dy, const float* x, int64_t M, const uint8_t* codes,
                                  const float* scales, const float* zeros, int64_t N, int64_t K, const QuantSpec& spec);

}  // namespace qf
