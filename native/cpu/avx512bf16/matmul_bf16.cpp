// bf16 dequant-matmul (algorithm and layouts: matmul.h): INT4 tiles decoded into bf16
// panels, activations rounded to bf16, products accumulated in fp32 by AVX-512 BF16 dot
// products or by AMX tiles. Called only when cpuid reports AVX-512 BF16 (and, for the AMX
// table, AMX-BF16 with the OS's tile permission: dispatch.cpp).
#include <immintrin.h>

#include <cstring>

#include "amx_tiles.h"
#include "quantform/matmul.h"

namespace qf {
namespace {

__mmask16 lanes_below(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }

void round_x_avx512bf16(uint16_t* xb, const float* x, int64_t M, int64_t MP, int64_t K, int64_t KSP) {
  for (int64_t m = 0; m < MP; m++) {
    uint16_t* dst = xb + m * KSP;
    if (m >= M) {
      memset(dst, 0, (size_t)KSP * sizeof(uint16_t));
      continue;
    }
    for (int64_t k = 0; k < KSP; k += 32) {
      const __m512 lo = _mm512_maskz_loadu_ps(lanes_below(K - k), x + m * K + k);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes_below(K - k - 16), x + m * K + k + 16);
      _mm512_storeu_si512(dst + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// Words [a0 b0 a1 b1 ...] from [a0 .. a15 b0 .. b15]: each dword one column's pair.
__m512i pair_order() {
  return _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005, 0x00160006, 0x00170007,
                           0x00180008, 0x00190009, 0x001a000a, 0x001b000b, 0x001c000c, 0x001d000d, 0x001e000e, 0x001f000f);
}

void build_panel_avx512bf16(uint16_t* panel, const PackedInt4View& w, int64_t t) {
  const int64_t KC = w.KP / QF_MM_KC, KS = (w.KP + QF_BF16_KSTEP - 1) / QF_BF16_KSTEP, tiles = w.NP / QF_MM_NT;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i order = pair_order();
  const int64_t bytes = w.f16_params ? 2 : 4;
  for (int64_t h = 0; h < 2; h++) {
    const int64_t tile = t + h;
    for (int64_t s = 0; s < KS; s++) {
      uint16_t* blk = panel + (s * 2 + h) * 512;  // (16 pair rows, 16 columns, 2)
      for (int64_t cc = 0; cc < 4; cc++) {
        const int64_t c = s * 4 + cc;
        uint16_t* rows = blk + cc * 4 * 32;  // pair rows 4 cc .. 4 cc + 3
        if (tile >= tiles || c >= KC) {
          memset(rows, 0, 4 * 32 * sizeof(uint16_t));
          continue;
        }
        const int64_t k0 = c * QF_MM_KC;
        const int64_t g = k0 / w.group_size < w.G ? k0 / w.group_size : w.G - 1;
        const int64_t o = (tile * w.G + g) * QF_MM_NT;
        __m512 sc, z;
        if (bytes == 2) {
          sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.scales) + o)));
          z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(w.zeros) + o)));
        } else {
          sc = _mm512_loadu_ps(static_cast<const float*>(w.scales) + o);
          z = _mm512_loadu_ps(static_cast<const float*>(w.zeros) + o);
        }
        const __m512 sz = _mm512_mul_ps(sc, z);
        const __m512i v = _mm512_loadu_si512(w.codes + (tile * KC + c) * QF_MM_NT);
        for (int p = 0; p < 4; p++) {
          // nibble j as a float: vpermps reads only the low 4 bits of each index lane
          const __m512 q0 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * p), iota);
          const __m512 q1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * p + 4), iota);
          const __m512bh pr = _mm512_cvtne2ps_pbh(_mm512_fmsub_ps(q1, sc, sz), _mm512_fmsub_ps(q0, sc, sz));
          _mm512_storeu_si512(rows + p * 32, _mm512_permutexvar_epi16(order, (__m512i)pr));
        }
      }
    }
  }
}

// y rows [m0, m0 + rows) (rows <= MR), columns of one panel (32) from an (MR, 32) block.
template <int MR>
void dp_block(float* y, int64_t N, int64_t c0, const uint16_t* xb, int64_t KSP, const uint16_t* panel, int64_t KS, int64_t rows) {
  __m512 acc[MR][2];
  for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t s = 0; s < KS; s++) {
    const uint16_t* b0 = panel + s * 1024;
    const uint16_t* b1 = b0 + 512;
    for (int64_t r = 0; r < 16; r++) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + r * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + r * 32);
      for (int m = 0; m < MR; m++) {
        int32_t pair;
        memcpy(&pair, xb + m * KSP + s * QF_BF16_KSTEP + 2 * r, 4);
        const __m512bh xp = (__m512bh)_mm512_set1_epi32(pair);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, xp);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w1, xp);
      }
    }
  }
  for (int64_t m = 0; m < rows; m++) {
    _mm512_mask_storeu_ps(y + m * N + c0, lanes_below(N - c0), acc[m][0]);
    _mm512_mask_storeu_ps(y + m * N + c0 + 16, lanes_below(N - c0 - 16), acc[m][1]);
  }
}

constexpr int kMr = 12;  // 12 x 2 accumulators + 2 panel rows + 1 broadcast fit in 32 zmm

void gemm_panels_avx512bf16(float* y, int64_t N, int64_t n0, const uint16_t* xb, int64_t M, int64_t KSP,
                            const uint16_t* panels, int64_t np, float* cbuf) {
  const int64_t KS = KSP / QF_BF16_KSTEP;
  for (int64_t m0 = 0; m0 < M; m0 += kMr) {
    const int64_t rows = M - m0 < kMr ? M - m0 : kMr;
    for (int64_t p = 0; p < np; p++) {
      float* yb = y + m0 * N;
      const uint16_t* xr = xb + m0 * KSP;
      const uint16_t* pp = panels + p * KS * 1024;
      const int64_t c0 = n0 + 32 * p;
      switch (rows) {
        case 1: dp_block<1>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 2: dp_block<2>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 3: dp_block<3>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 4: dp_block<4>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 5: dp_block<5>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 6: dp_block<6>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 7: dp_block<7>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 8: dp_block<8>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 9: dp_block<9>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 10: dp_block<10>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        case 11: dp_block<11>(yb, N, c0, xr, KSP, pp, KS, rows); break;
        default: dp_block<12>(yb, N, c0, xr, KSP, pp, KS, rows); break;
      }
    }
  }
}

// AMX: tiles 0-3 hold a 32 x 32 block of outputs (2 x 2 tiles of 16 x 16 fp32), 4-5 two
// 16-row A tiles of x (16 rows x 32 k), 6-7 the panel's two B tiles of the k-step.
void gemm_panels_amx(float* y, int64_t N, int64_t n0, const uint16_t* xb, int64_t M, int64_t KSP, const uint16_t* panels,
                     int64_t np, float* cbuf) {
  AmxTileConfig cfg;
  for (int i = 0; i < 8; i++) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t KS = KSP / QF_BF16_KSTEP, stride = KSP * (int64_t)sizeof(uint16_t);
  for (int64_t m0 = 0; m0 < M; m0 += 32) {
    const uint16_t* a0 = xb + m0 * KSP;
    const uint16_t* a1 = a0 + 16 * KSP;
    for (int64_t p = 0; p < np; p++) {
      const uint16_t* pp = panels + p * KS * 1024;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t s = 0; s < KS; s++) {
        _tile_loadd(4, a0 + s * QF_BF16_KSTEP, stride);
        _tile_loadd(5, a1 + s * QF_BF16_KSTEP, stride);
        _tile_loadd(6, pp + s * 1024, 64);
        _tile_loadd(7, pp + s * 1024 + 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      // (32, 32) block: tile 0 top left, 1 top right, 2 bottom left, 3 bottom right
      _tile_stored(0, cbuf, 128);
      _tile_stored(1, cbuf + 16, 128);
      _tile_stored(2, cbuf + 16 * 32, 128);
      _tile_stored(3, cbuf + 16 * 32 + 16, 128);
      const int64_t c0 = n0 + 32 * p;
      for (int64_t m = 0; m < 32 && m0 + m < M; m++) {
        _mm512_mask_storeu_ps(y + (m0 + m) * N + c0, lanes_below(N - c0), _mm512_loadu_ps(cbuf + m * 32));
        _mm512_mask_storeu_ps(y + (m0 + m) * N + c0 + 16, lanes_below(N - c0 - 16), _mm512_loadu_ps(cbuf + m * 32 + 16));
      }
    }
  }
  _tile_release();
}

}  // namespace

const MatmulBf16Kernels matmul_bf16_kernels_avx512bf16 = {round_x_avx512bf16, build_panel_avx512bf16, gemm_panels_avx512bf16};
const MatmulBf16Kernels matmul_bf16_kernels_amx_avx512bf16 = {round_x_avx512bf16, build_panel_avx512bf16, gemm_panels_amx};

}  // namespace qf
