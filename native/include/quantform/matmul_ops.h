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

// F32: fp32-class results; Int8: activations quantized per row to int8; Bf16: weights and
// activations rounded to bf16 where that is faster (prefill, M > QF_MM_SPLIT_MAX_M, on a CPU with
// AVX-512 BF16), fp32-class elsewhere.
enum class MatmulAccuracy : int { F32 = 0, Int8 = 1, Bf16 = 2 };

// The kernel family that runs a dequant-matmul (the active tier's implementation of it):
//   fp32       INT4 decoded to fp32 in registers (decode) or into panels (prefill), FMA
//   split      fp32 activations as three int8 digits on VNNI (matmul.h), M <= QF_MM_SPLIT_MAX_M
//   int8       activations quantized per row to int8, VNNI (accuracy 'int8')
//   bf16       weights decoded to bf16 panels, x rounded to bf16, AMX tiles or AVX-512 BF16 dot
//              products (accuracy 'bf16')
//   generic    a block of rows dequantized, then the engine's fp32 GEMM (formats without a
//              repacked layout: INT2/3/8, INT4 group sizes not a multiple of 8)
//   reference  the canonical scalar reference, double accumulation (the ref tier)
// Auto picks from the accuracy, M, the weight's layout and the CPU (select_matmul_path).
enum class MatmulPath : int { Auto = 0, Fp32, Split, Int8, Bf16, Generic, Reference };
const char* matmul_path_name(MatmulPath p);
bool parse_matmul_path(const char* s, MatmulPath* out);

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

// The path Auto takes: int8 accuracy -> int8; fp32 (and bf16 at M <= QF_MM_SPLIT_MAX_M) -> split
// when VNNI is usable and M <= QF_MM_SPLIT_MAX_M, else fp32; bf16 -> bf16 when the CPU has AVX-512
// BF16, else the fp32 choice; a weight without the fast layout -> generic; the ref tier with a
// canonical weight only -> reference.
MatmulPath select_matmul_path(int64_t M, const CanonicalWeight* canon, const PreparedInt4* prep, MatmulAccuracy accuracy);

// y (M, N) f32 = x (M, K) · dequant(W)ᵀ. `prep` may be null: then a fast-layout
// weight is repacked on the fly. `path` forces a kernel family (tests, benchmarks): a
// path the weight or the CPU cannot take is an error naming why, never a silent
// fallback; `ran` (optional) receives the path that ran.
Status dequant_matmul(Span y, Span x, int64_t M, const CanonicalWeight* canon, const PreparedInt4* prep,
                      MatmulAccuracy accuracy, MatmulPath path = MatmulPath::Auto, MatmulPath* ran = nullptr);
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
