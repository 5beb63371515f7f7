// CUDA kernels of the engine (engine.h). teq_scale_backward: one thread per column k,
// so every row's loads are coalesced across the warp; sums in f32. learned_fq_backward:
// one block per (row, group), its threads striding the group's columns (coalesced),
// the group's ds and dz reduced in the block.
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "engine_cuda.h"

namespace qf {
namespace {

constexpr int kThreads = 256;

// dalpha (K), dx (T, K) or null; dxs, x (T, K); dws, W (N, K); alpha (K)
__global__ void teq_scale_backward_kernel(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T,
                                          const float* dws, const float* W, int64_t N, const float* alpha, int64_t K) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.f, act = 0.f;
  for (int64_t n = 0; n < N; n++) acc += dws[n * K + k] * W[n * K + k];
  for (int64_t t = 0; t < T; t++) act += dxs[t * K + k] * x[t * K + k];
  const float a = alpha[k];
  dalpha[k] += acc - act / (a * a);
  if (dx)
    for (int64_t t = 0; t < T; t++) dx[t * K + k] = dxs[t * K + k] / a;
}

// Threads per learned_fq_backward block: the group size rounded up to a warp multiple, at most 256.
int fq_threads(int64_t gs) { return (int)(gs >= 256 ? 256 : (gs + 31) / 32 * 32); }

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 256); thread 0 gets it.
__device__ float block_sum(float v, float* warp_sums) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float t = 0.f;
  if (threadIdx.x == 0)
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += warp_sums[i];
  __syncthreads();
  return t;
}

// dw (N, K) or null, ds (N, G) or null, dz (N, G) or null: accumulated; g, w (N, K); s, z (N, G) clamped,
// z null when symmetric; block b = row * G + group
__global__ void learned_fq_backward_kernel(float* dw, float* ds, float* dz, const float* g, const float* w, const float* s,
                                           const float* z, int64_t K, int64_t G, int64_t gs, float lo, float hi) {
  __shared__ float warp_sums[8];
  const int64_t b = blockIdx.x, n = b / G, gi = b % G;
  const int64_t k0 = gi * gs, k1 = k0 + gs < K ? k0 + gs : K;
  const float sv = s[b], zv = z ? rintf(z[b]) : 0.f;
  float acc_s = 0.f, acc_z = 0.f;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    const float gk = g[n * K + k];
    const float u = __fdiv_rn(w[n * K + k], sv);  // the reference's division, not a reciprocal
    const float ru = rintf(u), q = ru + zv;
    if (q < lo || q > hi) {
      acc_s += gk * ((q < lo ? lo : hi) - zv);
      acc_z -= gk * sv;
    } else {
      if (dw) dw[n * K + k] += gk;
      acc_s += gk * (ru - u);
    }
  }
  acc_s = block_sum(acc_s, warp_sums);
  acc_z = block_sum(acc_z, warp_sums);
  if (threadIdx.x == 0) {
    if (ds) ds[b] += acc_s;
    if (dz) dz[b] += acc_z;
  }
}

}  // namespace

Status teq_scale_backward_cuda(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t K) {
  DeviceBuffer d_da, d_dx, d_dxs, d_x, d_dws, d_w, d_a;
  Status st;
  if (!(st = upload(d_da, dalpha, K)).ok() || !(st = upload(d_dxs, dxs, T * K)).ok() || !(st = upload(d_x, x, T * K)).ok() ||
      !(st = upload(d_dws, dws, N * K)).ok() || !(st = upload(d_w, W, N * K)).ok() || !(st = upload(d_a, alpha, K)).ok() ||
      !(st = upload<float>(d_dx, nullptr, dx ? T * K : 0)).ok())
    return st;
  teq_scale_backward_kernel<<<(unsigned)((K + kThreads - 1) / kThreads), kThreads>>>(
      d_da.as<float>(), dx ? d_dx.as<float>() : nullptr, d_dxs.as<float>(), d_x.as<float>(), T, d_dws.as<float>(),
      d_w.as<float>(), N, d_a.as<float>(), K);
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  QF_CUDA_CHECK(cudaMemcpy(dalpha, d_da.ptr, sizeof(float) * (size_t)K, cudaMemcpyDeviceToHost));
  if (dx && T) QF_CUDA_CHECK(cudaMemcpy(dx, d_dx.ptr, sizeof(float) * (size_t)(T * K), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status learned_fq_backward_cuda(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                                const float* zeros, int64_t N, int64_t K, const QuantSpec& spec) {
  const int64_t gs = spec.group_size, G = (K + gs - 1) / gs;
  const float lo = spec.symmetric ? -(float)(1 << (spec.bits - 1)) : 0.f;
  const float hi = spec.symmetric ? (float)((1 << (spec.bits - 1)) - 1) : (float)((1 << spec.bits) - 1);
  DeviceBuffer d_dw, d_ds, d_dz, d_g, d_w, d_s, d_z;
  Status st;
  if (!(st = upload(d_dw, dw, dw ? N * K : 0)).ok() || !(st = upload(d_ds, ds, ds ? N * G : 0)).ok() ||
      !(st = upload(d_dz, dz, dz ? N * G : 0)).ok() || !(st = upload(d_g, g, N * K)).ok() || !(st = upload(d_w, w, N * K)).ok() ||
      !(st = upload(d_s, scales, N * G)).ok() || !(st = upload(d_z, zeros, zeros ? N * G : 0)).ok())
    return st;
  learned_fq_backward_kernel<<<(unsigned)(N * G), fq_threads(gs)>>>(
      dw ? d_dw.as<float>() : nullptr, ds ? d_ds.as<float>() : nullptr, dz ? d_dz.as<float>() : nullptr, d_g.as<float>(),
      d_w.as<float>(), d_s.as<float>(), zeros ? d_z.as<float>() : nullptr, K, G, gs, lo, hi);
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  if (dw) QF_CUDA_CHECK(cudaMemcpy(dw, d_dw.ptr, sizeof(float) * (size_t)(N * K), cudaMemcpyDeviceToHost));
  if (ds) QF_CUDA_CHECK(cudaMemcpy(ds, d_ds.ptr, sizeof(float) * (size_t)(N * G), cudaMemcpyDeviceToHost));
  if (dz) QF_CUDA_CHECK(cudaMemcpy(dz, d_dz.ptr, sizeof(float) * (size_t)(N * G), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace qf
