#include "quantform/quant_ops.h"

#include <string>
#include <vector>

#include <algorithm>

#include "quantform/convert.h"
#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

// Rows per parallel chunk: at least ~16K elements of work per task.
int64_t row_grain(int64_t K) { return K >= 16384 ? 1 : 16384 / K; }

Status expect_len(const char* name, const Span& s, size_t want, DType dtype) {
  if (s.dtype != dtype)
    return error(Code::DtypeMismatch, std::string("Expected ") + dtype_name(dtype) + " for " + name +
                                          " but received " + dtype_name(s.dtype));
  if (s.data == nullptr && want > 0)
    return error(Code::InvalidArgument, std::string("Expected a buffer for ") + name + " but received none");
  if (s.len != want)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name +
                                          " but received " + std::to_string(s.len));
  return Status::Ok();
}

bool params_f16(const Span& scales) { return scales.dtype == DType::F16; }

// f16/bf16 parameters are widened to f32 for the kernels.
std::vector<float> widen(const Span& s) {
  std::vector<float> out(s.len);
  const uint16_t* h = static_cast<const uint16_t*>(s.data);
  for (size_t i = 0; i < s.len; i++)
    out[i] = s.dtype == DType::F16 ? f16_to_f32(h[i]) : (s.dtype == DType::BF16 ? bf16_to_f32(h[i]) : 0.f);
  return out;
}

Status check_params(const char* name, const Span& s, size_t want) {
  if (s.dtype == DType::BF16)
    return error(Code::DtypeMismatch, std::string("Expected f32 or f16 for ") + name + " but received bf16");
  return expect_len(name, s, want, s.dtype);
}

}  // namespace

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
  }
  return "?";
}

size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

Status check_spec(const QuantSpec& spec, int64_t N, int64_t K) {
  if (!qf_bits_supported(spec.bits))
    return error(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} but received " + std::to_string(spec.bits));
  if (N <= 0 || K <= 0)
    return error(Code::ShapeMismatch,
                 "Expected a non-empty [N, K] matrix but received [" + std::to_string(N) + ", " + std::to_string(K) + "]");
  if (N > (int64_t(1) << 40) / K)
    return error(Code::ShapeMismatch, "Matrix [" + std::to_string(N) + ", " + std::to_string(K) + "] is too large");
  if (spec.group_size <= 0 || spec.group_size > K)
    return error(Code::InvalidArgument, "Expected groupSize in [1, " + std::to_string(K) + "] but received " +
                                            std::to_string(spec.group_size));
  if (!(spec.clip_norm >= 0.f && spec.clip_norm <= 16.f))
    return error(Code::InvalidArgument, "Expected clipNorm in [0, 16] (0: no clipping search) but received " + std::to_string(spec.clip_norm));
  return Status::Ok();
}

Status quantize(Span codes, Span scales, Span zeros, Span w, int64_t N, int64_t K, const QuantSpec& spec_in) {
  QuantSpec spec = spec_in;
  Status st = check_spec(spec, N, K);
  if (!st.ok()) return st;
  const int64_t G = qf_num_groups(K, spec.group_size);
  if (codes.len != (size_t)(N * qf_packed_row_bytes(spec.bits, K)) || !codes.data)
    return error(Code::ShapeMismatch, "Expected " + std::to_string(N * qf_packed_row_bytes(spec.bits, K)) +
                                          " bytes for codes but received " + std::to_string(codes.len));
  if (!(st = check_params("scales", scales, (size_t)(N * G))).ok()) return st;
  if (!spec.symmetric) {
    if (!(st = check_params("zeros", zeros, (size_t)(N * G))).ok()) return st;
    if (zeros.dtype != scales.dtype) return error(Code::DtypeMismatch, "Expected zeros and scales of the same dtype");
  }
  if (!(st = expect_len("w", w, (size_t)(N * K), w.dtype)).ok()) return st;
  spec.f16_params = params_f16(scales);

  std::vector<float> s32, z32;
  float* sp = static_cast<float*>(scales.data);
  float* zp = static_cast<float*>(zeros.data);
  if (spec.f16_params) {
    s32.resize((size_t)(N * G)); sp = s32.data();
    if (!spec.symmetric) { z32.resize((size_t)(N * G)); zp = z32.data(); }
  }
  const QuantKernels& kt = quant_kernels();
  // one slot per chunk, sized here: the parallel bodies only store into it
  const int64_t slots = scratch_slots();
  std::vector<int64_t> bad_rows((size_t)slots, -1);
  // f16 / bf16 weights (a checkpoint's own bytes) widen a few rows at a time into per-slot
  // scratch that stays in cache: no second copy of the matrix, no single-threaded pass
  const bool half = w.dtype != DType::F32;
  const int64_t sub = half ? std::max<int64_t>(1, 16384 / K) : 0;  // rows widened at once (~64 KB)
  std::vector<float> wide((size_t)(slots * sub * K));              // (slots, sub, K)
  const ConvertKernels& cv = convert_kernels();
  uint8_t* cp = static_cast<uint8_t*>(codes.data);
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  parallel_slots(N, row_grain(K), slots, [&](int64_t s, int64_t r0, int64_t r1) {
    if (!half) {
      bad_rows[(size_t)s] = kt.quantize(cp, sp, zp, static_cast<const float*>(w.data), r0, r1, K, spec);
      return;
    }
    float* buf = wide.data() + s * sub * K;
    const uint16_t* h = static_cast<const uint16_t*>(w.data);
    for (int64_t r = r0; r < r1; r += sub) {
      const int64_t n = std::min(sub, r1 - r);
      if (w.dtype == DType::F16) cv.f16_to_f32(buf, h + r * K, n * K);
      else cv.bf16_to_f32(buf, h + r * K, n * K);
      const int64_t bad = kt.quantize(cp + r * rb, sp + r * G, zp ? zp + r * G : nullptr, buf, 0, n, K, spec);
      if (bad >= 0) {
        bad_rows[(size_t)s] = r + bad;
        return;
      }
    }
  });
  int64_t first = -1;
  for (int64_t b : bad_rows)
    if (b >= 0 && (first < 0 || b < first)) first = b;
  if (first >= 0) return error(Code::NonFinite, "Expected finite weights but row " + std::to_string(first) + " holds NaN or Inf");
  if (spec.f16_params) {
    uint16_t* sh = static_cast<uint16_t*>(scales.data);
    for (size_t i = 0; i < s32.size(); i++) sh[i] = f32_to_f16(s32[i]);
    if (!spec.symmetric) {
      uint16_t* zh = static_cast<uint16_t*>(zeros.data);
      for (size_t i = 0; i < z32.size(); i++) zh[i] = f32_to_f16(z32[i]);
    }
  }
  return Status::Ok();
}

namespace {
// Shared checks of pack/unpack: a packed buffer and a one-code-per-byte buffer of [N, K].
Status check_pack_args(const Span& codes, const Span& codes8, int64_t N, int64_t K, int bits) {
  Status st = check_spec(QuantSpec{bits, 1, true, false}, N, K);
  if (!st.ok()) return st;
  const size_t rb = (size_t)qf_packed_row_bytes(bits, K);
  if (codes.len != N * rb || !codes.data)
    return error(Code::ShapeMismatch, "Expected " + std::to_string(N * rb) + " bytes for codes but received " +
                                          std::to_string(codes.len));
  if (codes8.len != (size_t)(N * K) || !codes8.data)
    return error(Code::ShapeMismatch, "Expected " + std::to_string(N * K) + " codes but received " +
                                          std::to_string(codes8.len));
  return Status::Ok();
}
}  // namespace

Status pack(Span codes, Span codes8, int64_t N, int64_t K, int bits) {
  Status st = check_pack_args(codes, codes8, N, K, bits);
  if (!st.ok()) return st;
  const uint8_t* c8 = static_cast<const uint8_t*>(codes8.data);
  const unsigned qmax = (1u << bits) - 1;
  for (size_t i = 0; i < codes8.len; i++)
    if (c8[i] > qmax)
      return error(Code::InvalidArgument, "Expected codes in [0, " + std::to_string(qmax) + "] but code " +
                                              std::to_string(i) + " is " + std::to_string(c8[i]));
  const QuantKernels& kt = quant_kernels();
  parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
    kt.pack(static_cast<uint8_t*>(codes.data), c8, r0, r1, K, bits);
  });
  return Status::Ok();
}

Status unpack(Span codes8, Span codes, int64_t N, int64_t K, int bits) {
  Status st = check_pack_args(codes, codes8, N, K, bits);
  if (!st.ok()) return st;
  const QuantKernels& kt = quant_kernels();
  parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
    kt.unpack(static_cast<uint8_t*>(codes8.data), static_cast<const uint8_t*>(codes.data), r0, r1, K, bits);
  });
  return Status::Ok();
}

Status dequantize(Span w, Span codes, Span scales, Span zeros, int64_t N, int64_t K, const QuantSpec& spec) {
  Status st = check_spec(spec, N, K);
  if (!st.ok()) return st;
  const int64_t G = qf_num_groups(K, spec.group_size);
  const size_t rb = (size_t)qf_packed_row_bytes(spec.bits, K);
  if (codes.len != N * rb || !codes.data)
    return error(Code::ShapeMismatch, "Expected " + std::to_string(N * rb) + " bytes for codes but received " +
                                          std::to_string(codes.len));
  if (!(st = check_params("scales", scales, (size_t)(N * G))).ok()) return st;
  if (!spec.symmetric && !(st = check_params("zeros", zeros, (size_t)(N * G))).ok()) return st;
  if (!(st = expect_len("output", w, (size_t)(N * K), w.dtype)).ok()) return st;
  std::vector<float> s32, z32;
  const float* sp = static_cast<const float*>(scales.data);
  const float* zp = static_cast<const float*>(zeros.data);
  if (scales.dtype == DType::F16) { s32 = widen(scales); sp = s32.data(); }
  if (!spec.symmetric && zeros.dtype == DType::F16) { z32 = widen(zeros); zp = z32.data(); }
  const QuantKernels& kt = quant_kernels();
  if (w.dtype == DType::F32) {
    parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
      kt.dequantize(static_cast<float*>(w.data), static_cast<const uint8_t*>(codes.data), sp, zp, r0, r1, K, spec);
    });
    return Status::Ok();
  }
  const int64_t slots = scratch_slots();
  std::vector<float> rows((size_t)(slots * K));  // (slots, K): one f32 row per chunk, allocated here
  parallel_slots(N, row_grain(K), slots, [&](int64_t s, int64_t r0, int64_t r1) {
    float* row = rows.data() + s * K;
    uint16_t* out = static_cast<uint16_t*>(w.data);
    for (int64_t r = r0; r < r1; r++) {
      // the kernel writes row r at offset r*K: shift the base so it lands in `row`
      kt.dequantize(row - r * K, static_cast<const uint8_t*>(codes.data), sp, zp, r, r + 1, K, spec);
      for (int64_t k = 0; k < K; k++) out[r * K + k] = w.dtype == DType::F16 ? f32_to_f16(row[k]) : f32_to_bf16(row[k]);
    }
  });
  return Status::Ok();
}

namespace {
Status check_fake_quant(const Span& w, const Span& scales, const Span& zeros, int64_t N, int64_t K,
                        const QuantSpec& spec) {
  Status st = check_spec(spec, N, K);
  if (!st.ok()) return st;
  const int64_t G = qf_num_groups(K, spec.group_size);
  if (!(st = expect_len("w", w, (size_t)(N * K), DType::F32)).ok()) return st;
  if (!(st = expect_len("scales", scales, (size_t)(N * G), DType::F32)).ok()) return st;
  if (!spec.symmetric && !(st = expect_len("zeros", zeros, (size_t)(N * G), DType::F32)).ok()) return st;
  return Status::Ok();
}
}  // namespace

Status fake_quant_forward(Span out, Span w, Span scales, Span zeros, int64_t N, int64_t K, const QuantSpec& spec) {
  Status st = check_fake_quant(w, scales, zeros, N, K, spec);
  if (!st.ok()) return st;
  if (!(st = expect_len("output", out, (size_t)(N * K), DType::F32)).ok()) return st;
  const QuantKernels& kt = quant_kernels();
  parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
    kt.fake_quant_forward(static_cast<float*>(out.data), static_cast<const float*>(w.data),
                          static_cast<const float*>(scales.data), static_cast<const float*>(zeros.data), r0, r1, K,
                          spec);
  });
  return Status::Ok();
}

Status fake_quant_backward(Span dw, Span ds, Span dz, Span g, Span w, Span scales, Span zeros, int64_t N,
                           int64_t K, const QuantSpec& spec) {
  Status st = check_fake_quant(w, scales, zeros, N, K, spec);
  if (!st.ok()) return st;
  const int64_t G = qf_num_groups(K, spec.group_size);
  if (!(st = expect_len("gradOutput", g, (size_t)(N * K), DType::F32)).ok()) return st;
  if (!(st = expect_len("gradW", dw, (size_t)(N * K), DType::F32)).ok()) return st;
  if (!(st = expect_len("gradScales", ds, (size_t)(N * G), DType::F32)).ok()) return st;
  if (!spec.symmetric && !(st = expect_len("gradZeros", dz, (size_t)(N * G), DType::F32)).ok()) return st;
  const QuantKernels& kt = quant_kernels();
  parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
    kt.fake_quant_backward(static_cast<float*>(dw.data), static_cast<float*>(ds.data), static_cast<float*>(dz.data),
                           static_cast<const float*>(g.data), static_cast<const float*>(w.data),
                           static_cast<const float*>(scales.data), static_cast<const float*>(zeros.data), r0, r1, K,
                           spec);
  });
  return Status::Ok();
}

}  // namespace qf
