// CUDA attention over FPTQuant's int8 KV cache (engine_cuda.h). One block per query row
// (b, t, h): scores against every visible key (int8 codes times the head's key scale) into a
// global scratch row, a block max and sum, then each output element as the softmax-weighted sum
// of the value codes, times the value scale. f32 sums (the reference's are double); exp is
// expf. Written for decode (T small), where one query row's work fits one block.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda_check.h"
#include "engine_cuda.h"

namespace qf {
namespace {

constexpr int kThreads = 128;

// The block-wide max (kMax) or sum of v; every thread gets it.
template <bool kMax>
__device__ float block_reduce(float v, float* red) {
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kThreads / 32; w++) r = kMax ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();  // red is reused by the next reduction
  return r;
}

// grid (B T Hq), kThreads threads, hd floats of dynamic shared memory; scores (B T Hq, L).
__global__ void attention_q8_kernel(float* __restrict__ out, float* __restrict__ scores, const float* __restrict__ q,
                                    const int8_t* __restrict__ kq, const int8_t* __restrict__ vq,
                                    const float* __restrict__ kscale, const float* __restrict__ vscale, int T, int Hq,
                                    int Hkv, int hd, int S, int pos0, int L, float scale) {
  extern __shared__ float qs[];  // (hd)
  __shared__ float red[kThreads / 32];
  const int64_t row = blockIdx.x;  // ((b T + t) Hq + h)
  const int h = (int)(row % Hq), t = (int)((row / Hq) % T);
  const int64_t b = row / ((int64_t)T * Hq);
  const int g = h / (Hq / Hkv);
  for (int i = threadIdx.x; i < hd; i += kThreads) qs[i] = q[row * hd + i];
  __syncthreads();
  const int cnt = pos0 + t + 1;
  float* sc = scores + row * L;
  const float ks = kscale[g], vs = vscale[g];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < cnt; j += kThreads) {
    const int8_t* kv = kq + ((b * S + j) * Hkv + g) * hd;
    float s = 0.f;
    for (int i = 0; i < hd; i++) s = fmaf(qs[i], (float)kv[i], s);
    const float v = s * ks * scale;
    sc[j] = v;
    mx = fmaxf(mx, v);
  }
  mx = block_reduce<true>(mx, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < cnt; j += kThreads) {
    const float e = expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, red);  // its barriers also publish sc to the whole block
  for (int i = threadIdx.x; i < hd; i += kThreads) {
    float acc = 0.f;
    for (int j = 0; j < cnt; j++) acc = fmaf(sc[j], (float)vq[((b * S + j) * Hkv + g) * hd + i], acc);
    out[row * hd + i] = acc / sum * vs;
  }
}

}  // namespace

Status attention_forward_q8_cuda(float* out, const float* q, const int8_t* kq, const int8_t* vq, const float* kscale,
                                 const float* vscale, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd,
                                 int64_t S, int64_t pos0) {
  const int64_t rows = B * T * Hq, L = pos0 + T;
  if (rows >= int64_t(1) << 31 || S > int64_t(1) << 30 || hd * (int64_t)sizeof(float) > 48 * 1024)
    return error(Code::ShapeMismatch, "CUDA int8-KV attention supports B T Hq < 2^31, S <= 2^30 and hd <= 12288; received B T Hq=" +
                                          std::to_string(rows) + ", S=" + std::to_string(S) + ", hd=" + std::to_string(hd));
  const size_t f = sizeof(float), kv = (size_t)(B * S * Hkv * hd);
  DeviceBuffer dq, dk, dv, dks, dvs, dout, dsc;
  QF_TRY(upload_bytes(dq, q, f * (size_t)(rows * hd)));
  QF_TRY(upload_bytes(dk, kq, kv));
  QF_TRY(upload_bytes(dv, vq, kv));
  QF_TRY(upload_bytes(dks, kscale, f * (size_t)Hkv));
  QF_TRY(upload_bytes(dvs, vscale, f * (size_t)Hkv));
  QF_TRY(dout.alloc(f * (size_t)(rows * hd)));
  QF_TRY(dsc.alloc(f * (size_t)(rows * L)));
  attention_q8_kernel<<<(unsigned)rows, kThreads, (size_t)hd * f>>>(
      dout.as<float>(), dsc.as<float>(), dq.as<float>(), dk.as<int8_t>(), dv.as<int8_t>(), dks.as<float>(),
      dvs.as<float>(), (int)T, (int)Hq, (int)Hkv, (int)hd, (int)S, (int)pos0, (int)L, (float)(1.0 / std::sqrt((double)hd)));
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaMemcpy(out, dout.ptr, f * (size_t)(rows * hd), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace qf
