// Whole-tensor engine ops: every buffer length is checked against the dims (a
// wrong length would be an out-of-bounds access), scratch is allocated here on the
// calling thread, then the work is split over the thread pool and the active
// tier's kernels run (engine.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "quantform/engine.h"
#include "quantform/threadpool.h"
#include "op_checks.h"

namespace qf {

// ---------------------------------------------------------------------------
// Scratch and splitting
// ---------------------------------------------------------------------------

Status Workspace::reserve(size_t floats, const char* what) {
  if (floats <= cap_) return Status::Ok();
  try {
    // uninitialised: the kernels write before they read, and a call that needs only the
    // start of a large slot touches (and page-faults) only that start
    buf_.reset(new float[floats]);
    cap_ = floats;
  } catch (const std::bad_alloc&) {
    buf_.reset();
    cap_ = 0;
    // the op first, as the addon boundary names it; small sizes in KB (a 40 KB slot is not "0 MB")
    const size_t bytes = floats * 4;
    const std::string size = bytes >= (size_t(1) << 20) ? std::to_string(bytes >> 20) + " MB" : std::to_string((bytes + 1023) >> 10) + " KB";
    return error(Code::OutOfMemory, std::string(what) + ": out of memory allocating " + size + " of scratch");
  }
  return Status::Ok();
}

int64_t scratch_slots() { return num_threads(); }

void parallel_slots(int64_t n, int64_t grain, int64_t slots,
                    const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(slots, (n + grain - 1) / grain));
  if (chunks == 1) {
    fn(0, 0, n);
    return;
  }
  // chunk c covers the same items whichever thread claims it, so results do not
  // depend on scheduling
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) fn(c, n * c / chunks, n * (c + 1) / chunks);
  });
}

namespace {
constexpr int64_t kPanel = 64;     // threads split GEMM columns in multiples of the widest panel
constexpr int64_t kRowGrain = 12;  // and rows in multiples of every tier's micro-tile rows
}  // namespace

void gemm_run(float* C, int64_t ldc, StridedMat A, StridedMat B, int64_t M, int64_t N, int64_t K, bool accumulate,
              float* pack, int64_t slots) {
  const EngineKernels& k = engine_kernels();
  const int64_t per = gemm_pack_floats(M, A, B);
  if ((double)M * (double)N * (double)std::max<int64_t>(K, 1) < (double)(1 << 18) || slots <= 1) {
    k.gemm(C, ldc, A, B, M, N, K, accumulate, 0, N, pack);  // too small to pay for a thread hand-off
    return;
  }
  if (M < 4 && B.rs == 1 && A.cs == 1) {
    // decode: weight rows in blocks of 4 (the tiers' dot-product path and its unit), >= ~32K FMAs per chunk
    const int64_t blocks = (N + 3) / 4;
    parallel_slots(blocks, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, 4 * K * M)), slots,
                   [&](int64_t s, int64_t b0, int64_t b1) {
                     k.gemm(C, ldc, A, B, M, N, K, accumulate, b0 * 4, std::min(N, b1 * 4), pack + s * per);
                   });
    return;
  }
  const int64_t panels = (N + kPanel - 1) / kPanel;
  if (panels >= slots || M < 4 * kRowGrain) {
    parallel_slots(panels, 1, slots, [&](int64_t s, int64_t p0, int64_t p1) {
      k.gemm(C, ldc, A, B, M, N, K, accumulate, p0 * kPanel, std::min(N, p1 * kPanel), pack + s * per);
    });
    return;
  }
  // few output panels, many rows (small models): threads split rows
  parallel_slots((M + kRowGrain - 1) / kRowGrain, 1, slots, [&](int64_t s, int64_t r0, int64_t r1) {
    const int64_t m0 = r0 * kRowGrain, m1 = std::min(M, r1 * kRowGrain);
    k.gemm(C + m0 * ldc, ldc, StridedMat{A.p + m0 * A.rs, A.rs, A.cs}, B, m1 - m0, N, K, accumulate, 0, N,
           pack + s * per);
  });
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

namespace {

std::string num(int64_t v) { return std::to_string(v); }

using engine_check::count;
using engine_check::need;
using engine_check::need_opt;
using engine_check::positive;

// ids (n) in [lo, hi), or < 0 where negatives mean "ignored".
Status need_ids(const char* name, const IdSpan& ids, int64_t want, int64_t hi, bool allow_negative) {
  if (ids.data == nullptr || (int64_t)ids.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + num(want) + " ids for " + name + " but received " +
                                          num(ids.data ? (int64_t)ids.len : 0));
  for (int64_t i = 0; i < want; i++)
    if (ids.data[i] >= hi || (ids.data[i] < 0 && !allow_negative))
      return error(Code::InvalidArgument, std::string("Expected ") + name + " in [0, " + num(hi) + ") but " + name + "[" +
                                              num(i) + "] is " + num(ids.data[i]));
  return Status::Ok();
}

Status heads(int64_t Hq, int64_t Hkv, int64_t hd) {
  QF_TRY(positive("Hq", Hq));
  QF_TRY(positive("Hkv", Hkv));
  QF_TRY(positive("hd", hd));
  if (Hq % Hkv != 0)
    return error(Code::InvalidArgument, "Expected Hkv dividing Hq but received Hq=" + num(Hq) + ", Hkv=" + num(Hkv));
  return Status::Ok();
}

float* F(const Span& s) { return static_cast<float*>(s.data); }

int64_t grain_rows(int64_t cols) { return cols >= 8192 ? 1 : 8192 / cols; }
constexpr int64_t kElemGrain = 1 << 14;

}  // namespace

// ---------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------

Status gemm(Span C, Span A, Span B, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b, bool accumulate) {
  QF_TRY(positive("M", M));
  QF_TRY(positive("N", N));
  QF_TRY(positive("K", K));
  QF_TRY(need("C", C, M * N, "(M, N)"));
  QF_TRY(need("A", A, M * K, trans_a ? "(K, M)" : "(M, K)"));
  QF_TRY(need("B", B, K * N, trans_b ? "(N, K)" : "(K, N)"));
  const StridedMat a = trans_a ? StridedMat{F(A), 1, M} : StridedMat{F(A), K, 1};
  const StridedMat b = trans_b ? StridedMat{F(B), 1, K} : StridedMat{F(B), N, 1};
  Workspace ws;
  const int64_t slots = scratch_slots();
  QF_TRY(ws.reserve((size_t)(slots * gemm_pack_floats(M, a, b)), "gemm"));
  gemm_run(F(C), N, a, b, M, N, K, accumulate, ws.data(), slots);
  return Status::Ok();
}

Status embedding_forward(Span out, IdSpan ids, Span table, int64_t BT, int64_t V, int64_t D) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("V", V));
  QF_TRY(positive("D", D));
  QF_TRY(need("out", out, BT * D, "(BT, D)"));
  QF_TRY(need("table", table, V * D, "(V, D)"));
  QF_TRY(need_ids("ids", ids, BT, V, false));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.embedding_forward(F(out), ids.data, F(table), r0, r1, D); });
  return Status::Ok();
}

Status embedding_backward(Span dtable, Span dout, IdSpan ids, int64_t BT, int64_t V, int64_t D) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("V", V));
  QF_TRY(positive("D", D));
  QF_TRY(need("dtable", dtable, V * D, "(V, D)"));
  QF_TRY(need("dout", dout, BT * D, "(BT, D)"));
  QF_TRY(need_ids("ids", ids, BT, V, false));
  const EngineKernels& k = engine_kernels();
  parallel_for(V, 64, [&](int64_t v0, int64_t v1) { k.embedding_backward(F(dtable), F(dout), ids.data, BT, v0, v1, D); });
  return Status::Ok();
}

Status rmsnorm_forward(Span out, Span rstd, Span x, Span w, int64_t BT, int64_t D, float eps) {
  QF_TRY(engine_check::rmsnorm_args(out, rstd, x, w, BT, D, eps));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) { k.rmsnorm_forward(F(out), F(rstd), F(x), F(w), r0, r1, D, eps); });
  return Status::Ok();
}

Status rmsnorm_backward(Span dx, Span dw, Span dout, Span x, Span w, Span rstd, int64_t BT, int64_t D) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("D", D));
  QF_TRY(need("dx", dx, BT * D, "(BT, D)"));
  QF_TRY(need_opt("dw", dw, D, "(D)"));
  QF_TRY(need("dout", dout, BT * D, "(BT, D)"));
  QF_TRY(need("x", x, BT * D, "(BT, D)"));
  QF_TRY(need("w", w, D, "(D)"));
  QF_TRY(need("rstd", rstd, BT, "(BT)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(D), [&](int64_t r0, int64_t r1) {
    k.rmsnorm_backward(F(dx), F(dout), F(x), F(w), F(rstd), r0, r1, D);
  });
  if (dw.data)
    parallel_for((D + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      k.rmsnorm_backward_weight(F(dw), F(dout), F(x), F(rstd), BT, b0 * 16, std::min(D, b1 * 16), D);
    });
  return Status::Ok();
}

Status rope_tables(Span cos, Span sin, Span inv_freq, int64_t S, int64_t hd) {
  QF_TRY(positive("S", S));
  QF_TRY(positive("hd", hd));
  if (hd % 2 != 0) return error(Code::InvalidArgument, "Expected even hd but received " + num(hd));
  const int64_t half = hd / 2;
  QF_TRY(need("invFreq", inv_freq, half, "(hd/2)"));
  QF_TRY(need("cos", cos, S * half, "(S, hd/2)"));
  QF_TRY(need("sin", sin, S * half, "(S, hd/2)"));
  const float* f = F(inv_freq);
  for (int64_t i = 0; i < half; i++)
    if (!std::isfinite(f[i]))
      return error(Code::NonFinite, "Expected finite invFreq but invFreq[" + num(i) + "] is " + std::to_string(f[i]));
  parallel_for(S, grain_rows(half), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
      for (int64_t i = 0; i < half; i++) {
        const float angle = (float)p * f[i];
        F(cos)[p * half + i] = (float)std::cos((double)angle);
        F(sin)[p * half + i] = (float)std::sin((double)angle);
      }
  });
  return Status::Ok();
}

namespace {
Status rope_apply(Span x, IdSpan pos, Span cos, Span sin, int64_t BT, int64_t H, int64_t hd, bool inverse) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("H", H));
  QF_TRY(positive("hd", hd));
  if (hd % 2 != 0) return error(Code::InvalidArgument, "Expected even hd but received " + num(hd));
  const int64_t half = hd / 2;
  QF_TRY(need(inverse ? "dx" : "x", x, count({BT, H, hd}), "(BT, H, hd)"));
  if (cos.len != sin.len || cos.len % (size_t)half != 0 || cos.len == 0)
    return error(Code::ShapeMismatch, "Expected RoPE tables cos, sin of equal shape (S, hd/2) but received " +
                                          num((int64_t)cos.len) + " and " + num((int64_t)sin.len) + " elements");
  QF_TRY(need("cos", cos, (int64_t)cos.len, "(S, hd/2)"));
  QF_TRY(need("sin", sin, (int64_t)sin.len, "(S, hd/2)"));
  QF_TRY(need_ids("pos", pos, BT, (int64_t)(cos.len / (size_t)half), false));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(H * hd), [&](int64_t r0, int64_t r1) {
    k.rope(F(x), pos.data, F(cos), F(sin), r0, r1, H, hd, inverse);
  });
  return Status::Ok();
}
}  // namespace

Status rope_forward(Span x, IdSpan pos, Span cos, Span sin, int64_t BT, int64_t H, int64_t hd) {
  return rope_apply(x, pos, cos, sin, BT, H, hd, false);
}

Status rope_backward(Span dx, IdSpan pos, Span cos, Span sin, int64_t BT, int64_t H, int64_t hd) {
  return rope_apply(dx, pos, cos, sin, BT, H, hd, true);
}

Status attention_forward(Span out, Span probs, Span q, Span k, Span v, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                         int64_t hd, int64_t S, int64_t pos0) {
  QF_TRY(positive("B", B));
  QF_TRY(positive("T", T));
  QF_TRY(heads(Hq, Hkv, hd));
  QF_TRY(positive("S", S));
  if (pos0 < 0 || pos0 + T > S)
    return error(Code::InvalidArgument, "Expected pos0 >= 0 and pos0 + T <= S but received pos0=" + num(pos0) +
                                            ", T=" + num(T) + ", S=" + num(S));
  const int64_t L = pos0 + T;
  QF_TRY(need("out", out, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need_opt("probs", probs, count({B, Hq, T, L}), "(B, Hq, T, pos0 + T)"));
  QF_TRY(need("q", q, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need("k", k, count({B, S, Hkv, hd}), "(B, S, Hkv, hd)"));
  QF_TRY(need("v", v, count({B, S, Hkv, hd}), "(B, S, Hkv, hd)"));
  Workspace ws;
  const int64_t slots = scratch_slots(), per = attention_scratch_floats(L);
  QF_TRY(ws.reserve((size_t)(slots * per), "attention_forward"));
  const EngineKernels& kt = engine_kernels();
  const int64_t items = B * Hq * ((T + kAttnChunk - 1) / kAttnChunk);
  parallel_slots(items, 1, slots, [&](int64_t s, int64_t i0, int64_t i1) {
    kt.attention_forward(F(out), F(probs), F(q), F(k), F(v), i0, i1, T, Hq, Hkv, hd, S, pos0, ws.data() + s * per);
  });
  return Status::Ok();
}

Status attention_backward(Span dq, Span dk, Span dv, Span dout, Span probs, Span q, Span k, Span v, int64_t B,
                          int64_t T, int64_t Hq, int64_t Hkv, int64_t hd) {
  QF_TRY(positive("B", B));
  QF_TRY(positive("T", T));
  QF_TRY(heads(Hq, Hkv, hd));
  QF_TRY(need("dq", dq, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need("dk", dk, count({B, T, Hkv, hd}), "(B, T, Hkv, hd)"));
  QF_TRY(need("dv", dv, count({B, T, Hkv, hd}), "(B, T, Hkv, hd)"));
  QF_TRY(need("dout", dout, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need("probs", probs, count({B, Hq, T, T}), "(B, Hq, T, T)"));
  QF_TRY(need("q", q, count({B, T, Hq, hd}), "(B, T, Hq, hd)"));
  QF_TRY(need("k", k, count({B, T, Hkv, hd}), "(B, T, Hkv, hd)"));
  QF_TRY(need("v", v, count({B, T, Hkv, hd}), "(B, T, Hkv, hd)"));
  Workspace ws;
  const int64_t slots = scratch_slots(), per = attention_backward_scratch_floats(T, Hq / Hkv);
  QF_TRY(ws.reserve((size_t)(slots * per), "attention_backward"));
  const EngineKernels& kt = engine_kernels();
  parallel_slots(B * Hkv, 1, slots, [&](int64_t s, int64_t i0, int64_t i1) {
    kt.attention_backward(F(dq), F(dk), F(dv), F(dout), F(probs), F(q), F(k), F(v), i0, i1, T, Hq, Hkv, hd,
                          ws.data() + s * per);
  });
  return Status::Ok();
}

Status swiglu_forward(Span out, Span g, Span u, int64_t BT, int64_t F_) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("F", F_));
  QF_TRY(need("out", out, BT * F_, "(BT, F)"));
  QF_TRY(need("g", g, BT * F_, "(BT, F)"));
  QF_TRY(need("u", u, BT * F_, "(BT, F)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT * F_, kElemGrain, [&](int64_t i0, int64_t i1) { k.swiglu_forward(F(out), F(g), F(u), i0, i1); });
  return Status::Ok();
}

Status swiglu_backward(Span dg, Span du, Span dout, Span g, Span u, int64_t BT, int64_t F_) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("F", F_));
  QF_TRY(need("dg", dg, BT * F_, "(BT, F)"));
  QF_TRY(need("du", du, BT * F_, "(BT, F)"));
  QF_TRY(need("dout", dout, BT * F_, "(BT, F)"));
  QF_TRY(need("g", g, BT * F_, "(BT, F)"));
  QF_TRY(need("u", u, BT * F_, "(BT, F)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT * F_, kElemGrain, [&](int64_t i0, int64_t i1) { k.swiglu_backward(F(dg), F(du), F(dout), F(g), F(u), i0, i1); });
  return Status::Ok();
}

Status residual_forward(Span out, Span a, Span b, int64_t n) {
  QF_TRY(positive("n", n));
  QF_TRY(need("out", out, n, "(n)"));
  QF_TRY(need("a", a, n, "(n)"));
  QF_TRY(need("b", b, n, "(n)"));
  const EngineKernels& k = engine_kernels();
  parallel_for(n, kElemGrain, [&](int64_t i0, int64_t i1) { k.residual_forward(F(out), F(a), F(b), i0, i1); });
  return Status::Ok();
}

Status cross_entropy_forward(Span loss, Span logits, IdSpan targets, int64_t BT, int64_t V) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("V", V));
  QF_TRY(need("loss", loss, BT, "(BT)"));
  QF_TRY(need("logits", logits, BT * V, "(BT, V)"));
  QF_TRY(need_ids("targets", targets, BT, V, true));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) {
    k.cross_entropy_forward(F(loss), F(logits), targets.data, r0, r1, V);
  });
  return Status::Ok();
}

Status cross_entropy_backward(Span probs, IdSpan targets, int64_t BT, int64_t V, float scale) {
  QF_TRY(positive("BT", BT));
  QF_TRY(positive("V", V));
  QF_TRY(need("probs", probs, BT * V, "(BT, V)"));
  QF_TRY(need_ids("targets", targets, BT, V, true));
  const EngineKernels& k = engine_kernels();
  parallel_for(BT, grain_rows(V), [&](int64_t r0, int64_t r1) {
    k.cross_entropy_backward(F(probs), targets.data, r0, r1, V, scale);
  });
  return Status::Ok();
}

Status teq_scale_backward(Span dalpha, Span dx, Span dxs, Span x, int64_t BT, Span dws, Span W, int64_t N, Span alpha,
                          int64_t K) {
  QF_TRY(positive("K", K));
  if (BT < 0 || N < 0 || BT > ((int64_t)1 << 31) || N > ((int64_t)1 << 31))
    return error(Code::InvalidArgument, "Expected BT and N in [0, 2^31] but received BT=" + num(BT) + ", N=" + num(N));
  QF_TRY(need("dalpha", dalpha, K, "(K)"));
  QF_TRY(need_opt("dx", dx, BT * K, "(BT, K)"));
  QF_TRY(need("dxs", dxs, BT * K, "(BT, K)"));
  QF_TRY(need("x", x, BT * K, "(BT, K)"));
  QF_TRY(need("dws", dws, N * K, "(N, K)"));
  QF_TRY(need("W", W, N * K, "(N, K)"));
  QF_TRY(need("alpha", alpha, K, "(K)"));
  const float* a = F(alpha);
  for (int64_t i = 0; i < K; i++)
    if (!(a[i] > 0.f))
      return error(Code::InvalidArgument, "Expected positive alpha but alpha[" + num(i) + "] is " + std::to_string(a[i]));
  const EngineKernels& k = engine_kernels();
  parallel_for((K + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
    k.teq_scale_backward(F(dalpha), F(dx), F(dxs), F(x), BT, F(dws), F(W), N, a, b0 * 16, std::min(K, b1 * 16), K);
  });
  return Status::Ok();
}

Status teq_expand_v_scales(Span out, Span av, int64_t Hq, int64_t Hkv, int64_t hd) {
  QF_TRY(heads(Hq, Hkv, hd));
  QF_TRY(need("out", out, Hq * hd, "(Hq * hd)"));
  QF_TRY(need("av", av, Hkv * hd, "(Hkv * hd)"));
  const int64_t rep = Hq / Hkv;
  for (int64_t h = 0; h < Hq; h++) std::memcpy(F(out) + h * hd, F(av) + (h / rep) * hd, (size_t)hd * sizeof(float));
  return Status::Ok();
}

Status adamw(Span arena, int64_t P, int64_t begin, int64_t end, int64_t step, float lr, float b1, float b2, float eps,
             float wd, float pmin) {
  QF_TRY(positive("P", P));
  QF_TRY(need("arena", arena, 4 * P, "(4 P)"));
  if (begin < 0 || end > P || begin >= end)
    return error(Code::InvalidArgument, "Expected 0 <= begin < end <= P = " + num(P) + " but received begin=" + num(begin) +
                                            ", end=" + num(end));
  if (step < 1) return error(Code::InvalidArgument, "Expected step >= 1 but received " + num(step));
  const EngineKernels& k = engine_kernels();
  parallel_for(end - begin, 4096, [&](int64_t i0, int64_t i1) {
    k.adamw(F(arena), P, begin + i0, begin + i1, step, lr, b1, b2, eps, wd, pmin);
  });
  return Status::Ok();
}

}  // namespace qf
