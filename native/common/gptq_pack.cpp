// The GPTQ checkpoint layout (AutoGPTQ / GPTQModel; written out in lib/export/gptq.ts)
// from the canonical packed weight (formats.h). A canonical row is a little-endian bit
// stream with code k at bit b*k, and so is a GPTQ qweight column (in 32-bit words), so
// packing is a transpose of words with the row zero-padded to whole words: no code is
// decoded. The TS packGptq (lib/export/gptq.ts, checked against the GPTQ tools' own
// logic) is the reference these outputs are tested against bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/numeric.h"
#include "quantform/quant_ops.h"
#include "quantform/threadpool.h"

namespace qf {
namespace {

// Columns of qweight transposed per task: 64 rows of words stay in L2 (64 x 1376 words at K = 11008, 4 bits).
constexpr int64_t kPackTile = 64;

// bits [pos, pos + bits) of the little-endian word stream `row` <- value
void set_bits(int32_t* row, int64_t pos, uint32_t value, int bits) {
  uint32_t* w = reinterpret_cast<uint32_t*>(row);
  const int64_t i = pos >> 5;
  const int o = (int)(pos & 31);
  w[i] |= value << o;
  if (o + bits > 32) w[i + 1] |= value >> (32 - o);
}

Status need(const char* name, size_t got, int64_t want) {
  if (got != (size_t)want)
    return error(Code::ShapeMismatch, std::string("Expected ") + std::to_string(want) + " elements for " + name + " but received " + std::to_string(got));
  return Status::Ok();
}

}  // namespace

Status gptq_pack(const GptqPackOut& out, const uint8_t* codes, size_t codes_len, const uint16_t* scales, size_t scales_len,
                 const uint16_t* zeros, size_t zeros_len, int64_t N, int64_t K, const QuantSpec& spec, bool v1) {
  QF_TRY(check_spec(spec, N, K));
  const int bits = spec.bits;
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(bits, K);
  const int64_t W = (K * bits + 31) / 32, ZC = (N * bits + 31) / 32;
  QF_TRY(need("codes", codes_len, N * rb));
  QF_TRY(need("scales", scales_len, N * G));
  QF_TRY(need("zeros", zeros_len, spec.symmetric ? 0 : N * G));
  QF_TRY(need("qweight", out.qweight_len, W * N));
  QF_TRY(need("qzeros", out.qzeros_len, G * ZC));
  QF_TRY(need("scalesOut", out.scales_len, G * N));
  if (!codes || !scales || !out.qweight || !out.qzeros || !out.scales || (!spec.symmetric && !zeros))
    return error(Code::InvalidArgument, "Expected every GPTQ pack buffer but received a null one");
  if (bits == 8 && v1) return error(Code::Unsupported, "8-bit v1 zero points overflow: use gptq_v2");
  const uint32_t mask = (1u << bits) - 1;
  // zero points first: they are the only input that can be refused (non-integers, out of range)
  std::vector<uint32_t> zstored((size_t)(spec.symmetric ? 0 : N * G));  // (N, G) as stored: v1 z - 1, v2 z
  for (size_t i = 0; i < zstored.size(); i++) {
    const float z = f16_to_f32(zeros[i]);
    if (!(z >= 0.f && z <= (float)mask) || z != std::floor(z))
      return error(Code::InvalidArgument, "Expected integer zero points in [0, " + std::to_string(mask) + "] but zeros[" +
                                              std::to_string(i) + "] is " + std::to_string(z));
    zstored[i] = v1 ? (uint32_t)((int32_t)z - 1) & mask : (uint32_t)z;
  }
  const uint32_t zsym = v1 ? ((1u << (bits - 1)) - 1) & mask : 1u << (bits - 1);

  // qweight (W, N): column n is row n's bytes, zero-padded to W words, the bits past K codes cleared
  const int64_t nbytes = (K * bits + 7) / 8;
  const int tail = (int)((K * bits) & 7);
  const int64_t tiles = (N + kPackTile - 1) / kPackTile, slots = scratch_slots();
  std::vector<uint32_t> scratch((size_t)(slots * kPackTile * W));  // (slots, tile rows, W) per-task tiles
  parallel_slots(tiles, 1, slots, [&](int64_t s, int64_t t0, int64_t t1) {
    uint32_t* tile = scratch.data() + s * kPackTile * W;
    for (int64_t t = t0; t < t1; t++) {
      const int64_t n0 = t * kPackTile, n1 = std::min(N, n0 + kPackTile);
      for (int64_t n = n0; n < n1; n++) {
        uint8_t* col = reinterpret_cast<uint8_t*>(tile + (n - n0) * W);
        std::memset(col, 0, (size_t)(W * 4));
        std::memcpy(col, codes + n * rb, (size_t)nbytes);
        if (tail) col[nbytes - 1] &= (uint8_t)((1u << tail) - 1);
      }
      for (int64_t w = 0; w < W; w++) {
        int32_t* dst = out.qweight + w * N;
        for (int64_t n = n0; n < n1; n++) dst[n] = (int32_t)tile[(n - n0) * W + w];
      }
    }
  });
  // qzeros (G, ZC): row g is the stream of group g's zero points along N; scales (G, N) transposed
  parallel_for(G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; g++) {
      int32_t* row = out.qzeros + g * ZC;
      std::memset(row, 0, (size_t)(ZC * 4));
      for (int64_t n = 0; n < N; n++) {
        set_bits(row, n * bits, spec.symmetric ? zsym : zstored[(size_t)(n * G + g)], bits);
        out.scales[g * N + n] = scales[n * G + g];
      }
    }
  });
  return Status::Ok();
}

}  // namespace qf
