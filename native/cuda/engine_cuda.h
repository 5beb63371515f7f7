// CUDA kernels of the engine: the TEQ scale backward (same definition as
// native/ref/engine.cpp teq_scale_backward_ref). Host pointers in and out; lengths
// were checked by the caller.
#pragma once
#include <cstdint>

#include "quantform/status.h"

namespace qf {

// dalpha (K) += sum_n dws[n, k] W[n, k] - sum_t dxs[t, k] x[t, k] / alpha[k]^2;
// dx (T, K) = dxs / alpha when dx != null. T or N may be 0.
Status teq_scale_backward_cuda(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t K);

}  // namespace qf
