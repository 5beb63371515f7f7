// Packed integer formats: the interchange layout every kernel, exporter and test
// agrees on. Read by C++ and CUDA (no std headers beyond <stdint.h>).
//
// A quantized matrix W of shape [N, K] (N output rows, K input columns, row-major,
// quantized along K) is stored as three arrays:
//
//   codes  uint8  [N, packed_row_bytes(bits, K)]   unsigned codes q in [0, 2^bits - 1]
//   scales f32|f16 [N, G]                           G = num_groups(K, group_size)
//   zeros  f32|f16 [N, G]                           asymmetric only
//
// Dequantization: w[n, k] = scale[n, g] * (q[n, k] - zero[n, g]), g = k / group_size.
// Symmetric quantization stores no zeros: the zero point is the constant
// 2^(bits-1), i.e. signed codes c = q - 2^(bits-1) in [-2^(bits-1), 2^(bits-1) - 1]
// (the convention GPTQ uses for sym=True). Per-channel quantization is
// group_size == K (one group per row). When K is not a multiple of group_size,
// the last group of each row is shorter (K = 172 with group_size 32: 5 groups
// of 32 and one of 12).
//
// Bit layout of one row (every row starts on a byte boundary; padding bits are 0):
//   INT8: byte k = q[k].
//   INT4: byte k/2 holds q[k] in bits 0-3 when k is even, bits 4-7 when k is odd
//         (low nibble first, as GPTQ/AWQ along K and ggml q4).
//   INT2: byte k/4 holds q[k] in bits 2*(k%4) .. 2*(k%4)+1 (lowest bits first).
//   INT3: codes in blocks of 8 stored as 3 bytes (qf_block_int3): code j of a block
//         sits at bits 3j .. 3j+2 of the little-endian 24-bit word
//         b0 | b1 << 8 | b2 << 16. A row of K codes uses ceil(K/8) blocks; the
//         tail block is zero-padded. Chosen over 10-in-32 layouts because every
//         block is byte aligned and the bit density is the full 3 bits/code.
#pragma once
#include <stdint.h>

#define QF_INT3_BLOCK_CODES 8
#define QF_INT3_BLOCK_BYTES 3

typedef struct {
  uint8_t b[QF_INT3_BLOCK_BYTES];  // 8 codes x 3 bits, little-endian bit order
} qf_block_int3;
static_assert(sizeof(qf_block_int3) == QF_INT3_BLOCK_BYTES, "wrong qf_block_int3 padding");
static_assert(QF_INT3_BLOCK_CODES * 3 == QF_INT3_BLOCK_BYTES * 8, "INT3 block must be dense");

typedef struct {
  uint8_t b;  // two INT4 codes: low nibble = even k, high nibble = odd k
} qf_pair_int4;
static_assert(sizeof(qf_pair_int4) == 1, "wrong qf_pair_int4 size");

#ifdef __cplusplus
#define QF_HD_INLINE static inline
#if defined(__CUDACC__)
#undef QF_HD_INLINE
#define QF_HD_INLINE static inline __host__ __device__
#endif

// Bytes of one packed row of K codes. K >= 1.
QF_HD_INLINE int64_t qf_packed_row_bytes(int bits, int64_t K) {
  switch (bits) {
    case 8: return K;
    case 4: return (K + 1) / 2;
    case 2: return (K + 3) / 4;
    case 3: return (K + QF_INT3_BLOCK_CODES - 1) / QF_INT3_BLOCK_CODES * QF_INT3_BLOCK_BYTES;
    default: return -1;
  }
}

// Groups per row; group_size in [1, K].
QF_HD_INLINE int64_t qf_num_groups(int64_t K, int64_t group_size) {
  return (K + group_size - 1) / group_size;
}

QF_HD_INLINE bool qf_bits_supported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}
#endif
