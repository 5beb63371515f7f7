// Dequant-matmul kernel family: y = x · dequant(W)ᵀ with W packed INT4.
//
// Kernels read a repacked ("prepared") copy of W, built once at load time from the
// canonical interchange format (formats.h) and exactly invertible (tested
// bit-exact). Prepared INT4 layout, for N padded to NP = ceil(N/16)*16 and K padded
// to KP = ceil(K/8)*8:
//
//   codes  uint32 (NP/16, KP/8, 16)   word [t, c, l] holds codes of row n = 16t + l,
//                                      k = 8c .. 8c+7: code k = 8c + j in bits 4j .. 4j+3
//   scales f32|f16 (NP/16, G, 16)     s[n, g] in the canonical parameter dtype; 0 for padding rows
//   zeros  f32|f16 (NP/16, G, 16)     zero point z[n, g] (2^(b-1) when symmetric)
//
// Parameters keep their canonical dtype (exact, and f16 halves their share of
// the memory traffic at small group sizes); kernels form s*z once per group, so
// w = q*s - s*z is one fmsub and a group sum is scaled as s*sum(q x) - s*z*sum(x)
// (or s*(sum(q x) - z*sum(x))).
// One 64-byte line is 16 output rows x 8 k: a zmm (two ymm for AVX2) of 16 lanes,
// one per output row, so kernels vectorize over n and never reduce horizontally.
// Padding codes are 0 and padded x entries are 0, so padding adds nothing.
// The fast path needs group_size % 8 == 0 or one group per row (G == 1);
// other INT4 group sizes and INT2/3/8 take the generic path (matmul_ops.cpp).
//
// int8 accuracy (VNNI, native/cpu/avx512vnni): x is quantized per row,
// xs = max|x| / 127, xq = rint(x / xs) in [-127, 127], and
//   y[m, n] = xs[m] * sum_g (s[n, g] * sum_{k in g} xq[m, k] q[n, k] - s[n, g] z[n, g] * sum_{k in g} xq[m, k])
// with the inner sums exact in int32 (vpdpbusd: u8 codes x s8 activations).
// xq rows are stored with each chunk of 8 permuted as x0 x2 x4 x6 x1 x3 x5 x7:
// low nibbles of a code word are the even k, high nibbles the odd k.
#pragma once
#include <cstdint>

namespace qf {

constexpr int64_t QF_MM_NT = 16;  // output rows per tile (one zmm of lanes)
constexpr int64_t QF_MM_KC = 8;   // k per code word
// Up to this many rows of x every kernel decodes weights in registers (a
// memory-bound GEMV) and gets no scratch. Above it each kernel picks its own
// crossover to decoding a panel once and running a register-blocked GEMM: fp32
// AVX-512 at M > 4 (beyond that, broadcasts of x rather than the weight stream
// bound the register decode), fp32 AVX2 at M > 2, int8 VNNI at M > 8.
constexpr int64_t QF_MM_GEMV_MAX_M = 1;

struct PackedInt4View {
  int64_t N, K, NP, KP, G, group_size;
  bool f16_params;        // scales/zeros hold binary16 bits (uint16_t), else f32
  const uint32_t* codes;  // (NP/16, KP/8, 16)
  const void* scales;     // (NP/16, G, 16)
  const void* zeros;      // (NP/16, G, 16)
  // Every zero point is 2^(b-1) = 8: kernels may use the constant and leave the
  // zeros stream unread (a sixth of the traffic at group size 32 with f32 params).
  bool symmetric = false;
};

struct MatmulKernels {
  // fp32 accuracy. y (M, N) row stride N, columns of tiles [t0, t1) only;
  // x (M, KP) f32 with zero padding; xsum (M, G) group sums of x.
  // scratch: matmul_scratch_floats(KP) floats private to the caller's thread
  // (null when M <= QF_MM_GEMV_MAX_M).
  void (*matmul_f32)(float* y, const float* x, const float* xsum, int64_t M, const PackedInt4View& w,
                     int64_t t0, int64_t t1, float* scratch);
};

struct MatmulInt8Kernels {
  // int8 accuracy. xq (M, KP) permuted int8 rows (see above), xs (M) row scales,
  // xsumq (M, G) group sums of xq; y (M, N), tiles [t0, t1).
  void (*matmul_int8)(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M,
                      const PackedInt4View& w, int64_t t0, int64_t t1, uint8_t* scratch);
};

// Scratch per thread, in floats (f32) or bytes (int8): one decoded panel of
// 32 output rows over the whole of KP.
inline int64_t matmul_scratch_floats(int64_t KP) { return KP * 32 + 64; }
inline int64_t matmul_int8_scratch_bytes(int64_t KP) { return KP * 32 + 256; }

extern const MatmulKernels matmul_kernels_ref;
extern const MatmulKernels matmul_kernels_avx2;
extern const MatmulKernels matmul_kernels_avx512;
extern const MatmulInt8Kernels matmul_int8_kernels_ref;
extern const MatmulInt8Kernels matmul_int8_kernels_avx512vnni;

const MatmulKernels& matmul_kernels();          // the active tier's table
const MatmulInt8Kernels& matmul_int8_kernels();  // VNNI when vnni_available(), else ref

// Canonical-format references (any bits, any group size): the definition of correct.
// y (M, N); x (M, K) f32; codes (N, row_bytes); scales, zeros (N, G) f32 (zeros
// null when symmetric). Rows [n0, n1) of the output columns. Accumulates in double.
void dequant_matmul_ref(float* y, const float* x, int64_t M, const uint8_t* codes, const float* scales,
                        const float* zeros, int64_t N, int64_t K, int bits, int64_t group_size, bool symmetric,
                        int64_t n0, int64_t n1);
// The int8-activation algorithm above, in scalar code on the canonical format:
// xq (M, K) unpermuted int8, xs (M) row scales.
void dequant_matmul_int8_ref(float* y, const int8_t* xq, const float* xs, int64_t M, const uint8_t* codes,
                             const float* scales, const float* zeros, int64_t N, int64_t K, int bits,
                             int64_t group_size, bool symmetric, int64_t n0, int64_t n1);

}  // namespace qf
