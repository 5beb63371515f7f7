#include <algorithm>
#include <atomic>

#include "quantform/dispatch.h"
#include "quantform/finite.h"
#include "quantform/threadpool.h"

namespace qf {

const FiniteKernels& finite_kernels() {
  return select_kernels(finite_kernels_ref, finite_kernels_avx2, finite_kernels_avx512);
}

Status first_non_finite(const Span& s, int64_t* index) {
  if (!s.data && s.len > 0) return error(Code::InvalidArgument, "Expected a buffer to scan but received none");
  const int64_t n = (int64_t)s.len;
  const FiniteKernels& k = finite_kernels();
  // chunks of >= 1M elements: each finds its own first hit, the smallest wins
  std::atomic<int64_t> first{n};
  parallel_for(n, 1 << 20, [&](int64_t b, int64_t e) {
    int64_t r;
    if (s.dtype == DType::F32) r = k.first_non_finite_f32(static_cast<const float*>(s.data) + b, e - b);
    else if (s.dtype == DType::F16) r = first_non_finite_f16_ref(static_cast<const uint16_t*>(s.data) + b, e - b);
    else r = first_non_finite_bf16_ref(static_cast<const uint16_t*>(s.data) + b, e - b);
    if (r < 0) return;
    int64_t cur = first.load();
    while (b + r < cur && !first.compare_exchange_weak(cur, b + r)) {
    }
  });
  *index = first.load() == n ? -1 : first.load();
  return Status::Ok();
}

int64_t first_non_finite(const float* p, int64_t n) {
  int64_t index = -1;
  first_non_finite(Span{const_cast<float*>(p), (size_t)n, DType::F32}, &index);
  return index;
}

}  // namespace qf
