// Whole-tensor Llama ops: every buffer length is re-checked against the dims
// (a wrong length would be an out-of-bounds access), then rows are split over
// the thread pool and the active tier's kernel runs.
#include "quantform/llama_ops.h"

#include <algorithm>
#include <string>
#include <vector>

#include "quantform/dispatch.h"
#include "quantform/threadpool.h"

namespace qf {

const LlamaKernels& llama_kernels() {
  return select_kernels(llama_kernels_ref, llama_kernels_avx2, llama_kernels_avx512);
}

namespace {

std::string num(int64_t v) { return std::to_string(v); }

Status need(const char* name, size_t have, int64_t want, const char* shape) {
  if (want < 0 || have != (size_t)want)
    return error(Code::ShapeMismatch, std::string("Expected ") + num(want) + " elements " + shape + " for " + name +
                                          " but received " + num((int64_t)have));
  return Status::Ok();
}

Status positive(const char* name, int64_t v) {
  if (v <= 0) return error(Code::InvalidArgument, std::string("Expected positive integer for ") + name + " but received " + num(v));
  return Status::Ok();
}

#define QF_TRY(expr)                 \
  do {                               \
    Status st_ = (expr);             \
    if (!st_.ok()) return st_;       \
  } while (0)

// GEMM rows per chunk when threads split rows (a multiple of every tier's micro-tile rows).
constexpr int64_t kMatmulRowGrain = 12;

// Elementwise ops: chunks of at least this many elements per thread.
constexpr int64_t kElemGrain = 1 << 14;

}  // namespace

Status embedding_forward(float* out, size_t n_out, const int32_t* tokens, size_t n_tokens, const float* wte,
                         size_t n_wte, int64_t C) {
  QF_TRY(positive("C", C));
  if (n_wte % (size_t)C != 0)
    return error(Code::ShapeMismatch, "Expected a multiple of C=" + num(C) + " elements for wte but received " + num((int64_t)n_wte));
  const int64_t V = (int64_t)(n_wte / (size_t)C), N = (int64_t)n_tokens;
  QF_TRY(need("out", n_out, N * C, "(N, C)"));
  for (int64_t n = 0; n < N; n++)
    if (tokens[n] < 0 || tokens[n] >= V)
      return error(Code::InvalidArgument, "Expected token ids in [0, " + num(V) + ") but tokens[" + num(n) + "] is " + num(tokens[n]));
  const LlamaKernels& k = llama_kernels();
  parallel_for(N, 64, [&](int64_t r0, int64_t r1) { k.embedding_forward(out, tokens, wte, r0, r1, C); });
  return Status::Ok();
}

Status rmsnorm_forward(float* out, size_t n_out, float* rstd, size_t n_rstd, const float* inp, size_t n_inp,
                       const float* weight, size_t n_weight, int64_t C, float eps) {
  QF_TRY(positive("C", C));
  QF_TRY(need("weight", n_weight, C, "(C)"));
  if (n_inp % (size_t)C != 0)
    return error(Code::ShapeMismatch, "Expected a multiple of C=" + num(C) + " elements for inp but received " + num((int64_t)n_inp));
  const int64_t N = (int64_t)(n_inp / (size_t)C);
  QF_TRY(need("out", n_out, N * C, "(N, C)"));
  if (rstd) QF_TRY(need("rstd", n_rstd, N, "(N)"));
  const LlamaKernels& k = llama_kernels();
  parallel_for(N, std::max<int64_t>(1, kElemGrain / C), [&](int64_t r0, int64_t r1) { k.rmsnorm_forward(out, rstd, inp, weight, r0, r1, C, eps); });
  return Status::Ok();
}

Status matmul_forward(float* out, size_t n_out, const float* inp, size_t n_inp, const float* weight,
                      size_t n_weight, const float* bias, size_t n_bias, int64_t M, int64_t N, int64_t K) {
  QF_TRY(positive("M", M));
  QF_TRY(positive("N", N));
  QF_TRY(positive("K", K));
  QF_TRY(need("out", n_out, M * N, "(M, N)"));
  QF_TRY(need("inp", n_inp, M * K, "(M, K)"));
  QF_TRY(need("weight", n_weight, N * K, "(N, K)"));
  if (bias) QF_TRY(need("bias", n_bias, N, "(N)"));
  const LlamaKernels& k = llama_kernels();
  const int64_t panels = (N + kMatmulNR - 1) / kMatmulNR;
  if (M < 4) {
    // decode: weight rows in blocks of 4 (the GEMV's unit), at least ~32K FMAs per chunk
    const int64_t blocks = (N + 3) / 4;
    parallel_for(blocks, std::max<int64_t>(1, (1 << 15) / (4 * K * M)), [&](int64_t b0, int64_t b1) {
      k.matmul_forward(out, inp, weight, bias, M, N, K, b0 * 4, std::min(N, b1 * 4), nullptr);
    });
  } else if (panels >= num_threads() || M < 4 * kMatmulRowGrain) {
    // threads split output columns in whole packed panels
    parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> s((size_t)(kMatmulNC * kMatmulKC));  // packed weight panels (NC/NR, KC, NR)
      k.matmul_forward(out, inp, weight, bias, M, N, K, p0 * kMatmulNR, std::min(N, p1 * kMatmulNR), s.data());
    });
  } else {
    // few output panels, many rows (small models): threads split rows
    parallel_for((M + kMatmulRowGrain - 1) / kMatmulRowGrain, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> s((size_t)(kMatmulNC * kMatmulKC));
      const int64_t m0 = r0 * kMatmulRowGrain, m1 = std::min(M, r1 * kMatmulRowGrain);
      k.matmul_forward(out + m0 * N, inp + m0 * K, weight, bias, m1 - m0, N, K, 0, N, s.data());
    });
  }
  return Status::Ok();
}

Status rope_forward(float* x, size_t n_x, const int32_t* pos, size_t n_pos, const float* cos, const float* sin,
                    size_t n_table, int64_t H, int64_t HS) {
  QF_TRY(positive("H", H));
  QF_TRY(positive("HS", HS));
  if (HS % 2 != 0) return error(Code::InvalidArgument, "Expected even head size for HS but received " + num(HS));
  const int64_t N = (int64_t)n_pos, S = (int64_t)(n_table / (size_t)(HS / 2));
  QF_TRY(need("x", n_x, N * H * HS, "(N, H, HS)"));
  if (n_table % (size_t)(HS / 2) != 0) return error(Code::ShapeMismatch, "Expected RoPE tables of shape (S, HS/2) but received " + num((int64_t)n_table) + " elements");
  for (int64_t n = 0; n < N; n++)
    if (pos[n] < 0 || pos[n] >= S)
      return error(Code::InvalidArgument, "Expected positions in [0, " + num(S) + ") but pos[" + num(n) + "] is " + num(pos[n]));
  const LlamaKernels& k = llama_kernels();
  parallel_for(N, std::max<int64_t>(1, kElemGrain / (H * HS)), [&](int64_t r0, int64_t r1) { k.rope_forward(x, pos, cos, sin, r0, r1, H, HS); });
  return Status::Ok();
}

Status attention_forward(float* out, size_t n_out, float* att, size_t n_att, const float* q, size_t n_q,
                         const float* kc, const float* vc, size_t n_cache, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, int64_t S, int64_t pos0) {
  QF_TRY(positive("B", B));
  QF_TRY(positive("T", T));
  QF_TRY(positive("NH", NH));
  QF_TRY(positive("NKV", NKV));
  QF_TRY(positive("HS", HS));
  if (NH % NKV != 0) return error(Code::InvalidArgument, "Expected NKV dividing NH but received NH=" + num(NH) + ", NKV=" + num(NKV));
  if (pos0 < 0 || pos0 + T > S)
    return error(Code::InvalidArgument, "Expected pos0 + T <= S but received pos0=" + num(pos0) + ", T=" + num(T) + ", S=" + num(S));
  const int64_t L = pos0 + T;
  QF_TRY(need("out", n_out, B * T * NH * HS, "(B, T, NH, HS)"));
  QF_TRY(need("q", n_q, B * T * NH * HS, "(B, T, NH, HS)"));
  QF_TRY(need("att", n_att, B * NH * T * L, "(B, NH, T, L)"));
  QF_TRY(need("kcache/vcache", n_cache, B * S * NKV * HS, "(B, S, NKV, HS)"));
  const LlamaKernels& k = llama_kernels();
  parallel_for(B * NH, 1, [&](int64_t r0, int64_t r1) { k.attention_forward(out, att, q, kc, vc, r0, r1, T, NH, NKV, HS, S, pos0); });
  return Status::Ok();
}

Status swiglu_forward(float* out, size_t n_out, const float* gate, const float* up, size_t n_in) {
  QF_TRY(need("out", n_out, (int64_t)n_in, "(N, F)"));
  const LlamaKernels& k = llama_kernels();
  parallel_for((int64_t)n_in, kElemGrain, [&](int64_t r0, int64_t r1) { k.swiglu_forward(out, gate, up, r0, r1); });
  return Status::Ok();
}

Status residual_forward(float* out, size_t n_out, const float* a, const float* b, size_t n_in) {
  QF_TRY(need("out", n_out, (int64_t)n_in, "(N, C)"));
  const LlamaKernels& k = llama_kernels();
  parallel_for((int64_t)n_in, kElemGrain, [&](int64_t r0, int64_t r1) { k.residual_forward(out, a, b, r0, r1); });
  return Status::Ok();
}

}  // namespace qf
