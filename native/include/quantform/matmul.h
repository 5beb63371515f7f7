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
//
// Split accuracy (fp32-class on VNNI, native/cpu/avx512vnni/matmul_split.cpp): x is cut into
// blocks of bc chunks (8 k each, a block never straddles a weight group) and each block is
// written in 24-bit fixed point, x ~ sx * xi with sx = max|x| / 8355711 and
// xi = rint(x * (8355711 / max|x|)) in [-8355711, 8355711], as three balanced base-256
// digits xi = 65536 h + 256 m + l (h, m, l in [-128, 127]). The int8 kernel's vpdpbusd then
// gives each digit's sum with the codes exactly; per block and output row
//   v = fma(float((ih << 8) + im), 256, float(il))      (|(ih << 8) + im| < 2^24: exact)
//   v -= z * xsum  (asymmetric; symmetric starts each digit's sum at -8 sum(digit) instead)
//   acc_g = v * sx (first block of group g), else fma(v, sx, acc_g);  y = fma(acc_g, s, y)
// The representation error is below 2^-24 max|x| per element and the sums are exact, so the
// result is as close to the exact product as an fp32 FMA loop gets, with 9 vector ops per
// 64-byte line of codes instead of the fp32 decode's 24.
//
// On AMX (AMX-INT8 tiles), the same sums come from TDPBSUD: xq rows are the A tiles as they
// are, the codes of 16 output rows become B tiles of one byte per code (per chunk of 8 k, the
// low nibbles then the high nibbles: the permuted order of xq), 16 x 16 x 64 k per instruction.
//
// bf16 accuracy (prefill, native/cpu/avx512bf16): W is dequantized to bf16 panels,
// w = bf16(fma(q, s, -s z)), and x rounded to bf16 (both to nearest even); the products
// are exact in fp32 and accumulate in fp32: AMX tiles (TDPBF16PS, 16 x 16 outputs x 32 k
// per instruction) where the CPU and the OS allow them, else AVX-512 BF16 dot products
// (vdpbf16ps, two products per fp32 lane), about 3.4x and 2x the fp32 FMA rate.
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

// Split activations (layout above).
//   xd    int8  (M, KP/8, 3, 8): chunk c of row m holds its h, m, l digits, 8 each, in the
//                permuted order of the int8 path (even k, then odd k)
//   sx    f32   (M, NB)     block step, NaN when the block holds a non-finite value
//   zs    int32 (M, NB, 3)  -8 * the sum of each digit over the block (symmetric start)
//   xsum  f32   (M, NB)     fp32(65536 Sh + 256 Sm + Sl), the block's sum in units of sx
// NB = ceil(KP / (8 bc)); bc = 4 for one group per row, else gcd(group_size / 8, 4).
struct SplitX {
  const int8_t* xd;
  const float* sx;
  const int32_t* zs;
  const float* xsum;
  int64_t bc, NB;
};
constexpr int32_t QF_SPLIT_MAX = 8355711;  // 127 * (65536 + 256 + 1): three balanced digits

struct MatmulSplitKernels {
  // Splits x (M, K) f32 into the buffers of SplitX (xd zero-padded to KP).
  void (*split_x)(int8_t* xd, float* sx, int32_t* zs, float* xsum, const float* x, int64_t M, int64_t K,
                  int64_t KP, int64_t bc);
  // y (M, N), tiles [t0, t1), from split activations; M <= QF_MM_SPLIT_MAX_M.
  void (*matmul_split)(float* y, const SplitX& x, int64_t M, const PackedInt4View& w, int64_t t0, int64_t t1);
};
// Up to this many rows of x the split kernel decodes weights in registers, rows in blocks of 4.
constexpr int64_t QF_MM_SPLIT_MAX_M = 16;

// bf16 layouts.
//   xb     bf16 (MP, KSP): x rounded, MP = M rounded up to 32, KSP = KS * 32, KS = ceil(KP / 32)
//          k-steps; padding rows and columns are 0
//   panel  bf16 (KS, 2, 16, 16, 2) per pair of tiles: [k-step s][tile h][pair row r][column n][j]
//          = w(n = 16 (t + h) + n, k = 32 s + 2 r + j); each (s, h) block is one 1 KB AMX B tile
//          (16 rows of 64 bytes); columns past NP and k past KP are 0
constexpr int64_t QF_BF16_KSTEP = 32;
inline int64_t bf16_panel_elems(int64_t KP) { return (KP + QF_BF16_KSTEP - 1) / QF_BF16_KSTEP * 2 * 16 * 32; }

struct MatmulBf16Kernels {
  // xb (MP, KSP) = bf16(x (M, K)), zero padded.
  void (*round_x)(uint16_t* xb, const float* x, int64_t M, int64_t MP, int64_t K, int64_t KSP);
  // panel of tiles t, t + 1 (the second may be past NP: zeros).
  void (*build_panel)(uint16_t* panel, const PackedInt4View& w, int64_t t);
  // y (M, N) row stride N, columns [n0, n0 + 32 np) clipped to N = xb (MP, KSP) . panels^T for np
  // consecutive panels; cbuf: 32 x 32 floats of scratch.
  void (*gemm_panels)(float* y, int64_t N, int64_t n0, const uint16_t* xb, int64_t M, int64_t KSP, const uint16_t* panels,
                      int64_t np, float* cbuf);
};

// Scratch per thread, in floats (f32) or bytes (int8): one decoded panel of
// 32 output rows over the whole of KP.
inline int64_t matmul_scratch_floats(int64_t KP) { return KP * 32 + 64; }
// AMX int8 (native/cpu/avx512bf16/matmul_amx_int8.cpp): k padded to whole 64-k tile steps; per
// thread the byte panels of P tile pairs (16 KSP bytes a tile), one 32-row block of xq packed into
// tiles (32 KSP bytes) and, per pair, int32 sums between k chunks and fp32 accumulators (4 KB
// each), plus one (32, 32) int32 block. P pairs share each pass over xq, as many as fit 1 MB of
// L2 (1 to 8).
inline int64_t matmul_amx_int8_ksp(int64_t KP) { return (KP + 63) / 64 * 64; }
inline int64_t matmul_amx_int8_pairs(int64_t KP) {
  const int64_t fit = (1 << 20) / (32 * matmul_amx_int8_ksp(KP));
  return fit < 1 ? 1 : fit > 8 ? 8 : fit;
}
inline int64_t matmul_int8_scratch_bytes(int64_t KP) {
  const int64_t vnni = KP * 32 + 256, ksp = matmul_amx_int8_ksp(KP), P = matmul_amx_int8_pairs(KP);
  const int64_t amx = P * 32 * ksp + 32 * ksp + (2 * P + 1) * 4096 + 256;
  return vnni > amx ? vnni : amx;
}
// From this many rows of x the AMX int8 kernel runs; fewer go to the VNNI kernel.
constexpr int64_t QF_MM_AMX_INT8_MIN_M = 16;

extern const MatmulKernels matmul_kernels_ref;
extern const MatmulKernels matmul_kernels_avx2;
extern const MatmulKernels matmul_kernels_avx512;
extern const MatmulInt8Kernels matmul_int8_kernels_ref;
extern const MatmulInt8Kernels matmul_int8_kernels_avx512vnni;
// AMX tiles (TDPBSUD) for M >= QF_MM_AMX_INT8_MIN_M and group sizes that are a multiple of 128 (or
// one group per row); the VNNI kernel otherwise. Bit-identical to the VNNI kernel.
extern const MatmulInt8Kernels matmul_int8_kernels_amx_avx512bf16;

extern const MatmulSplitKernels matmul_split_kernels_ref;
extern const MatmulSplitKernels matmul_split_kernels_avx512vnni;
extern const MatmulBf16Kernels matmul_bf16_kernels_ref;
// gemm_panels on AVX-512 BF16 dot products; the AMX table shares round_x and build_panel.
extern const MatmulBf16Kernels matmul_bf16_kernels_avx512bf16;
extern const MatmulBf16Kernels matmul_bf16_kernels_amx_avx512bf16;

const MatmulKernels& matmul_kernels();            // the active tier's table
const MatmulInt8Kernels& matmul_int8_kernels();    // AMX when amx_int8_available(), else VNNI when vnni_available(), else ref
const MatmulSplitKernels& matmul_split_kernels();  // VNNI when vnni_available(), else ref
// AMX when amx_available(), else AVX-512 BF16 when bf16_available(), else null (no bf16 path);
// the ref tier's table under the ref policy.
const MatmulBf16Kernels* matmul_bf16_kernels();

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
