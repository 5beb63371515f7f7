// Training kernel family: forward and backward of every op of a Llama block, the
// TEQ scale backward and AdamW. Conventions (llm.c style): one function per op and
// direction, arguments ordered outputs, saved stats, inputs, dimensions; every
// buffer row-major with its shape in a comment.
//
// Kernels work on a range of rows (or columns where they reduce over rows) so
// common/ code can split the work over the thread pool; they trust their
// arguments (train_ops.cpp re-checked them). One table per tier: _ref
// (native/ref/train.cpp, the definition of correct) and _avx512. There is no AVX2
// table: AVX2-only machines run the reference (training is an AVX-512 workload).
//
// RoPE follows the Hugging Face rotate_half convention (the layout of the
// *-hf safetensors checkpoints): within a head of size hd, element i < hd/2 pairs
// with i + hd/2 and rotates by angle pos * theta^(-2i/hd).
#pragma once
#include <cstdint>

namespace qf {

// Floats of per-thread packing workspace one gemm call needs.
constexpr int64_t kGemmPackFloats = 256 * 512 + 128 * 256 + 64;

// Strided operand: element (r, c) of a logical matrix lives at p[r*rs + c*cs].
struct StridedMat {
  const float* p;
  int64_t rs, cs;
};

struct TrainKernels {
  // C (M, N) row-major with leading dim ldc, columns [n0, n1) only:
  //   C = (accumulate ? C : 0) + A (M, K) . B (K, N)
  // A and B are strided, so every transpose form (A.B^T, A^T.B, ...) is one call.
  // pack: kGemmPackFloats floats of scratch owned by the calling thread.
  void (*gemm)(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K,
               bool accumulate, int64_t n0, int64_t n1, float* pack);

  // RMSNorm over rows [r0, r1): out (T, D) = x * rstd * w; rstd (T) saved.
  void (*rmsnorm_forward)(float* out, float* rstd, const float* x, const float* w, int64_t r0, int64_t r1,
                          int64_t D, float eps);
  // dx (T, D) = d/dx of rows [r0, r1) (overwritten); dw not touched (see rmsnorm_backward_weight).
  void (*rmsnorm_backward)(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                           int64_t r0, int64_t r1, int64_t D);
  // dw (D) columns [c0, c1) += sum_t dout[t, c] * x[t, c] * rstd[t].
  void (*rmsnorm_backward_weight)(float* dw, const float* dout, const float* x, const float* rstd, int64_t T,
                                  int64_t c0, int64_t c1, int64_t D);

  // h (T, F) rows [r0, r1) = silu(g) * u.
  void (*swiglu_forward)(float* h, const float* g, const float* u, int64_t r0, int64_t r1, int64_t F);
  // dg, du (T, F) overwritten.
  void (*swiglu_backward)(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t r0,
                          int64_t r1, int64_t F);

  // In-place rotation of rows [r0, r1) of x (T, H*hd); row t sits at position t % seq
  // (T = batch * seq, every sequence starts at position 0).
  // inverse == true applies the transpose rotation (the backward pass).
  void (*rope)(float* x, int64_t r0, int64_t r1, int64_t seq, int64_t H, int64_t hd, float theta, bool inverse);

  // Causal softmax of rows [r0, r1) of scores (S, S) in place, row i keeps columns
  // 0..i, scaled by `scale` first; columns above the diagonal become 0.
  void (*causal_softmax_forward)(float* p, int64_t r0, int64_t r1, int64_t S, float scale);
  // dS (S, S) rows [r0, r1) = scale * P * (dP - rowsum(dP * P)), in place over dP.
  void (*causal_softmax_backward)(float* dp, const float* p, int64_t r0, int64_t r1, int64_t S, float scale);

  // Cross-entropy rows [r0, r1): logits (T, V) are replaced by softmax probabilities,
  // loss[t] = logsumexp - logit[target[t]]. Targets < 0 are ignored (loss 0).
  void (*cross_entropy_forward)(float* loss, float* logits, const int32_t* targets, int64_t r0, int64_t r1,
                                int64_t V);
  // dlogits (T, V) = scale * (probs - onehot(target)), in place over probs; ignored rows get 0.
  void (*cross_entropy_backward)(float* probs, const int32_t* targets, int64_t r0, int64_t r1, int64_t V,
                                 float scale);

  // out (T, D) rows [r0, r1) = table[ids[t]].
  void (*embedding_forward)(float* out, const int32_t* ids, const float* table, int64_t r0, int64_t r1, int64_t D);
  // dtable (V, D) rows [v0, v1) += sum over t with ids[t] == v of dout[t] (each thread owns a vocab range).
  void (*embedding_backward)(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t v0,
                             int64_t v1, int64_t D);

  // TEQ scale, columns [c0, c1) of alpha (K), accumulated into dalpha:
  //   forward  xs = x / alpha,  ws = W . diag(alpha)
  //   dalpha[k] += sum_n dws[n, k] * W[n, k] - sum_t dxs[t, k] * x[t, k] / alpha[k]^2
  //   dx (T, K) = dxs / alpha (written when dx != null)
  // T = 0 skips the activation side, N = 0 the weight side (a group of linears that
  // share one input adds each weight with N > 0 and the activation once).
  void (*teq_scale_backward)(float* dalpha, float* dx, const float* dxs, const float* x, int64_t T,
                             const float* dws, const float* W, int64_t N, const float* alpha, int64_t c0,
                             int64_t c1, int64_t K);

  // AdamW over elements [i0, i1) of an arena [params P | grads P | m P | v P]:
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  //   p -= lr * (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd * p);  p = max(p, pmin)
  void (*adamw)(float* arena, int64_t P, int64_t i0, int64_t i1, int64_t step, float lr, float b1, float b2,
                float eps, float wd, float pmin);
};

extern const TrainKernels train_kernels_ref;
extern const TrainKernels train_kernels_avx512;

const TrainKernels& train_kernels();  // the active tier's table (ref below AVX-512)

}  // namespace qf
