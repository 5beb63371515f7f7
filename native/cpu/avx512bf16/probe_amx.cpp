// AMX int8 peak probe: TDPBSUD into four independent accumulator tiles from A and B tiles loaded
// once (tile registers only). Each TDPBSUD is 16 x 16 outputs x 64 k = 16384 multiply-adds =
// 32768 int8 ops. Only called when amx_int8_available() (dispatch.cpp).
#include <immintrin.h>

#include <cstdint>

#include "amx_tiles.h"
#include "quantform/probe.h"

namespace qf {
namespace {

double amx_int8_loop_avx512bf16(int64_t iters) {
  AmxTileConfig cfg;
  for (int i = 0; i < 8; i++) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  alignas(64) int8_t src[16 * 64];
  for (int i = 0; i < 16 * 64; i++) src[i] = (int8_t)(i % 7 - 3);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, src, 64);
  _tile_loadd(5, src, 64);
  _tile_loadd(6, src, 64);
  _tile_loadd(7, src, 64);
  for (int64_t i = 0; i < iters; i++) {
    _tile_dpbsud(0, 4, 6);
    _tile_dpbsud(1, 4, 7);
    _tile_dpbsud(2, 5, 6);
    _tile_dpbsud(3, 5, 7);
  }
  alignas(64) int32_t out[16 * 16];
  _tile_stored(0, out, 64);
  volatile int32_t sink = out[3];
  (void)sink;
  _tile_release();
  return (double)iters * 4 * 16 * 16 * 64 * 2;
}

}  // namespace

const AmxProbeKernels probe_kernels_amx_avx512bf16 = {amx_int8_loop_avx512bf16};

}  // namespace qf
