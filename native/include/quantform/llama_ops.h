// Llama forward op family (the backward ops of training sit next to these, same
// argument order): llm.c style, outputs first, then saved statistics, then inputs,
// then dimensions, each buffer with its shape.
//
// Layouts (every model format is normalised to these at load, lib/model/):
//   activations      (B, T, C) row-major; "rows" N = B*T
//   weights          (out, in) row-major, as Hugging Face stores nn.Linear
//   q                (B, T, NH, HS)   k, v (B, T, NKV, HS)   GQA: head h reads kv head h / (NH / NKV)
//   KV cache         (B, S, NKV, HS)  S = cache capacity in positions
//   attention probs  (B, NH, T, L)    L = pos0 + T keys; entries past the causal limit are 0
//   RoPE             Hugging Face rotate_half: within a head, element i < HS/2 pairs with
//                    i + HS/2 and both rotate by angle pos * inv_freq[i]. llama2.c .bin and GGUF
//                    checkpoints (interleaved pairs 2i, 2i+1) get their q/k rows permuted at
//                    load (lib/model/convert.ts), so kernels see one convention only.
//   RoPE tables      cos, sin (S, HS/2): angle pos * inv_freq[i] (inv_freq carries rope_theta and
//                    any Llama 3 rope_scaling; computed once per model)
//
// Kernels work on a row range [r0, r1) so the thread pool can split them; arguments
// were validated by the op functions (llama_ops.cpp) and kernels trust them. One
// table per tier: _ref (native/ref/llama_ops.cpp, the definition of correct),
// _avx2, _avx512.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quantform/status.h"

namespace qf {

// GEMM blocking (avx2/avx512): K and N block sizes of the packed weight panels; each
// tier picks its own panel width (a divisor of kMatmulNC) and micro-tile.
constexpr int64_t kMatmulKC = 256;
constexpr int64_t kMatmulNC = 256;
constexpr int64_t kMatmulNR = 64;  // threads split N in multiples of this (the widest panel)

struct LlamaKernels {
  // out (N, C) = wte[tokens[n]]; tokens (N) in [0, V); wte (V, C).
  void (*embedding_forward)(float* out, const int32_t* tokens, const float* wte, int64_t r0, int64_t r1,
                            int64_t C);
  // out (N, C) = inp * rstd * weight, rstd (N) = 1 / sqrt(mean(inp^2) + eps) (saved; may be null).
  void (*rmsnorm_forward)(float* out, float* rstd, const float* inp, const float* weight, int64_t r0,
                          int64_t r1, int64_t C, float eps);
  // out (M, N) columns [n0, n1) = inp (M, K) @ weight (N, K)^T (+ bias (N), may be null).
  // scratch: kMatmulNC * kMatmulKC floats owned by the calling thread (weight panel packing).
  void (*matmul_forward)(float* out, const float* inp, const float* weight, const float* bias, int64_t M,
                         int64_t N, int64_t K, int64_t n0, int64_t n1, float* scratch);
  // x (N, H, HS) rotated in place, rows [r0, r1); pos (N) positions in [0, S); cos, sin (S, HS/2).
  void (*rope_forward)(float* x, const int32_t* pos, const float* cos, const float* sin, int64_t r0,
                       int64_t r1, int64_t H, int64_t HS);
  // Causal attention over (b, h) pairs [r0, r1) of B*NH. Query t of batch b sits at position
  // pos0 + t and attends keys 0 .. pos0 + t of the cache.
  // out (B, T, NH, HS); att (B, NH, T, L) softmax probabilities (saved); q (B, T, NH, HS);
  // kc, vc (B, S, NKV, HS) already holding positions 0 .. pos0 + T - 1; L = pos0 + T <= S.
  void (*attention_forward)(float* out, float* att, const float* q, const float* kc, const float* vc,
                            int64_t r0, int64_t r1, int64_t T, int64_t NH, int64_t NKV, int64_t HS, int64_t S,
                            int64_t pos0);
  // out (n) = silu(gate) * up, silu(x) = x / (1 + exp(-x)); elements [r0, r1).
  void (*swiglu_forward)(float* out, const float* gate, const float* up, int64_t r0, int64_t r1);
  // out (n) = a + b (residual stream); out may alias a; elements [r0, r1).
  void (*residual_forward)(float* out, const float* a, const float* b, int64_t r0, int64_t r1);
};

extern const LlamaKernels llama_kernels_ref;
extern const LlamaKernels llama_kernels_avx2;
extern const LlamaKernels llama_kernels_avx512;

const LlamaKernels& llama_kernels();  // the active tier's table

// Whole-tensor ops: check lengths (element counts of every buffer), then split over
// the thread pool. `n_*` arguments are buffer lengths in elements.
Status embedding_forward(float* out, size_t n_out, const int32_t* tokens, size_t n_tokens, const float* wte,
                         size_t n_wte, int64_t C);
Status rmsnorm_forward(float* out, size_t n_out, float* rstd, size_t n_rstd, const float* inp, size_t n_inp,
                       const float* weight, size_t n_weight, int64_t C, float eps);
Status matmul_forward(float* out, size_t n_out, const float* inp, size_t n_inp, const float* weight,
                      size_t n_weight, const float* bias, size_t n_bias, int64_t M, int64_t N, int64_t K);
Status rope_forward(float* x, size_t n_x, const int32_t* pos, size_t n_pos, const float* cos, const float* sin,
                    size_t n_table, int64_t H, int64_t HS);
Status attention_forward(float* out, size_t n_out, float* att, size_t n_att, const float* q, size_t n_q,
                         const float* kc, const float* vc, size_t n_cache, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, int64_t S, int64_t pos0);
Status swiglu_forward(float* out, size_t n_out, const float* gate, const float* up, size_t n_in);
Status residual_forward(float* out, size_t n_out, const float* a, const float* b, size_t n_in);

}  // namespace qf
