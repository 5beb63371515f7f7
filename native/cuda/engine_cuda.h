// CUDA kernels of the engine: the TEQ scale backward, the learned fake quant backward (same
// definitions as native/ref/engine.cpp teq_scale_backward_ref, learned_fq_backward_ref) and
// FPTQuant's training ops.
// Host pointers in and out; lengths were checked by the caller.
#pragma once
#include <cstdint>

#include "quantform/engine.h"
#include "quantform/quant.h"
#include "quantform/status.h"

namespace qf {

// dalpha (K) += sum_n dws[n, k] W[n, k] - sum_t dxs[t, k] x[t, k] / alpha[k]^2;
// dx (T, K) = dxs / alpha when dx != null. T or N may be 0.
Status teq_scale_backward_cuda(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T, const float* dws,
                               const float* W, int64_t N, const float* alpha, int64_t K);

// EfficientQAT's Block-AP weight-gradient path (engine.h learned_fq_backward, same definition): at the
// clamped step sizes s and zero points z (N, G), dw (N, K), ds, dz (N, G) accumulated, each may be null;
// g, w (N, K). Compiled in CI, not yet run on a GPU.
Status learned_fq_backward_cuda(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales,
                                const float* zeros, int64_t N, int64_t K, const QuantSpec& spec);

// FPTQuant's training ops (engine.h, same definitions; native/cuda/engine_fpt.cu): the S_n RMSNorm
// backward, the activation quantizer's LSQ backward (qmax = 2^(bits-1) - 1), the JSD loss and its
// gradient. Arguments as the CPU ops take them, checked by the caller with the CPU op's check_*.
// Compiled in CI, not yet run on a GPU.
Status rmsnorm_scaled_backward_cuda(float* dx, float* dc, const float* dout, const float* x, const float* w,
                                    const float* rstd, const float* c, const float* drstd, int64_t BT, int64_t D,
                                    float eps);
Status act_fake_quant_backward_cuda(float* dx, float* dscale, const float* dout, const float* x, const float* scale,
                                    int64_t n, int64_t nscale, int64_t inner, float qmax);
Status jsd_forward_backward_cuda(float* loss, float* logits, const float* tprobs, int64_t BT, int64_t V, float scale);
// The merge backward's contractions on the GPU, for fpt_merge_backward(..., &fpt_contractions_cuda).
extern const FptContractions fpt_contractions_cuda;

}  // namespace qf

namespace qf {

// FPTQuant's attention over an int8 KV cache (engine.h attention_forward_q8, same definition):
// out, q (B, T, Hq, hd); kq, vq (B, S, Hkv, hd) int8; kscale, vscale (Hkv); query t sees keys
// [0, pos0 + t]. Lengths checked by the caller (check_attention_forward_q8). Compiled in CI, not
// yet run on a GPU.
Status attention_forward_q8_cuda(float* out, const float* q, const int8_t* kq, const int8_t* vq, const float* kscale,
                                 const float* vscale, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd,
                                 int64_t S, int64_t pos0);

}  // namespace qf
