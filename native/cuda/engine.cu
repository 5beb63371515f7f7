// CUDA kernels of the engine (engine.h). teq_scale_backward: one thread per column k,
// so every row's loads are coalesced across the warp; sums in f32.
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

Status upload(DeviceBuffer& d, const float* h, int64_t n) {
  Status st = d.alloc(sizeof(float) * (size_t)n);
  if (!st.ok()) return st;
  if (h && n) QF_CUDA_CHECK(cudaMemcpy(d.ptr, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
  return Status::Ok();
}

}  // namespace

Status teq_scale_backward_cuda(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t K) {
  DeviceBuffer d_da, d_dx, d_dxs, d_x, d_dws, d_w, d_a;
  Status st;
  if (!(st = upload(d_da, dalpha, K)).ok() || !(st = upload(d_dxs, dxs, T * K)).ok() || !(st = upload(d_x, x, T * K)).ok() ||
      !(st = upload(d_dws, dws, N * K)).ok() || !(st = upload(d_w, W, N * K)).ok() || !(st = upload(d_a, alpha, K)).ok() ||
      !(st = upload(d_dx, nullptr, dx ? T * K : 0)).ok())
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

}  // namespace qf
