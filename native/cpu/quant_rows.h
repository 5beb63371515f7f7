// Row drivers shared by the SIMD quantization variants (cpu/avx2, cpu/avx512).
// Everything here sits in an anonymous namespace: each ISA file that includes it
// compiles its own private copy with its own flags (internal linkage), so no
// AVX-512 instance can be picked by the linker for generic code
// (test/isa-hygiene.test.ts checks the objects).
//
// `Isa` supplies the vector pieces as static functions:
//   row_finite(w, K)                     -> false if w[0, K) holds NaN/Inf
//   group_minmax(w, k0, k1, &lo, &hi)    -> min/max of w[k0, k1) with 0 included
//   quantize_span(c8, w, k0, k1, p)      -> codes of w[k0, k1) into c8[0 ..)
//   pack_chunk(row, c8, k0, n, bits)     -> n codes into row positions k0.. (k0 % 64 == 0)
//   unpack_chunk(c8, row, k0, n, bits)   -> the inverse
#pragma once
#include <cstring>

#include "../ref/quant_common.h"

namespace qf {
namespace {

constexpr int64_t kChunk = 2048;  // positions per chunk; a multiple of 64 keeps packing aligned

template <class Isa>
int64_t quantize_rows(uint8_t* codes, float* scales, float* zeros, const float* w, int64_t r0, int64_t r1,
                      int64_t K, const QuantSpec& spec) {
  const int64_t G = qf_num_groups(K, spec.group_size), gs = spec.group_size;
  const int64_t rb = qf_packed_row_bytes(spec.bits, K);
  alignas(64) uint8_t c8[kChunk];  // (kChunk) codes of one chunk, one per byte
  for (int64_t r = r0; r < r1; r++) {
    const float* wr = w + r * K;
    uint8_t* row = codes + r * rb;
    if (!Isa::row_finite(wr, K)) return r;
    memset(row, 0, (size_t)rb);
    for (int64_t g = 0; g < G; g++) {
      float lo, hi;
      Isa::group_minmax(wr, g * gs, g * gs + gs < K ? g * gs + gs : K, &lo, &hi);
      const GroupParams p = choose_group_params(lo, hi, spec);
      scales[r * G + g] = p.scale;
      if (!spec.symmetric) zeros[r * G + g] = p.zero;
    }
    // codes chunk by chunk: the row's weights are still in cache from the pass above
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
      const int64_t c1 = c0 + kChunk < K ? c0 + kChunk : K;
      for (int64_t k = c0; k < c1;) {
        const int64_t g = k / gs;
        const int64_t e = (g + 1) * gs < c1 ? (g + 1) * gs : c1;
        GroupParams p;
        p.scale = scales[r * G + g];
        p.zero = spec.symmetric ? (float)(1 << (spec.bits - 1)) : zeros[r * G + g];
        p.qmax = (1 << spec.bits) - 1;
        Isa::quantize_span(c8 + (k - c0), wr, k, e, p);
        k = e;
      }
      Isa::pack_chunk(row, c8, c0, c1 - c0, spec.bits);
    }
  }
  return -1;
}

template <class Isa>
void pack_rows(uint8_t* codes, const uint8_t* codes8, int64_t r0, int64_t r1, int64_t K, int bits) {
  const int64_t rb = qf_packed_row_bytes(bits, K);
  for (int64_t r = r0; r < r1; r++) {
    memset(codes + r * rb, 0, (size_t)rb);
    for (int64_t c0 = 0; c0 < K; c0 += kChunk)
      Isa::pack_chunk(codes + r * rb, codes8 + r * K + c0, c0, (c0 + kChunk < K ? kChunk : K - c0), bits);
  }
}

template <class Isa>
void unpack_rows(uint8_t* codes8, const uint8_t* codes, int64_t r0, int64_t r1, int64_t K, int bits) {
  const int64_t rb = qf_packed_row_bytes(bits, K);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t c0 = 0; c0 < K; c0 += kChunk)
      Isa::unpack_chunk(codes8 + r * K + c0, codes + r * rb, c0, (c0 + kChunk < K ? kChunk : K - c0), bits);
}

}  // namespace
}  // namespace qf
