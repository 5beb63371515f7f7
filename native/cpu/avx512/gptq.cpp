// AVX-512 GPTQ column loop. Same definition as native/ref/gptq.cpp; the batch row
// and the errors stay in f32 (the reference carries them in double), and the
// in-batch update w_j -= e U[c, j] runs 16 columns per FMA. The quantizer is the
// scalar one of quant_common.h (one code per row and column; the rank-1 updates
// are where the time goes: (c1 - c0)^2 / 2 FMAs per row and batch).
#include <immintrin.h>

#include "../../ref/gptq_common.h"
#include "quantform/gptq.h"

namespace qf {
namespace {

__mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

// x[0, n) -= e * u[0, n)
void axpy_neg(float* x, const float* u, float e, int64_t n) {
  const __m512 ev = _mm512_set1_ps(e);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(x + j, _mm512_fnmadd_ps(ev, _mm512_loadu_ps(u + j), _mm512_loadu_ps(x + j)));
  if (j < n) {
    const __mmask16 m = tail16(n - j);
    _mm512_mask_storeu_ps(x + j, m, _mm512_fnmadd_ps(ev, _mm512_maskz_loadu_ps(m, u + j), _mm512_maskz_loadu_ps(m, x + j)));
  }
}

void quantize_batch_avx512(uint8_t* codes8, float* scales, float* zeros, float* nerr, double* loss, const float* W,
                           const float* U, int64_t r0, int64_t r1, int64_t K, int64_t c0, int64_t c1,
                           const QuantSpec& spec, bool batch_start) {
  const int64_t gs = spec.group_size, G = qf_num_groups(K, gs), n = c1 - c0;
  alignas(64) float w[kGptqMaxBatch];  // (n) the row's batch, updated in place
  for (int64_t r = r0; r < r1; r++) {
    const float* wr = W + r * K;
    for (int64_t j = 0; j < n; j++) w[j] = wr[c0 + j];
    GroupParams p = gptq_stored_params(scales, zeros, r * G + c0 / gs, spec);
    double row_loss = 0;
    for (int64_t i = 0; i < n; i++) {
      const int64_t c = c0 + i;
      if (c % gs == 0) {
        const int64_t ce = c + gs < K ? c + gs : K;
        p = gptq_group_params(w, wr, c, c0, c1, ce, batch_start, spec);
        scales[r * G + c / gs] = p.scale;
        if (!spec.symmetric) zeros[r * G + c / gs] = p.zero;
      }
      const uint8_t q = quantize_one(w[i], p);
      codes8[r * K + c] = q;
      const float dq = ((float)q - p.zero) * p.scale;
      const float e = (w[i] - dq) / U[c * K + c];
      row_loss += (double)e * (double)e / 2;
      nerr[r * n + i] = -e;
      axpy_neg(w + i + 1, U + c * K + c + 1, e, n - i - 1);
    }
    loss[r] += row_loss;
  }
}

}  // namespace

const GptqKernels gptq_kernels_avx512 = {quantize_batch_avx512};

}  // namespace qf
