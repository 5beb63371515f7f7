// The AMX tile configuration (palette 1) the tile kernels of this folder load with LDTILECFG: per
// tile its bytes per row (colsb) and rows. A plain struct: no code, so nothing here can leak an
// AMX instruction into another ISA's object.
#pragma once
#include <cstdint>

namespace qf {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace qf
