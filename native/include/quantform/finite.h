// Non-finite scan: the index of the first NaN or Inf of a buffer. Loaders and
// quantization call it once per tensor (one place: lib/ops/finite.ts), so a model
// whose embedding holds a NaN is refused at load, naming the tensor and the index,
// instead of evaluating to `ppl NaN`. The scan runs at memory bandwidth (AVX-512:
// 64 floats per iteration, the exponent test on whole registers).
#pragma once
#include <cstdint>

#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

struct FiniteKernels {
  // first i in [0, n) with p[i] NaN or +-Inf, else -1
  int64_t (*first_non_finite_f32)(const float* p, int64_t n);
};

extern const FiniteKernels finite_kernels_ref;
extern const FiniteKernels finite_kernels_avx2;
extern const FiniteKernels finite_kernels_avx512;
const FiniteKernels& finite_kernels();

// Reference for half types (exponent all ones), used for f16/bf16 spans.
int64_t first_non_finite_f16_ref(const uint16_t* p, int64_t n);
int64_t first_non_finite_bf16_ref(const uint16_t* p, int64_t n);

// Index of the first NaN/Inf of `s` (f32, f16 or bf16), or -1; parallel over the pool.
Status first_non_finite(const Span& s, int64_t* index);
// The same for a buffer the caller already checked: p[0, n) f32.
int64_t first_non_finite(const float* p, int64_t n);

}  // namespace qf
