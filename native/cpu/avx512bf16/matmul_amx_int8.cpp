// AMX int8 dequant-matmul, int8 accuracy (algorithm and xq layout: matmul.h). TDPBSUD multiplies
// the signed int8 activations (A tiles, rows of xq as they are) by the unsigned 4-bit codes as u8
// (B tiles) and sums into int32 exactly, 16 x 16 outputs x 64 k per instruction, so the integer
// sums are the VNNI kernel's and the fp32 epilogue below repeats its operations in its order: the
// two kernels agree bit for bit. Called only when cpuid reports AMX-INT8 and Linux grants the tile
// state (dispatch.cpp). GEMV-sized calls and groups under 128 k go to the VNNI kernel: every group
// ends in a store of the int32 tiles and an fp32 pass over the block, which at 32 or 64 k per group
// costs more than the tiles save (M = 512, N = 5632, K = 2048, g32: AMX 126 vs VNNI 165 GOP/s;
// g128: 296 vs 213; per channel 434 vs 261, loaded machine).
#include <immintrin.h>

#include <cstring>

#include "amx_tiles.h"
#include "quantform/matmul.h"

namespace qf {
namespace {

__mmask16 lanes_below(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }

// Panel of tile t: per chunk c of 8 k, two B-tile rows of 64 bytes (16 columns x 4 k): the low
// nibbles of the column's code word (its even k, positions 0-3 of xq's permuted chunk), then the
// high nibbles (odd k, positions 4-7). Rows of one k-step are contiguous: a 64-k step is 16 rows
// (1 KB) at offset 1024 s, a 32-k step 8 rows at 512 s. Chunks past KC, and tiles past NP, are 0.
void build_tile_panel(uint8_t* panel, const PackedInt4View& w, int64_t t, int64_t KSP) {
  const int64_t KC = w.KP / QF_MM_KC, tiles = w.NP / QF_MM_NT, chunks = KSP / QF_MM_KC;
  const __m512i low4 = _mm512_set1_epi32(0x0f0f0f0f);
  for (int64_t c = 0; c < chunks; c++) {
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
    if (t < tiles && c < KC) {
      const __m512i v = _mm512_loadu_si512(w.codes + (t * KC + c) * QF_MM_NT);
      lo = _mm512_and_si512(v, low4);
      hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
    }
    _mm512_storeu_si512(panel + c * 128, lo);
    _mm512_storeu_si512(panel + c * 128 + 64, hi);
  }
}

// s and s*z of tile t, group g: one lane per output row (the VNNI kernel's tile_params).
void tile_params(const PackedInt4View& w, int64_t t, int64_t g, __m512* s, __m512* sz) {
  const int64_t o = (t * w.G + g) * QF_MM_NT;
  __m512 z;
  if (w.f16_params) {
    *s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.scales) + o)));
    z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.zeros) + o)));
  } else {
    *s = _mm512_loadu_ps(static_cast<const float*>(w.scales) + o);
    z = _mm512_loadu_ps(static_cast<const float*>(w.zeros) + o);
  }
  *sz = _mm512_mul_ps(*s, z);
}

constexpr int64_t kStepK = 64;
// k-steps per pass over the P pairs: the packed A chunk (16 KB) stays in L1 while every pair's B
// chunk streams through from L2, and each pair's int32 sums wait in cacc between chunks. One core
// of the shared 2-vCPU VM, M = 512, N = 5632, K = 2048 per channel, outside the addon: 760 GOP/s
// with strided A tiles and no chunks, 870-1050 packed and chunked (4 to 32 steps within noise),
// against a TDPBSUD peak of about 7,000 and 1,800-2,100 for tile loads streaming B from L2 alone:
// one operand always comes from L2 with 2 x 2 tiles, and that bounds the kernel here.
constexpr int64_t kChunkSteps = 8;

// apack (KSP / 64 steps, 2 halves, 16 rows, 64 bytes): rows [m0, m0 + rows) of xq, one contiguous
// 1 KB A tile per step and half; k past KP and rows past `rows` zero (no tile load leaves it).
void pack_a(int8_t* apack, const int8_t* xq, int64_t KP, int64_t KSP, int64_t rows) {
  const int64_t steps = KSP / kStepK;
  for (int64_t m = 0; m < 32; m++)
    for (int64_t s = 0; s < steps; s++) {
      const int64_t k0 = s * kStepK, left = m < rows ? KP - k0 : 0;
      const __mmask64 keep = left >= 64 ? ~(__mmask64)0 : left <= 0 ? (__mmask64)0 : (((__mmask64)1 << left) - 1);
      _mm512_storeu_si512(apack + (s * 2 + m / 16) * 1024 + (m % 16) * 64, _mm512_maskz_loadu_epi8(keep, xq + m * KP + k0));
    }
}

// facc (32, 32) of one pair: += s (C - z xsum) for group g (VNNI's epilogue, in its order).
void group_epilogue(float* facc, const int32_t* cbuf, const PackedInt4View& w, int64_t t, int64_t ntiles, int64_t g,
                    int64_t rows, const float* xsumq) {
  for (int64_t h = 0; h < ntiles; h++) {
    __m512 sc, sz;
    tile_params(w, t + h, g, &sc, &sz);
    for (int64_t m = 0; m < rows; m++) {
      float* f = facc + m * 32 + 16 * h;
      const __m512 prev = g == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(f);
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + m * 32 + 16 * h)), sc, prev);
      v = _mm512_fnmadd_ps(sz, _mm512_set1_ps(xsumq[m * w.G + g]), v);
      _mm512_storeu_ps(f, v);
    }
  }
}

// Tiles 0-3: a 32 x 32 block of int32 sums (2 x 2 tiles of 16 x 16); 4-5: two 16-row A tiles
// (64 k each); 6-7: the pair's two B tiles (16 rows of 64 bytes).
void matmul_amx(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M, const PackedInt4View& w,
                int64_t t0, int64_t t1, uint8_t* scratch) {
  const int64_t KSP = matmul_amx_int8_ksp(w.KP), P = matmul_amx_int8_pairs(w.KP), per_tile = 16 * KSP;
  const int64_t KC = w.KP / QF_MM_KC;
  uint8_t* panels = scratch;                                         // (2 P tiles, KSP / 8 chunks, 2, 64)
  int8_t* apack = reinterpret_cast<int8_t*>(panels + 2 * P * per_tile);  // (KSP / 64, 2, 16, 64)
  int32_t* cacc = reinterpret_cast<int32_t*>(apack + 32 * KSP);          // (P, 32, 32) sums between chunks
  int32_t* cbuf = cacc + P * 1024;                                       // (32, 32) a finished group's sums
  float* facc = reinterpret_cast<float*>(cbuf + 1024);                   // (P, 32, 32)
  AmxTileConfig cfg;
  for (int i = 0; i < 8; i++) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  for (int64_t tp = t0; tp < t1; tp += 2 * P) {
    const int64_t te = tp + 2 * P < t1 ? tp + 2 * P : t1, np = (te - tp + 1) / 2;
    for (int64_t t = tp; t < te; t++) build_tile_panel(panels + (t - tp) * per_tile, w, t, KSP);
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      const int64_t rows = M - m0 < 32 ? M - m0 : 32;
      pack_a(apack, xq + m0 * w.KP, w.KP, KSP, rows);
      const float* xsb = xsumq + m0 * w.G;
      for (int64_t g = 0; g < w.G; g++) {
        // k-steps [s0, s1) of group g; with G > 1 the group size is a multiple of 128, so groups
        // start and end on steps (the last one at KP, padded with zero codes)
        const int64_t c0 = g * w.group_size / QF_MM_KC, c1 = g == w.G - 1 ? KC : (g + 1) * w.group_size / QF_MM_KC;
        const int64_t s0 = c0 * QF_MM_KC / kStepK, s1 = (c1 * QF_MM_KC + kStepK - 1) / kStepK;
        for (int64_t k0 = s0; k0 < s1; k0 += kChunkSteps) {
          const int64_t k1 = k0 + kChunkSteps < s1 ? k0 + kChunkSteps : s1;
          for (int64_t p = 0; p < np; p++) {
            const int64_t t = tp + 2 * p;
            const uint8_t* b0 = panels + 2 * p * per_tile;
            // a lone last tile multiplies its panel twice and stores only its own half
            const uint8_t* b1 = t + 1 < te ? b0 + per_tile : b0;
            int32_t* cp = cacc + p * 1024;
            if (k0 == s0) {
              _tile_zero(0);
              _tile_zero(1);
              _tile_zero(2);
              _tile_zero(3);
            } else {
              _tile_loadd(0, cp, 128);
              _tile_loadd(1, cp + 16, 128);
              _tile_loadd(2, cp + 512, 128);
              _tile_loadd(3, cp + 528, 128);
            }
            for (int64_t s = k0; s < k1; s++) {
              _tile_loadd(4, apack + s * 2048, 64);
              _tile_loadd(5, apack + s * 2048 + 1024, 64);
              _tile_loadd(6, b0 + s * 1024, 64);
              _tile_loadd(7, b1 + s * 1024, 64);
              _tile_dpbsud(0, 4, 6);
              _tile_dpbsud(1, 4, 7);
              _tile_dpbsud(2, 5, 6);
              _tile_dpbsud(3, 5, 7);
            }
            int32_t* dst = k1 == s1 ? cbuf : cp;
            _tile_stored(0, dst, 128);
            _tile_stored(1, dst + 16, 128);
            _tile_stored(2, dst + 512, 128);
            _tile_stored(3, dst + 528, 128);
            if (k1 == s1) group_epilogue(facc + p * 1024, cbuf, w, t, te - t < 2 ? te - t : 2, g, rows, xsb);
          }
        }
      }
      for (int64_t p = 0; p < np; p++) {
        const int64_t t = tp + 2 * p, n0 = t * QF_MM_NT, nt = te - t < 2 ? te - t : 2;
        const float* f = facc + p * 1024;
        for (int64_t m = 0; m < rows; m++) {
          const __m512 sx = _mm512_set1_ps(xs[m0 + m]);
          for (int64_t h = 0; h < nt; h++)
            _mm512_mask_storeu_ps(y + (m0 + m) * w.N + n0 + 16 * h, lanes_below(w.N - n0 - 16 * h),
                                  _mm512_mul_ps(_mm512_loadu_ps(f + m * 32 + 16 * h), sx));
        }
      }
    }
  }
  _tile_release();
}

void matmul_int8_amx(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M,
                     const PackedInt4View& w, int64_t t0, int64_t t1, uint8_t* scratch) {
  if (M < QF_MM_AMX_INT8_MIN_M || t0 >= t1 || !(w.G == 1 || w.group_size % 128 == 0))
    matmul_int8_kernels_avx512vnni.matmul_int8(y, xq, xs, xsumq, M, w, t0, t1, scratch);
  else
    matmul_amx(y, xq, xs, xsumq, M, w, t0, t1, scratch);
}

}  // namespace

const MatmulInt8Kernels matmul_int8_kernels_amx_avx512bf16 = {matmul_int8_amx};

}  // namespace qf
