// CUDA W4A8 / W4A4 kernels with static activation scales (w4a8_cuda.h explains the layouts,
// the integer semantics and which kernel runs where). Compiled for sm_80 + sm_90 (+ compute_90
// PTX); not yet run on a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda_check.h"
#include "w4a8_cuda.h"

namespace qf {
namespace {

constexpr int kChunk = 8;           // k per permuted chunk (matmul.h)
constexpr int kGemvMaxM = 8;
constexpr int kWarps = 4;           // warps per block, every kernel
constexpr int kBM = 64, kBN = 64;   // GEMM output tile
constexpr int kRowWords = 12;       // shared-memory row of a 32-byte k step + 16 bytes of padding:
                                    // fragment loads of 8 rows x 4 words hit 32 distinct banks
// |sum_{k in g} xq q| <= 127 * 15 * group length must stay in int32
constexpr int64_t kMaxGroupLen = int64_t(1) << 20;

// Position of k inside its row in the permuted layout (matmul.h).
__device__ __forceinline__ int permuted_k(int k) {
  const int j = k & 7;
  return k - j + (j & 1) * 4 + (j >> 1);
}

// The k offset (0..7) held by byte b of a permuted chunk.
__device__ __forceinline__ int chunk_k(int b) { return b < 4 ? 2 * b : 2 * (b - 4) + 1; }

// Zeroes the bytes of a permuted chunk (lo: bytes 0..3, hi: 4..7) whose k offset is >= valid,
// so padding never reaches a sum whatever the caller left there.
__device__ __forceinline__ void mask_chunk(uint32_t& lo, uint32_t& hi, int valid) {
  if (valid >= kChunk) return;
  for (int b = 0; b < 4; b++) {
    if (chunk_k(b) >= valid) lo &= ~(0xffu << (8 * b));
    if (chunk_k(b + 4) >= valid) hi &= ~(0xffu << (8 * b));
  }
}

// Code word c (codes 8c .. 8c+7, nibble j = code 8c + j) of a canonical INT4 row of rb bytes;
// rows whose length is not a multiple of 4 bytes are read byte by byte.
__device__ __forceinline__ uint32_t code_word(const uint8_t* row, int c, int rb, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint32_t*>(row) + c);
  uint32_t w = 0;
  for (int b = 0; b < 4 && 4 * c + b < rb; b++) w |= (uint32_t)row[4 * c + b] << (8 * b);
  return w;
}

// The low nibbles of the 8 bytes of (lo, hi), in byte order, as one word of 8 nibbles.
__device__ __forceinline__ uint32_t pack_nibbles(uint32_t lo, uint32_t hi) {
  const uint32_t l = lo & 0x0f0f0f0fu, h = hi & 0x0f0f0f0fu;
  const uint32_t tl = l | (l >> 4), th = h | (h >> 4);  // bytes 0 and 2 hold nibble pairs
  return __byte_perm(tl, th, 0x6420);
}

struct Geometry {
  int M, N, K, KP, G, gs, rb;
  bool aligned;  // rb % 4 == 0: code words are aligned 32-bit loads
};

// ---------------------------------------------------------------------------------------------
// Activation quantizer: one warp per (row, group); codes, padding and the group's sum.
// xq (rows, KP); xsumq (rows, G); x (rows, K); m (rows) or null.
__global__ void act_quant_kernel(int8_t* __restrict__ xq, float* __restrict__ xsumq, const float* __restrict__ x,
                                 const float* __restrict__ m, float scale, float qmax, int64_t rows, int K, int KP,
                                 int G, int gs) {
  const int64_t wid = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (wid >= rows * G) return;
  const int64_t r = wid / G;
  const int g = (int)(wid % G);
  const float mr = m ? m[r] : 1.f;
  const int kb = g * gs, ke = min(kb + gs, K);
  int8_t* q = xq + r * KP;
  int sum = 0;
  for (int k = kb + lane; k < ke; k += 32) {
    // the reference's arithmetic: nearbyint(x * m / scale), clamped (engine_fpt.inc quant_code)
    const float c = fminf(qmax, fmaxf(-qmax, rintf(__fdiv_rn(__fmul_rn(x[r * K + k], mr), scale))));
    q[permuted_k(k)] = (int8_t)c;
    sum += (int)c;
  }
  if (g == G - 1)
    for (int k = K + lane; k < KP; k += 32) q[permuted_k(k)] = 0;
  sum = __reduce_add_sync(0xffffffffu, sum);
  if (lane == 0) xsumq[r * G + g] = (float)sum;
}

// Group sums of caller-quantized codes: one warp per (row, group), padding excluded.
__global__ void group_sums_kernel(float* __restrict__ xsumq, const int8_t* __restrict__ xq, int64_t rows, int K,
                                  int KP, int G, int gs) {
  const int64_t wid = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (wid >= rows * G) return;
  const int64_t r = wid / G;
  const int g = (int)(wid % G);
  const int kb = g * gs, ke = min(kb + gs, K);
  int sum = 0;
  for (int k = kb + lane; k < ke; k += 32) sum += xq[r * KP + permuted_k(k)];
  sum = __reduce_add_sync(0xffffffffu, sum);
  if (lane == 0) xsumq[r * G + g] = (float)sum;
}

// ---------------------------------------------------------------------------------------------
// dp4a GEMV, M <= 8: one warp per output row n; teams of `team` lanes (a power of two) take one
// group each, 32 / team groups per step, applied in group order.
// y (M, N); xq (M, KP); xs (M or 1: stride xs_step); xsumq (M, G); codes (N, rb); scales, zeros (N, G).
__global__ void w4a8_gemv_kernel(float* __restrict__ y, const int8_t* __restrict__ xq, const float* __restrict__ xs,
                                 int xs_step, const float* __restrict__ xsumq, const uint8_t* __restrict__ codes,
                                 const float* __restrict__ scales, const float* __restrict__ zeros, Geometry d,
                                 int team) {
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= d.N) return;
  const uint8_t* row = codes + (int64_t)n * d.rb;
  const int per_step = 32 / team, tm = lane / team, tl = lane % team;
  float acc[kGemvMaxM];
#pragma unroll
  for (int i = 0; i < kGemvMaxM; i++) acc[i] = 0.f;
  for (int g0 = 0; g0 < d.G; g0 += per_step) {
    const int g = g0 + tm;
    int dot[kGemvMaxM];
#pragma unroll
    for (int i = 0; i < kGemvMaxM; i++) dot[i] = 0;
    if (g < d.G) {
      const int kb = g * d.gs, ke = min(kb + d.gs, d.K);
      for (int c = kb / kChunk + tl; c * kChunk < ke; c += team) {
        const uint32_t w = code_word(row, c, d.rb, d.aligned);
        const int lo = (int)(w & 0x0f0f0f0fu), hi = (int)((w >> 4) & 0x0f0f0f0fu);  // even k, odd k
#pragma unroll
        for (int i = 0; i < kGemvMaxM; i++)
          if (i < d.M) {
            const uint2 v = *reinterpret_cast<const uint2*>(xq + (int64_t)i * d.KP + c * kChunk);
            uint32_t xl = v.x, xh = v.y;
            mask_chunk(xl, xh, ke - c * kChunk);
            dot[i] = __dp4a(lo, (int)xl, dot[i]);
            dot[i] = __dp4a(hi, (int)xh, dot[i]);
          }
      }
    }
    // exact int32 team sums (teams are aligned, xor offsets below team stay inside one)
    for (int off = team / 2; off > 0; off /= 2)
#pragma unroll
      for (int i = 0; i < kGemvMaxM; i++) dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], off);
    for (int t = 0; t < per_step && g0 + t < d.G; t++) {
      const int gg = g0 + t;
      const float s = scales[(int64_t)n * d.G + gg], sz = __fmul_rn(s, zeros[(int64_t)n * d.G + gg]);
#pragma unroll
      for (int i = 0; i < kGemvMaxM; i++) {
        const int dt = __shfl_sync(0xffffffffu, dot[i], t * team);
        if (i < d.M) {
          acc[i] = __fmaf_rn(__int2float_rn(dt), s, acc[i]);
          acc[i] = __fmaf_rn(-sz, xsumq[(int64_t)i * d.G + gg], acc[i]);
        }
      }
    }
  }
  if (lane == 0)
    for (int i = 0; i < d.M; i++) y[(int64_t)i * d.N + n] = __fmul_rn(acc[i], xs[i * xs_step]);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMM. kA4: 4-bit activations on m16n8k64 s4 (k step 64), else m16n8k32 s8 (k step 32).
// Shared rows hold one k step of 8 words: s8, 4 codes a word (k in the chunk permutation);
// s4, 8 nibbles a word (one chunk, same order for A and B).
__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 900
#define QF_INT4_MMA 1
__device__ __forceinline__ void mma_s4(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// grid (ceil(N / 64), ceil(M / 64)), 128 threads: warp (wm, wn) owns rows wm*32.., columns wn*32..,
// 2 x 4 fragments of 16 x 8. y (M, N); xq (M, KP); xsumq (M, G); codes (N, rb); scales, zeros (N, G).
template <bool kA4>
__global__ void __launch_bounds__(kWarps * 32) w4a8_gemm_kernel(float* __restrict__ y, const int8_t* __restrict__ xq,
                                                                const float* __restrict__ xs, int xs_step,
                                                                const float* __restrict__ xsumq,
                                                                const uint8_t* __restrict__ codes,
                                                                const float* __restrict__ scales,
                                                                const float* __restrict__ zeros, Geometry d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#ifndef QF_INT4_MMA
  if constexpr (kA4) return;  // never launched where int4 MMA is not a tensor-core path (host dispatch)
#endif
  constexpr int BK = kA4 ? 64 : 32;
  constexpr int CPS = BK / kChunk;  // chunks per k step
  __shared__ __align__(16) uint32_t As[kBM][kRowWords];
  __shared__ __align__(16) uint32_t Bs[kBN][kRowWords];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane >> 2, tq = lane & 3;
  const int wm = warp / 2, wn = warp % 2;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  int acc_i[2][4][4];
  float acc_f[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc_i[i][j][e] = 0, acc_f[i][j][e] = 0.f;
  int g = 0;
  for (int k0 = 0; k0 < d.K; k0 += BK) {
    for (int i = tid; i < kBM * CPS; i += kWarps * 32) {
      const int r = i / CPS, c = i % CPS, mm = m0 + r, kc = k0 / kChunk + c;
      uint32_t lo = 0, hi = 0;
      if (mm < d.M && kc * kChunk < d.K) {
        const uint2 v = *reinterpret_cast<const uint2*>(xq + (int64_t)mm * d.KP + kc * kChunk);
        lo = v.x, hi = v.y;
        mask_chunk(lo, hi, d.K - kc * kChunk);
      }
      if constexpr (kA4) As[r][c] = pack_nibbles(lo, hi);
      else As[r][2 * c] = lo, As[r][2 * c + 1] = hi;
    }
    for (int i = tid; i < kBN * CPS; i += kWarps * 32) {
      const int r = i / CPS, c = i % CPS, nn = n0 + r, kc = k0 / kChunk + c;
      const uint32_t w = (nn < d.N && kc * kChunk < d.K) ? code_word(codes + (int64_t)nn * d.rb, kc, d.rb, d.aligned) : 0u;
      const uint32_t lo = w & 0x0f0f0f0fu, hi = (w >> 4) & 0x0f0f0f0fu;  // even k, odd k: the chunk permutation
      if constexpr (kA4) Bs[r][c] = pack_nibbles(lo, hi) ^ 0x88888888u;  // q - 8 as s4
      else Bs[r][2 * c] = lo, Bs[r][2 * c + 1] = hi;
    }
    __syncthreads();
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int r = wm * 32 + i * 16 + gq;
      a[i][0] = As[r][tq], a[i][1] = As[r + 8][tq], a[i][2] = As[r][tq + 4], a[i][3] = As[r + 8][tq + 4];
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int nr = wn * 32 + j * 8 + gq;
      b[j][0] = Bs[nr][tq], b[j][1] = Bs[nr][tq + 4];
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) {
#ifdef QF_INT4_MMA
        if constexpr (kA4) mma_s4(acc_i[i][j], a[i], b[j]);
        else
#endif
          mma_s8(acc_i[i][j], a[i], b[j]);
      }
    // a group ends with this k step: its exact sums join the float accumulators, in the VNNI order
    const int kend = k0 + BK;
    if (kend >= d.K || kend % d.gs == 0) {
#pragma unroll
      for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int mm = m0 + wm * 32 + i * 16 + gq + (e >> 1) * 8, nn = n0 + wn * 32 + j * 8 + tq * 2 + (e & 1);
            if (mm < d.M && nn < d.N) {
              const float s = scales[(int64_t)nn * d.G + g], sz = __fmul_rn(s, zeros[(int64_t)nn * d.G + g]);
              const float xsum = xsumq[(int64_t)mm * d.G + g];
              const int dot = kA4 ? acc_i[i][j][e] + 8 * __float2int_rn(xsum) : acc_i[i][j][e];
              acc_f[i][j][e] = __fmaf_rn(-sz, xsum, __fmaf_rn(__int2float_rn(dot), s, acc_f[i][j][e]));
            }
            acc_i[i][j][e] = 0;
          }
      g++;
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int mm = m0 + wm * 32 + i * 16 + gq + (e >> 1) * 8, nn = n0 + wn * 32 + j * 8 + tq * 2 + (e & 1);
        if (mm < d.M && nn < d.N) y[(int64_t)mm * d.N + nn] = __fmul_rn(acc_f[i][j][e], xs[mm * xs_step]);
      }
#endif
}

int64_t padded_k(int64_t K) { return (K + kChunk - 1) / kChunk * kChunk; }

Geometry geometry(int64_t M, const CudaInt4Weight& w) {
  const int rb = (int)((w.K + 1) / 2);
  return Geometry{(int)M, (int)w.N, (int)w.K, (int)padded_k(w.K), (int)w.G, (int)w.group_size, rb, rb % 4 == 0};
}

unsigned warp_blocks(int64_t warps) { return (unsigned)((warps + kWarps - 1) / kWarps); }

// Device buffers xq, xsumq (device) -> y (host), the kernel chosen for M rows.
Status run_matmul(float* y, const int8_t* dxq, const float* dxsum, const float* xs, int64_t nxs, int64_t M,
                  CudaInt8Kernel k, const CudaInt4Weight& w) {
  const Geometry d = geometry(M, w);
  DeviceBuffer dxs, dy;
  QF_TRY(upload_bytes(dxs, xs, sizeof(float) * (size_t)nxs));
  QF_TRY(dy.alloc(sizeof(float) * (size_t)(M * w.N)));
  const int step = nxs == 1 ? 0 : 1;
  if (k == CudaInt8Kernel::Dp4aGemv) {
    // team: a power of two no larger than the words of one group (all 32 lanes per group when few groups)
    const int64_t words = (std::min<int64_t>(w.group_size, w.K) + kChunk - 1) / kChunk;
    int team = 32;
    while (team > 1 && team > words) team /= 2;
    w4a8_gemv_kernel<<<warp_blocks(w.N), kWarps * 32>>>(dy.as<float>(), dxq, dxs.as<float>(), step, dxsum, w.codes,
                                                        w.scales, w.zeros, d, team);
  } else {
    const dim3 grid((unsigned)((w.N + kBN - 1) / kBN), (unsigned)((M + kBM - 1) / kBM));
    if (k == CudaInt8Kernel::MmaS4)
      w4a8_gemm_kernel<true><<<grid, kWarps * 32>>>(dy.as<float>(), dxq, dxs.as<float>(), step, dxsum, w.codes,
                                                    w.scales, w.zeros, d);
    else
      w4a8_gemm_kernel<false><<<grid, kWarps * 32>>>(dy.as<float>(), dxq, dxs.as<float>(), step, dxsum, w.codes,
                                                     w.scales, w.zeros, d);
  }
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaMemcpy(y, dy.ptr, sizeof(float) * (size_t)(M * w.N), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace

const char* cuda_int8_kernel_name(CudaInt8Kernel k) {
  switch (k) {
    case CudaInt8Kernel::Dp4aGemv: return "dp4a-gemv";
    case CudaInt8Kernel::MmaS8: return "mma-s8";
    default: return "mma-s4";
  }
}

Status cuda_int8_kernel(CudaInt8Kernel* out, int64_t M, int bits, const CudaInt4Weight& w) {
  if (bits != 4 && bits != 8)
    return error(Code::UnsupportedBits, "Expected activation bits 4 or 8 but received " + std::to_string(bits));
  if (M <= 0 || M > int64_t(65535) * kBM)
    return error(Code::ShapeMismatch, "CUDA int8 matmul supports M in [1, " + std::to_string(int64_t(65535) * kBM) +
                                          "]; received M=" + std::to_string(M));
  if (w.G > 1 && w.group_size % 32 != 0)
    return error(Code::Unsupported, "CUDA int8 matmul needs weight groupSize a multiple of 32 or one group per row; received groupSize=" +
                                        std::to_string(w.group_size) + " for K=" + std::to_string(w.K));
  if (std::min<int64_t>(w.group_size, w.K) > kMaxGroupLen)
    return error(Code::Unsupported, "CUDA int8 matmul keeps group sums in int32: groups up to " + std::to_string(kMaxGroupLen) +
                                        " k; received " + std::to_string(std::min<int64_t>(w.group_size, w.K)));
  if (M <= kGemvMaxM) {
    *out = CudaInt8Kernel::Dp4aGemv;
    return Status::Ok();
  }
  int dev = 0, major = 0;
  QF_CUDA_CHECK(cudaGetDevice(&dev));
  QF_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  // int4 tensor cores: Ampere and Ada (sm_80..sm_89); Hopper and later run 4-bit codes on the s8 MMA
  const bool s4 = bits == 4 && major == 8 && (w.G == 1 || w.group_size % 64 == 0);
  *out = s4 ? CudaInt8Kernel::MmaS4 : CudaInt8Kernel::MmaS8;
  return Status::Ok();
}

Status cuda_act_quant_rows(int8_t* xq, float* xsumq, const float* x, const float* m, float scale, int64_t rows,
                           int64_t K, int64_t KP, int64_t gs, int bits) {
  const int64_t G = (K + gs - 1) / gs;
  DeviceBuffer dx, dm, dq, dsum;
  QF_TRY(upload_bytes(dx, x, sizeof(float) * (size_t)(rows * K)));
  QF_TRY(upload_bytes(dm, m, m ? sizeof(float) * (size_t)rows : 0));
  QF_TRY(dq.alloc((size_t)(rows * KP)));
  QF_TRY(dsum.alloc(sizeof(float) * (size_t)(rows * G)));
  act_quant_kernel<<<warp_blocks(rows * G), kWarps * 32>>>(dq.as<int8_t>(), dsum.as<float>(), dx.as<float>(),
                                                           m ? dm.as<float>() : nullptr, scale,
                                                           (float)((1 << (bits - 1)) - 1), rows, (int)K, (int)KP,
                                                           (int)G, (int)std::min(gs, K));
  QF_CUDA_CHECK(cudaGetLastError());
  QF_CUDA_CHECK(cudaMemcpy(xq, dq.ptr, (size_t)(rows * KP), cudaMemcpyDeviceToHost));
  QF_CUDA_CHECK(cudaMemcpy(xsumq, dsum.ptr, sizeof(float) * (size_t)(rows * G), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status cuda_matmul_int8(float* y, const int8_t* xq, const float* xs, int64_t nxs, int64_t M, int bits,
                        const CudaInt4Weight& w, CudaInt8Kernel* ran) {
  CudaInt8Kernel k;
  QF_TRY(cuda_int8_kernel(&k, M, bits, w));
  const int64_t KP = padded_k(w.K);
  DeviceBuffer dq, dsum;
  QF_TRY(upload_bytes(dq, xq, (size_t)(M * KP)));
  QF_TRY(dsum.alloc(sizeof(float) * (size_t)(M * w.G)));
  group_sums_kernel<<<warp_blocks(M * w.G), kWarps * 32>>>(dsum.as<float>(), dq.as<int8_t>(), M, (int)w.K, (int)KP,
                                                           (int)w.G, (int)w.group_size);
  QF_CUDA_CHECK(cudaGetLastError());
  QF_TRY(run_matmul(y, dq.as<int8_t>(), dsum.as<float>(), xs, nxs, M, k, w));
  if (ran) *ran = k;
  return Status::Ok();
}

Status cuda_matmul_static(float* y, const float* x, const float* m, float scale, int64_t M, int bits,
                          const CudaInt4Weight& w, CudaInt8Kernel* ran) {
  CudaInt8Kernel k;
  QF_TRY(cuda_int8_kernel(&k, M, bits, w));
  const int64_t KP = padded_k(w.K);
  DeviceBuffer dx, dm, dq, dsum;
  QF_TRY(upload_bytes(dx, x, sizeof(float) * (size_t)(M * w.K)));
  QF_TRY(upload_bytes(dm, m, m ? sizeof(float) * (size_t)M : 0));
  QF_TRY(dq.alloc((size_t)(M * KP)));
  QF_TRY(dsum.alloc(sizeof(float) * (size_t)(M * w.G)));
  act_quant_kernel<<<warp_blocks(M * w.G), kWarps * 32>>>(dq.as<int8_t>(), dsum.as<float>(), dx.as<float>(),
                                                          m ? dm.as<float>() : nullptr, scale,
                                                          (float)((1 << (bits - 1)) - 1), M, (int)w.K, (int)KP,
                                                          (int)w.G, (int)w.group_size);
  QF_CUDA_CHECK(cudaGetLastError());
  QF_TRY(run_matmul(y, dq.as<int8_t>(), dsum.as<float>(), &scale, 1, M, k, w));
  if (ran) *ran = k;
  return Status::Ok();
}

}  // namespace qf
