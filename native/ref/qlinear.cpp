// Scalar reference of the quantized-linear backward (qlinear.h): direct sums in
// double over the codes, one element of Ŵ at a time, nothing dequantized ahead.
#include "quantform/qlinear.h"

#include "quant_common.h"

namespace qf {
namespace {

void grad_input_ref(float* dx, const float* dy, const uint8_t* codes, const float* scales, const float* zeros,
                    int64_t M, int64_t N, int64_t K, const QuantSpec& spec, int64_t k0, int64_t k1, float* scratch) {
  (void)scratch;
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  const float zsym = (float)(1 << (spec.bits - 1));
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = k0; k < k1; k++) {
      const int64_t g = k / spec.group_size;
      double acc = 0;
      for (int64_t n = 0; n < N; n++) {
        const float z = zeros ? zeros[n * G + g] : zsym;
        const float w = ((float)get_code(codes + n * rb, k, spec.bits) - z) * scales[n * G + g];  // as dequantize
        acc += (double)dy[m * N + n] * (double)w;
      }
      dx[m * K + k] = (float)acc;
    }
}

void grad_scales_ref(float* ds, const float* dy, const float* x, const uint8_t* codes, const float* zeros, int64_t M,
                     int64_t N, int64_t K, const QuantSpec& spec, int64_t n0, int64_t n1, float* scratch) {
  (void)scratch;
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  const float zsym = (float)(1 << (spec.bits - 1));
  for (int64_t n = n0; n < n1; n++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t ka = g * spec.group_size, kb = ka + spec.group_size < K ? ka + spec.group_size : K;
      const double z = zeros ? zeros[n * G + g] : zsym;
      double acc = 0;
      for (int64_t k = ka; k < kb; k++) {
        double gk = 0;  // (dyᵀ x)[n, k]
        for (int64_t m = 0; m < M; m++) gk += (double)dy[m * N + n] * (double)x[m * K + k];
        acc += ((double)get_code(codes + n * rb, k, spec.bits) - z) * gk;
      }
      ds[n * G + g] += (float)acc;
    }
}

}  // namespace

const QLinearKernels qlinear_kernels_ref = {grad_input_ref, grad_scales_ref};

}  // namespace qf
