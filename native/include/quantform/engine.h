// The Llama engine: one op table per tier for every forward and backward op of a
// Llama block, one strided fp32 GEMM, and one block step that the runtime model
// (with a KV cache), the trainer and every method (TEQ now; EfficientQAT and
// FPTQuant next) all run. llm.c conventions: one function per op and direction,
// arguments ordered outputs, saved statistics, inputs, then ranges and dims; each
// forward saves what its backward needs only when it is handed a buffer for it
// (null in inference).
//
// Shape names (the same in every layer of the code, TS config included):
//   B    sequences in a batch              T    positions per sequence in this call
//   BT   rows of activations (B * T)       D    hidden size (dim)
//   F    intermediate size of the MLP      V    vocabulary size
//   Hq   query heads   Hkv  key/value heads (GQA: q head h reads kv head h / (Hq / Hkv))
//   hd   head size (even)   Dq = Hq * hd   Dkv = Hkv * hd
//   S    KV-cache capacity in positions    pos0 position of the call's first token
//   L    keys a query block attends: pos0 + T
//
// Layouts (every checkpoint format is normalised to these at load, lib/model/):
//   activations      (B, T, D) row-major = (BT, D)
//   weights          (out, in) row-major, as Hugging Face stores nn.Linear
//   q                (B, T, Hq, hd)    k, v (B, T, Hkv, hd)
//   KV cache         (B, S, Hkv, hd); training runs with the block's own k, v as the
//                    cache: S = T, pos0 = 0
//   probabilities    (B, Hq, T, L), entries past the causal limit are 0
//   RoPE             Hugging Face rotate_half: within a head, element i < hd/2 pairs with
//                    i + hd/2 and both rotate by pos * inv_freq[i] (llama2.c and GGUF q/k
//                    rows are permuted to this at load)
//   RoPE tables      cos, sin (S, hd/2) from inv_freq (rope_theta and Llama 3 rope_scaling
//                    applied by whoever builds inv_freq), built by rope_tables()
//
// Adding an op: one line in QF_ENGINE_KERNELS (the table entry) and one in
// QF_ENGINE_OPS plus its declaration below (this file); the _ref kernel
// (native/ref/engine.cpp); the checked whole-tensor op (native/common/engine_ops.cpp);
// a test case (test/engine-ops.test.ts fails while an op has none). A SIMD kernel
// (native/cpu/<isa>/engine.cpp) is optional: a tier that leaves an entry null runs
// the reference. The addon binds every op of the list without per-op code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quantform/dispatch.h"
#include "quantform/matmul_ops.h"
#include "quantform/quant.h"
#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

// ---------------------------------------------------------------------------
// Kernels: the per-tier table. Kernels work on a range of rows / columns /
// elements / work items so the ops below can split them over the thread pool;
// they trust their arguments (the ops checked them) and never allocate: scratch
// comes in as a pointer owned by the calling thread.
// ---------------------------------------------------------------------------

// Strided operand of the GEMM: element (r, c) of a logical matrix is p[r*rs + c*cs],
// so A . B, A . B^T, A^T . B are one kernel.
struct StridedMat {
  const float* p;
  int64_t rs, cs;
};

// Floats of private scratch one gemm call needs (packed B panels and A tiles).
constexpr int64_t kGemmPackFloats = 256 * 1024 + 16 * 256 * 8 + 64;
// Attention runs over blocks of this many queries: an inference prefill never
// holds more than (kAttnChunk, L) scores per thread, whatever T is.
constexpr int64_t kAttnChunk = 64;
// Private scratch of one attention_forward thread over L keys: a block of scores
// (kAttnChunk, L) plus GEMM packing.
inline int64_t attention_scratch_floats(int64_t L) { return kAttnChunk * L + kGemmPackFloats; }
// Private scratch of one attention_forward_q8 thread: attention_forward's plus the dequantized keys and
// values of one kv head (2, L, hd).
inline int64_t attention_q8_scratch_floats(int64_t L, int64_t hd) { return attention_scratch_floats(L) + 2 * L * hd; }
// Private scratch of one attention_backward thread (T positions, rep = Hq / Hkv q heads per
// kv head): a block of score gradients (kAttnChunk, T), per-head row statistics (3 rep, T)
// for the reference, GEMM packing.
inline int64_t attention_backward_scratch_floats(int64_t T, int64_t rep) {
  return (kAttnChunk + 3 * rep) * T + kGemmPackFloats;
}

// X(name, signature). Order = table order (tier tables are designated initializers).
#define QF_ENGINE_KERNELS(X)                                                                                         \
  /* C (M, N) row stride ldc, columns [n0, n1) = (accumulate ? C : 0) + A (M, K) . B (K, N);                         \
     pack: gemm_pack_floats(M, A, B) floats (none on the decode paths). */                                           \
  X(gemm, void(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K,                   \
      bool accumulate, int64_t n0, int64_t n1, float* pack))                                                         \
  /* out (BT, D) rows [r0, r1) = table[ids[r]]; table (V, D). */                                                     \
  X(embedding_forward, void(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1,              \
      int64_t D))                                                                                                    \
  /* dtable (V, D) rows [v0, v1) += sum over r with ids[r] == v of dout[r] (each thread owns a vocab range). */      \
  X(embedding_backward, void(float* dtable, const float* dout, const int32_t* ids, int64_t BT, int64_t v0,           \
      int64_t v1, int64_t D))                                                                                        \
  /* out (BT, D) rows [r0, r1) = x * rstd * w, rstd (BT) = 1 / sqrt(mean(x^2) + eps), saved when non-null. */        \
  X(rmsnorm_forward, void(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1,           \
      int64_t D, float eps))                                                                                         \
  /* dx (BT, D) rows [r0, r1) = d/dx <dout, rmsnorm(x)> (overwritten). */                                            \
  X(rmsnorm_backward, void(float* dx, const float* dout, const float* x, const float* w, const float* rstd,          \
      int64_t r0, int64_t r1, int64_t D))                                                                            \
  /* dw (D) columns [c0, c1) += sum_r dout[r, c] * x[r, c] * rstd[r]. */                                             \
  X(rmsnorm_backward_weight, void(float* dw, const float* dout, const float* x, const float* rstd,                   \
      int64_t BT, int64_t c0, int64_t c1, int64_t D))                                                                \
  /* x (BT, H, hd) rows [r0, r1) rotated in place to position pos[r]; cos, sin (S, hd/2);                            \
     inverse: the transpose rotation (the backward). */                                                              \
  X(rope, void(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0, int64_t r1,             \
      int64_t H, int64_t hd, bool inverse))                                                                          \
  /* Causal attention, work items [i0, i1) of B * Hq * ceil(T / kAttnChunk): (b, h, query block). Query t            \
     of sequence b sits at position pos0 + t and attends keys 0 .. pos0 + t of the cache.                            \
     out (B, T, Hq, hd); probs (B, Hq, T, L) or null; q (B, T, Hq, hd); k, v (B, S, Hkv, hd) holding                 \
     positions [0, L); scratch: attention_scratch_floats(L). */                                                      \
  X(attention_forward, void(float* out, float* probs, const float* q, const float* k, const float* v,                \
      int64_t i0, int64_t i1, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd,                                        \
      int64_t S, int64_t pos0, float* scratch))                                                                      \
  /* Backward of attention_forward at pos0 = 0, S = T; work items [i0, i1) of B * Hkv (the q heads sharing a         \
     kv head accumulate into its dk, dv). dq (B, T, Hq, hd), dk, dv (B, T, Hkv, hd) overwritten; probs               \
     (B, Hq, T, T) saved by the forward; scratch: attention_backward_scratch_floats(T, Hq / Hkv). */                 \
  X(attention_backward, void(float* dq, float* dk, float* dv, const float* dout, const float* probs,                 \
      const float* q, const float* k, const float* v, int64_t i0, int64_t i1,                                        \
      int64_t T, int64_t Hq, int64_t Hkv, int64_t hd, float* scratch))                                               \
  /* out [i0, i1) = silu(g) * u, silu(g) = g / (1 + exp(-g)). */                                                     \
  X(swiglu_forward, void(float* out, const float* g, const float* u, int64_t i0, int64_t i1))                        \
  /* dg, du [i0, i1) overwritten: d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g). */                               \
  X(swiglu_backward, void(float* dg, float* du, const float* dout, const float* g, const float* u,                   \
      int64_t i0, int64_t i1))                                                                                       \
  /* out [i0, i1) = a + b (the residual stream); out may alias a. */                                                 \
  X(residual_forward, void(float* out, const float* a, const float* b, int64_t i0, int64_t i1))                      \
  /* Rows [r0, r1): logits (BT, V) become softmax probabilities, loss[r] = logsumexp - logit[target[r]];             \
     targets < 0 are ignored (loss 0). */                                                                            \
  X(cross_entropy_forward, void(float* loss, float* logits, const int32_t* targets, int64_t r0,                      \
      int64_t r1, int64_t V))                                                                                        \
  /* dlogits (BT, V) = scale * (probs - onehot(target)), in place over probs; ignored rows get 0. */                 \
  X(cross_entropy_backward, void(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V,            \
      float scale))                                                                                                  \
  /* TEQ scale, columns [c0, c1) of alpha (K); forward xs = x / alpha, ws = W . diag(alpha):                         \
       dalpha[k] += sum_n dws[n, k] W[n, k] - sum_r dxs[r, k] x[r, k] / alpha[k]^2                                   \
       dx (BT, K) = dxs / alpha (written when dx != null)                                                            \
     BT = 0 skips the activation side, N = 0 the weight side. */                                                     \
  X(teq_scale_backward, void(float* dalpha, float* dx, const float* dxs, const float* x, int64_t BT,                 \
      const float* dws, const float* W, int64_t N, const float* alpha, int64_t c0,                                   \
      int64_t c1, int64_t K))                                                                                        \
  /* EfficientQAT's learned fake quant (LearnedFakeQuant below), rows [r0, r1) of W (N, K): the straight-through /  \
     LSQ backward of fake_quant_forward (quant.h) at step sizes s and zero points z (the block step passes them     \
     clamped as learned_fq_params does), accumulated. With q = round(w / s) + round(z):                             \
       q inside [lo, hi]:      dw += g,  ds += g (round(w / s) - w / s)                                             \
       q clamped to bound b:   ds += g (b - round(z)),  dz -= g s                                                   \
     dw (N, K), ds (N, G), dz (N, G) each may be null (dz null when symmetric); g, w (N, K); scales, zeros (N, G). */ \
  X(learned_fq_backward, void(float* dw, float* ds, float* dz, const float* g, const float* w, const float* scales, \
      const float* zeros, int64_t r0, int64_t r1, int64_t K, const QuantSpec& spec))                                 \
  /* AdamW over elements [i0, i1) of an arena [params P | grads P | m P | v P]:                                      \
       m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2                                                                   \
       p -= lr (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd p);  p = max(p, pmin) */                              \
  X(adamw, void(float* arena, int64_t P, int64_t i0, int64_t i1, int64_t step, float lr, float b1,                   \
      float b2, float eps, float wd, float pmin))                                                                    \
  QF_FPT_KERNELS(X)

// FPTQuant's kernels (FptTransforms below; each tier's engine_fpt.inc). qmax = 2^(bits-1) - 1 of a
// symmetric signed grid (127 for INT8, 7 for INT4); rounding is half-to-even on every tier.
#define QF_FPT_KERNELS(X)                                                                                            \
  /* out (BT, D) rows [r0, r1) = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps / c[r]^2) (c null: eps): the         \
     RMSNorm of a residual stored as x / c (S_n), exact; rstd (BT) saved when non-null. */                           \
  X(rmsnorm_scaled_forward, void(float* out, float* rstd, const float* x, const float* w, const float* c,            \
      int64_t r0, int64_t r1, int64_t D, float eps))                                                                 \
  /* Backward of rmsnorm_scaled_forward with an extra gradient drstd[r] on rstd itself (null: none): dx (BT, D)       \
     rows [r0, r1) overwritten; dc[r] += (sum dout w x + drstd) rstd^3 eps / c^3 (dc, c null: skipped). */           \
  X(rmsnorm_scaled_backward, void(float* dx, float* dc, const float* dout, const float* x, const float* w,           \
      const float* rstd, const float* c, const float* drstd, int64_t r0, int64_t r1, int64_t D, float eps))         \
  /* out (BT, D) rows [r0, r1) = a * m[r] + b: the S_n residual update; out may alias a or b. */                     \
  X(residual_scaled_forward, void(float* out, const float* a, const float* m, const float* b, int64_t r0,            \
      int64_t r1, int64_t D))                                                                                        \
  /* Static fake quant, elements [i0, i1): out = clamp(rint(x / s), -qmax, qmax) s with s = scale[(i / inner) %      \
     nscale] (per tensor: nscale 1; per KV head: inner hd, nscale Hkv); out may alias x. */                          \
  X(act_fake_quant_forward, void(float* out, const float* x, const float* scale, int64_t nscale, int64_t inner,      \
      float qmax, int64_t i0, int64_t i1))                                                                           \
  /* Its LSQ backward: dx = dout inside the range, 0 where clamped (may alias dout); dscale (nscale) +=               \
     sum dout (rint(x/s) - x/s) inside, dout (+-qmax) where clamped. */                                              \
  X(act_fake_quant_backward, void(float* dx, double* dscale, const float* dout, const float* x, const float* scale,  \
      int64_t nscale, int64_t inner, float qmax, int64_t i0, int64_t i1))                                            \
  /* err (ncand) += sum over [i0, i1) of |fake_quant(x, cand[c]) - x|^p: the activation-range search. */             \
  X(act_quant_error, void(double* err, const float* x, const float* cand, int64_t ncand, float qmax, float p,       \
      int64_t i0, int64_t i1))                                                                                       \
  /* x (rows, F) rows [r0, r1) in place: every run of `block` channels times H_block / sqrt(block) (Sylvester        \
     order), block a power of two dividing F; symmetric and its own inverse (the backward). */                       \
  X(fwht, void(float* x, int64_t r0, int64_t r1, int64_t F, int64_t block))                                          \
  /* Inference epilogue, rows [r0, r1): q = clamp(rint(x[r] m[r] / scale), -qmax, qmax) (m null: 1) into xq (rows,   \
     KP) int8 in the int8 matmul's permuted order (matmul.h), padding [K, KP) zero; xsumq (rows, G) the sums of q     \
     over groups of gs (the weight's group size). */                                                                 \
  X(act_quant_rows, void(int8_t* xq, float* xsumq, const float* x, const float* m, float scale, float qmax,          \
      int64_t r0, int64_t r1, int64_t K, int64_t KP, int64_t gs))                                                    \
  /* rmsnorm_scaled_forward fused with act_quant_rows of its output (no fp32 row written); rstd (BT) written. */     \
  X(rmsnorm_quant, void(int8_t* xq, float* xsumq, float* rstd, const float* x, const float* w, const float* c,       \
      float scale, float qmax, int64_t r0, int64_t r1, int64_t D, int64_t KP, int64_t gs, float eps))                \
  /* silu(g) u, then fwht over blocks of `block` (0: none), times m[r], quantized as act_quant_rows; g, u (rows, F);  \
     scratch: F floats. */                                                                                           \
  X(swiglu_quant, void(int8_t* xq, float* xsumq, const float* g, const float* u, const float* m, float scale,        \
      float qmax, int64_t block, int64_t r0, int64_t r1, int64_t F, int64_t KP, int64_t gs, float* scratch))         \
  /* The quantized KV cache: rows [r0, r1) of x (rows, H, hd) -> q (rows, H, hd) int8 = clamp(rint(x / scale[h])). */ \
  X(quant_heads, void(int8_t* q, const float* x, const float* scale, float qmax, int64_t r0, int64_t r1, int64_t H,  \
      int64_t hd))                                                                                                   \
  /* attention_forward over an int8 cache (B, S, Hkv, hd): key j of kv head g is kq * kscale[g], value vq * vscale[g]; \
     work items as attention_forward, no probabilities; scratch attention_q8_scratch_floats(L, hd). */                      \
  X(attention_forward_q8, void(float* out, const float* q, const int8_t* kq, const int8_t* vq, const float* kscale,  \
      const float* vscale, int64_t i0, int64_t i1, int64_t T, int64_t Hq, int64_t Hkv, int64_t hd, int64_t S,        \
      int64_t pos0, float* scratch))                                                                                 \
  /* Rows [r0, r1): loss[r] = JSD(p || q) = (KL(p || m) + KL(q || m)) / 2, q = softmax(logits), m = (p + q) / 2, p the \
     teacher's probabilities (BT, V); logits become scale * dJSD/dlogits = scale q (g - <q, g>), g = log(q / m) / 2. */ \
  X(jsd_forward_backward, void(float* loss, float* logits, const float* tprobs, int64_t r0, int64_t r1, int64_t V,   \
      float scale))

template <class Fn>
using KernelPtr = Fn*;

struct EngineKernels {
#define QF_KERNEL_MEMBER(name, sig) KernelPtr<sig> name;
  QF_ENGINE_KERNELS(QF_KERNEL_MEMBER)
#undef QF_KERNEL_MEMBER
};

// Tier tables as written: a null entry means "this tier runs the reference".
extern const EngineKernels engine_kernels_ref;
extern const EngineKernels engine_kernels_avx2;
extern const EngineKernels engine_kernels_avx512;

// The active tier's table with null entries filled from the reference.
const EngineKernels& engine_kernels();

// Which tier's code runs each kernel: name -> "ref" | "avx2" | "avx512", for the
// active tier (backendInfo) or for a given one (tests).
struct KernelImpl {
  const char* name;
  const char* impl;
};
std::vector<KernelImpl> engine_kernel_impls(Tier tier);

// ---------------------------------------------------------------------------
// Scratch: everything a call needs is allocated on the calling thread before
// any parallel work starts, so a parallel_for body never allocates (a bad_alloc
// on a worker thread would terminate Node).
// ---------------------------------------------------------------------------

class Workspace {
 public:
  // At least `floats` floats (grown, never shrunk; contents not kept). OutOfMemory
  // names `what` and the size when the allocation fails.
  Status reserve(size_t floats, const char* what);
  float* data() { return buf_.get(); }
  size_t capacity() const { return cap_; }
  void release() {
    buf_.reset();
    cap_ = 0;
  }

 private:
  std::unique_ptr<float[]> buf_;
  size_t cap_ = 0;
};

// Slots of private scratch a parallel call may use: one per pool thread.
int64_t scratch_slots();
// Splits [0, n) into at most `slots` contiguous chunks of at least `grain` items and
// runs fn(slot, begin, end) over the pool. Every slot index runs on one thread only,
// so scratch indexed by slot is private to it.
void parallel_slots(int64_t n, int64_t grain, int64_t slots,
                    const std::function<void(int64_t, int64_t, int64_t)>& fn);

// Scratch of one gemm call: none for the decode shapes every tier runs without
// packing (M < 4 with weight rows contiguous in k, or B rows contiguous in n).
inline int64_t gemm_pack_floats(int64_t M, StridedMat A, StridedMat B) {
  return M < 4 && ((B.rs == 1 && A.cs == 1) || B.cs == 1) ? 0 : kGemmPackFloats;
}

// C (M, N) row stride ldc = [C +] A (M, K) . B (K, N) over the pool: threads split
// output columns in whole packed panels, or rows when the matrix is narrow.
// pack: slots * gemm_pack_floats(M, A, B) floats (more is fine).
void gemm_run(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
              float* pack, int64_t slots);

// ---------------------------------------------------------------------------
// Ops: whole tensors. Every length is checked against the dims (a wrong length
// would be an out-of-bounds access), then the work is split over the thread
// pool. A Span whose data is null is an absent optional buffer.
// X(name, JS argument names): the addon binds each as engine.<camelCase name>(...args[, async]).
// ---------------------------------------------------------------------------

// Token ids, positions and targets.
struct IdSpan {
  const int32_t* data;
  size_t len;
};

#define QF_ENGINE_OPS(X)                                                                                             \
  X(gemm, "C, A, B, M, N, K, transA, transB, accumulate")                                                            \
  X(embedding_forward, "out, ids, table, BT, V, D")                                                                  \
  X(embedding_backward, "dtable, dout, ids, BT, V, D")                                                               \
  X(rmsnorm_forward, "out, rstd, x, w, BT, D, eps")                                                                  \
  X(rmsnorm_backward, "dx, dw, dout, x, w, rstd, BT, D")                                                             \
  X(rope_tables, "cos, sin, invFreq, S, hd")                                                                         \
  X(rope_forward, "x, pos, cos, sin, BT, H, hd")                                                                     \
  X(rope_backward, "dx, pos, cos, sin, BT, H, hd")                                                                   \
  X(attention_forward, "out, probs, q, k, v, B, T, Hq, Hkv, hd, S, pos0")                                            \
  X(attention_backward, "dq, dk, dv, dout, probs, q, k, v, B, T, Hq, Hkv, hd")                                       \
  X(swiglu_forward, "out, g, u, BT, F")                                                                              \
  X(swiglu_backward, "dg, du, dout, g, u, BT, F")                                                                    \
  X(residual_forward, "out, a, b, n")                                                                                \
  X(cross_entropy_forward, "loss, logits, targets, BT, V")                                                           \
  X(cross_entropy_backward, "probs, targets, BT, V, scale")                                                          \
  X(teq_scale_backward, "dalpha, dx, dxs, x, BT, dws, W, N, alpha, K")                                               \
  X(teq_expand_v_scales, "out, av, Hq, Hkv, hd")                                                                     \
  X(rtn_fake_quant_backward, "g, W, alpha, N, K, bits, groupSize, symmetric")                                        \
  X(learned_fq_init, "scales, zeros, w, N, K, bits, groupSize, symmetric")                                            \
  X(learned_fq_backward, "dw, ds, dz, g, w, scales, zeros, N, K, bits, groupSize, symmetric")                        \
  X(learned_fq_codes, "codes, w, scales, zeros, N, K, bits, groupSize, symmetric")                                   \
  X(adamw, "arena, P, begin, end, step, lr, beta1, beta2, eps, weightDecay, minValue")                               \
  X(rmsnorm_scaled_forward, "out, rstd, x, w, c, BT, D, eps")                                                        \
  X(rmsnorm_scaled_backward, "dx, dc, dout, x, w, rstd, c, drstd, BT, D, eps")                                       \
  X(residual_scaled_forward, "out, a, m, b, BT, D")                                                                  \
  X(act_fake_quant_forward, "out, x, scale, n, nscale, inner, bits")                                                 \
  X(act_fake_quant_backward, "dx, dscale, dout, x, scale, n, nscale, inner, bits")                                   \
  X(act_quant_error, "err, x, candidates, n, bits, p")                                                               \
  X(fwht, "x, rows, F, block")                                                                                       \
  X(act_quant_rows, "xq, xsumq, x, m, scale, rows, K, KP, groupSize, bits")                                          \
  X(rmsnorm_quant, "xq, xsumq, rstd, x, w, c, scale, BT, D, KP, groupSize, bits, eps")                               \
  X(swiglu_quant, "xq, xsumq, g, u, m, scale, rows, F, KP, groupSize, bits, block")                                  \
  X(quant_heads, "q, x, scale, rows, H, hd, bits")                                                                   \
  X(attention_forward_q8, "out, q, kq, vq, kscale, vscale, B, T, Hq, Hkv, hd, S, pos0")                              \
  X(jsd_forward_backward, "loss, logits, tprobs, BT, V, scale")                                                      \
  X(lp_ratio, "loss, dx, x, n, group, p, scale")                                                                    \
  X(fpt_rotate_rows, "table, norm, rotation, rows, D")                                                               \
  X(lm_head_jsd, "loss, dx, dc, x, c, normWeight, head, tprobs, BT, D, V, eps, scale")

// C (M, N) = [C +] A (M, K) . B (K, N); trans_a: A is stored (K, M); trans_b: B is stored (N, K).
Status gemm(Span C, Span A, Span B, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b, bool accumulate);
// out (BT, D) = table (V, D)[ids (BT)].
Status embedding_forward(Span out, IdSpan ids, Span table, int64_t BT, int64_t V, int64_t D);
// dtable (V, D) accumulated from dout (BT, D).
Status embedding_backward(Span dtable, Span dout, IdSpan ids, int64_t BT, int64_t V, int64_t D);
// out (BT, D); rstd (BT) or null (inference); x (BT, D); w (D).
Status rmsnorm_forward(Span out, Span rstd, Span x, Span w, int64_t BT, int64_t D, float eps);
// dx (BT, D) overwritten; dw (D) accumulated, or null; dout, x (BT, D); w (D); rstd (BT) from the forward.
Status rmsnorm_backward(Span dx, Span dw, Span dout, Span x, Span w, Span rstd, int64_t BT, int64_t D);
// cos, sin (S, hd/2): angle p * inv_freq[i] rounded to f32 (as run.c and transformers compute it), cos/sin in double.
Status rope_tables(Span cos, Span sin, Span inv_freq, int64_t S, int64_t hd);
// x (BT, H, hd) rotated in place to positions pos (BT) in [0, S); cos, sin (S, hd/2).
Status rope_forward(Span x, IdSpan pos, Span cos, Span sin, int64_t BT, int64_t H, int64_t hd);
// dx (BT, H, hd) rotated back in place (the transpose of rope_forward).
Status rope_backward(Span dx, IdSpan pos, Span cos, Span sin, int64_t BT, int64_t H, int64_t hd);
// out (B, T, Hq, hd); probs (B, Hq, T, pos0 + T) or null; q (B, T, Hq, hd); k, v (B, S, Hkv, hd).
Status attention_forward(Span out, Span probs, Span q, Span k, Span v, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
      int64_t hd, int64_t S, int64_t pos0);
// dq (B, T, Hq, hd), dk, dv (B, T, Hkv, hd) overwritten; probs (B, Hq, T, T).
Status attention_backward(Span dq, Span dk, Span dv, Span dout, Span probs, Span q, Span k, Span v, int64_t B,
      int64_t T, int64_t Hq, int64_t Hkv, int64_t hd);
// out, g, u (BT, F).
Status swiglu_forward(Span out, Span g, Span u, int64_t BT, int64_t F);
// dg, du overwritten; dout, g, u (BT, F).
Status swiglu_backward(Span dg, Span du, Span dout, Span g, Span u, int64_t BT, int64_t F);
// out (n) = a + b; out may alias a.
Status residual_forward(Span out, Span a, Span b, int64_t n);
// loss (BT); logits (BT, V) become probabilities; targets (BT), < 0 ignored.
Status cross_entropy_forward(Span loss, Span logits, IdSpan targets, int64_t BT, int64_t V);
// probs (BT, V) become scale * dloss/dlogits.
Status cross_entropy_backward(Span probs, IdSpan targets, int64_t BT, int64_t V, float scale);
// dalpha (K) accumulated; dx (BT, K) written unless null; dxs, x (BT, K); dws, W (N, K); alpha (K) > 0.
Status teq_scale_backward(Span dalpha, Span dx, Span dxs, Span x, int64_t BT, Span dws, Span W, int64_t N, Span alpha,
      int64_t K);
// out (Dq): the v-channel scales av (Dkv) repeated for the q heads that read each kv head (the o_proj input scale).
Status teq_expand_v_scales(Span out, Span av, int64_t Hq, int64_t Hkv, int64_t hd);
// TEQ's weight side: g (N, K), the gradient w.r.t. Q(W diag(alpha)) (RTN fake quant with f16 parameters
// chosen from W diag(alpha)), is replaced by the gradient w.r.t. W diag(alpha).
Status rtn_fake_quant_backward(Span g, Span W, Span alpha, int64_t N, int64_t K, int64_t bits, int64_t group_size,
                               bool symmetric);
// EfficientQAT's quantizer (LearnedFakeQuant): the parameters its forward uses, as the reference's clamp_ste
// computes them (gradients pass straight through both clamps): s' = clamp(s, 1e-4, 1e4), z' = clamp(round(z),
// lo, hi); n step sizes and zero points (zeros null when symmetric).
void learned_fq_params(float* s_out, float* z_out, const float* s, const float* z, int64_t n, const QuantSpec& spec);
// Min-max init of one weight (N, K), the reference's: per group s = clamp((max - min) / (2^b - 1), 1e-4, 1e4),
// z = round(-min / s) (clamped into the code range at use); symmetric: s = clamp(max |w| / (2^(b-1) - 1), 1e-4,
// 1e4), zeros null. scales, zeros (N, G) overwritten.
Status learned_fq_init(Span scales, Span zeros, Span w, int64_t N, int64_t K, int64_t bits, int64_t group_size,
                       bool symmetric);
// The backward kernel above as a whole-matrix op, at trained (unclamped) s and z: dw (N, K), ds, dz (N, G)
// accumulated, each optional. Its argument checks are shared with the CUDA entry point.
Status check_learned_fq_backward(const Span& dw, const Span& ds, const Span& dz, const Span& g, const Span& w,
                                 const Span& scales, const Span& zeros, int64_t N, int64_t K, int64_t bits,
                                 int64_t group_size, bool symmetric);
Status learned_fq_backward(Span dw, Span ds, Span dz, Span g, Span w, Span scales, Span zeros, int64_t N, int64_t K,
                           int64_t bits, int64_t group_size, bool symmetric);
// The integer codes the trained quantizer gives w (N, K), unsigned as the packed format stores them:
// clamp(round(w / s') + z', lo, hi), + 2^(b-1) when symmetric; codes (N, K) as floats.
Status learned_fq_codes(Span codes, Span w, Span scales, Span zeros, int64_t N, int64_t K, int64_t bits,
                        int64_t group_size, bool symmetric);
// arena (4 P): one AdamW step at step >= 1 over the elements [begin, end) (one parameter group).
Status adamw(Span arena, int64_t P, int64_t begin, int64_t end, int64_t step, float lr, float b1, float b2, float eps,
             float wd, float pmin);

// FPTQuant's ops (native/common/engine_fpt.cpp). bits: 4 or 8 (qmax 7 or 127). int8 buffers: I8Span.
struct I8Span {
  int8_t* data;
  size_t len;
};
// out (BT, D); rstd (BT) or null; x (BT, D); w (D); c (BT) or null.
Status rmsnorm_scaled_forward(Span out, Span rstd, Span x, Span w, Span c, int64_t BT, int64_t D, float eps);
// dx (BT, D) overwritten; dc (BT) accumulated or null; drstd (BT) or null.
// The check_* functions below are each op's argument checks, shared with its CUDA entry point.
Status check_rmsnorm_scaled_backward(const Span& dx, const Span& dc, const Span& dout, const Span& x, const Span& w,
                                     const Span& rstd, const Span& c, const Span& drstd, int64_t BT, int64_t D);
Status rmsnorm_scaled_backward(Span dx, Span dc, Span dout, Span x, Span w, Span rstd, Span c, Span drstd, int64_t BT,
                               int64_t D, float eps);
// out, a, b (BT, D); m (BT).
Status residual_scaled_forward(Span out, Span a, Span m, Span b, int64_t BT, int64_t D);
// out, x (n); scale (nscale) > 0; inner divides n.
Status act_fake_quant_forward(Span out, Span x, Span scale, int64_t n, int64_t nscale, int64_t inner, int64_t bits);
// dx, dout, x (n); dscale (nscale) accumulated.
Status check_act_fake_quant_backward(const Span& dx, const Span& dscale, const Span& dout, const Span& x,
                                     const Span& scale, int64_t n, int64_t nscale, int64_t inner, int64_t bits);
Status act_fake_quant_backward(Span dx, Span dscale, Span dout, Span x, Span scale, int64_t n, int64_t nscale,
                               int64_t inner, int64_t bits);
// err (ncand) = sum |fake_quant(x, candidates[c]) - x|^p over x (n).
Status act_quant_error(Span err, Span x, Span candidates, int64_t n, int64_t bits, float p);
// x (rows, F) in place; block a power of two dividing F.
Status fwht(Span x, int64_t rows, int64_t F, int64_t block);
// xq (rows, KP) int8; xsumq (rows, ceil(K / gs)); x (rows, K); m (rows) or null.
Status act_quant_rows(I8Span xq, Span xsumq, Span x, Span m, float scale, int64_t rows, int64_t K, int64_t KP,
                      int64_t group_size, int64_t bits);
// act_quant_rows's checks alone (the CUDA quantizer, native/cuda/w4a8.cu, takes the same arguments).
Status check_act_quant_rows(I8Span xq, Span xsumq, Span x, Span m, float scale, int64_t rows, int64_t K, int64_t KP,
                            int64_t group_size, int64_t bits);
// xq (BT, KP); xsumq (BT, ceil(D / gs)); rstd (BT); x (BT, D); w (D); c (BT) or null.
Status rmsnorm_quant(I8Span xq, Span xsumq, Span rstd, Span x, Span w, Span c, float scale, int64_t BT, int64_t D,
                     int64_t KP, int64_t group_size, int64_t bits, float eps);
// xq (rows, KP); xsumq (rows, ceil(F / gs)); g, u (rows, F); m (rows) or null; block 0 or a power of two dividing F.
Status swiglu_quant(I8Span xq, Span xsumq, Span g, Span u, Span m, float scale, int64_t rows, int64_t F, int64_t KP,
                    int64_t group_size, int64_t bits, int64_t block);
// q (rows, H, hd) int8; x (rows, H, hd); scale (H).
Status quant_heads(I8Span q, Span x, Span scale, int64_t rows, int64_t H, int64_t hd, int64_t bits);
// out, q (B, T, Hq, hd); kq, vq (B, S, Hkv, hd) int8; kscale, vscale (Hkv).
Status attention_forward_q8(Span out, Span q, I8Span kq, I8Span vq, Span kscale, Span vscale, int64_t B, int64_t T,
                            int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0);
// Its checks alone (the CUDA kernel, native/cuda/attention_q8.cu, takes the same arguments).
Status check_attention_forward_q8(Span out, Span q, I8Span kq, I8Span vq, Span kscale, Span vscale, int64_t B, int64_t T,
                                  int64_t Hq, int64_t Hkv, int64_t hd, int64_t S, int64_t pos0);
// loss (BT); logits (BT, V) become scale * dJSD/dlogits; tprobs (BT, V).
Status check_jsd_forward_backward(const Span& loss, const Span& logits, const Span& tprobs, int64_t BT, int64_t V);
Status jsd_forward_backward(Span loss, Span logits, Span tprobs, int64_t BT, int64_t V, float scale);
// The local stage's outlier penalty over x (n) in groups of `group` (n / group of them):
//   loss[0] += scale * mean_g ( mean_g |x|^p / (mean_g x^2)^(p/2) ),  dx (n) += its gradient (null: skipped).
// Scale-free: a transform cannot lower it by moving magnitude between a weight and its input, only by
// flattening the distribution (p = 4: the kurtosis).
Status lp_ratio(Span loss, Span dx, Span x, int64_t n, int64_t group, float p, float scale);

// ---------------------------------------------------------------------------
// The block step.
//
//   xn1 = rmsnorm(x) * attn_norm                         (BT, D)   TEQ: xs1 = xn1 / alpha1
//   q = xs1 Wq^T, k = xs1 Wk^T, v = xs1 Wv^T            rope(q), rope(k) at pos0 + t
//   att = attention(q, k, v | cache)                     (BT, Dq)  TEQ extra: att / alpha_o
//   h = x + att Wo^T
//   xn2 = rmsnorm(h) * ffn_norm                          (BT, D)   TEQ: xs2 = xn2 / alpha2
//   out = h + (silu(xs2 Wg^T) * (xs2 Wu^T)) Wd^T         (BT, F)   TEQ extra: / alpha_d
//
// With TEQ every linear of a scaled group multiplies by Q(W diag(alpha)) (Q = RTN fake
// quant when enabled), which equals the unscaled block exactly when Q is off.
// ---------------------------------------------------------------------------

// The linears of a block, in arena order.
enum BlockLinear : int { kWq = 0, kWk, kWv, kWo, kWGate, kWUp, kWDown, kBlockLinears };
// Runtime names of the block tensors (LlamaModel weight names, the layout keys TS reads).
extern const char* const kBlockLinearNames[kBlockLinears];  // wq wk wv wo w_gate w_up w_down

struct BlockDims {
  int64_t B = 0, T = 0, D = 0, F = 0, Hq = 0, Hkv = 0, hd = 0;
  int64_t BT() const { return B * T; }
  int64_t Dq() const { return Hq * hd; }
  int64_t Dkv() const { return Hkv * hd; }
};

// Where a block tensor's values come from.
//   F32:        data = float (rows, cols)
//   BF16:       data = uint16_t (rows, cols) bfloat16, widened per linear into call scratch
//               (end-to-end training can then hold the frozen weights in half the memory)
//   Quantized:  canon = the packed weight (formats.h), prepared = its repacked INT4 form or
//               null; runs on the dequant-matmul kernels. Inference, and E2E-QP training when
//               canon's scales and zeros are f32 and prepared is null (LearnedFakeQuant)
struct WeightSource {
  enum class Kind : int { F32 = 0, BF16, Quantized } kind = Kind::F32;
  const void* data = nullptr;
  const CanonicalWeight* canon = nullptr;
  const PreparedInt4* prepared = nullptr;
};

// TEQ (methods/teq.ts): trainable per-input-channel scales, merged after training.
struct TeqScales {
  bool on = false;
  // With `extra`: also alpha_v (Dkv) on o_proj's input (repeated over the q heads of each kv
  // head, mergeable into v_proj rows) and alpha_d (F) on down_proj's input (into up_proj rows).
  bool extra = false;
  // (block_alpha_count) > 0: alpha1 (D) input-norm group {q, k, v} | alpha2 (D)
  // post-attention-norm group {gate, up} | alpha_v (Dkv) | alpha_d (F).
  const float* alpha = nullptr;
};

// EfficientQAT (Chen et al. 2024; methods/efficientqat.ts). Block-AP trains every linear's
// weights, the block's norms and every group's step size and zero point through the
// reference's quantizer, per linear j with scales[j] set (F32/BF16 sources):
//   w_q = fake_quant_forward(w, s', z')     s' = clamp(s, 1e-4, 1e4), z' = clamp(round(z), lo, hi)
// (learned_fq_params; quant.h: q = clamp(round(w / s') + z', lo, hi), w_q = (q - z') s'), rounding
// and both parameter clamps straight-through, the code clamp hard. block_backward accumulates dW
// (into BlockGrads::params), ds and dz (BlockGrads::fq_scales / fq_zeros) through
// learned_fq_backward. spec: bits, group size (capped at each linear's K), symmetric; f16_params
// is ignored (trained parameters are f32).
// E2E-QP trains only the step sizes with the codes frozen: there the linears are Quantized
// sources whose canonical weights carry f32 scales (the trained ones) and f32 zeros, and
// block_backward accumulates ds into fq_scales through quant_linear_backward (qlinear.h), no
// fp32 weight is materialised; scales/zeros here stay null.
struct LearnedFakeQuant {
  bool on = false;  // Block-AP: the saved activations hold the fake-quantized weights
  QuantSpec spec{4, 128, false, false};
  const float* scales[kBlockLinears] = {};  // (out, G) per linear; null entries are not quantized
  const float* zeros[kBlockLinears] = {};   // (out, G), null when symmetric
  bool active() const { return on; }
};

// FPTQuant (van Breugel et al. 2025, issue 11; lib/methods/fptquant.ts). Function-preserving
// transforms, exact with quantization off:
//   T_k  pre-RoPE, per kv head g and RoPE pair i (i, i + hd/2): a scale s = exp(lambda) and an angle
//        phi; the key pair of head g becomes s R(phi) pair, the pair of every q head of its group
//        s^-1 R(phi) pair, R(phi) = [[cos, -sin], [sin, cos]] as RoPE's own rotation, so both commute
//        with RoPE and q.k is unchanged. Merged into the rows of W_k, W_q.
//   T_v  per kv head g an invertible A (hd, hd): W_v rows of g <- A W_v, W_o columns of every q head
//        of the group <- W_o A^-1. Parametrised as A = L U, L unit lower triangular, U upper with
//        diagonal exp(d): invertible by construction (det = exp(sum d) > 0), identity at zero, A^-1
//        by two triangular inversions; cond_1(A) = |A|_1 |A^-1|_1 is checked every merge and above
//        kFptMaxCond (or non-finite) the step fails with QF_NON_FINITE.
//   T_u  intermediate scales s = exp(mu) (F): W_up <- diag(s) W_up, W_down <- W_down diag(s)^-1 (the
//        gate is left alone: SiLU is not scale-equivariant).
//   S_n  dynamic per-token residual scaling (two per block): the residual is stored as x~ = x / c with
//        one carry c per token (c = 1 at the embedding). A sub-block with stored residual x~ and
//        r~ = sqrt(mean(x~^2) + eps / c^2) (its RMSNorm's statistic: RMSNorm(c x~) = RMSNorm(x~)
//        with eps / c^2, exactly) runs on RMSNorm(x~) as usual; its output linear (o_proj,
//        down_proj) takes h / (c r~) and the residual becomes x~ / r~ + W_out (h / (c r~)),
//        c <- c r~, which is (x + W_out h) / (c r~): the same residual. c r~ = RMS(x) of the real
//        residual, so the inputs of o_proj and down_proj are divided by the residual's per-token
//        magnitude, the swings static per-tensor scales cannot follow. Every reader of the residual
//        is an RMSNorm (the final one too, with eps / c^2), so logits are unchanged. Cost: one
//        multiply per token per sub-block, in the epilogues that exist anyway.
//   Online Hadamard (W4A4 option): silu(g) u times the block-diagonal normalised Hadamard matrix H
//        (blocks of `hadamard_block`, the largest power of two dividing F) before down_proj, and
//        W_down <- W_down H (H = H^T = H^-1).
// Quantizers: static per-tensor symmetric activations at the four linear inputs (q/k/v share one,
// gate/up share one, o_proj, down_proj) and static per-kv-head K (after RoPE) and V, scales
// s = exp(theta) trained LSQ-style (act_fake_quant_backward); weights by the RTN fake quant of
// BlockDesc::rtn on the merged weights.
// Parameters (fpt_layout order, one small arena per block): qk_log_scale (Hkv, hd/2) | qk_angle
// (Hkv, hd/2) | v_lu (Hkv, hd, hd): strictly lower part L, diagonal d, strictly upper part U |
// mlp_log_scale (F) | act_log_scale (4): qkv, o, gate/up, down | kv_log_scale (2, Hkv): keys, values.
// Training runs on the original weights (merged = false: the step merges the enabled transforms
// into effective weights every call, exactly as fpt_merge does at the end); inference on merged
// weights (merged = true: only the quantizers, S_n and the online Hadamard run).
constexpr double kFptMaxCond = 1e6;
struct FptTransforms {
  enum ActInput : int { kActQkv = 0, kActO, kActGateUp, kActDown, kActInputs };
  bool on = false;
  bool merged = false;
  bool qk = false, v = false, mlp = false;  // which mergeable transforms the step applies (merged = false)
  // T_v starts from the normalised Hadamard matrix of size hd instead of the identity: A = H L U (hd a
  // power of two), the QuaRot rotation of the value heads as the initial point of the trained T_v.
  bool v_hadamard = false;
  bool residual_scaling = false;            // S_n
  int64_t hadamard_block = 0;               // online Hadamard before down_proj; 0: off
  int act_bits = 0;                         // 0 (fp activations), 4 or 8
  // Per-input override of act_bits (ActInput order; 0: act_bits): mixed 4/8-bit inputs, for the
  // ablation that finds which quantizer limits W4A4 (bench fptquant --ablate-inputs).
  int input_bits[kActInputs] = {0, 0, 0, 0};
  int kv_bits = 0;                          // 0, 4 or 8
  int bits_at(int input) const { return input_bits[input] != 0 ? input_bits[input] : act_bits; }
  const float* params = nullptr;            // (fpt_param_count)
  const float* c_in = nullptr;              // (BT) S_n carry in; null: ones
  float* c_out = nullptr;                   // (BT) S_n carry out (may alias c_in); required with S_n
  // Local-stage outlier penalty (training forward with saved activations only): lp_act * sum of
  // lp_ratio over the quantized activations (q/k/v, o, gate/up, down inputs before their quantizer, and
  // K, V) + lp_weight * sum over the seven merged weights (per row); the value goes to lp_out[0],
  // its gradient is added by block_backward.
  float lp_act = 0.f, lp_weight = 0.f, lp_p = 4.f;
  float* lp_out = nullptr;  // (1)
  bool active() const { return on; }
};

struct FptLayout {
  int64_t qk_log_scale, qk_angle, v_lu, mlp_log_scale, act_log_scale, kv_log_scale, total;
};
FptLayout fpt_layout(const BlockDims& d);

// One block as a baton: copied from JS (or built by LlamaModel) on the main thread,
// read by block_forward / block_backward on a worker thread. Pointers are borrowed.
struct BlockDesc {
  BlockDims dims;
  float eps = 1e-5f;
  // RoPE tables (rope_len, hd/2) covering positions [0, pos0 + T).
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  int64_t rope_len = 0;
  // The 9 block tensors: norms (D) as F32 or BF16 sources, linears (out, in).
  WeightSource attn_norm, ffn_norm;
  WeightSource linear[kBlockLinears];
  // Method options (absent = plain block).
  TeqScales teq;
  bool rtn = false;  // RTN fake quant of every linear's effective weight, recomputed per call
  QuantSpec rtn_spec{4, 128, false, true};
  // Accuracy of the quantized linears' dequant-matmul (matmul_ops.h): int8 / bf16 trade a
  // measured error for prefill speed.
  MatmulAccuracy accuracy = MatmulAccuracy::F32;
  LearnedFakeQuant learned_fq;  // EfficientQAT Block-AP
  FptTransforms fpt;            // FPTQuant (slot)
};

// Inference state of one layer: positions [0, pos0) are cached; block_forward writes
// positions [pos0, pos0 + T). k, v (B, S, Hkv, hd).
struct KvCache {
  float* k = nullptr;
  float* v = nullptr;
  int64_t S = 0;
  int64_t pos0 = 0;
  // FPTQuant's quantized cache (fpt.kv_bits > 0): int8 codes (B, S, Hkv, hd) with the static per-head
  // scales of fpt.params instead of k, v.
  int8_t* kq = nullptr;
  int8_t* vq = nullptr;
};

// Gradient outputs of block_backward (accumulated; each may be null).
struct BlockGrads {
  float* params = nullptr;  // (block_param_count) in the arena layout below
  float* alpha = nullptr;   // (block_alpha_count) TEQ scales
  // EfficientQAT: gradients of the (out, G) step sizes and zero points of each linear (Block-AP:
  // LearnedFakeQuant's; E2E-QP: a Quantized source's f32 scales, fq_zeros unused).
  float* fq_scales[kBlockLinears] = {};
  float* fq_zeros[kBlockLinears] = {};
  // FPTQuant: gradient of fpt.params (fpt_param_count, accumulated); with S_n, dc (BT) holds dL/dc_out on
  // entry and dL/dc_in on return.
  float* fpt = nullptr;
  float* dc = nullptr;
};

// Block parameter arena (floats) in this order, the layout TS reads through
// block_layout(): attn_norm (D) | wq (Dq, D) | wk (Dkv, D) | wv (Dkv, D) | wo (D, Dq) |
// ffn_norm (D) | w_gate (F, D) | w_up (F, D) | w_down (D, F).
struct BlockTensorSlot {
  const char* name;
  int64_t offset, rows, cols;
};
struct BlockLayout {
  BlockTensorSlot attn_norm, ffn_norm, linear[kBlockLinears];
  int64_t total;
};
BlockLayout block_layout(const BlockDims& d);
int64_t block_param_count(const BlockDims& d);
// Floats of TEQ scales the block expects (0 when TEQ is off).
int64_t block_alpha_count(const BlockDesc& d);
// Floats of saved activations one training forward writes (block_backward reads them).
int64_t block_saved_count(const BlockDesc& d);
// Where they are (offsets in floats), for callers that read a block's intermediate values
// (GPTQ's Hessians read the linears' inputs): x (BT, D) the block input | rstd1 (BT) |
// xn1 (BT, D) rmsnorm(x) * attn_norm | xs1 (BT, D) the q/k/v input, xn1 / alpha1 (= xn1
// without TEQ) | q (BT, Dq) after RoPE | k, v (BT, Dkv) | probs (B, Hq, T, T) | att (BT, Dq) |
// atts (BT, Dq) the o_proj input (= att without the extra scales) | h (BT, D) | rstd2 | xn2 |
// xs2 the gate/up input | g, u (BT, F) | a (BT, F) silu(g) * u | as the down_proj input |
// eff the effective weights in arena layout (with TEQ or fake quant). FPTQuant adds c (BT) the S_n
// carry in | kr, vr (BT, Dkv) K after RoPE and V before their quantizer (k, v: what attention read) |
// ao (BT, Dq) the o_proj input before its quantizer (atts after it) | ah (BT, F) the down_proj input
// before its quantizer (as after it); xs1, xs2 are the quantized q/k/v and gate/up inputs. Aliases
// share offsets.
struct BlockSavedLayout {
  int64_t x, rstd1, xn1, xs1, q, k, v, probs, att, atts, h, rstd2, xn2, xs2, g, u, a, as, eff, c, kr, vr, ao, ah,
      total;
};
BlockSavedLayout block_saved_layout(const BlockDesc& d);
// Dims, eps, options and their combinations.
Status check_block(const BlockDesc& d);
// Fills d.attn_norm .. d.linear from one arena in block_layout order, f32 or bf16; checks its length.
Status block_bind_arena(BlockDesc* d, Span arena);

// out (BT, D) = block(x (BT, D)); out may alias x.
//   saved != null (block_saved_count floats): training; k, v are the block's own (pos0 = 0).
//   cache != null, saved null: the inference step, attending the cache at cache->pos0.
//   both null: a cache-less forward from position 0 (evaluation of a trainable model).
Status block_forward(Span out, Span saved, Span x, const BlockDesc& d, const KvCache* cache, Workspace* ws);
// dx (BT, D) from dout (BT, D) and the saved activations of block_forward.
Status block_backward(Span dx, const BlockGrads& grads, Span dout, Span saved, const BlockDesc& d, Workspace* ws);

// Merges trained TEQ scales into one arena: attn_norm /= alpha1, Wq, Wk, Wv *= diag(alpha1);
// ffn_norm /= alpha2, Wg, Wu *= diag(alpha2); with extra: Wv rows /= alpha_v, Wo *= diag(expanded
// alpha_v), Wu rows /= alpha_d, Wd *= diag(alpha_d). The block's function is unchanged.
// Later transforms (FPTQuant) merge here too.
Status block_merge_scales(Span arena, Span alpha, const BlockDims& d, bool extra);

// FPTQuant's merge, the one place its transforms meet the weights: arena (block_param_count, f32)
// in place, the enabled transforms of `fpt` (qk, v, mlp, hadamard_block) with its params (fpt.params,
// fpt_param_count); the training step computes its effective weights with the same code. With
// `rotation` (D, D) orthogonal, first the residual rotation: the norms are fused into the linears
// that read them (W_q,k,v,gate,up columns times attn_norm / ffn_norm, the norms set to 1), then
// W_q,k,v,gate,up <- W Q and W_o, W_down <- Q^T W (embedding and LM head: fpt_rotate_rows).
Status fpt_merge(Span arena, Span rotation, const BlockDims& d, const FptTransforms& fpt);
// Backward of the merge of the enabled transforms (no rotation): dparams (fpt_param_count) += the
// gradient of <deff, merge(arena, params)> with deff in the arena layout (linears only).
// The O(weights) part of that backward, as a table the CUDA module fills (native/cuda/engine_fpt.cu;
// null: the CPU's): contractions of each merged weight Wm (or stored W) with its gradient dWm. The
// small per-parameter algebra after them (the T_v inverse and LU steps) stays on the CPU.
struct FptContractions {
  // T_k over H heads of (H hd, cols) matrices, pair it = h * hd/2 + i (rows a = h hd + i, b = a + hd/2):
  //   sl[it] = sum_c dWm_a Wm_a + dWm_b Wm_b,  sp[it] = sum_c dWm_b Wm_a - dWm_a Wm_b  (double, c in order)
  Status (*pair_dots)(double* sl, double* sp, const float* Wm, const float* dWm, int64_t H, int64_t hd, int64_t cols);
  // T_v, value rows: G (Hkv, hd, hd), G_g = dWv_g . Wv_g^T, the (hd, D) rows g hd .. of each
  Status (*v_gram)(float* G, const float* dWv, const float* Wv, int64_t Hkv, int64_t hd, int64_t D);
  // T_v, output columns: G_g = sum_{r < rep} Wo_h^T . dWo_h over h = g rep + r, the (D, hd) columns h hd ..
  // of (D, Hkv rep hd) matrices
  Status (*o_gram)(float* G, const float* Wo, const float* dWo, int64_t Hkv, int64_t rep, int64_t hd, int64_t D);
  // T_u: acc (rows) = sum_c dW[r, c] W[r, c] (c in order); col_dots: acc (cols) = sum_r (r in order)
  Status (*row_dots)(double* acc, const float* dW, const float* W, int64_t rows, int64_t cols);
  Status (*col_dots)(double* acc, const float* dW, const float* W, int64_t rows, int64_t cols);
};
// One T_k pair's sl and sp (pair_dots above): the CPU table and the CUDA kernel both run this, so
// they sum in the same order.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline void fpt_pair_dot(double* sl, double* sp, const float* Wm, const float* dWm, int64_t it, int64_t hd,
                         int64_t cols) {
  const int64_t half = hd / 2, h = it / half, i = it % half;
  const float* a = Wm + (h * hd + i) * cols;
  const float* b = Wm + (h * hd + i + half) * cols;
  const float* da = dWm + (h * hd + i) * cols;
  const float* db = dWm + (h * hd + i + half) * cols;
  double l = 0, q = 0;
  for (int64_t c = 0; c < cols; c++) {
    l += (double)da[c] * a[c] + (double)db[c] * b[c];
    q += (double)db[c] * a[c] - (double)da[c] * b[c];
  }
  sl[it] = l;
  sp[it] = q;
}
Status fpt_merge_backward(Span dparams, Span deff, Span arena, const BlockDims& d, const FptTransforms& fpt,
                          const FptContractions* contractions = nullptr);
// Whether params (fpt_param_count) give a valid step for `fpt`: every entry finite, every scale positive,
// each T_v within kFptMaxCond (QF_NON_FINITE naming what failed). Trainers check before a checkpoint.
Status fpt_check_params(Span params, const BlockDims& d, const FptTransforms& fpt);
// table (rows, D) <- table diag(norm) Q (norm null: 1): the embedding (no norm) and the LM head
// (the final norm fused) of a residual-rotated model.
Status fpt_rotate_rows(Span table, Span norm, Span rotation, int64_t rows, int64_t D);

// Final RMSNorm of a residual stored as x / c (S_n; c null: 1) + LM head + Jensen-Shannon divergence to
// the teacher's next-token probabilities tprobs (BT, V): loss (BT); with dx: dx (BT, D) and dc (BT, or
// null) of scale * sum(loss). The end-to-end stage of FPTQuant.
Status lm_head_jsd(Span loss, Span dx, Span dc, Span x, Span c, Span norm_w, Span head, Span tprobs, int64_t BT,
                   int64_t D, int64_t V, float eps, float scale);

// Final RMSNorm + LM head + cross-entropy. nll (BT); with dx: the backward of
// loss_scale * sum(nll): dx (BT, D), dnorm (D) and dhead (V, D) accumulated when given.
Status lm_head_loss(Span nll, Span dx, Span dnorm, Span dhead, Span x, Span norm_w, Span head, IdSpan targets,
      int64_t BT, int64_t D, int64_t V, float eps, float loss_scale);

}  // namespace qf
