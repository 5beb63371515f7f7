// CUDA kernels of the quantization family. One block per (group, row) for the
// reductions (min/max, gradient sums), one thread per element or packed unit
// elsewhere. Arithmetic mirrors native/ref/quant.cpp exactly.
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "quant_cuda.h"
#include "quantform/formats.h"

namespace qf {
namespace {

constexpr int kBlock = 256;  // threads per reduction block

struct DevSpec {
  int bits;
  int64_t group_size;
  bool symmetric;
};

// Block-wide reduction of (min, max) or (sum, sum) through shared memory.
template <class Op>
__device__ float block_reduce(float v, float* smem, Op op) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] = op(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = smem[0];
  __syncthreads();
  return r;
}

struct MinOp { __device__ float operator()(float a, float b) const { return a < b ? a : b; } };
struct MaxOp { __device__ float operator()(float a, float b) const { return a > b ? a : b; } };
struct AddOp { __device__ float operator()(float a, float b) const { return a + b; } };

// grid (G, N), block kBlock: group parameters, then one unsigned code per byte.
// w (N, K); codes8 (N, K); scales/zeros (N, G)
__global__ void quantize_codes_kernel(uint8_t* codes8, float* scales, float* zeros, const float* w, int64_t K,
                                      DevSpec spec) {
  __shared__ float smem[kBlock];
  const int64_t G = gridDim.x, g = blockIdx.x, r = blockIdx.y;
  const int64_t k0 = g * spec.group_size;
  const int64_t k1 = min(K, k0 + spec.group_size);
  const float* wr = w + r * K;
  float lo = 0.f, hi = 0.f;  // the range includes 0, as in the reference
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    lo = fminf(lo, wr[k]);
    hi = fmaxf(hi, wr[k]);
  }
  lo = block_reduce(lo, smem, MinOp());
  hi = block_reduce(hi, smem, MaxOp());
  const int qmax = (1 << spec.bits) - 1;
  float s, z;
  if (spec.symmetric) {
    const float amax = -lo > hi ? -lo : hi;
    s = amax / (float)((1 << (spec.bits - 1)) - 1);
    z = (float)(1 << (spec.bits - 1));
  } else {
    s = (hi - lo) / (float)qmax;
    z = s == 0.f ? 0.f : rintf(-lo / s);
    z = z <= 0.f ? 0.f : (z > (float)qmax ? (float)qmax : z);
  }
  if (threadIdx.x == 0) {
    scales[r * G + g] = s;
    if (!spec.symmetric) zeros[r * G + g] = z;
  }
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    float q = z;
    if (s != 0.f) {
      q = rintf(wr[k] / s) + z;
      q = q < 0.f ? 0.f : (q > (float)qmax ? (float)qmax : q);
    }
    codes8[r * K + k] = (uint8_t)q;
  }
}

// One thread per packed unit of a row (a byte for 8/4/2 bits, a 3-byte block for 3 bits).
// codes8 (N, K) -> codes (N, row_bytes)
__global__ void pack_kernel(uint8_t* codes, const uint8_t* codes8, int64_t N, int64_t K, int bits) {
  const int64_t rb = qf_packed_row_bytes(bits, K);
  const int64_t per_unit = bits == 3 ? 8 : 8 / bits;  // codes per unit
  const int64_t units = (K + per_unit - 1) / per_unit;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * units) return;
  const int64_t r = i / units, u = i % units;
  const uint8_t* c = codes8 + r * K + u * per_unit;
  const int64_t n = min(per_unit, K - u * per_unit);
  uint32_t word = 0;
  for (int64_t j = 0; j < n; j++) word |= (uint32_t)c[j] << (j * bits);
  if (bits == 3) {
    uint8_t* b = codes + r * rb + u * 3;
    b[0] = (uint8_t)word; b[1] = (uint8_t)(word >> 8); b[2] = (uint8_t)(word >> 16);
  } else {
    codes[r * rb + u] = (uint8_t)word;
  }
}

__device__ unsigned get_code(const uint8_t* row, int64_t k, int bits) {
  switch (bits) {
    case 8: return row[k];
    case 4: return (row[k >> 1] >> ((k & 1) * 4)) & 0xf;
    case 2: return (row[k >> 2] >> ((k & 3) * 2)) & 0x3;
    default: {
      const uint8_t* b = row + (k >> 3) * 3;
      const uint32_t word = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
      return (word >> ((k & 7) * 3)) & 0x7;
    }
  }
}

// One thread per element. codes (N, row_bytes), scales/zeros (N, G) -> w (N, K)
__global__ void dequantize_kernel(float* w, const uint8_t* codes, const float* scales, const float* zeros,
                                  int64_t N, int64_t K, DevSpec spec) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  const int64_t r = i / K, k = i % K, G = qf_num_groups(K, spec.group_size), g = k / spec.group_size;
  const float z = spec.symmetric ? (float)(1 << (spec.bits - 1)) : zeros[r * G + g];
  w[i] = ((float)get_code(codes + r * qf_packed_row_bytes(spec.bits, K), k, spec.bits) - z) * scales[r * G + g];
}

__device__ void fq_range(const DevSpec& spec, float* lo, float* hi) {
  if (spec.symmetric) {
    *lo = -(float)(1 << (spec.bits - 1));
    *hi = (float)((1 << (spec.bits - 1)) - 1);
  } else {
    *lo = 0.f;
    *hi = (float)((1 << spec.bits) - 1);
  }
}

// One thread per element. w (N, K), scales/zeros (N, G) -> out (N, K)
__global__ void fake_quant_forward_kernel(float* out, const float* w, const float* scales, const float* zeros,
                                          int64_t N, int64_t K, DevSpec spec) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  const int64_t r = i / K, G = qf_num_groups(K, spec.group_size), g = (i % K) / spec.group_size;
  const float s = scales[r * G + g];
  const float z = spec.symmetric ? 0.f : rintf(zeros[r * G + g]);
  if (s == 0.f) { out[i] = 0.f; return; }
  float lo, hi;
  fq_range(spec, &lo, &hi);
  float q = rintf(w[i] / s) + z;
  q = q < lo ? lo : (q > hi ? hi : q);
  out[i] = (q - z) * s;
}

// grid (G, N), block kBlock. g, w (N, K); scales/zeros (N, G) -> dw (N, K), ds/dz (N, G)
__global__ void fake_quant_backward_kernel(float* dw, float* ds, float* dz, const float* gout, const float* w,
                                           const float* scales, const float* zeros, int64_t K, DevSpec spec) {
  __shared__ float smem[kBlock];
  const int64_t G = gridDim.x, g = blockIdx.x, r = blockIdx.y;
  const int64_t k0 = g * spec.group_size, k1 = min(K, k0 + spec.group_size);
  const float s = scales[r * G + g];
  const float z = spec.symmetric ? 0.f : rintf(zeros[r * G + g]);
  float lo, hi;
  fq_range(spec, &lo, &hi);
  float acc_s = 0.f, acc_z = 0.f;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    const int64_t i = r * K + k;
    const float gk = gout[i];
    if (s == 0.f) { dw[i] = gk; continue; }
    const float u = w[i] / s;
    const float ru = rintf(u);
    const float q = ru + z;
    if (q < lo || q > hi) {
      dw[i] = 0.f;
      acc_s += gk * ((q < lo ? lo : hi) - z);
      acc_z -= gk * s;
    } else {
      dw[i] = gk;
      acc_s += gk * (ru - u);
    }
  }
  acc_s = block_reduce(acc_s, smem, AddOp());
  acc_z = block_reduce(acc_z, smem, AddOp());
  if (threadIdx.x == 0) {
    ds[r * G + g] = acc_s;
    if (!spec.symmetric) dz[r * G + g] = acc_z;
  }
}

DevSpec dev(const QuantSpec& s) { return DevSpec{s.bits, s.group_size, s.symmetric}; }
unsigned blocks_for(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

Status grid_fits(int64_t N, int64_t G) {
  if (N > 65535 || G > 2147483647)
    return error(Code::Unsupported, "CUDA grid limit: N=" + std::to_string(N) + " rows must be <= 65535");
  return Status::Ok();
}

}  // namespace

Status quantize_cuda(uint8_t* codes, float* scales, float* zeros, const float* w, int64_t N, int64_t K,
                     const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  QF_TRY(grid_fits(N, G));
  DeviceBuffer dw, dc8, dc, ds, dz;
  QF_TRY(upload_bytes(dw, w, sizeof(float) * N * K));
  QF_TRY(dc8.alloc((size_t)(N * K)));
  QF_TRY(dc.alloc((size_t)(N * rb)));
  QF_TRY(ds.alloc(sizeof(float) * N * G));
  QF_TRY(dz.alloc(sizeof(float) * N * G));
  quantize_codes_kernel<<<dim3((unsigned)G, (unsigned)N), kBlock>>>(dc8.as<uint8_t>(), ds.as<float>(), dz.as<float>(),
                                                                     dw.as<float>(), K, dev(spec));
  QF_CUDA_CHECK(cudaGetLastError());
  const int64_t per_unit = spec.bits == 3 ? 8 : 8 / spec.bits;
  const int64_t units = N * ((K + per_unit - 1) / per_unit);
  pack_kernel<<<blocks_for(units, 256), 256>>>(dc.as<uint8_t>(), dc8.as<uint8_t>(), N, K, spec.bits);
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  QF_TRY(download_bytes(codes, dc, (size_t)(N * rb)));
  QF_TRY(download_bytes(scales, ds, sizeof(float) * N * G));
  if (!spec.symmetric) QF_TRY(download_bytes(zeros, dz, sizeof(float) * N * G));
  return Status::Ok();
}

Status dequantize_cuda(float* w, const uint8_t* codes, const float* scales, const float* zeros, int64_t N,
                       int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  DeviceBuffer dw, dc, ds, dz;
  QF_TRY(dw.alloc(sizeof(float) * N * K));
  QF_TRY(upload_bytes(dc, codes, (size_t)(N * rb)));
  QF_TRY(upload_bytes(ds, scales, sizeof(float) * N * G));
  QF_TRY(upload_bytes(dz, spec.symmetric ? nullptr : zeros, sizeof(float) * N * G));
  dequantize_kernel<<<blocks_for(N * K, 256), 256>>>(dw.as<float>(), dc.as<uint8_t>(), ds.as<float>(), dz.as<float>(),
                                                     N, K, dev(spec));
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  return download_bytes(w, dw, sizeof(float) * N * K);
}

Status fake_quant_forward_cuda(float* out, const float* w, const float* scales, const float* zeros, int64_t N,
                               int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  DeviceBuffer dout, dw, ds, dz;
  QF_TRY(dout.alloc(sizeof(float) * N * K));
  QF_TRY(upload_bytes(dw, w, sizeof(float) * N * K));
  QF_TRY(upload_bytes(ds, scales, sizeof(float) * N * G));
  QF_TRY(upload_bytes(dz, spec.symmetric ? nullptr : zeros, sizeof(float) * N * G));
  fake_quant_forward_kernel<<<blocks_for(N * K, 256), 256>>>(dout.as<float>(), dw.as<float>(), ds.as<float>(),
                                                             dz.as<float>(), N, K, dev(spec));
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  return download_bytes(out, dout, sizeof(float) * N * K);
}

Status fake_quant_backward_cuda(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                                const float* zeros, int64_t N, int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size);
  QF_TRY(grid_fits(N, G));
  DeviceBuffer ddw, dds, ddz, dg, dwt, dsc, dzr;
  QF_TRY(ddw.alloc(sizeof(float) * N * K));
  QF_TRY(dds.alloc(sizeof(float) * N * G));
  QF_TRY(ddz.alloc(sizeof(float) * N * G));
  QF_TRY(upload_bytes(dg, g, sizeof(float) * N * K));
  QF_TRY(upload_bytes(dwt, w, sizeof(float) * N * K));
  QF_TRY(upload_bytes(dsc, scales, sizeof(float) * N * G));
  QF_TRY(upload_bytes(dzr, spec.symmetric ? nullptr : zeros, sizeof(float) * N * G));
  fake_quant_backward_kernel<<<dim3((unsigned)G, (unsigned)N), kBlock>>>(
      ddw.as<float>(), dds.as<float>(), ddz.as<float>(), dg.as<float>(), dwt.as<float>(), dsc.as<float>(),
      dzr.as<float>(), K, dev(spec));
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  QF_TRY(download_bytes(dw, ddw, sizeof(float) * N * K));
  QF_TRY(download_bytes(ds, dds, sizeof(float) * N * G));
  if (!spec.symmetric) QF_TRY(download_bytes(dz, ddz, sizeof(float) * N * G));
  return Status::Ok();
}

}  // namespace qf
