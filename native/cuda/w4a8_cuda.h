// CUDA W4A8 / W4A4 dequant-matmul with static activation scales (FPTQuant's integer path):
// int8 (or 4-bit) activation codes x INT4 weights (CudaInt4Weight, canonical packed rows)
// with exact int32 sums per weight group, the same integer semantics as the CPU int8 kernels
// (matmul.h, "int8 accuracy"; dequant_matmul_int8_ref):
//   y[m, n] = xs[m] * sum_g (s[n, g] * sum_{k in g} xq[m, k] q[n, k] - s[n, g] z[n, g] * sum_{k in g} xq[m, k])
// and the CPU VNNI kernel's float epilogue, in its order: per group a = fma(float(dot), s, a),
// a = fma(-(s z), xsum, a); then y = a * xs. So on the same codes the GPU result is bit-identical
// to the VNNI kernel's and within float rounding of the double-accumulating reference.
//
// Activations use the CPU int8 path's layout, so CPU-quantized codes can be fed as they are:
//   xq    int8 (M, KP)  KP = ceil(K / 8) * 8; each chunk of 8 k permuted x0 x2 x4 x6 x1 x3 x5 x7
//                      (the low nibbles of a code word are the even k); padding [K, KP) ignored
//   xsumq f32  (M, G)   group sums of xq over the weight's groups (exact integers)
// The weight's groups must be whole 32-k steps: groupSize % 32 == 0, or one group per row.
//
// Kernels (compiled for sm_80 and sm_90; not yet run on a GPU):
//   dp4a-gemv  M <= 8: one warp per output row, __dp4a on nibbles unpacked to bytes; the lanes
//              split into teams of a power of two, one weight group per team, int32 sums
//              reduced per team, then the groups applied in order (bit-exact to the GEMM's order)
//   mma-s8     M > 8: 64 x 64 output tiles, 4 warps of 32 x 32, mma.sync m16n8k32 s8.s8.s32;
//              weight nibbles unpacked to bytes (0..15) in shared memory in the chunk
//              permutation of the activations, so A and B agree on k without repacking x
//   mma-s4     M > 8, 4-bit activations, sm_80..sm_89 (int4 tensor cores), groupSize % 64 == 0
//              or one group: mma.sync m16n8k64 s4.s4.s32, weights as q - 8 (s4) and the
//              exact sum recovered as dot + 8 xsum. sm_90 (Hopper) has no int4 tensor-core
//              rate: there, and for other group sizes, 4-bit activations run mma-s8.
#pragma once
#include <cstdint>

#include "matmul_cuda.h"
#include "quantform/status.h"

namespace qf {

enum class CudaInt8Kernel : int { Dp4aGemv = 0, MmaS8 = 1, MmaS4 = 2 };
const char* cuda_int8_kernel_name(CudaInt8Kernel k);

// The kernel the int8 matmul runs for M rows of `bits`-bit codes (4 or 8) on device 0; an
// error (QF_UNSUPPORTED) when the weight's groups are not whole 32-k steps, or for M out of range.
Status cuda_int8_kernel(CudaInt8Kernel* out, int64_t M, int bits, const CudaInt4Weight& w);

// The static activation quantizer on the GPU, the CPU act_quant_rows contract (engine.h):
// xq (rows, KP) = clamp(rint(x m[r] / scale), -qmax, qmax) permuted, padding 0; xsumq (rows, G)
// group sums over groups of gs; x (rows, K); m (rows) or null. Host pointers; lengths checked
// by the caller (check_act_quant_rows).
Status cuda_act_quant_rows(int8_t* xq, float* xsumq, const float* x, const float* m, float scale, int64_t rows,
                           int64_t K, int64_t KP, int64_t gs, int bits);

// y (M, N) from codes quantized by the caller: xq (M, KP) in the layout above, xs (nxs) the
// activation scale (nxs 1: per tensor) or per-row scales (nxs == M). Group sums are formed on
// the GPU. Host pointers; ran (optional) receives the kernel.
Status cuda_matmul_int8(float* y, const int8_t* xq, const float* xs, int64_t nxs, int64_t M, int bits,
                        const CudaInt4Weight& w, CudaInt8Kernel* ran);

// y (M, N) = (static quantization of x m on the GPU, then the int8 matmul) * scale: x (M, K)
// f32, m (M) per-row multipliers (FPTQuant's S_n) or null. Host pointers.
Status cuda_matmul_static(float* y, const float* x, const float* m, float scale, int64_t M, int bits,
                          const CudaInt4Weight& w, CudaInt8Kernel* ran);

}  // namespace qf
