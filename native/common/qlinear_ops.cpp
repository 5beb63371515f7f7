// Quantized-linear backward op (qlinear.h): checks every length, then runs dx in
// column tiles of Ŵ and ds in row tiles, each task with its scratch allocated here
// before the parallel region.
#include "quantform/qlinear.h"

#include <algorithm>
#include <string>

#include "op_checks.h"
#include "quantform/dispatch.h"
#include "quantform/formats.h"
#include "task_slots.h"

namespace qf {

const QLinearKernels& qlinear_kernels() {
  // no AVX2 table: AVX2-only machines run the reference (training is an AVX-512 workload)
  return select_kernels(qlinear_kernels_ref, qlinear_kernels_ref, qlinear_kernels_avx512);
}

Status check_quant_linear_backward(const Span& dx, const Span& ds, const Span& dy, const Span& x, int64_t M,
                                   const Span& codes, const Span& scales, const Span& zeros, int64_t N, int64_t K,
                                   const QuantSpec& spec) {
  QF_TRY(check_spec(spec, N, K));
  QF_TRY(check_dim("M", M));
  QF_TRY(check_dim("N", N));
  QF_TRY(check_dim("K", K));
  const int64_t G = qf_num_groups(K, spec.group_size), rb = qf_packed_row_bytes(spec.bits, K);
  QF_TRY(need_span("gradOutput", dy, M * N, DType::F32));
  QF_TRY(need_span("codes", codes, N * rb, DType::F32));  // bytes travel as a Span of the f32 tag
  QF_TRY(need_span("scales", scales, N * G, DType::F32));
  if (!spec.symmetric) QF_TRY(need_span("zeros", zeros, N * G, DType::F32));
  if (dx.data) QF_TRY(need_span("gradInput", dx, M * K, DType::F32));
  if (ds.data) {
    QF_TRY(need_span("gradScales", ds, N * G, DType::F32));
    QF_TRY(need_span("x", x, M * K, DType::F32));
  }
  return Status::Ok();
}

Status quant_linear_backward(Span dx, Span ds, Span dy, Span x, int64_t M, Span codes, Span scales, Span zeros,
                             int64_t N, int64_t K, const QuantSpec& spec) {
  QF_TRY(check_quant_linear_backward(dx, ds, dy, x, M, codes, scales, zeros, N, K, spec));
  const QLinearKernels& kt = qlinear_kernels();
  const float* zp = spec.symmetric ? nullptr : static_cast<const float*>(zeros.data);
  const uint8_t* cp = static_cast<const uint8_t*>(codes.data);
  TaskSlots slots(kQLinearScratchFloats);
  if (dx.data)
    slots.run((K + kQLinearColTile - 1) / kQLinearColTile, [&](int64_t t, float* scratch) {
      const int64_t k0 = t * kQLinearColTile, k1 = std::min(K, k0 + kQLinearColTile);
      kt.grad_input(static_cast<float*>(dx.data), static_cast<const float*>(dy.data), cp,
                    static_cast<const float*>(scales.data), zp, M, N, K, spec, k0, k1, scratch);
    });
  if (ds.data)
    slots.run((N + kQLinearRowTile - 1) / kQLinearRowTile, [&](int64_t t, float* scratch) {
      const int64_t n0 = t * kQLinearRowTile, n1 = std::min(N, n0 + kQLinearRowTile);
      kt.grad_scales(static_cast<float*>(ds.data), static_cast<const float*>(dy.data),
                     static_cast<const float*>(x.data), cp, zp, M, N, K, spec, n0, n1, scratch);
    });
  return Status::Ok();
}

}  // namespace qf
