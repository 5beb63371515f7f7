// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers"; reference code IST-DASLab/gptq gptq.py).
//
// For a linear W (N, K) with calibration inputs X (T, K), GPTQ minimises
// tr((W - Ŵ) H (W - Ŵ)ᵀ) with H = 2/T XᵀX, one column at a time: column c is
// quantized, and its error e = (w_c - ŵ_c) / U[c, c] is spread over the columns
// not yet quantized, w_j -= e U[c, j], where U is the upper Cholesky factor of
// (H + λI)^-1 (H^-1 = Uᵀ U), λ = damp * mean(diag H). Rows are independent: every
// row sees the same U. Columns are processed in lazy batches ("blocks" in the
// paper) of block_size columns: inside a batch the updates stay in the batch,
// the columns after it get one rank-block_size update, a GEMM.
//
// Group parameters (act-order off, IST-DASLab's static_groups=False): a group's
// scale and zero point are chosen when the column loop reaches its first column,
// from the row's values at that moment, with quantform's quantizer (formats.h,
// native/ref/quant_common.h: f16 rounding of the scale before codes are chosen).
// Two readings of "the row's values" exist:
//   updated      every earlier column's error already applied (exact arithmetic
//                then does not depend on block_size: a batch is cut at a group
//                start whose group would cross the batch end);
//   batch_start  the values at the start of the current batch, i.e. without the
//                errors of the batch's earlier columns (what IST-DASLab/gptq,
//                AutoGPTQ and GPTQModel compute: find_params reads W, not W1).
// Dead inputs (diag H == 0): H[c, c] = 1 and W[:, c] = 0, as the reference does.
//
// Factorization, entirely through the blocked algorithms of gptq_ops.cpp (their
// flops are GEMMs on the engine's GEMM, engine.h; the 128 x 128 diagonal blocks are
// factored and inverted in double): H' = J H J (J reverses the index order) is
// Cholesky-factored, H' = L Lᵀ, L is inverted, and U = J L^-1 J (Uᵀ U = H^-1).
#pragma once
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

// Largest lazy batch: the column loop keeps one batch of a row on the stack.
constexpr int64_t kGptqMaxBatch = 512;

struct GptqKernels {
  // One lazy batch of the column loop, columns [c0, c1) (c1 - c0 <= kGptqMaxBatch)
  // of rows [r0, r1):
  //   for c in [c0, c1): at a group start choose the group's scale/zero (see above);
  //     q = Q(w_c);  e = (w_c - ŵ_c) / U[c, c];  w_j -= e U[c, j] for j in (c, c1)
  // W (N, K): working weights, read only (the batch's columns are updated in a
  //   private copy; columns >= c1 are the caller's trailing GEMM);
  // U (K, K): upper factor, row-major;
  // codes8 (N, K): one code per byte, columns [c0, c1) written;
  // scales, zeros (N, G): written at group starts, read when the batch starts
  //   inside a group (zeros untouched when symmetric);
  // nerr (N, c1 - c0): -e, the left operand of the trailing update;
  // loss (N): accumulates e^2 / 2 (the reference's Losses, summed).
  void (*quantize_batch)(uint8_t* codes8, float* scales, float* zeros, float* nerr, double* loss, const float* W,
                         const float* U, int64_t r0, int64_t r1, int64_t K, int64_t c0, int64_t c1,
                         const QuantSpec& spec, bool batch_start_params);
};

extern const GptqKernels gptq_kernels_ref;
extern const GptqKernels gptq_kernels_avx512;

const GptqKernels& gptq_kernels();  // the active tier's table (ref below AVX-512)

namespace gptq {

// Where a group's scale and zero point are read from (see the top of this file).
enum class ParamSource : int { Updated = 0, BatchStart = 1 };

struct Config {
  int64_t N = 0, K = 0;
  QuantSpec spec{4, 128, false, true};  // f16_params follows the scales' dtype
  float damp = 0.01f;                   // fraction of mean(diag H) added to the diagonal
  int64_t block_size = 128;             // lazy batch, 1 .. kGptqMaxBatch
  ParamSource params_from = ParamSource::Updated;
};

// H (K, K) f32, symmetric, = H * n/(n + T) + 2/(n + T) xᵀx for x (T, K) f32,
// n = rows_before (rows of every earlier call; 0 overwrites H). Streams: the caller
// feeds batches of rows and keeps n.
Status hessian_accumulate(Span H, Span x, int64_t T, int64_t K, int64_t rows_before);

// U (K, K) f32: upper Cholesky factor of (H + λI)^-1 after the dead-column fix
// (rows and columns of dead inputs become unit vectors). Exposed for tests.
Status inverse_factor(Span U, Span H, int64_t K, float damp);

// w (N, K) f32 quantized against H (K, K) f32 (not modified) ->
// codes (N, row_bytes) packed (formats.h), scales (N, G) f32|f16, zeros (N, G)
// (asymmetric), loss[0] = sum over rows and columns of e^2 / 2.
Status quantize(Span codes, Span scales, Span zeros, double* loss, Span w, Span H, const Config& c);

}  // namespace gptq
}  // namespace qf
