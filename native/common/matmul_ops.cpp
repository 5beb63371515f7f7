#include "quantform/matmul_ops.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "quantform/dispatch.h"
#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

float param_at(const Span& s, size_t i) {
  if (s.dtype == DType::F32) return static_cast<const float*>(s.data)[i];
  return f16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
}

std::vector<float> widen_params(const Span& s) {
  std::vector<float> out(s.len);
  for (size_t i = 0; i < s.len; i++) out[i] = param_at(s, i);
  return out;
}

Status expect(const char* name, size_t got, size_t want) {
  if (got == want) return Status::Ok();
  return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                        " but received " + std::to_string(got));
}

// Rows of x per parallel chunk: at least ~16K elements of work per task.
int64_t row_grain(int64_t K) { return K >= 16384 ? 1 : 16384 / K; }

// Output tiles are handed out in pairs (the GEMM kernels decode 32 rows at once),
// fn(slot, t0, t1) with slot-private scratch (parallel_slots).
void for_tile_pairs(int64_t tiles, int64_t slots, const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  parallel_slots((tiles + 1) / 2, 1, slots, [&](int64_t s, int64_t p0, int64_t p1) {
    fn(s, 2 * p0, 2 * p1 < tiles ? 2 * p1 : tiles);
  });
}

struct F32Activations {
  std::vector<float> x;     // (M, KP) zero-padded
  std::vector<float> xsum;  // (M, G) group sums
};

F32Activations prepare_f32(const float* x, int64_t M, int64_t K, int64_t KP, int64_t G, int64_t gs) {
  F32Activations a;
  a.x.assign((size_t)(M * KP), 0.f);
  a.xsum.assign((size_t)(M * G), 0.f);
  parallel_for(M, row_grain(K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) {
      memcpy(&a.x[(size_t)(m * KP)], x + m * K, (size_t)K * sizeof(float));
      for (int64_t g = 0; g < G; g++) {
        double s = 0;
        for (int64_t k = g * gs; k < K && k < (g + 1) * gs; k++) s += x[m * K + k];
        a.xsum[(size_t)(m * G + g)] = (float)s;
      }
    }
  });
  return a;
}

struct Int8Activations {
  std::vector<int8_t> xq;   // (M, KP) permuted per chunk of 8 (matmul.h), or (M, K) natural
  std::vector<float> xs;    // (M)
  std::vector<float> xsumq; // (M, G)
};

// Per-row symmetric int8 of row m: xs = max|x| / 127, xq = rint(x / xs); xq
// row stride `stride`, permuted per chunk of 8 when `permute`; G groups of gs.
void quantize_row_int8(Int8Activations& a, const float* x, int64_t m, int64_t K, int64_t stride, int64_t G,
                       int64_t gs, bool permute) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t k = 0; k < K; k++) {
    const float v = std::fabs(x[m * K + k]);
    finite = finite && std::isfinite(v);
    amax = v > amax ? v : amax;
  }
  // a NaN or Inf in the row: its outputs are NaN, as the fp32 path gives (and a NaN
  // must never reach the int8 conversion, which is undefined for it)
  if (!finite) {
    a.xs[(size_t)m] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float xs = amax / 127.f;
  a.xs[(size_t)m] = xs;
  if (xs == 0.f) return;  // an all-zero row: xq = 0 and y = 0
  for (int64_t k = 0; k < K; k++) {
    float q = std::nearbyint(x[m * K + k] / xs);
    q = q < -127.f ? -127.f : (q > 127.f ? 127.f : q);
    const int64_t j = k % QF_MM_KC;
    const int64_t pos = permute ? k - j + (j % 2) * 4 + j / 2 : k;
    a.xq[(size_t)(m * stride + pos)] = (int8_t)q;
    a.xsumq[(size_t)(m * G + k / gs)] += q;
  }
}

Int8Activations prepare_int8(const float* x, int64_t M, int64_t K, int64_t KP, int64_t G, int64_t gs,
                             bool permute) {
  Int8Activations a;
  const int64_t stride = permute ? KP : K;
  a.xq.assign((size_t)(M * stride), 0);
  a.xs.assign((size_t)M, 0.f);
  a.xsumq.assign((size_t)(M * G), 0.f);
  parallel_for(M, row_grain(K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) quantize_row_int8(a, x, m, K, stride, G, gs, permute);
  });
  return a;
}

Status check_y_x(const Span& y, const Span& x, int64_t M, int64_t N, int64_t K) {
  if (M <= 0) return error(Code::ShapeMismatch, "Expected a positive row count M but received " + std::to_string(M));
  // M*K and M*N must not overflow before they are compared with the lengths
  if (N <= 0 || K <= 0 || M > (int64_t(1) << 40) / K || M > (int64_t(1) << 40) / N)
    return error(Code::ShapeMismatch, "Expected M*K and M*N below 2^40 but received M=" + std::to_string(M) + ", N=" +
                                          std::to_string(N) + ", K=" + std::to_string(K));
  if (y.dtype != DType::F32 || !y.data) return error(Code::DtypeMismatch, "Expected an f32 output buffer");
  if (!x.data) return error(Code::InvalidArgument, "Expected a buffer for x but received none");
  Status st = expect("x", x.len, (size_t)(M * K));
  if (!st.ok()) return st;
  return expect("y", y.len, (size_t)(M * N));
}

std::vector<float> widen_x(const Span& x) {
  std::vector<float> out(x.len);
  const uint16_t* h = static_cast<const uint16_t*>(x.data);
  for (size_t i = 0; i < x.len; i++) out[i] = x.dtype == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  return out;
}

Status run_prepared(float* y, const float* x, int64_t M, const PreparedInt4& p, MatmulAccuracy accuracy) {
  const PackedInt4View v = p.view();
  const int64_t tiles = p.NP / QF_MM_NT, slots = scratch_slots();
  // per-slot decode panels, allocated here: nothing inside the parallel bodies allocates
  if (accuracy == MatmulAccuracy::Int8) {
    const Int8Activations a = prepare_int8(x, M, p.K, p.KP, p.G, p.group_size, true);
    const MatmulInt8Kernels& kt = matmul_int8_kernels();
    const int64_t per = M > QF_MM_GEMV_MAX_M ? matmul_int8_scratch_bytes(p.KP) : 0;
    std::vector<uint8_t> scratch((size_t)(slots * per));
    for_tile_pairs(tiles, slots, [&](int64_t s, int64_t t0, int64_t t1) {
      kt.matmul_int8(y, a.xq.data(), a.xs.data(), a.xsumq.data(), M, v, t0, t1, per ? scratch.data() + s * per : nullptr);
    });
    return Status::Ok();
  }
  const F32Activations a = prepare_f32(x, M, p.K, p.KP, p.G, p.group_size);
  const MatmulKernels& kt = matmul_kernels();
  const int64_t per = M > QF_MM_GEMV_MAX_M ? matmul_scratch_floats(p.KP) : 0;
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * per), "dequant_matmul"));
  for_tile_pairs(tiles, slots, [&](int64_t s, int64_t t0, int64_t t1) {
    kt.matmul_f32(y, a.x.data(), a.xsum.data(), M, v, t0, t1, per ? ws.data() + s * per : nullptr);
  });
  return Status::Ok();
}

// Any bits and group size: dequantize 64 rows at a time with the active quant
// tier, then multiply with the engine's fp32 GEMM.
Status run_generic(float* y, const float* x, int64_t M, const CanonicalWeight& w, const float* scales,
                   const float* zeros) {
  const int64_t N = w.N, K = w.K, G = qf_num_groups(K, w.spec.group_size);
  const int64_t rb = qf_packed_row_bytes(w.spec.bits, K);
  const int64_t tiles = (N + QF_MM_NT - 1) / QF_MM_NT, slots = scratch_slots();
  constexpr int64_t kBlockTiles = 4;
  const int64_t per = kBlockTiles * QF_MM_NT * K + kGemmPackFloats;  // (64, K) dequantized rows + GEMM packing
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * per), "dequant_matmul"));
  const QuantKernels& qk = quant_kernels();
  const EngineKernels& ek = engine_kernels();
  const uint8_t* codes = static_cast<const uint8_t*>(w.codes.data);
  for_tile_pairs(tiles, slots, [&](int64_t s, int64_t t0, int64_t t1) {
    float* wbuf = ws.data() + s * per;
    float* pack = wbuf + kBlockTiles * QF_MM_NT * K;
    for (int64_t tb = t0; tb < t1; tb += kBlockTiles) {
      const int64_t te = tb + kBlockTiles < t1 ? tb + kBlockTiles : t1;
      const int64_t r0 = tb * QF_MM_NT, r1 = te * QF_MM_NT < N ? te * QF_MM_NT : N;
      qk.dequantize(wbuf, codes + r0 * rb, scales + r0 * G, zeros ? zeros + r0 * G : nullptr, 0, r1 - r0, K, w.spec);
      // y[:, r0:r1] (M, rows) = x (M, K) . wbuf (rows, K)^T
      ek.gemm(y + r0, N, StridedMat{x, K, 1}, StridedMat{wbuf, 1, K}, M, r1 - r0, K, false, 0, r1 - r0, pack);
    }
  });
  return Status::Ok();
}

}  // namespace

PackedInt4View PreparedInt4::view() const {
  const bool h = param_dtype == DType::F16;
  return PackedInt4View{N,     K, NP, KP, G, group_size, h, codes.data(),
                        h ? (const void*)scales16.data() : (const void*)scales32.data(),
                        h ? (const void*)zeros16.data() : (const void*)zeros32.data(), symmetric};
}

bool matmul_fast_layout(int bits, int64_t K, int64_t group_size) {
  return bits == 4 && (group_size % QF_MM_KC == 0 || group_size >= K);
}

Status check_canonical(const CanonicalWeight& w) {
  Status st = check_spec(w.spec, w.N, w.K);
  if (!st.ok()) return st;
  const int64_t G = qf_num_groups(w.K, w.spec.group_size);
  if (!w.codes.data) return error(Code::InvalidArgument, "Expected a buffer for codes but received none");
  if (!(st = expect("codes", w.codes.len, (size_t)(w.N * qf_packed_row_bytes(w.spec.bits, w.K)))).ok()) return st;
  if (w.scales.dtype == DType::BF16 || !w.scales.data)
    return error(Code::DtypeMismatch, "Expected f32 or f16 scales");
  if (!(st = expect("scales", w.scales.len, (size_t)(w.N * G))).ok()) return st;
  if (!w.spec.symmetric) {
    if (!w.zeros.data) return error(Code::InvalidArgument, "Expected zeros for asymmetric quantization but received none");
    if (w.zeros.dtype != w.scales.dtype) return error(Code::DtypeMismatch, "Expected zeros and scales of the same dtype");
    if (!(st = expect("zeros", w.zeros.len, (size_t)(w.N * G))).ok()) return st;
  }
  return Status::Ok();
}

Status prepare_int4(PreparedInt4* out, const CanonicalWeight& w) {
  Status st = check_canonical(w);
  if (!st.ok()) return st;
  if (!matmul_fast_layout(w.spec.bits, w.K, w.spec.group_size))
    return error(Code::Unsupported, "The repacked layout needs INT4 with groupSize a multiple of 8 or one group per row; received bits=" +
                                        std::to_string(w.spec.bits) + ", groupSize=" + std::to_string(w.spec.group_size));
  PreparedInt4& p = *out;
  p.N = w.N; p.K = w.K;
  p.NP = round_up(w.N, QF_MM_NT);
  p.KP = round_up(w.K, QF_MM_KC);
  p.group_size = w.spec.group_size;
  p.G = qf_num_groups(w.K, w.spec.group_size);
  p.symmetric = w.spec.symmetric;
  p.param_dtype = w.scales.dtype;
  const int64_t KC = p.KP / QF_MM_KC, rb = qf_packed_row_bytes(4, w.K), G = p.G;
  p.codes.assign((size_t)(p.NP * KC), 0u);
  const bool h = p.param_dtype == DType::F16;
  const size_t np = (size_t)(p.NP * G);
  p.scales16.assign(h ? np : 0, 0);
  p.zeros16.assign(h ? np : 0, 0);
  p.scales32.assign(h ? 0 : np, 0.f);
  p.zeros32.assign(h ? 0 : np, 0.f);
  const uint8_t* src = static_cast<const uint8_t*>(w.codes.data);
  parallel_for(w.N, 256, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      const int64_t t = n / QF_MM_NT, l = n % QF_MM_NT;
      // a code word is 4 canonical bytes read little-endian: code 8c + j sits at bits 4j
      for (int64_t c = 0; c < KC; c++) {
        uint8_t b[4] = {0, 0, 0, 0};
        const int64_t avail = rb - 4 * c < 4 ? rb - 4 * c : 4;
        memcpy(b, src + n * rb + 4 * c, (size_t)avail);
        p.codes[(size_t)((t * KC + c) * QF_MM_NT + l)] =
            (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
      }
      for (int64_t g = 0; g < G; g++) {
        const size_t i = (size_t)((t * G + g) * QF_MM_NT + l), o = (size_t)(n * G + g);
        if (h) {
          p.scales16[i] = static_cast<const uint16_t*>(w.scales.data)[o];
          p.zeros16[i] = w.spec.symmetric ? f32_to_f16(8.f) : static_cast<const uint16_t*>(w.zeros.data)[o];
        } else {
          p.scales32[i] = static_cast<const float*>(w.scales.data)[o];
          p.zeros32[i] = w.spec.symmetric ? 8.f : static_cast<const float*>(w.zeros.data)[o];
        }
      }
    }
  });
  return Status::Ok();
}

Status unprepare_int4(const PreparedInt4& p, Span codes, Span scales, Span zeros) {
  const int64_t rb = qf_packed_row_bytes(4, p.K), KC = p.KP / QF_MM_KC, G = p.G;
  Status st = expect("codes", codes.len, (size_t)(p.N * rb));
  if (!st.ok()) return st;
  if (!(st = expect("scales", scales.len, (size_t)(p.N * G))).ok()) return st;
  if (!p.symmetric && !(st = expect("zeros", zeros.len, (size_t)(p.N * G))).ok()) return st;
  if (scales.dtype != p.param_dtype || (!p.symmetric && zeros.dtype != p.param_dtype))
    return error(Code::DtypeMismatch, std::string("Expected ") + dtype_name(p.param_dtype) + " scales and zeros");
  if (!codes.data || !scales.data || (!p.symmetric && !zeros.data))
    return error(Code::InvalidArgument, "Expected output buffers for codes, scales and zeros but received none");
  uint8_t* dst = static_cast<uint8_t*>(codes.data);
  for (int64_t n = 0; n < p.N; n++) {
    const int64_t t = n / QF_MM_NT, l = n % QF_MM_NT;
    for (int64_t c = 0; c < KC; c++) {
      const uint32_t word = p.codes[(size_t)((t * KC + c) * QF_MM_NT + l)];
      for (int64_t i = 0; i < 4 && 4 * c + i < rb; i++) dst[n * rb + 4 * c + i] = (uint8_t)(word >> (8 * i));
    }
    for (int64_t g = 0; g < G; g++) {
      const size_t i = (size_t)((t * G + g) * QF_MM_NT + l), o = (size_t)(n * G + g);
      if (p.param_dtype == DType::F32) {
        static_cast<float*>(scales.data)[o] = p.scales32[i];
        if (!p.symmetric) static_cast<float*>(zeros.data)[o] = p.zeros32[i];
      } else {
        static_cast<uint16_t*>(scales.data)[o] = p.scales16[i];
        if (!p.symmetric) static_cast<uint16_t*>(zeros.data)[o] = p.zeros16[i];
      }
    }
  }
  return Status::Ok();
}

Status dequant_matmul(Span y, Span x, int64_t M, const CanonicalWeight* canon, const PreparedInt4* prep,
                      MatmulAccuracy accuracy) {
  if (!canon && !prep) return error(Code::InvalidArgument, "Expected a weight but received none");
  const int64_t N = prep ? prep->N : canon->N, K = prep ? prep->K : canon->K;
  Status st;
  if (canon && !(st = check_canonical(*canon)).ok()) return st;
  if (canon && prep && (canon->N != prep->N || canon->K != prep->K))
    return error(Code::ShapeMismatch, "Prepared weight [" + std::to_string(prep->N) + ", " + std::to_string(prep->K) +
                                          "] does not match [" + std::to_string(canon->N) + ", " + std::to_string(canon->K) + "]");
  if (!(st = check_y_x(y, x, M, N, K)).ok()) return st;
  std::vector<float> wide;
  const float* xf = static_cast<const float*>(x.data);
  if (x.dtype != DType::F32) { wide = widen_x(x); xf = wide.data(); }
  float* yf = static_cast<float*>(y.data);

  const bool ref = active_tier() == Tier::Ref;
  if (prep) return run_prepared(yf, xf, M, *prep, accuracy);
  const bool fast = matmul_fast_layout(canon->spec.bits, K, canon->spec.group_size);
  if (fast && !ref) {
    PreparedInt4 tmp;
    if (!(st = prepare_int4(&tmp, *canon)).ok()) return st;
    return run_prepared(yf, xf, M, tmp, accuracy);
  }
  // canonical paths: the references, or the generic one for other formats
  std::vector<float> s32 = widen_params(canon->scales), z32;
  if (!canon->spec.symmetric) z32 = widen_params(canon->zeros);
  const float* zp = canon->spec.symmetric ? nullptr : z32.data();
  const uint8_t* codes = static_cast<const uint8_t*>(canon->codes.data);
  const QuantSpec& sp = canon->spec;
  if (accuracy == MatmulAccuracy::Int8) {
    const Int8Activations a = prepare_int8(xf, M, K, K, qf_num_groups(K, sp.group_size), sp.group_size, false);
    parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      dequant_matmul_int8_ref(yf, a.xq.data(), a.xs.data(), M, codes, s32.data(), zp, N, K, sp.bits, sp.group_size,
                              sp.symmetric, n0, n1);
    });
    return Status::Ok();
  }
  if (ref) {
    parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      dequant_matmul_ref(yf, xf, M, codes, s32.data(), zp, N, K, sp.bits, sp.group_size, sp.symmetric, n0, n1);
    });
    return Status::Ok();
  }
  return run_generic(yf, xf, M, *canon, s32.data(), zp);
}

Status sgemm_nt(Span y, Span x, Span w, int64_t M, int64_t N, int64_t K) {
  if (N <= 0 || K <= 0 || N > (int64_t(1) << 40) / K) return error(Code::ShapeMismatch, "Expected positive N and K with N*K below 2^40");
  if (!w.data) return error(Code::InvalidArgument, "Expected a buffer for w but received none");
  Status st = check_y_x(y, x, M, N, K);
  if (!st.ok()) return st;
  if (w.dtype != DType::F32) return error(Code::DtypeMismatch, "Expected f32 weights");
  if (!(st = expect("w", w.len, (size_t)(N * K))).ok()) return st;
  if (x.dtype != DType::F32) return error(Code::DtypeMismatch, "Expected f32 x");
  const int64_t slots = scratch_slots();
  const StridedMat a{static_cast<const float*>(x.data), K, 1}, b{static_cast<const float*>(w.data), 1, K};
  Workspace ws;
  QF_TRY(ws.reserve((size_t)(slots * gemm_pack_floats(M, a, b)), "sgemm"));
  gemm_run(static_cast<float*>(y.data), N, a, b, M, N, K, false, ws.data(), slots);
  return Status::Ok();
}

}  // namespace qf
