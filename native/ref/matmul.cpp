// Scalar reference for the dequant-matmul family (layouts: matmul.h).
// dequant_matmul_ref on the canonical format is the definition of correct; the
// prepared-layout functions below are the ref tier of the kernel table (same
// arithmetic, reading the repacked layout) and accumulate in double.
#include "quantform/matmul.h"

#include <cfloat>
#include <cmath>

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

// One block's digits (bc chunks from chunk c0, K real values) of row x: the arithmetic every
// tier repeats bit for bit (matmul.h, split accuracy).
void split_block(int8_t* xd, float* sx, int32_t* zs, float* xsum, const float* x, int64_t K, int64_t c0, int64_t c1) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t k = c0 * QF_MM_KC; k < c1 * QF_MM_KC && k < K; k++) {
    const float a = std::fabs(x[k]);
    if (!(a <= FLT_MAX)) finite = false;
    amax = a > amax ? a : amax;
  }
  const float inv = amax > 0.f && finite ? (float)QF_SPLIT_MAX / amax : 0.f;
  int32_t sum[3] = {0, 0, 0};
  for (int64_t k = c0 * QF_MM_KC; k < c1 * QF_MM_KC; k++) {
    int32_t xi = 0;
    if (k < K) {
      const float p = std::nearbyint(x[k] * inv);
      xi = p > (float)QF_SPLIT_MAX ? QF_SPLIT_MAX : p < -(float)QF_SPLIT_MAX ? -QF_SPLIT_MAX : (int32_t)p;
    }
    const int32_t l = ((xi + 128) & 255) - 128, r = (xi - l) >> 8;
    const int32_t m = ((r + 128) & 255) - 128, h = (r - m) >> 8;
    const int32_t d[3] = {h, m, l};
    const int64_t c = k / QF_MM_KC, pos = permuted(k) % QF_MM_KC;
    for (int i = 0; i < 3; i++) {
      xd[c * 24 + i * 8 + pos] = (int8_t)d[i];
      sum[i] += d[i];
    }
  }
  *sx = finite ? amax / (float)QF_SPLIT_MAX : NAN;
  for (int i = 0; i < 3; i++) zs[i] = -8 * sum[i];
  *xsum = (float)(65536 * (int64_t)sum[0] + 256 * (int64_t)sum[1] + sum[2]);
}

void split_x_ref(int8_t* xd, float* sx, int32_t* zs, float* xsum, const float* x, int64_t M, int64_t K, int64_t KP,
                 int64_t bc) {
  const int64_t KC = KP / QF_MM_KC, NB = (KC + bc - 1) / bc;
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < NB; j++) {
      const int64_t c0 = j * bc, c1 = c0 + bc < KC ? c0 + bc : KC;
      split_block(xd + m * KC * 24, sx + m * NB + j, zs + (m * NB + j) * 3, xsum + m * NB + j, x + m * K, K, c0, c1);
    }
}

void matmul_split_ref(float* y, const SplitX& x, int64_t M, const PackedInt4View& w, int64_t t0, int64_t t1) {
  const int64_t KC = w.KP / QF_MM_KC, n1 = t1 * QF_MM_NT < w.N ? t1 * QF_MM_NT : w.N;
  for (int64_t n = t0 * QF_MM_NT; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      const int8_t* xd = x.xd + m * KC * 24;
      float fa = 0.f;
      for (int64_t g = 0; g < w.G; g++) {
        const int64_t c0 = g * w.group_size / QF_MM_KC, c1 = g == w.G - 1 ? KC : (g + 1) * w.group_size / QF_MM_KC;
        const int64_t p = param_index(w, n, g);
        const float s = param(w, w.scales, p), z = param(w, w.zeros, p);
        float acc = 0.f;
        for (int64_t j = c0 / x.bc, first = 1; j * x.bc < c1; j++, first = 0) {
          const int32_t* zs = x.zs + (m * x.NB + j) * 3;
          int32_t ia[3] = {w.symmetric ? zs[0] : 0, w.symmetric ? zs[1] : 0, w.symmetric ? zs[2] : 0};
          for (int64_t c = j * x.bc; c < (j + 1) * x.bc && c < c1; c++)
            for (int64_t k = c * QF_MM_KC; k < (c + 1) * QF_MM_KC; k++) {
              const int32_t q = (int32_t)prepared_code(w, n, k);
              for (int i = 0; i < 3; i++) ia[i] += q * xd[c * 24 + i * 8 + permuted(k) % QF_MM_KC];
            }
          float v = std::fma((float)(ia[0] * 256 + ia[1]), 256.f, (float)ia[2]);
          if (!w.symmetric) v = std::fma(-z, x.xsum[m * x.NB + j], v);
          const float sxj = x.sx[m * x.NB + j];
          acc = first ? v * sxj : std::fma(v, sxj, acc);
        }
        fa = std::fma(acc, s, fa);
      }
      y[m * w.N + n] = fa;
    }
}

void round_x_ref(uint16_t* xb, const float* x, int64_t M, int64_t MP, int64_t K, int64_t KSP) {
  for (int64_t m = 0; m < MP; m++)
    for (int64_t k = 0; k < KSP; k++) xb[m * KSP + k] = m < M && k < K ? f32_to_bf16(x[m * K + k]) : 0;
}

// The weight w(n, k) of the bf16 path: fma(q, s, -s z) rounded, as the fp32 panel decode forms it.
uint16_t bf16_weight(const PackedInt4View& w, int64_t n, int64_t k) {
  const int64_t g = k / w.group_size < w.G ? k / w.group_size : w.G - 1;
  const int64_t p = param_index(w, n, g);
  const float s = param(w, w.scales, p), sz = s * param(w, w.zeros, p);
  return f32_to_bf16(std::fma((float)prepared_code(w, n, k), s, -sz));
}

void build_panel_ref(uint16_t* panel, const PackedInt4View& w, int64_t t) {
  const int64_t KS = (w.KP + QF_BF16_KSTEP - 1) / QF_BF16_KSTEP;
  for (int64_t s = 0; s < KS; s++)
    for (int64_t h = 0; h < 2; h++)
      for (int64_t r = 0; r < 16; r++)
        for (int64_t n = 0; n < 16; n++)
          for (int64_t j = 0; j < 2; j++) {
            const int64_t row = (t + h) * QF_MM_NT + n, k = s * QF_BF16_KSTEP + 2 * r + j;
            panel[(((s * 2 + h) * 16 + r) * 16 + n) * 2 + j] = row < w.NP && k < w.KP ? bf16_weight(w, row, k) : 0;
          }
}

void gemm_panels_ref(float* y, int64_t N, int64_t n0, const uint16_t* xb, int64_t M, int64_t KSP, const uint16_t* panels,
                     int64_t np, float* cbuf) {
  const int64_t KS = KSP / QF_BF16_KSTEP;
  for (int64_t p = 0; p < np; p++)
    for (int64_t c = 0; c < 32 && n0 + 32 * p + c < N; c++) {
      const uint16_t* panel = panels + p * KS * 1024;
      const int64_t h = c / 16, n = c % 16;
      for (int64_t m = 0; m < M; m++) {
        double acc = 0;
        for (int64_t k = 0; k < KSP; k++) {
          const int64_t s = k / QF_BF16_KSTEP, r = (k % QF_BF16_KSTEP) / 2, j = k % 2;
          acc += (double)bf16_to_f32(xb[m * KSP + k]) * (double)bf16_to_f32(panel[(((s * 2 + h) * 16 + r) * 16 + n) * 2 + j]);
        }
        y[m * N + n0 + 32 * p + c] = (float)acc;
      }
    }
}

}  // namespace

const MatmulBf16Kernels matmul_bf16_kernels_ref = {round_x_ref, build_panel_ref, gemm_panels_ref};
const MatmulSplitKernels matmul_split_kernels_ref = {split_x_ref, matmul_split_ref};
const MatmulKernels matmul_kernels_ref = {matmul_f32_ref};
const MatmulInt8Kernels matmul_int8_kernels_ref = {matmul_int8_ref};

}  // namespace qf
