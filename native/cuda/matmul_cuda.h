// CUDA dequant-matmul: y = x · dequant(W)ᵀ reading the canonical packed INT4
// layout (formats.h) directly from device memory, no repacking.
//   M <= 8: dequant_gemv_int4_kernel, one warp per output row, fp32 math
//           (x in f32, f16 or bf16).
//   M > 8:  dequant_gemm_int4_wmma_kernel, 64 x 64 output tiles on tensor cores
//           (wmma 16x16x16, fp32 accumulation); x and dequantized W tiles are
//           rounded to f16 (x f32 or f16) or bf16 (x bf16) in shared memory.
#pragma once
#include <cstdint>

#include "quantform/status.h"

namespace qf {

enum class CudaXType : int { F32 = 0, F16 = 1, BF16 = 2 };

// An INT4 weight resident on the GPU. Owns its device buffers.
struct CudaInt4Weight {
  int64_t N = 0, K = 0, G = 0, group_size = 0;
  uint8_t* codes = nullptr;  // (N, ceil(K/2)) canonical packed rows
  float* scales = nullptr;   // (N, G)
  float* zeros = nullptr;    // (N, G); 8 everywhere when the source was symmetric
  CudaInt4Weight() = default;
  CudaInt4Weight(const CudaInt4Weight&) = delete;
  CudaInt4Weight& operator=(const CudaInt4Weight&) = delete;
  ~CudaInt4Weight();
};

// Host arrays in; scales/zeros (N, G) f32 (zeros null: symmetric).
Status cuda_upload_int4(CudaInt4Weight* out, const uint8_t* codes, const float* scales, const float* zeros, int64_t N,
                        int64_t K, int64_t group_size);
// x (M, K) host, y (M, N) host f32.
Status cuda_dequant_matmul(float* y, const void* x, CudaXType xt, int64_t M, const CudaInt4Weight& w);

}  // namespace qf
