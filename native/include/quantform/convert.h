// 16-bit float conversions for checkpoint I/O: F16/BF16 tensors widen to f32 at
// disk speed while they are read, and activation stores narrow f32 to bf16.
// One table per tier: _ref (native/ref/convert.cpp, the definition of correct),
// _avx2 (F16C), _avx512; every tier is bit-exact with _ref on every input,
// NaN payloads, subnormals and infinities included (test/convert.test.ts).
#pragma once
#include <cstddef>
#include <cstdint>

#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

struct ConvertKernels {
  // dst (n) f32 <- src (n) IEEE binary16. Exact for every number (subnormals
  // renormalised); a signalling NaN comes out quiet (bit 22 set, payload kept in
  // bits 21..13), as IEEE 754 convertFormat requires and F16C's vcvtph2ps does.
  void (*f16_to_f32)(float* dst, const uint16_t* src, int64_t n);
  // dst (n) f32 <- src (n) bfloat16: the bits shifted up by 16, every NaN payload
  // (signalling ones too) kept bit for bit, as torch and numpy widen bf16.
  void (*bf16_to_f32)(float* dst, const uint16_t* src, int64_t n);
  // dst (n) bf16 <- src (n) f32, round to nearest even; NaN -> (bits >> 16) | 0x40
  // (stays NaN, quiet), as numeric.h f32_to_bf16.
  void (*f32_to_bf16)(uint16_t* dst, const float* src, int64_t n);
};

extern const ConvertKernels convert_kernels_ref;
extern const ConvertKernels convert_kernels_avx2;
extern const ConvertKernels convert_kernels_avx512;

const ConvertKernels& convert_kernels();  // the active tier's table

// Reads a tensor stored as `src` (F32, F16 or BF16) at bytes [offset, offset +
// rows * cols * size) of the open file `fd` into dst (rows, cols) f32, with large
// positional reads on the thread pool, converting while the bytes are in cache.
// dst_row (rows entries, or null for the identity) is a permutation: source row
// s lands in destination row dst_row[s] (RoPE q/k reordering at load). Every
// length is checked here: the byte range against the file's size (fstat), dst_len
// against rows * cols, dst_row for being a permutation of [0, rows).
// `what` names the tensor and file in error messages.
Status read_tensor_f32(int fd, int64_t offset, DType src, int64_t rows, int64_t cols, const int32_t* dst_row,
                       size_t dst_row_len, float* dst, size_t dst_len, const char* what);
// The byte-range part of read_tensor_f32's checks: rows * cols elements of `src` at
// `offset` lie inside the file behind fd. Callers that allocate the destination
// first (LlamaModel's setWeightsFromFile) run it before allocating.
Status check_tensor_range(int fd, int64_t offset, DType src, int64_t rows, int64_t cols, const char* what);

// Converts n elements between f32 and f16/bf16 on the thread pool: src and dst
// dtypes F32 -> BF16, BF16 -> F32 or F16 -> F32 (others: Unsupported).
Status convert_span(Span dst, Span src);

}  // namespace qf
