// CUDA quantized-linear backward. Both gradients are shared-memory tiled GEMMs that
// decode the packed codes as they load a tile of Ŵ, so Ŵ never exists in fp32:
//   dx (M, K) = dy (M, N) · Ŵ         tiles of 16 x 16 outputs, N in steps of 16
//   ds (N, G) += Σ_{k ∈ g} (q - z) (dyᵀ x)[n, k]
//                                      tiles of 16 (n) x 16 (k) of dyᵀ x, M in steps of 16,
//                                      then each tile row's group segments summed and
//                                      added with one atomicAdd per segment.
// Sums in f32 (the reference uses double); ds's atomics make its rounding order
// nondeterministic, within the tolerances of test/gpu/qlinear-cuda.test.ts.
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "qlinear_cuda.h"
#include "quantform/formats.h"

namespace qf {
namespace {

constexpr int kTile = 16;

// Code k of a packed row (formats.h): INT3 blocks of 8 codes in 3 bytes, others in one byte.
__device__ __forceinline__ unsigned code_at(const uint8_t* row, int64_t k, int bits) {
  switch (bits) {
    case 8: return row[k];
    case 4: return (row[k >> 1] >> ((k & 1) * 4)) & 0xfu;
    case 2: return (row[k >> 2] >> ((k & 3) * 2)) & 0x3u;
    default: {
      const uint8_t* b = row + (k >> 3) * 3;
      const unsigned word = (unsigned)b[0] | (unsigned)b[1] << 8 | (unsigned)b[2] << 16;
      return (word >> ((k & 7) * 3)) & 0x7u;
    }
  }
}

struct Layout {
  int bits;
  int64_t gs, G, rb;  // group size, groups per row, packed row bytes
  float zsym;         // zero point of symmetric weights
};

// grid (ceil(K/16), ceil(M/16)), block (16, 16): thread (tx, ty) owns dx[m0 + ty, k0 + tx]
__global__ void qlinear_grad_input_kernel(float* dx, const float* dy, const uint8_t* codes, const float* scales,
                                          const float* zeros, int64_t M, int64_t N, int64_t K, Layout L) {
  __shared__ float sdy[kTile][kTile + 1];  // (m, n) a tile of dy
  __shared__ float sw[kTile][kTile + 1];   // (n, k) a tile of Ŵ, decoded
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m = (int64_t)blockIdx.y * kTile + ty, k = (int64_t)blockIdx.x * kTile + tx;
  float acc = 0.f;
  for (int64_t n0 = 0; n0 < N; n0 += kTile) {
    sdy[ty][tx] = (m < M && n0 + tx < N) ? dy[m * N + n0 + tx] : 0.f;
    const int64_t n = n0 + ty;
    float w = 0.f;
    if (n < N && k < K) {
      const int64_t g = k / L.gs;
      const float z = zeros ? zeros[n * L.G + g] : L.zsym;
      w = ((float)code_at(codes + n * L.rb, k, L.bits) - z) * scales[n * L.G + g];  // dequantize's order
    }
    sw[ty][tx] = w;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; j++) acc += sdy[ty][j] * sw[j][tx];
    __syncthreads();
  }
  if (m < M && k < K) dx[m * K + k] = acc;
}

// grid (ceil(K/16), ceil(N/16)), block (16, 16): thread (tx, ty) owns (dyᵀ x)[n0 + ty, k0 + tx]
__global__ void qlinear_grad_scales_kernel(float* ds, const float* dy, const float* x, const uint8_t* codes,
                                           const float* zeros, int64_t M, int64_t N, int64_t K, Layout L) {
  __shared__ float sdy[kTile][kTile + 1];  // (m, n) a tile of dy
  __shared__ float sx[kTile][kTile + 1];   // (m, k) a tile of x
  __shared__ float sv[kTile][kTile + 1];   // (n, k) (q - z) (dyᵀ x)
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t nb = (int64_t)blockIdx.y * kTile, kb = (int64_t)blockIdx.x * kTile;
  const int64_t n = nb + ty, k = kb + tx;
  float acc = 0.f;
  for (int64_t m0 = 0; m0 < M; m0 += kTile) {
    const int64_t m = m0 + ty;
    sdy[ty][tx] = (m < M && nb + tx < N) ? dy[m * N + nb + tx] : 0.f;
    sx[ty][tx] = (m < M && k < K) ? x[m * K + k] : 0.f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; j++) acc += sdy[j][ty] * sx[j][tx];
    __syncthreads();
  }
  float v = 0.f;
  if (n < N && k < K) {
    const float z = zeros ? zeros[n * L.G + k / L.gs] : L.zsym;
    v = ((float)code_at(codes + n * L.rb, k, L.bits) - z) * acc;
  }
  sv[ty][tx] = v;
  __syncthreads();
  // the first column of each group segment of the tile row sums the segment
  if (n < N && k < K && (tx == 0 || k % L.gs == 0)) {
    const int64_t g = k / L.gs;
    float s = 0.f;
    for (int j = tx; j < kTile && kb + j < K && (kb + j) / L.gs == g; j++) s += sv[ty][j];
    atomicAdd(&ds[n * L.G + g], s);
  }
}

}  // namespace

Status quant_linear_backward_cuda(float* dx, float* ds, const float* dy, const float* x, int64_t M, const uint8_t* codes,
                                  const float* scales, const float* zeros, int64_t N, int64_t K, const QuantSpec& spec) {
  const Layout L{spec.bits, spec.group_size, qf_num_groups(K, spec.group_size), qf_packed_row_bytes(spec.bits, K),
                 (float)(1 << (spec.bits - 1))};
  const size_t f = sizeof(float);
  DeviceBuffer d_dy, d_x, d_codes, d_s, d_z, d_dx, d_ds;
  Status st;
  if (!(st = upload_bytes(d_dy, dy, f * (size_t)(M * N))).ok() || !(st = upload_bytes(d_codes, codes, (size_t)(N * L.rb))).ok() ||
      !(st = upload_bytes(d_s, scales, f * (size_t)(N * L.G))).ok() ||
      !(st = upload_bytes(d_z, zeros, zeros ? f * (size_t)(N * L.G) : 0)).ok())
    return st;
  const dim3 block(kTile, kTile);
  if (dx) {
    if (!(st = upload_bytes(d_dx, nullptr, f * (size_t)(M * K))).ok()) return st;
    const dim3 grid((unsigned)((K + kTile - 1) / kTile), (unsigned)((M + kTile - 1) / kTile));
    qlinear_grad_input_kernel<<<grid, block>>>(d_dx.as<float>(), d_dy.as<float>(), d_codes.as<uint8_t>(),
                                               d_s.as<float>(), zeros ? d_z.as<float>() : nullptr, M, N, K, L);
    QF_CUDA_CHECK(cudaGetLastError());
  }
  if (ds) {
    if (!(st = upload_bytes(d_x, x, f * (size_t)(M * K))).ok() || !(st = upload_bytes(d_ds, ds, f * (size_t)(N * L.G))).ok()) return st;
    const dim3 grid((unsigned)((K + kTile - 1) / kTile), (unsigned)((N + kTile - 1) / kTile));
    qlinear_grad_scales_kernel<<<grid, block>>>(d_ds.as<float>(), d_dy.as<float>(), d_x.as<float>(), d_codes.as<uint8_t>(),
                                                zeros ? d_z.as<float>() : nullptr, M, N, K, L);
    QF_CUDA_CHECK(cudaGetLastError());
  }
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  if (dx) QF_CUDA_CHECK(cudaMemcpy(dx, d_dx.ptr, f * (size_t)(M * K), cudaMemcpyDeviceToHost));
  if (ds) QF_CUDA_CHECK(cudaMemcpy(ds, d_ds.ptr, f * (size_t)(N * L.G), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace qf
