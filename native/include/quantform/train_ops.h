// Whole-tensor training ops and the Llama block step (namespace qf::train: the
// runtime's forward ops of the same names live in qf, llama_ops.h). Every length is re-checked
// here (the JS layer validated already); work is split over the thread pool and
// run by the active tier's kernels (train.h).
#pragma once
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {
namespace train {

// ---- single ops (tests and small tools call these; the block step below fuses them) ----
// C (M, N) = [C +] A (M, K) . B (K, N); trans_a: A is stored (K, M); trans_b: B is stored (N, K).
Status gemm(Span C, Span A, Span B, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b, bool accumulate);
Status rmsnorm_forward(Span out, Span rstd, Span x, Span w, int64_t T, int64_t D, float eps);
// dx (T, D) overwritten; dw (D) accumulated.
Status rmsnorm_backward(Span dx, Span dw, Span dout, Span x, Span w, Span rstd, int64_t T, int64_t D);
Status swiglu_forward(Span h, Span g, Span u, int64_t T, int64_t F);
Status swiglu_backward(Span dg, Span du, Span dh, Span g, Span u, int64_t T, int64_t F);
Status rope(Span x, int64_t T, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse);
// out (B*S, Hq*hd) = causal GQA attention of q (B*S, Hq*hd), k, v (B*S, Hkv*hd); probs (B, Hq, S, S) saved.
Status attention_forward(Span out, Span probs, Span q, Span k, Span v, int64_t B, int64_t S, int64_t Hq, int64_t Hkv,
                         int64_t hd);
// dq overwritten; dk, dv overwritten.
Status attention_backward(Span dq, Span dk, Span dv, Span dout, Span probs, Span q, Span k, Span v, int64_t B,
                          int64_t S, int64_t Hq, int64_t Hkv, int64_t hd);
// loss (T); logits (T, V) become probabilities; targets int32 (T), < 0 ignored.
Status cross_entropy_forward(Span loss, Span logits, Span targets, int64_t T, int64_t V);
Status cross_entropy_backward(Span probs, Span targets, int64_t T, int64_t V, float scale);
Status embedding_forward(Span out, Span ids, Span table, int64_t T, int64_t V, int64_t D);
Status embedding_backward(Span dtable, Span dout, Span ids, int64_t T, int64_t V, int64_t D);
// dalpha (K) accumulated; dx (T, K) written unless dx.data is null.
Status teq_scale_backward(Span dalpha, Span dx, Span dxs, Span x, int64_t T, Span dws, Span W, int64_t N, Span alpha,
                          int64_t K);
// Backward of v = W diag(alpha) -> RTN fake-quant of v with parameters chosen from v
// (TEQ's weight side): g (N, K), the gradient w.r.t. the fake-quantized weight, is
// replaced by the gradient w.r.t. v: straight-through rounding, LSQ step-size term
// passed to each group's extreme elements, zero points not differentiated.
Status rtn_backward(float* g, const float* W, const float* alpha, int64_t N, int64_t K, const QuantSpec& spec);
Status rtn_fake_quant_backward(Span g, Span W, Span alpha, int64_t N, int64_t K, const QuantSpec& spec);
Status adamw_step(Span arena, int64_t P, int64_t step, float lr, float b1, float b2, float eps, float wd, float pmin);

// ---- Llama block ----
struct BlockConfig {
  int64_t B = 0, S = 0;                       // sequences, tokens per sequence (T = B * S)
  int64_t D = 0, F = 0, Hq = 0, Hkv = 0, hd = 0;
  float eps = 1e-5f, theta = 10000.f;
  bool quant = false;                         // fake-quantize every linear (RTN, recomputed per call)
  QuantSpec spec{4, 128, false, true};
  bool teq = false;                           // alpha (2, D): input-norm group, post-attention-norm group
  // With teq: also a scale per v channel (Dkv, shared by the q heads of its kv head) on
  // o_proj's input and one per intermediate channel (F) on down_proj's input, mergeable
  // into v_proj / up_proj rows. alpha is then (2 D + Hkv*hd + F).
  bool teq_extra = false;
};

// Floats of alpha (and dalpha) the block expects.
int64_t block_alpha_count(const BlockConfig& c);

// Block parameter arena (floats), in this order:
//   g1 (D) | wq (Hq*hd, D) | wk (Hkv*hd, D) | wv (Hkv*hd, D) | wo (D, Hq*hd) | g2 (D) | wg (F, D) | wu (F, D) | wd (D, F)
int64_t block_param_count(const BlockConfig& c);
// Saved activations (+ effective weights when quant or teq) of one block forward.
int64_t block_activation_count(const BlockConfig& c);
Status check_block_config(const BlockConfig& c);

// out (T, D) = block(x (T, D)); acts saved for block_backward.
Status block_forward(Span out, Span acts, Span x, Span params, Span alpha, const BlockConfig& c);
// dx (T, D) from dout (T, D); grads (block arena) accumulated when grads.data != null;
// dalpha (block_alpha_count) accumulated when teq.
Status block_backward(Span dx, Span grads, Span dalpha, Span dout, Span acts, Span params, Span alpha,
                      const BlockConfig& c);

// Final RMSNorm + tied/untied LM head + cross-entropy. nll (T) per-token loss;
// when dx.data != null also the backward: dx (T, D) of loss_scale * sum(nll),
// dnorm (D) and dhead (V, D) accumulated when given.
Status lm_head_loss(Span nll, Span dx, Span dnorm, Span dhead, Span x, Span norm_w, Span head, Span targets, int64_t T,
                    int64_t D, int64_t V, float eps, float loss_scale);

}  // namespace train
}  // namespace qf
