// GPTQ ops (gptq.h): argument checks, the Hessian accumulation, the blocked
// factorization and the batched column loop. Every flop-heavy step is a GEMM on
// the engine's GEMM (engine.h) through gemm_tile below; the diagonal blocks of the
// factorization are factored and inverted in double here; the column loop runs on
// the active tier's gptq kernels. Scratch is allocated on the calling thread before
// any parallel_for (one slot per pool thread), so nothing can throw on a worker.
#include "quantform/gptq.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "quantform/dispatch.h"
#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/threadpool.h"
#include "op_checks.h"
#include "task_slots.h"

namespace qf {

const GptqKernels& gptq_kernels() {
  // no AVX2 table: AVX2-only machines run the reference (as for training)
  return select_kernels(gptq_kernels_ref, gptq_kernels_ref, gptq_kernels_avx512);
}

namespace gptq {
namespace {

// The one call into the engine's GEMM.
void gemm_tile(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool acc,
               int64_t n0, int64_t n1, float* pack) {
  engine_kernels().gemm(C, ldc, A, B, M, N, K, acc, n0, n1, pack);
}

constexpr int64_t kFactorBlock = 128;  // diagonal blocks of the factorization
constexpr int64_t kTile = 256;         // output columns per GEMM task (factorization)
constexpr int64_t kHessTile = 256;     // output columns per GEMM task of the Hessian
constexpr int64_t kTrailTile = 256;    // output columns per task of the trailing update

// Every parallel GEMM here needs one packing buffer per slot.
class Slots : public TaskSlots {
 public:
  Slots() : TaskSlots(kGemmPackFloats) {}
};

// Lower Cholesky factor of D (n, n) in place (lower part); the first column whose
// pivot is not positive, or -1.
int64_t potrf_lower(double* D, int64_t n) {
  for (int64_t j = 0; j < n; j++) {
    double s = D[j * n + j];
    for (int64_t p = 0; p < j; p++) s -= D[j * n + p] * D[j * n + p];
    if (!(s > 0.0) || !std::isfinite(s)) return j;
    const double l = std::sqrt(s);
    D[j * n + j] = l;
    for (int64_t i = j + 1; i < n; i++) {
      double a = D[i * n + j];
      for (int64_t p = 0; p < j; p++) a -= D[i * n + p] * D[j * n + p];
      D[i * n + j] = a / l;
    }
  }
  return -1;
}

// X (n, n) lower = L^-1 for L (n, n) lower.
void trtri_lower(double* X, const double* L, int64_t n) {
  std::fill(X, X + n * n, 0.0);
  for (int64_t j = 0; j < n; j++) {
    X[j * n + j] = 1.0 / L[j * n + j];
    for (int64_t i = j + 1; i < n; i++) {
      double a = 0;
      for (int64_t p = j; p < i; p++) a += L[i * n + p] * X[p * n + j];
      X[i * n + j] = -a / L[i * n + i];
    }
  }
}

// Blocked right-looking Cholesky of A (K, K) (lower part read; L replaces it) and
// blocked inverse Minv (K, K) = L^-1 (lower; Minv must arrive zeroed: its upper
// part is a GEMM operand). Returns the first column with a non-positive pivot, or -1.
int64_t cholesky_and_inverse(float* A, float* Minv, int64_t K, Slots& slots) {
  const int64_t nb = kFactorBlock;
  std::vector<double> D((size_t)(nb * nb)), Dinv((size_t)(nb * nb));  // (n, n) diagonal block and its inverse
  std::vector<float> S((size_t)(K * nb)), NS((size_t)(K * nb));        // (rows, n) panel L21 and -L21
  for (int64_t k0 = 0; k0 < K; k0 += nb) {
    const int64_t n = std::min(nb, K - k0);
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j <= i; j++) D[(size_t)(i * n + j)] = A[(k0 + i) * K + k0 + j];
    const int64_t bad = potrf_lower(D.data(), n);
    if (bad >= 0) return k0 + bad;
    trtri_lower(Dinv.data(), D.data(), n);
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j <= i; j++) {
        A[(k0 + i) * K + k0 + j] = (float)D[(size_t)(i * n + j)];
        Minv[(k0 + i) * K + k0 + j] = (float)Dinv[(size_t)(i * n + j)];
      }
    const int64_t rows = K - k0 - n;
    if (rows == 0) break;
    // L21 (rows, n) = A21 L11^-T: a GEMM against the inverted diagonal block
    float* P = A + (k0 + n) * K + k0;
    const StridedMat LinvT{Minv + k0 * K + k0, 1, K};
    const int64_t rtasks = (rows + 255) / 256;
    slots.run(rtasks, [&](int64_t t, float* pack) {
      const int64_t r0 = t * 256, r1 = std::min(rows, r0 + 256);
      gemm_tile(S.data() + r0 * n, n, StridedMat{P + r0 * K, K, 1}, LinvT, r1 - r0, n, n, false, 0, n, pack);
    });
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < n; j++) {
        P[r * K + j] = S[(size_t)(r * n + j)];
        NS[(size_t)(r * n + j)] = -S[(size_t)(r * n + j)];
      }
    // A22 -= L21 L21ᵀ, lower part: the tile of columns [c0, c1) needs rows >= c0
    float* A22 = A + (k0 + n) * K + (k0 + n);
    slots.run((rows + kTile - 1) / kTile, [&](int64_t t, float* pack) {
      const int64_t c0 = t * kTile, c1 = std::min(rows, c0 + kTile);
      gemm_tile(A22 + c0 * K, K, StridedMat{NS.data() + c0 * n, n, 1}, StridedMat{S.data(), 1, n}, rows - c0, rows, n,
                true, c0, c1, pack);
    });
  }
  // Minv[I, 0:i0] = -Minv[I, I] (L[I, 0:i0] Minv[0:i0, 0:i0]) for row blocks I = [i0, i0 + n)
  std::vector<float> T((size_t)(nb * K)), ND((size_t)(nb * nb));  // (n, i0), (n, n)
  for (int64_t i0 = nb; i0 < K; i0 += nb) {
    const int64_t n = std::min(nb, K - i0);
    const int64_t tiles = (i0 + kTile - 1) / kTile;
    slots.run(tiles, [&](int64_t t, float* pack) {
      const int64_t c0 = t * kTile, c1 = std::min(i0, c0 + kTile);
      // Minv is lower: rows < c0 of its columns [c0, c1) are zero and are skipped
      gemm_tile(T.data(), i0, StridedMat{A + i0 * K + c0, K, 1}, StridedMat{Minv + c0 * K, K, 1}, n, i0, i0 - c0,
                false, c0, c1, pack);
    });
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++) ND[(size_t)(i * n + j)] = -Minv[(i0 + i) * K + i0 + j];
    slots.run(tiles, [&](int64_t t, float* pack) {
      const int64_t c0 = t * kTile, c1 = std::min(i0, c0 + kTile);
      gemm_tile(Minv + i0 * K, K, StridedMat{ND.data(), n, 1}, StridedMat{T.data(), i0, 1}, n, i0, n, false, c0, c1,
                pack);
    });
  }
  return -1;
}

// U (K, K) = upper Cholesky factor of (H + λI)^-1 with dead inputs' diagonal set to 1.
// dead (K) receives which inputs are dead.
Status upper_inverse_factor(std::vector<float>& U, std::vector<uint8_t>& dead, const float* H, int64_t K, float damp,
                            Slots& slots) {
  dead.assign((size_t)K, 0);
  double mean = 0;
  for (int64_t c = 0; c < K; c++) {
    const float d = H[c * K + c];
    if (d == 0.f) dead[(size_t)c] = 1;
    mean += d == 0.f ? 1.0 : (double)d;
  }
  mean /= (double)K;
  const float lam = (float)(damp * mean);
  // A = J H' J (reversed order), lower part
  std::vector<float> A((size_t)(K * K)), Minv((size_t)(K * K), 0.f);  // (K, K)
  for (int64_t i = 0; i < K; i++) {
    const int64_t ci = K - 1 - i;
    for (int64_t j = 0; j < i; j++) A[(size_t)(i * K + j)] = H[ci * K + (K - 1 - j)];
    A[(size_t)(i * K + i)] = (dead[(size_t)ci] ? 1.f : H[ci * K + ci]) + lam;
  }
  const int64_t bad = cholesky_and_inverse(A.data(), Minv.data(), K, slots);
  if (bad >= 0)
    return error(Code::InvalidArgument,
                 "Expected a positive definite Hessian after damping (damp " + std::to_string(damp) + " x mean diagonal " +
                     std::to_string(mean) + "), but the Cholesky pivot of input column " + std::to_string(K - 1 - bad) +
                     " is not positive: increase damp, or calibrate on more (and more varied) tokens");
  // U = J Minv J: upper, since Minv is lower (written over A: two K x K buffers at most)
  for (int64_t i = 0; i < K; i++)
    for (int64_t j = 0; j < K; j++) A[(size_t)(i * K + j)] = Minv[(size_t)((K - 1 - i) * K + (K - 1 - j))];
  U.swap(A);
  return Status::Ok();
}

Status check_hessian(const Span& H, int64_t K) {
  QF_TRY(need_span("H", H, K * K, DType::F32));
  const int64_t bad = first_non_finite(static_cast<const float*>(H.data), K * K);
  if (bad >= 0)
    return error(Code::NonFinite, "Expected a finite Hessian but H[" + std::to_string(bad / K) + ", " +
                                      std::to_string(bad % K) + "] is NaN or Inf");
  return Status::Ok();
}

Status check_damp(float damp) {
  if (!(damp >= 0.f) || !std::isfinite(damp))
    return error(Code::InvalidArgument, "Expected damp >= 0 but received " + std::to_string(damp));
  return Status::Ok();
}

}  // namespace

Status hessian_accumulate(Span H, Span x, int64_t T, int64_t K, int64_t rows_before) {
  QF_TRY(check_dim("K", K));
  if (T < 0 || rows_before < 0)
    return error(Code::InvalidArgument, "Expected rows >= 0 and rowsBefore >= 0 but received " + std::to_string(T) +
                                            " and " + std::to_string(rows_before));
  QF_TRY(need_span("H", H, K * K, DType::F32));
  QF_TRY(need_span("x", x, T * K, DType::F32));
  const float* xs = static_cast<const float*>(x.data);
  float* h = static_cast<float*>(H.data);
  const int64_t bad = first_non_finite(xs, T * K);
  if (bad >= 0)
    return error(Code::NonFinite, "Expected finite inputs but x[" + std::to_string(bad / K) + ", " +
                                      std::to_string(bad % K) + "] is NaN or Inf");
  if (T == 0) return Status::Ok();
  const int64_t n = rows_before + T;
  // H = 2/n (n_before/2 H + xᵀx): the sum of outer products is rebuilt, extended, renormalised
  if (rows_before > 0) {
    const float up = (float)rows_before / 2.f;
    for (int64_t i = 0; i < K * K; i++) h[i] *= up;
  }
  Slots slots;
  slots.run((K + kHessTile - 1) / kHessTile, [&](int64_t t, float* pack) {
    const int64_t c0 = t * kHessTile, c1 = std::min(K, c0 + kHessTile);
    // lower part only: columns [c0, c1), rows >= c0; A(m, t) = x[t, c0 + m]
    gemm_tile(h + c0 * K, K, StridedMat{xs + c0, 1, K}, StridedMat{xs, K, 1}, K - c0, K, T, rows_before > 0, c0, c1,
              pack);
  });
  const float down = 2.f / (float)n;
  for (int64_t i = 0; i < K; i++) {
    for (int64_t j = 0; j <= i; j++) h[i * K + j] *= down;
    for (int64_t j = 0; j < i; j++) h[j * K + i] = h[i * K + j];
  }
  return Status::Ok();
}

Status inverse_factor(Span U, Span H, int64_t K, float damp) {
  QF_TRY(check_dim("K", K));
  QF_TRY(check_damp(damp));
  QF_TRY(check_hessian(H, K));
  QF_TRY(need_span("U", U, K * K, DType::F32));
  Slots slots;
  std::vector<float> u;
  std::vector<uint8_t> dead;
  QF_TRY(upper_inverse_factor(u, dead, static_cast<const float*>(H.data), K, damp, slots));
  std::copy(u.begin(), u.end(), static_cast<float*>(U.data));
  return Status::Ok();
}

Status quantize(Span codes, Span scales, Span zeros, double* loss, Span w, Span H, const Config& c) {
  const int64_t N = c.N, K = c.K;
  QuantSpec spec = c.spec;
  QF_TRY(check_spec(spec, N, K));
  QF_TRY(check_dim("K", K));
  QF_TRY(check_damp(c.damp));
  if (c.block_size < 1 || c.block_size > kGptqMaxBatch)
    return error(Code::InvalidArgument, "Expected blockSize in [1, " + std::to_string(kGptqMaxBatch) +
                                            "] but received " + std::to_string(c.block_size));
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  QF_TRY(need_span("codes", codes, N * rb, DType::F32));  // bytes travel as a Span of the f32 tag
  if (scales.dtype != DType::F32 && scales.dtype != DType::F16)
    return error(Code::DtypeMismatch, std::string("Expected f32 or f16 for scales but received ") + dtype_name(scales.dtype));
  QF_TRY(need_span("scales", scales, N * G, scales.dtype));
  if (!spec.symmetric) QF_TRY(need_span("zeros", zeros, N * G, scales.dtype));
  QF_TRY(need_span("w", w, N * K, DType::F32));
  QF_TRY(check_hessian(H, K));
  const float* w_in = static_cast<const float*>(w.data);
  const int64_t badw = first_non_finite(w_in, N * K);
  if (badw >= 0)
    return error(Code::NonFinite, "Expected finite weights but row " + std::to_string(badw / K) + " holds NaN or Inf");
  spec.f16_params = scales.dtype == DType::F16;

  Slots slots;
  std::vector<float> U;        // (K, K)
  std::vector<uint8_t> dead;   // (K)
  QF_TRY(upper_inverse_factor(U, dead, static_cast<const float*>(H.data), K, c.damp, slots));

  std::vector<float> W(w_in, w_in + N * K);  // (N, K) working weights
  for (int64_t k = 0; k < K; k++)
    if (dead[(size_t)k])
      for (int64_t r = 0; r < N; r++) W[(size_t)(r * K + k)] = 0.f;
  std::vector<uint8_t> codes8((size_t)(N * K));                                  // (N, K)
  std::vector<float> s32((size_t)(N * G), 0.f), z32((size_t)(N * G), 0.f);       // (N, G)
  std::vector<float> nerr((size_t)(N * c.block_size));                          // (N, batch)
  std::vector<double> row_loss((size_t)N, 0.0);                                  // (N)
  const GptqKernels& kt = gptq_kernels();
  const bool batch_start = c.params_from == ParamSource::BatchStart;
  const int64_t gs = spec.group_size;
  for (int64_t c0 = 0, c1; c0 < K; c0 = c1) {
    c1 = std::min(K, c0 + c.block_size);
    if (!batch_start) {
      // a group starting inside the batch but ending after it would read columns
      // still missing this batch's errors: end the batch at its first column (only
      // the batch's last group start can be such a group)
      const int64_t s = (c1 - 1) / gs * gs;
      if (s > c0 && std::min(s + gs, K) > c1) c1 = s;
    }
    const int64_t n = c1 - c0;
    const int64_t grain = std::max<int64_t>(1, 32768 / (n * n / 2 + n));
    parallel_for(N, grain, [&](int64_t r0, int64_t r1) {
      kt.quantize_batch(codes8.data(), s32.data(), z32.data(), nerr.data(), row_loss.data(), W.data(), U.data(), r0,
                        r1, K, c0, c1, spec, batch_start);
    });
    if (c1 == K) break;
    // W[:, c1:] += (-E) (N, n) U[c0:c1, c1:]
    const int64_t tiles = (K - c1 + kTrailTile - 1) / kTrailTile;
    slots.run(tiles, [&](int64_t t, float* pack) {
      const int64_t t0 = c1 + t * kTrailTile, t1 = std::min(K, t0 + kTrailTile);
      gemm_tile(W.data(), K, StridedMat{nerr.data(), n, 1}, StridedMat{U.data() + c0 * K, K, 1}, N, K, n, true, t0, t1,
                pack);
    });
  }
  const QuantKernels& qk = quant_kernels();
  parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    qk.pack(static_cast<uint8_t*>(codes.data), codes8.data(), r0, r1, K, spec.bits);
  });
  if (spec.f16_params) {
    uint16_t* sh = static_cast<uint16_t*>(scales.data);
    uint16_t* zh = static_cast<uint16_t*>(zeros.data);
    for (int64_t i = 0; i < N * G; i++) {
      sh[i] = f32_to_f16(s32[(size_t)i]);
      if (!spec.symmetric) zh[i] = f32_to_f16(z32[(size_t)i]);
    }
  } else {
    std::copy(s32.begin(), s32.end(), static_cast<float*>(scales.data));
    if (!spec.symmetric) std::copy(z32.begin(), z32.end(), static_cast<float*>(zeros.data));
  }
  double total = 0;
  for (double v : row_loss) total += v;
  if (loss) *loss = total;
  return Status::Ok();
}

}  // namespace gptq
}  // namespace qf
