// Scalar reference for the dequant-matmul family (layouts: matmul.h).
// dequant_matmul_ref on the canonical format is the definition of correct; the
// prepared-layout functions below are the ref tier of the kernel table (same
// arithmetic, reading the repacked layout) and accumulate in double.
#include "quantform/matmul.h"

#include "quant_common.h"

namespace qf {

void dequant_matmul_ref(float* y, const float* x, int64_t M, const uint8_t* codes, const float* scales,
                        const float* zeros, int64_t N, int64_t K, int bits, int64_t group_size, bool symmetric,
                        int64_t n0, int64_t n1) {
  const int64_t G = qf_num_groups(K, group_size);
  const int64_t rb = qf_packed_row_bytes(bits, K);
  const float zsym = (float)(1 << (bits - 1));
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      double acc = 0;
      for (int64_t k = 0; k < K; k++) {
        const int64_t g = k / group_size;
        const float z = symmetric ? zsym : zeros[n * G + g];
        const float w = ((float)get_code(codes + n * rb, k, bits) - z) * scales[n * G + g];
        acc += (double)x[m * K + k] * (double)w;
      }
      y[m * N + n] = (float)acc;
    }
}

void dequant_matmul_int8_ref(float* y, const int8_t* xq, const float* xs, int64_t M, const uint8_t* codes,
                             const float* scales, const float* zeros, int64_t N, int64_t K, int bits,
                             int64_t group_size, bool symmetric, int64_t n0, int64_t n1) {
  const int64_t G = qf_num_groups(K, group_size);
  const int64_t rb = qf_packed_row_bytes(bits, K);
  const float zsym = (float)(1 << (bits - 1));
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      double acc = 0;
      for (int64_t g = 0; g < G; g++) {
        const int64_t k0 = g * group_size, k1 = k0 + group_size < K ? k0 + group_size : K;
        int64_t dot = 0, xsum = 0;  // exact integer sums, as vpdpbusd computes them
        for (int64_t k = k0; k < k1; k++) {
          dot += (int64_t)xq[m * K + k] * (int64_t)get_code(codes + n * rb, k, bits);
          xsum += xq[m * K + k];
        }
        const double s = scales[n * G + g], z = symmetric ? zsym : zeros[n * G + g];
        acc += s * (double)dot - s * z * (double)xsum;
      }
      y[m * N + n] = (float)(acc * xs[m]);
    }
}

namespace {

unsigned prepared_code(const PackedInt4View& w, int64_t n, int64_t k) {
  const int64_t t = n / QF_MM_NT, l = n % QF_MM_NT, c = k / QF_MM_KC;
  return (w.codes[(t * (w.KP / QF_MM_KC) + c) * QF_MM_NT + l] >> (4 * (k % QF_MM_KC))) & 0xf;
}

int64_t param_index(const PackedInt4View& w, int64_t n, int64_t g) {
  return ((n / QF_MM_NT) * w.G + g) * QF_MM_NT + n % QF_MM_NT;
}

float param(const PackedInt4View& w, const void* p, int64_t i) {
  return w.f16_params ? f16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

void matmul_f32_ref(float* y, const float* x, const float* xsum, int64_t M, const PackedInt4View& w, int64_t t0,
                    int64_t t1, float* scratch) {
  const int64_t n1 = t1 * QF_MM_NT < w.N ? t1 * QF_MM_NT : w.N;
  for (int64_t n = t0 * QF_MM_NT; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      double acc = 0;
      for (int64_t k = 0; k < w.K; k++) {
        const int64_t p = param_index(w, n, k / w.group_size);
        const float wv = ((float)prepared_code(w, n, k) - param(w, w.zeros, p)) * param(w, w.scales, p);
        acc += (double)x[m * w.KP + k] * (double)wv;
      }
      y[m * w.N + n] = (float)acc;
    }
}

// Position of k inside a permuted xq row (matmul.h): even k first, then odd k.
int64_t permuted(int64_t k) {
  const int64_t j = k % QF_MM_KC;
  return k - j + (j % 2) * 4 + j / 2;
}

void matmul_int8_ref(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M,
                     const PackedInt4View& w, int64_t t0, int64_t t1, uint8_t* scratch) {
  const int64_t n1 = t1 * QF_MM_NT < w.N ? t1 * QF_MM_NT : w.N;
  for (int64_t n = t0 * QF_MM_NT; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      double acc = 0;
      for (int64_t g = 0; g < w.G; g++) {
        const int64_t k0 = g * w.group_size, k1 = k0 + w.group_size < w.K ? k0 + w.group_size : w.K;
        int64_t dot = 0;
        for (int64_t k = k0; k < k1; k++) dot += (int64_t)xq[m * w.KP + permuted(k)] * prepared_code(w, n, k);
        const int64_t p = param_index(w, n, g);
        const double s = param(w, w.scales, p), z = param(w, w.zeros, p);
        acc += s * (double)dot - s * z * (double)xsumq[m * w.G + g];
      }
      y[m * w.N + n] = (float)(acc * xs[m]);
    }
}

}  // namespace

const MatmulKernels matmul_kernels_ref = {matmul_f32_ref};
const MatmulInt8Kernels matmul_int8_kernels_ref = {matmul_int8_ref};

}  // namespace qf
