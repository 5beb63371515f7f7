// Whole-tensor dequant-matmul ops: re-check every length, repack weights, prepare
// activations (padding, group sums, int8 quantization), split output tiles over
// the thread pool and call the active tier (matmul.h).
#pragma once
#include <cstdint>
#include <vector>

#include "quantform/matmul.h"
#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

enum class MatmulAccuracy : int { F32 = 0, Int8 = 1 };

// A weight repacked for the kernels (matmul.h). Owns its buffers.
struct PreparedInt4 {
  int64_t N = 0, K = 0, NP = 0, KP = 0, G = 0, group_size = 0;
  bool symmetric = false;
  DType param_dtype = DType::F32;    // of the canonical scales/zeros, for the inverse
  std::vector<uint32_t> codes;              // (NP/16, KP/8, 16)
  std::vector<float> scales32, zeros32;     // (NP/16, G, 16) when param_dtype is f32
  std::vector<uint16_t> scales16, zeros16;  // (NP/16, G, 16) when param_dtype is f16
  PackedInt4View view() const;
};

// A canonical quantized weight (formats.h) as handed in from JS.
struct CanonicalWeight {
  Span codes, scales, zeros;  // zeros.data null when symmetric
  int64_t N, K;
  QuantSpec spec;
};

Status check_canonical(const CanonicalWeight& w);
// INT4 with group_size % 8 == 0 or a single group: the layout the kernels read.
bool matmul_fast_layout(int bits, int64_t K, int64_t group_size);
Status prepare_int4(PreparedInt4* out, const CanonicalWeight& w);
// Inverse of prepare_int4: codes (N, row_bytes), scales/zeros (N, G) in the
// original parameter dtype, bit-exact.
Status unprepare_int4(const PreparedInt4& p, Span codes, Span scales, Span zeros);

// y (M, N) f32 = x (M, K) · dequant(W)ᵀ. `prep` may be null: then a fast-layout
// weight is repacked on the fly, others take the generic path (dequantize a block
// of rows, fp32 GEMM). With the ref tier active, the canonical reference runs.
Status dequant_matmul(Span y, Span x, int64_t M, const CanonicalWeight* canon, const PreparedInt4* prep,
                      MatmulAccuracy accuracy);
// The int8 kernels on activations quantized by the caller (FPTQuant's static scales, quantized in
// the epilogue of the op that produced them): xq (M, KP) int8 in the permuted layout, xs (M) row
// scales, xsumq (M, G) group sums of xq (matmul.h); y (M, N). scratch: scratch_slots() *
// matmul_int8_run_scratch_bytes(M, KP) bytes. Lengths are the caller's to check.
int64_t matmul_int8_run_scratch_bytes(int64_t M, int64_t KP);
void matmul_int8_prequantized(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M,
                              const PreparedInt4& p, uint8_t* scratch);
// Baseline fp32 GEMM y (M, N) = x (M, K) · w (N, K)ᵀ with the active tier.
Status sgemm_nt(Span y, Span x, Span w, int64_t M, int64_t N, int64_t K);

}  // namespace qf
