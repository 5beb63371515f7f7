#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <string>

#include "cuda_check.h"
#include "matmul_cuda.h"

namespace qf {
namespace {

constexpr int kGemvMaxM = 8;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// One warp per output row n. Lanes stride over 4-byte words (8 codes), so a warp
// reads 128 contiguous bytes of the row per step; rows whose length is not a
// multiple of 4 bytes are read byte by byte at their end.
// y (M, N); x (M, K); codes (N, rb); scales, zeros (N, G).
template <typename TX>
__global__ void dequant_gemv_int4_kernel(float* __restrict__ y, const TX* __restrict__ x,
                                         const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                         const float* __restrict__ zeros, int M, int N, int K, int G, int gs, int rb) {
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const uint8_t* row = codes + (int64_t)n * rb;
  const float* srow = scales + (int64_t)n * G;
  const float* zrow = zeros + (int64_t)n * G;
  float acc[kGemvMaxM];
#pragma unroll
  for (int m = 0; m < kGemvMaxM; m++) acc[m] = 0.f;
  const bool aligned = (rb % 4) == 0;
  for (int c = lane; c * 8 < K; c += 32) {
    const int k0 = c * 8;
    uint32_t word;
    if (aligned) {
      word = __ldg(reinterpret_cast<const uint32_t*>(row) + c);
    } else {
      word = 0;
      for (int b = 0; b < 4 && 4 * c + b < rb; b++) word |= (uint32_t)row[4 * c + b] << (8 * b);
    }
    for (int j = 0; j < 8; j++) {
      const int k = k0 + j;
      if (k >= K) break;
      const int g = k / gs;
      const float w = ((float)((word >> (4 * j)) & 0xf) - zrow[g]) * srow[g];
#pragma unroll
      for (int m = 0; m < kGemvMaxM; m++)
        if (m < M) acc[m] += w * to_f32(x[(int64_t)m * K + k]);
    }
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxM; m++) {
    float v = acc[m];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && m < M) y[(int64_t)m * N + n] = v;
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kPad = 8;  // keeps wmma's ldm a multiple of 8 halves and spreads shared-memory banks

// y (M, N) = x (M, K) · dequant(W)ᵀ on tensor cores. A block computes a 64 x 64
// tile with 4 warps of 32 x 32 (2 x 2 wmma fragments); per 32-wide k step it
// stages x (64 x 32) and the dequantized W rows (64 x 32) in shared memory as TC.
// W row-major in shared memory is exactly the col-major B operand of x · Wᵀ.
template <typename TX, typename TC>
__global__ void dequant_gemm_int4_wmma_kernel(float* __restrict__ y, const TX* __restrict__ x,
                                              const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                              const float* __restrict__ zeros, int M, int N, int K, int G, int gs,
                                              int rb) {
  using namespace nvcuda;
  __shared__ __align__(32) TC xs[kBM][kBK + kPad];   // (64, 32) x tile
  __shared__ __align__(32) TC ws[kBN][kBK + kPad];   // (64, 32) W tile, rows = output features
  __shared__ __align__(32) float cs[kBM][kBN + 4];   // (64, 64) epilogue staging
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

  for (int k0 = 0; k0 < K; k0 += kBK) {
    for (int i = threadIdx.x; i < kBM * kBK; i += blockDim.x) {
      const int r = i / kBK, c = i % kBK, m = m0 + r, k = k0 + c;
      xs[r][c] = from_f32<TC>(m < M && k < K ? to_f32(x[(int64_t)m * K + k]) : 0.f);
    }
    // one byte = two codes (k even, k + 1); k0 is even so byte k / 2 starts the pair
    for (int i = threadIdx.x; i < kBN * kBK / 2; i += blockDim.x) {
      const int r = i / (kBK / 2), b = i % (kBK / 2), n = n0 + r, k = k0 + 2 * b;
      const uint8_t byte = (n < N && k < K) ? codes[(int64_t)n * rb + k / 2] : 0;
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int kk = k + h;
        float w = 0.f;
        if (n < N && kk < K) {
          const int g = kk / gs;
          w = ((float)((byte >> (4 * h)) & 0xf) - zeros[(int64_t)n * G + g]) * scales[(int64_t)n * G + g];
        }
        ws[r][2 * b + h] = from_f32<TC>(w);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, TC, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, TC, wmma::col_major> bf[2];
#pragma unroll
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &xs[wm * 32 + i * 16][kk], kBK + kPad);
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(bf[j], &ws[wn * 32 + j * 16][kk], kBK + kPad);
#pragma unroll
      for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], bf[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(&cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kBN + 4, wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kBN; i += blockDim.x) {
    const int r = i / kBN, c = i % kBN, m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[(int64_t)m * N + n] = cs[r][c];
  }
}

template <typename TX>
Status launch(float* dy, const void* dx, CudaXType xt, int64_t M, const CudaInt4Weight& w) {
  const int rb = (int)((w.K + 1) / 2);
  const TX* x = static_cast<const TX*>(dx);
  if (M <= kGemvMaxM) {
    const dim3 grid((unsigned)((w.N + kWarpsPerBlock - 1) / kWarpsPerBlock));
    dequant_gemv_int4_kernel<TX><<<grid, kWarpsPerBlock * 32>>>(dy, x, w.codes, w.scales, w.zeros, (int)M, (int)w.N,
                                                                (int)w.K, (int)w.G, (int)w.group_size, rb);
  } else {
    const dim3 grid((unsigned)((w.N + kBN - 1) / kBN), (unsigned)((M + kBM - 1) / kBM));
    if (xt == CudaXType::BF16)
      dequant_gemm_int4_wmma_kernel<TX, __nv_bfloat16><<<grid, 128>>>(dy, x, w.codes, w.scales, w.zeros, (int)M,
                                                                      (int)w.N, (int)w.K, (int)w.G, (int)w.group_size, rb);
    else
      dequant_gemm_int4_wmma_kernel<TX, __half><<<grid, 128>>>(dy, x, w.codes, w.scales, w.zeros, (int)M, (int)w.N,
                                                               (int)w.K, (int)w.G, (int)w.group_size, rb);
  }
  QF_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

CudaInt4Weight::~CudaInt4Weight() {
  if (codes) cudaFree(codes);
  if (scales) cudaFree(scales);
  if (zeros) cudaFree(zeros);
}

Status cuda_upload_int4(CudaInt4Weight* out, const uint8_t* codes, const float* scales, const float* zeros, int64_t N,
                        int64_t K, int64_t group_size) {
  if (N <= 0 || K <= 0 || group_size <= 0 || group_size > K || N > (int64_t(1) << 31) - 1 || K > (int64_t(1) << 30))
    return error(Code::ShapeMismatch, "CUDA matmul supports N < 2^31, K <= 2^30 and groupSize in [1, K]; received N=" +
                                          std::to_string(N) + ", K=" + std::to_string(K) + ", groupSize=" + std::to_string(group_size));
  const int64_t G = (K + group_size - 1) / group_size, rb = (K + 1) / 2;
  out->N = N; out->K = K; out->G = G; out->group_size = group_size;
  QF_CUDA_CHECK(cudaMalloc(&out->codes, (size_t)(N * rb)));
  QF_CUDA_CHECK(cudaMalloc(&out->scales, (size_t)(N * G) * sizeof(float)));
  QF_CUDA_CHECK(cudaMalloc(&out->zeros, (size_t)(N * G) * sizeof(float)));
  QF_CUDA_CHECK(cudaMemcpy(out->codes, codes, (size_t)(N * rb), cudaMemcpyHostToDevice));
  QF_CUDA_CHECK(cudaMemcpy(out->scales, scales, (size_t)(N * G) * sizeof(float), cudaMemcpyHostToDevice));
  QF_CUDA_CHECK(cudaMemcpy(out->zeros, zeros, (size_t)(N * G) * sizeof(float), cudaMemcpyHostToDevice));
  return Status::Ok();
}

Status cuda_dequant_matmul(float* y, const void* x, CudaXType xt, int64_t M, const CudaInt4Weight& w) {
  // the GEMM grid has ceil(M / 64) rows of blocks, at most 65535
  if (M <= 0 || M > int64_t(65535) * kBM)
    return error(Code::ShapeMismatch, "CUDA matmul supports M in [1, " + std::to_string(int64_t(65535) * kBM) +
                                          "]; received M=" + std::to_string(M));
  const size_t xbytes = (size_t)(M * w.K) * (xt == CudaXType::F32 ? 4 : 2);
  const size_t ybytes = (size_t)(M * w.N) * sizeof(float);
  DeviceBuffer dx, dy;
  Status st = dx.alloc(xbytes);
  if (!st.ok() || !(st = dy.alloc(ybytes)).ok()) return st;
  QF_CUDA_CHECK(cudaMemcpy(dx.ptr, x, xbytes, cudaMemcpyHostToDevice));
  float* fy = dy.as<float>();
  switch (xt) {
    case CudaXType::F32: st = launch<float>(fy, dx.ptr, xt, M, w); break;
    case CudaXType::F16: st = launch<__half>(fy, dx.ptr, xt, M, w); break;
    default: st = launch<__nv_bfloat16>(fy, dx.ptr, xt, M, w); break;
  }
  if (!st.ok()) return st;
  QF_CUDA_CHECK(cudaMemcpy(y, dy.ptr, ybytes, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace qf
