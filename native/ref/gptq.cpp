// Scalar reference of GPTQ's column loop (gptq.h): the batch's row values are
// carried in double, errors and their spread are computed in double; the quantizer
// itself works on the f32 value, as the packed format defines it.
#include "quantform/gptq.h"

#include "gptq_common.h"

namespace qf {
namespace {

void quantize_batch_ref(uint8_t* codes8, float* scales, float* zeros, float* nerr, double* loss, const float* W,
                        const float* U, int64_t r0, int64_t r1, int64_t K, int64_t c0, int64_t c1,
                        const QuantSpec& spec, bool batch_start) {
  const int64_t gs = spec.group_size, G = qf_num_groups(K, gs), n = c1 - c0;
  double w[kGptqMaxBatch];  // (n) the row's batch, updated in place
  for (int64_t r = r0; r < r1; r++) {
    const float* wr = W + r * K;
    for (int64_t j = 0; j < n; j++) w[j] = wr[c0 + j];
    // the batch may start inside a group chosen by an earlier batch
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
      const uint8_t q = quantize_one((float)w[i], p);
      codes8[r * K + c] = q;
      const float dq = ((float)q - p.zero) * p.scale;  // exactly what dequantize computes
      const double e = (w[i] - (double)dq) / (double)U[c * K + c];
      row_loss += e * e / 2;
      nerr[r * n + i] = (float)-e;
      const float* u = U + c * K + c0;
      for (int64_t j = i + 1; j < n; j++) w[j] -= e * (double)u[j];
    }
    loss[r] += row_loss;
  }
}

}  // namespace

const GptqKernels gptq_kernels_ref = {quantize_batch_ref};

}  // namespace qf
