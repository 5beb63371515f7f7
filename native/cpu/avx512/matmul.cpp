// AVX-512 dequant-matmul, fp32 accuracy (layout: matmul.h). Lanes are output
// rows, so nothing is reduced horizontally.
//   M <= 4 (decode): weights are decoded in registers and used once per row of x
//     (see nibble_scales), and each group's sum is scaled once:
//     acc += s * (sum(q x) - z * sum(x)). Code words and parameters are
//     prefetched in software (see kPrefetchChunks).
//   M > 4 (prefill): 32 output rows are decoded into an fp32 panel (KP, 32) once
//     (vpermps with the table 0..15 reads only the low 4 bits of each index lane),
//     then a 12 x 32 register-blocked microkernel streams it for every 12 rows of x.
#include <immintrin.h>

// GCC 12's _mm512_reduce_add_* start from _mm256_undefined_*(), which -Wuninitialized flags
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "quantform/matmul.h"

namespace qf {
namespace {

__mmask16 lanes_below(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }

__m512 iota16() { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }

// 2^(-4j) for j = 0..7: decode masks nibble j in place (q * 2^(4j), one AND and one
// convert, no shift or permute: those share two pipes on Zen 4) and the chunk's x
// is scaled by 2^(-4j) instead, exactly (powers of two).
__m256 nibble_scales() {
  return _mm256_setr_ps(1.f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 0x1p-28f);
}

// s and z of tile t, group g: one lane per output row. Symmetric zeros are all 8
// and left unread (see PackedInt4View::symmetric).
template <bool SYM>
void tile_params(const PackedInt4View& w, int64_t t, int64_t g, __m512* s, __m512* z) {
  const int64_t o = (t * w.G + g) * QF_MM_NT;
  if (w.f16_params) {
    *s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.scales) + o)));
    *z = SYM ? _mm512_set1_ps(8.f)
             : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.zeros) + o)));
  } else {
    *s = _mm512_loadu_ps(static_cast<const float*>(w.scales) + o);
    *z = SYM ? _mm512_set1_ps(8.f) : _mm512_loadu_ps(static_cast<const float*>(w.zeros) + o);
  }
}

// Chunks of 8 k in group g: [c0, c1). Padding chunks belong to the last group.
void group_chunks(const PackedInt4View& w, int64_t g, int64_t* c0, int64_t* c1) {
  const int64_t k0 = g * w.group_size;
  const int64_t k1 = g == w.G - 1 ? w.KP : k0 + w.group_size;
  *c0 = k0 / QF_MM_KC;
  *c1 = k1 / QF_MM_KC;
}

// Chunks of x scaled per block (see nibble_scales): held in memory so that each
// FMA broadcasts its x straight from L1 rather than by shuffles on the FP pipes.
constexpr int64_t kXBlockChunks = 64;
// Code words are prefetched this many chunks (64-byte lines) ahead in each tile's
// stream: the decode's ALU work per line leaves the hardware prefetcher too few
// outstanding misses to keep 4 streams per thread at full read bandwidth.
// 32768x4096 M=1, 4..32 ahead: +6..14 %, 8 best at group size 128.
constexpr int64_t kPrefetchChunks = 8;

// Scales and zeros are two more streams per tile, too many for the hardware
// prefetcher at small group sizes: fetched this many groups ahead.
constexpr int64_t kPrefetchGroups = 4;

template <bool SYM>
void prefetch_params(const PackedInt4View& w, int64_t t, int nt, int64_t g) {
  const int64_t bytes = w.f16_params ? 2 : 4;
  for (int i = 0; i < nt; i++) {
    const int64_t o = ((t + i) * w.G + g) * QF_MM_NT * bytes;
    _mm_prefetch(static_cast<const char*>(w.scales) + o, _MM_HINT_T0);
    if (!SYM) _mm_prefetch(static_cast<const char*>(w.zeros) + o, _MM_HINT_T0);
  }
}

// Decode: MR rows of x (M <= 4) times NT tiles of 16 output rows.
template <int MR, int NT, bool SYM>
void gemv_tiles(float* y, const float* x, const float* xsum, const PackedInt4View& w, int64_t t) {
  const int64_t KC = w.KP / QF_MM_KC;
  const __m512 nscale = _mm512_castsi512_ps(
      _mm512_broadcast_i64x4(_mm256_castps_si256(nibble_scales())));  // 2^(-4j) for both chunks of a zmm
  const __m512 iota = iota16();
  alignas(64) float xs[MR][kXBlockChunks * QF_MM_KC];  // (MR, block chunks * 8) x times 2^(-4j)
  // one row of x leaves registers for two sum chains per tile (even and odd j),
  // halving the FMA latency each chunk waits on
  constexpr int NA = MR == 1 ? 2 : 1;
  __m512 acc[MR][NT];
  for (int m = 0; m < MR; m++)
    for (int i = 0; i < NT; i++) acc[m][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; g++) {
    int64_t c0, c1;
    group_chunks(w, g, &c0, &c1);
    prefetch_params<SYM>(w, t, NT, g + kPrefetchGroups < w.G ? g + kPrefetchGroups : w.G - 1);
    __m512 ag[MR][NT][NA];  // unscaled sum(q x) of this group
    for (int m = 0; m < MR; m++)
      for (int i = 0; i < NT; i++)
        for (int a = 0; a < NA; a++) ag[m][i][a] = _mm512_setzero_ps();
    for (int64_t cb = c0; cb < c1; cb += kXBlockChunks) {
      const int64_t ce = c1 - cb < kXBlockChunks ? c1 : cb + kXBlockChunks;
      for (int m = 0; m < MR; m++)
        for (int64_t c = cb; c < ce; c += 2) {
          // an odd chunk count loads only the block's last chunk (x may end there)
          const __mmask16 mk = ce - c >= 2 ? (__mmask16)0xffff : (__mmask16)0xff;
          _mm512_store_ps(xs[m] + (c - cb) * QF_MM_KC,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + m * w.KP + c * QF_MM_KC), nscale));
        }
      for (int64_t c = cb; c < ce; c++) {
        __m512i v[NT];
        const int64_t cp = c + kPrefetchChunks < KC ? c + kPrefetchChunks : KC - 1;
        for (int i = 0; i < NT; i++) {
          _mm_prefetch((const char*)(w.codes + ((t + i) * KC + cp) * QF_MM_NT), _MM_HINT_T0);
          v[i] = _mm512_loadu_si512(w.codes + ((t + i) * KC + c) * QF_MM_NT);
        }
        const int64_t o = (c - cb) * QF_MM_KC;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
          for (int i = 0; i < NT; i++) {
            // At M = 1 nibble 0 is a table lookup (vpermps reads the low 4 bits of each
            // index): one op for two, but it competes with the FMAs, which bound M >= 2.
            // Nibble j masked in place is q * 2^(4j) as an unsigned integer: exact in fp32.
            const __m512 wf =
                MR == 1 && j == 0 ? _mm512_permutexvar_ps(v[i], iota)
                       : _mm512_cvtepu32_ps(_mm512_and_si512(v[i], _mm512_set1_epi32((int)(0xfu << (4 * j)))));
            for (int m = 0; m < MR; m++)
              ag[m][i][j % NA] = _mm512_fmadd_ps(wf, _mm512_set1_ps(xs[m][o + j]), ag[m][i][j % NA]);
          }
      }
    }
    for (int i = 0; i < NT; i++) {
      __m512 s, z;
      tile_params<SYM>(w, t + i, g, &s, &z);
      for (int m = 0; m < MR; m++) {
        const __m512 a = NA == 2 ? _mm512_add_ps(ag[m][i][0], ag[m][i][NA - 1]) : ag[m][i][0];
        // s * (sum(q x) - z * sum(x))
        acc[m][i] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, _mm512_set1_ps(xsum[m * w.G + g]), a), acc[m][i]);
      }
    }
  }
  for (int i = 0; i < NT; i++) {
    const int64_t n0 = (t + i) * QF_MM_NT;
    const __mmask16 mask = lanes_below(w.N - n0);
    for (int m = 0; m < MR; m++) _mm512_mask_storeu_ps(y + m * w.N + n0, mask, acc[m][i]);
  }
}

// Tiles at once: as many as keep accumulators and code words in 32 registers.
template <int MR>
void gemv_rows(float* y, const float* x, const float* xsum, const PackedInt4View& w, int64_t t0, int64_t t1) {
  // 4 tiles = 4 weight streams per thread: more streams lost bandwidth to the
  // hardware prefetcher, fewer left too little independent work (see the VNNI file)
  constexpr int NT = MR <= 2 ? 4 : 2;
  int64_t t = t0;
  // symmetric is a template flag: a runtime test in the group epilogue cost M = 2 a fifth
  if (w.symmetric) {
    for (; t + NT <= t1; t += NT) gemv_tiles<MR, NT, true>(y, x, xsum, w, t);
    for (; t < t1; t++) gemv_tiles<MR, 1, true>(y, x, xsum, w, t);
  } else {
    for (; t + NT <= t1; t += NT) gemv_tiles<MR, NT, false>(y, x, xsum, w, t);
    for (; t < t1; t++) gemv_tiles<MR, 1, false>(y, x, xsum, w, t);
  }
}

// Prefill microkernel: y (MR, 32) = x (MR, kn) · panel (kn, 32).
template <int MR>
void gemm_block(float* y, int64_t ldy, const float* x, int64_t ldx, const float* panel, int64_t kn, __mmask16 mask0,
                __mmask16 mask1) {
  __m512 acc[MR][2];
  for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kn; k++) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * 32), b1 = _mm512_loadu_ps(panel + k * 32 + 16);
    for (int m = 0; m < MR; m++) {
      const __m512 a = _mm512_set1_ps(x[m * ldx + k]);
      acc[m][0] = _mm512_fmadd_ps(a, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(a, b1, acc[m][1]);
    }
  }
  for (int m = 0; m < MR; m++) {
    _mm512_mask_storeu_ps(y + m * ldy, mask0, acc[m][0]);
    _mm512_mask_storeu_ps(y + m * ldy + 16, mask1, acc[m][1]);
  }
}

constexpr int kMr = 12;  // 12 x 2 accumulators + 2 panel vectors + 1 broadcast fit in 32 zmm

void gemm_panel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const float* panel, int64_t kn,
                __mmask16 mask0, __mmask16 mask1) {
  for (int64_t m0 = 0; m0 < M; m0 += kMr) {
    float* yb = y + m0 * ldy;
    const float* xb = x + m0 * ldx;
    switch (M - m0 < kMr ? M - m0 : kMr) {
      case 1: gemm_block<1>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 2: gemm_block<2>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 3: gemm_block<3>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 4: gemm_block<4>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 5: gemm_block<5>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 6: gemm_block<6>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 7: gemm_block<7>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 8: gemm_block<8>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 9: gemm_block<9>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 10: gemm_block<10>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      case 11: gemm_block<11>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
      default: gemm_block<12>(yb, ldy, xb, ldx, panel, kn, mask0, mask1); break;
    }
  }
}

// panel (KP, 32) = dequantized rows of tiles t (and t + 1 when two), k-major.
void decode_panel(float* panel, const PackedInt4View& w, int64_t t, int64_t ntiles) {
  const int64_t KC = w.KP / QF_MM_KC;
  const __m512 iota = iota16();
  for (int64_t h = 0; h < 2; h++) {
    if (h >= ntiles) {
      for (int64_t k = 0; k < w.KP; k++) _mm512_storeu_ps(panel + k * 32 + 16, _mm512_setzero_ps());
      continue;
    }
    for (int64_t g = 0; g < w.G; g++) {
      int64_t c0, c1;
      group_chunks(w, g, &c0, &c1);
      __m512 s, z;
      if (w.symmetric)
        tile_params<true>(w, t + h, g, &s, &z);
      else
        tile_params<false>(w, t + h, g, &s, &z);
      const __m512 sz = _mm512_mul_ps(s, z);
      for (int64_t c = c0; c < c1; c++) {
        const __m512i v = _mm512_loadu_si512(w.codes + ((t + h) * KC + c) * QF_MM_NT);
        float* dst = panel + c * QF_MM_KC * 32 + h * 16;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
          const __m512 q = _mm512_permutexvar_ps(j ? _mm512_srli_epi32(v, 4 * j) : v, iota);
          _mm512_storeu_ps(dst + j * 32, _mm512_fmsub_ps(q, s, sz));
        }
      }
    }
  }
}

void matmul_f32_avx512(float* y, const float* x, const float* xsum, int64_t M, const PackedInt4View& w, int64_t t0,
                       int64_t t1, float* scratch) {
  switch (M) {
    case 1: gemv_rows<1>(y, x, xsum, w, t0, t1); return;
    case 2: gemv_rows<2>(y, x, xsum, w, t0, t1); return;
    case 3: gemv_rows<3>(y, x, xsum, w, t0, t1); return;
    case 4: gemv_rows<4>(y, x, xsum, w, t0, t1); return;
    default: break;
  }
  for (int64_t t = t0; t < t1; t += 2) {
    const int64_t nt = t1 - t < 2 ? t1 - t : 2, n0 = t * QF_MM_NT;
    decode_panel(scratch, w, t, nt);
    gemm_panel(y + n0, w.N, x, w.KP, M, scratch, w.KP, lanes_below(w.N - n0),
               nt == 2 ? lanes_below(w.N - n0 - 16) : (__mmask16)0);
  }
}

}  // namespace

const MatmulKernels matmul_kernels_avx512 = {matmul_f32_avx512};

}  // namespace qf
