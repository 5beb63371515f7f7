// Backward of a quantized linear with frozen integer codes and trainable step
// sizes (EfficientQAT's E2E-QP phase): for y (M, N) = x (M, K) · Ŵᵀ with
// Ŵ[n, k] = s[n, g] (q[n, k] - z[n, g]), g = k / groupSize (formats.h),
//   dx (M, K)  = dy (M, N) · Ŵ
//   ds (N, G) += Σ_{k ∈ g} (q[n, k] - z[n, g]) (dyᵀ x)[n, k]
// without materialising Ŵ: dx is computed in column tiles of Ŵ (each task
// dequantizes kQLinearRowChunk x kQLinearColTile pieces into its scratch and
// multiplies them on the engine's GEMM), ds in row tiles (a kQLinearRowTile x
// kQLinearColChunk piece of dyᵀ x at a time, reduced against the codes at once).
// Both results are independent of the thread count (no cross-task sums).
//
// Kernels trust their arguments (qlinear_ops.cpp checked them). One table per tier:
// _ref (native/ref/qlinear.cpp: direct sums in double, the definition of correct)
// and _avx512; the CUDA variant is native/cuda/qlinear.cu (compiled, not yet run on a GPU).
#pragma once
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/quant_ops.h"
#include "quantform/status.h"
#include "quantform/engine.h"

namespace qf {

constexpr int64_t kQLinearColTile = 128;   // dx: columns of Ŵ per task (a multiple of 8: INT3 blocks stay whole)
constexpr int64_t kQLinearRowChunk = 256;  // dx: rows of Ŵ dequantized at a time
constexpr int64_t kQLinearRowTile = 32;    // ds: rows of Ŵ per task
constexpr int64_t kQLinearColChunk = 256;  // ds: columns of dyᵀ x computed at a time (a multiple of 8)
// Floats of one task's decoded piece (the larger of the two) and of its whole
// scratch (the piece, then the GEMM's packing space).
constexpr int64_t kQLinearPieceFloats = kQLinearRowChunk * kQLinearColTile > kQLinearRowTile * kQLinearColChunk
                                            ? kQLinearRowChunk * kQLinearColTile
                                            : kQLinearRowTile * kQLinearColChunk;
constexpr int64_t kQLinearScratchFloats = kQLinearPieceFloats + kGemmPackFloats;

struct QLinearKernels {
  // dx (M, K) columns [k0, k1) (k0 % 8 == 0) = dy (M, N) · Ŵ[:, k0:k1], overwritten.
  // codes (N, row_bytes) packed; scales (N, G) f32; zeros (N, G) f32 or null (symmetric).
  // scratch: kQLinearScratchFloats floats owned by the calling task.
  void (*grad_input)(float* dx, const float* dy, const uint8_t* codes, const float* scales, const float* zeros,
                     int64_t M, int64_t N, int64_t K, const QuantSpec& spec, int64_t k0, int64_t k1, float* scratch);
  // ds (N, G) rows [n0, n1) += Σ_{k ∈ g} (q - z) Σ_m dy[m, n] x[m, k]; dy (M, N), x (M, K).
  void (*grad_scales)(float* ds, const float* dy, const float* x, const uint8_t* codes, const float* zeros, int64_t M,
                      int64_t N, int64_t K, const QuantSpec& spec, int64_t n0, int64_t n1, float* scratch);
};

extern const QLinearKernels qlinear_kernels_ref;
extern const QLinearKernels qlinear_kernels_avx512;

const QLinearKernels& qlinear_kernels();  // the active tier's table (ref below AVX-512)

// The argument checks of quant_linear_backward (also run by the CUDA entry point).
Status check_quant_linear_backward(const Span& dx, const Span& ds, const Span& dy, const Span& x, int64_t M,
                                   const Span& codes, const Span& scales, const Span& zeros, int64_t N, int64_t K,
                                   const QuantSpec& spec);

// dx (M, K) f32 or null (skipped), overwritten; ds (N, G) f32 or null, accumulated;
// dy (M, N), x (M, K) f32 (x may be empty when ds is null); codes (N, row_bytes);
// scales (N, G) f32; zeros (N, G) f32 (asymmetric; integer-valued).
Status quant_linear_backward(Span dx, Span ds, Span dy, Span x, int64_t M, Span codes, Span scales, Span zeros,
                             int64_t N, int64_t K, const QuantSpec& spec);

}  // namespace qf
