// CUDA kernels of FPTQuant's training ops (engine.h, same definitions as native/ref/engine_fpt.inc):
// the S_n RMSNorm backward, the activation quantizer's LSQ backward, the JSD loss with its
// gradient, and the contractions of the merge backward of T_k, T_v, T_u (FptContractions). Reductions in double, as the reference; elementwise results are the reference's
// operations in f32 (division by __fdiv_rn, rounding half to even), so they agree bit for bit.
// Compiled in CI, not yet run on a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "cuda_check.h"
#include "engine_cuda.h"

namespace qf {
namespace {

constexpr int kThreads = 256;

// Block-wide sum of one double per thread (blockDim.x == kThreads); every thread gets it.
__device__ double block_sum(double v, double* warp_sums) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kThreads / 32; i++) t += warp_sums[i];
    warp_sums[0] = t;
  }
  __syncthreads();
  const double t = warp_sums[0];
  __syncthreads();
  return t;
}

__device__ double block_max(double v, double* warp_sums) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = warp_sums[0];
    for (int i = 1; i < kThreads / 32; i++) t = fmax(t, warp_sums[i]);
    warp_sums[0] = t;
  }
  __syncthreads();
  const double t = warp_sums[0];
  __syncthreads();
  return t;
}

// One block per row r: dr = sum(dy w x) + drstd; dx = r dy w - x r^3 dr / D; dc += dr r^3 eps / c^3.
__global__ void rmsnorm_scaled_backward_kernel(float* dx, float* dc, const float* dout, const float* x, const float* w,
                                               const float* rstd, const float* c, const float* drstd, int64_t D,
                                               float eps) {
  __shared__ double warp_sums[kThreads / 32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * D;
  const float* gr = dout + r * D;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < D; i += kThreads) acc += (double)gr[i] * w[i] * xr[i];
  const double dr = block_sum(acc, warp_sums) + (drstd ? (double)drstd[r] : 0.0);
  const double rs = rstd[r], k = dr * rs * rs * rs / (double)D;
  for (int64_t i = threadIdx.x; i < D; i += kThreads) dx[r * D + i] = (float)(rs * gr[i] * w[i] - k * xr[i]);
  if (threadIdx.x == 0 && dc && c) {
    const double cr = c[r];
    dc[r] += (float)(dr * rs * rs * rs * (double)eps / (cr * cr * cr));
  }
}

// Element i (scale j = (i / inner) % nscale): inside the grid dx = dout and dscale[j] += dout (q - v),
// clipped dx = 0 and dscale[j] += dout (+-qmax). Lanes stride the elements (coalesced) and keep
// their scale's sum until its index changes, then add it to dscale (double, one atomic per run).
__global__ void act_fake_quant_backward_kernel(float* dx, double* dscale, const float* dout, const float* x,
                                               const float* scale, int64_t n, int64_t nscale, int64_t inner,
                                               float qmax) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t cur = -1;
  double acc = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t j = (i / inner) % nscale;
    if (j != cur) {
      if (cur >= 0) atomicAdd(dscale + cur, acc);
      cur = j;
      acc = 0;
    }
    const float s = scale[j], v = __fdiv_rn(x[i], s), q = rintf(v), g = dout[i];
    if (q > qmax || q < -qmax) {
      acc += (double)g * (q > qmax ? qmax : -qmax);
      dx[i] = 0.f;
    } else {
      acc += (double)g * ((double)q - (double)v);
      dx[i] = g;
    }
  }
  if (cur >= 0) atomicAdd(dscale + cur, acc);
}

// One block per row: the student's softmax q kept in z (as f32, as the reference keeps it), loss
// JS(p || q), then z = scale q (g - <q, g>) with g = log(q / m) / 2, m = (p + q) / 2.
__global__ void jsd_forward_backward_kernel(float* loss, float* logits, const float* tprobs, int64_t V, float scale) {
  __shared__ double warp_sums[kThreads / 32];
  const int64_t r = blockIdx.x;
  float* z = logits + r * V;
  const float* p = tprobs + r * V;
  double mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) mx = fmax(mx, (double)z[v]);
  mx = block_max(mx, warp_sums);
  double sum = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) sum += exp((double)z[v] - mx);
  sum = block_sum(sum, warp_sums);
  double js = 0, qg = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const double q = exp((double)z[v] - mx) / sum, pv = p[v], m = 0.5 * (pv + q);
    if (pv > 0) js += 0.5 * pv * log(pv / m);
    if (q > 0) {
      const double g = 0.5 * log(q / m);
      js += q * g;
      qg += q * g;
    }
    z[v] = (float)q;
  }
  js = block_sum(js, warp_sums);
  qg = block_sum(qg, warp_sums);
  if (threadIdx.x == 0) loss[r] = (float)js;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const double q = z[v], m = 0.5 * ((double)p[v] + q);
    const double g = q > 0 ? 0.5 * log(q / m) : 0.0;
    z[v] = (float)((double)scale * q * (g - qg));
  }
}

// The merge backward's contractions (engine.h FptContractions). The double sums over one index in
// order (pair_dots, row_dots, col_dots) are the CPU's, one thread per output: bit-identical. The
// grams sum in double in another order than the CPU's f32 GEMM.

// pair it = h * half + i: rows a = h hd + i, b = a + half of (H hd, cols)
__global__ void pair_dots_kernel(double* sl, double* sp, const float* Wm, const float* dWm, int64_t n, int64_t hd,
                                 int64_t cols) {
  const int64_t it = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (it < n) fpt_pair_dot(sl, sp, Wm, dWm, it, hd, cols);
}

// block (g, a, b) of G (Hkv, hd, hd): x rows (or columns) . y rows (or columns), over D, in double.
// rows: x[(g hd + a) D + c] y[(g hd + b) D + c]; columns (rep q heads h = g rep + r of (D, Dq)):
// x[n Dq + h hd + a] y[n Dq + h hd + b].
__global__ void gram_kernel(float* G, const float* x, const float* y, int64_t hd, int64_t D, int64_t rep, int64_t Dq,
                            bool columns) {
  __shared__ double warp_sums[kThreads / 32];
  const int64_t blk = blockIdx.x, g = blk / (hd * hd), a = blk / hd % hd, b = blk % hd;
  double acc = 0;
  if (!columns) {
    const float* xr = x + (g * hd + a) * D;
    const float* yr = y + (g * hd + b) * D;
    for (int64_t c = threadIdx.x; c < D; c += kThreads) acc += (double)xr[c] * yr[c];
  } else {
    for (int64_t r = 0; r < rep; r++) {
      const int64_t h = g * rep + r;
      for (int64_t n = threadIdx.x; n < D; n += kThreads) acc += (double)x[n * Dq + h * hd + a] * y[n * Dq + h * hd + b];
    }
  }
  acc = block_sum(acc, warp_sums);
  if (threadIdx.x == 0) G[blk] = (float)acc;
}

// acc[i] = sum_j dW[i si + j sj] W[i si + j sj], j in order: rows (si = cols, sj = 1) or columns (si = 1, sj = cols)
__global__ void dots_kernel(double* acc, const float* dW, const float* W, int64_t n, int64_t len, int64_t si, int64_t sj) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double s = 0;
  for (int64_t j = 0; j < len; j++) s += (double)dW[i * si + j * sj] * W[i * si + j * sj];
  acc[i] = s;
}

Status finish() {
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaDeviceSynchronize());
  return Status::Ok();
}

}  // namespace

Status rmsnorm_scaled_backward_cuda(float* dx, float* dc, const float* dout, const float* x, const float* w,
                                    const float* rstd, const float* c, const float* drstd, int64_t BT, int64_t D,
                                    float eps) {
  DeviceBuffer d_dx, d_dc, d_dout, d_x, d_w, d_rstd, d_c, d_drstd;
  QF_TRY(upload<float>(d_dx, nullptr, BT * D));
  QF_TRY(upload(d_dc, dc, dc ? BT : 0));
  QF_TRY(upload(d_dout, dout, BT * D));
  QF_TRY(upload(d_x, x, BT * D));
  QF_TRY(upload(d_w, w, D));
  QF_TRY(upload(d_rstd, rstd, BT));
  QF_TRY(upload(d_c, c, c ? BT : 0));
  QF_TRY(upload(d_drstd, drstd, drstd ? BT : 0));
  rmsnorm_scaled_backward_kernel<<<(unsigned)BT, kThreads>>>(
      d_dx.as<float>(), dc ? d_dc.as<float>() : nullptr, d_dout.as<float>(), d_x.as<float>(), d_w.as<float>(),
      d_rstd.as<float>(), c ? d_c.as<float>() : nullptr, drstd ? d_drstd.as<float>() : nullptr, D, eps);
  QF_TRY(finish());
  QF_TRY(download(dx, d_dx, BT * D));
  return download(dc, d_dc, dc ? BT : 0);
}

Status act_fake_quant_backward_cuda(float* dx, float* dscale, const float* dout, const float* x, const float* scale,
                                    int64_t n, int64_t nscale, int64_t inner, float qmax) {
  DeviceBuffer d_dx, d_ds, d_dout, d_x, d_s;
  QF_TRY(upload<float>(d_dx, nullptr, n));
  QF_TRY(d_ds.alloc(sizeof(double) * (size_t)nscale));
  QF_CUDA_CHECK(cudaMemset(d_ds.ptr, 0, sizeof(double) * (size_t)nscale));
  QF_TRY(upload(d_dout, dout, n));
  QF_TRY(upload(d_x, x, n));
  QF_TRY(upload(d_s, scale, nscale));
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  act_fake_quant_backward_kernel<<<(unsigned)(blocks < 1024 ? blocks : 1024), kThreads>>>(
      d_dx.as<float>(), d_ds.as<double>(), d_dout.as<float>(), d_x.as<float>(), d_s.as<float>(), n, nscale, inner, qmax);
  QF_TRY(finish());
  QF_TRY(download(dx, d_dx, n));
  std::vector<double> ds((size_t)nscale);
  QF_TRY(download(ds.data(), d_ds, nscale));
  for (int64_t j = 0; j < nscale; j++) dscale[j] += (float)ds[(size_t)j];
  return Status::Ok();
}

Status jsd_forward_backward_cuda(float* loss, float* logits, const float* tprobs, int64_t BT, int64_t V, float scale) {
  DeviceBuffer d_loss, d_z, d_p;
  QF_TRY(upload<float>(d_loss, nullptr, BT));
  QF_TRY(upload(d_z, logits, BT * V));
  QF_TRY(upload(d_p, tprobs, BT * V));
  jsd_forward_backward_kernel<<<(unsigned)BT, kThreads>>>(d_loss.as<float>(), d_z.as<float>(), d_p.as<float>(), V, scale);
  QF_TRY(finish());
  QF_TRY(download(loss, d_loss, BT));
  return download(logits, d_z, BT * V);
}

namespace {

unsigned grid_of(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

Status pair_dots_cuda(double* sl, double* sp, const float* Wm, const float* dWm, int64_t H, int64_t hd, int64_t cols) {
  const int64_t n = H * (hd / 2), rows = H * hd;
  DeviceBuffer d_sl, d_sp, d_w, d_dw;
  QF_TRY(d_sl.alloc(sizeof(double) * (size_t)n));
  QF_TRY(d_sp.alloc(sizeof(double) * (size_t)n));
  QF_TRY(upload(d_w, Wm, rows * cols));
  QF_TRY(upload(d_dw, dWm, rows * cols));
  pair_dots_kernel<<<grid_of(n), kThreads>>>(d_sl.as<double>(), d_sp.as<double>(), d_w.as<float>(), d_dw.as<float>(), n, hd, cols);
  QF_TRY(finish());
  QF_TRY(download(sl, d_sl, n));
  return download(sp, d_sp, n);
}

Status gram_cuda(float* G, const float* x, const float* y, int64_t Hkv, int64_t rep, int64_t hd, int64_t D, bool columns) {
  const int64_t n = Hkv * rep * hd * D;  // both operands: (Hkv hd, D) rows (rep 1) or (D, Hkv rep hd)
  DeviceBuffer d_g, d_x, d_y;
  QF_TRY(d_g.alloc(sizeof(float) * (size_t)(Hkv * hd * hd)));
  QF_TRY(upload(d_x, x, n));
  QF_TRY(upload(d_y, y, n));
  gram_kernel<<<(unsigned)(Hkv * hd * hd), kThreads>>>(d_g.as<float>(), d_x.as<float>(), d_y.as<float>(), hd, D, rep,
                                                      Hkv * rep * hd, columns);
  QF_TRY(finish());
  return download(G, d_g, Hkv * hd * hd);
}

Status v_gram_cuda(float* G, const float* dWv, const float* Wv, int64_t Hkv, int64_t hd, int64_t D) {
  return gram_cuda(G, dWv, Wv, Hkv, 1, hd, D, false);
}

Status o_gram_cuda(float* G, const float* Wo, const float* dWo, int64_t Hkv, int64_t rep, int64_t hd, int64_t D) {
  return gram_cuda(G, Wo, dWo, Hkv, rep, hd, D, true);
}

template <bool kCols>
Status dots_cuda(double* acc, const float* dW, const float* W, int64_t rows, int64_t cols) {
  const int64_t n = kCols ? cols : rows;
  DeviceBuffer d_acc, d_dw, d_w;
  QF_TRY(d_acc.alloc(sizeof(double) * (size_t)n));
  QF_TRY(upload(d_dw, dW, rows * cols));
  QF_TRY(upload(d_w, W, rows * cols));
  dots_kernel<<<grid_of(n), kThreads>>>(d_acc.as<double>(), d_dw.as<float>(), d_w.as<float>(), n, kCols ? rows : cols,
                                        kCols ? 1 : cols, kCols ? cols : 1);
  QF_TRY(finish());
  return download(acc, d_acc, n);
}

}  // namespace

const FptContractions fpt_contractions_cuda = {pair_dots_cuda, v_gram_cuda, o_gram_cuda, dots_cuda<false>, dots_cuda<true>};

}  // namespace qf
