// Whole-tensor quantization ops: re-check every length they are given (the JS
// layer validated already; a wrong length here would be an out-of-bounds write),
// convert input dtypes, split rows over the thread pool, call the active tier.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quantform/quant.h"
#include "quantform/status.h"

namespace qf {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
const char* dtype_name(DType d);
size_t dtype_size(DType d);

// A caller-owned buffer and its length in elements of its dtype.
struct Span {
  void* data;
  size_t len;
  DType dtype;
};

Status check_spec(const QuantSpec& spec, int64_t N, int64_t K);

// w (N, K) f32|f16|bf16 -> codes (N, row_bytes) u8, scales/zeros (N, G) f32|f16.
Status quantize(Span codes, Span scales, Span zeros, Span w, int64_t N, int64_t K, const QuantSpec& spec);
Status pack(Span codes, Span codes8, int64_t N, int64_t K, int bits);
Status unpack(Span codes8, Span codes, int64_t N, int64_t K, int bits);
// -> w (N, K) f32|f16|bf16.
Status dequantize(Span w, Span codes, Span scales, Span zeros, int64_t N, int64_t K, const QuantSpec& spec);
// The GPTQ checkpoint tensors of a canonical weight with f16 parameters (lib/export/gptq.ts):
// qweight (ceil(K b / 32), N) and qzeros (G, ceil(N b / 32)) int32 bit streams, scales (G, N)
// f16 transposed; v1 stores z - 1. codes (N, row_bytes), scales / zeros (N, G) f16 (zeros
// null when symmetric).
struct GptqPackOut {
  int32_t* qweight;
  size_t qweight_len;
  int32_t* qzeros;
  size_t qzeros_len;
  uint16_t* scales;
  size_t scales_len;
};
Status gptq_pack(const GptqPackOut& out, const uint8_t* codes, size_t codes_len, const uint16_t* scales, size_t scales_len,
                 const uint16_t* zeros, size_t zeros_len, int64_t N, int64_t K, const QuantSpec& spec, bool v1);
// f32 only: training runs in f32.
Status fake_quant_forward(Span out, Span w, Span scales, Span zeros, int64_t N, int64_t K, const QuantSpec& spec);
Status fake_quant_backward(Span dw, Span ds, Span dz, Span g, Span w, Span scales, Span zeros, int64_t N,
                           int64_t K, const QuantSpec& spec);

}  // namespace qf
