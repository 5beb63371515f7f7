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

// Tiles 0-3: a 32 x 32 block of int32 sums (2 x 2 tiles of 16 x 16); 4-5: two 16-row A tiles
// (64 k each); 6-7: the pair's two B tiles (16 rows of 64 bytes).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Outputs of rows [0, rows) of one 32-row block of A (row stride lda) and one pair of tiles
// (t, t + 1; ntiles of them real) into y. cbuf (32, 32) int32, facc (32, 32) f32 scratch.
constexpr int64_t kStepK = 64;

void block_pair(float* y, const int8_t* a, int64_t lda, int64_t rows, const float* xs, const float* xsumq,
                const PackedInt4View& w, const uint8_t* panel0, const uint8_t* panel1, int64_t t, int64_t ntiles,
                int32_t* cbuf, float* facc) {
  const int64_t KC = w.KP / QF_MM_KC;
  for (int64_t g = 0; g < w.G; g++) {
    // chunks [c0, c1) of group g; with G > 1 the group size is a multiple of 128, so the
    // group starts on a k-step and ends on one (the last group at KP, padded with zero codes)
    const int64_t c0 = g * w.group_size / QF_MM_KC, c1 = g == w.G - 1 ? KC : (g + 1) * w.group_size / QF_MM_KC;
    const int64_t s0 = c0 * QF_MM_KC / kStepK, s1 = (c1 * QF_MM_KC + kStepK - 1) / kStepK;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = s0; s < s1; s++) {
      _tile_loadd(4, a + s * kStepK, lda);
      _tile_loadd(5, a + 16 * lda + s * kStepK, lda);
      _tile_loadd(6, panel0 + s * 1024, 64);
      _tile_loadd(7, panel1 + s * 1024, 64);
      _tile_dpbsud(0, 4, 6);
      _tile_dpbsud(1, 4, 7);
      _tile_dpbsud(2, 5, 6);
      _tile_dpbsud(3, 5, 7);
    }
    // (32, 32) sums: tile 0 top left, 1 top right, 2 bottom left, 3 bottom right
    _tile_stored(0, cbuf, 128);
    _tile_stored(1, cbuf + 16, 128);
    _tile_stored(2, cbuf + 16 * 32, 128);
    _tile_stored(3, cbuf + 16 * 32 + 16, 128);
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
  const int64_t n0 = t * QF_MM_NT;
  for (int64_t m = 0; m < rows; m++) {
    const __m512 sx = _mm512_set1_ps(xs[m]);
    for (int64_t h = 0; h < ntiles; h++)
      _mm512_mask_storeu_ps(y + m * w.N + n0 + 16 * h, lanes_below(w.N - n0 - 16 * h),
                            _mm512_mul_ps(_mm512_loadu_ps(facc + m * 32 + 16 * h), sx));
  }
}

void matmul_amx(float* y, const int8_t* xq, const float* xs, const float* xsumq, int64_t M, const PackedInt4View& w,
                int64_t t0, int64_t t1, uint8_t* scratch) {
  const int64_t KSP = matmul_amx_int8_ksp(w.KP), P = matmul_amx_int8_pairs(w.KP), per_tile = 16 * KSP;
  uint8_t* panels = scratch;                      // (2 P tiles, KSP / 8 chunks, 2, 64)
  int8_t* tail = reinterpret_cast<int8_t*>(panels + 2 * P * per_tile);  // (32, KSP) copy of the last block of A
  int32_t* cbuf = reinterpret_cast<int32_t*>(tail + 32 * KSP);           // (32, 32)
  float* facc = reinterpret_cast<float*>(cbuf + 32 * 32);                // (32, 32)
  TileConfig cfg;
  for (int i = 0; i < 8; i++) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  // A tile loads read KSP bytes from each row's start: past KP they run into the next row, whose
  // bytes meet zero codes (an exact 0 in integer sums), but at the end of xq they would leave
  // the buffer: blocks whose reads end past M * KP (and a partial last block) use a zero-padded copy.
  for (int64_t tp = t0; tp < t1; tp += 2 * P) {
    const int64_t te = tp + 2 * P < t1 ? tp + 2 * P : t1;
    for (int64_t t = tp; t < te; t++) build_tile_panel(panels + (t - tp) * per_tile, w, t, KSP);
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      const int64_t rows = M - m0 < 32 ? M - m0 : 32;
      const int8_t* a = xq + m0 * w.KP;
      int64_t lda = w.KP;
      if ((m0 + 31) * w.KP + KSP > M * w.KP) {
        std::memset(tail, 0, (size_t)(32 * KSP));
        for (int64_t m = 0; m < rows; m++) std::memcpy(tail + m * KSP, a + m * w.KP, (size_t)w.KP);
        a = tail;
        lda = KSP;
      }
      for (int64_t t = tp; t < te; t += 2) {
        const int64_t nt = te - t < 2 ? te - t : 2;
        const uint8_t* p0 = panels + (t - tp) * per_tile;
        // a lone last tile multiplies the first panel twice and stores only its own half
        const uint8_t* p1 = nt == 2 ? p0 + per_tile : p0;
        block_pair(y + m0 * w.N, a, lda, rows, xs + m0, xsumq + m0 * w.G, w, p0, p1, t, nt, cbuf, facc);
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
