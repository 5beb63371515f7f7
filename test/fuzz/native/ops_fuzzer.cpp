// libFuzzer harness for the native length re-checks the addon relies on: the
// quantization ops (quantize, pack, unpack, dequantize, fake quant forward and
// backward), the dequant-matmul (prepare, run canonical or prepared, fp32 / int8,
// sgemm) and the non-finite scan. The input chooses the op, the dims, the spec, the
// dtypes and, independently, the length of every buffer (often consistent, often
// off by one, sometimes empty or absent); each buffer is its own exact-size heap
// block, so an access one element past a length the op did not check is an ASan
// report. The op must return a Status for anything inconsistent.
//
// Build and run (what .ci/run does):
//   cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DQF_FUZZERS=ON && cmake --build build-fuzz -j2
//   build-fuzz/qf_ops_fuzzer -max_total_time=60 test/fuzz/native/corpus
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "quantform/finite.h"
#include "quantform/formats.h"
#include "quantform/matmul_ops.h"
#include "quantform/quant_ops.h"
#include "quantform/threadpool.h"

namespace {

using qf::DType;
using qf::Span;

// One exactly-sized heap buffer per Span.
struct Buffer {
  std::unique_ptr<uint8_t[]> bytes;
  Span span{nullptr, 0, DType::F32};
};

DType pick_dtype(FuzzedDataProvider& f) { return f.PickValueInArray({DType::F32, DType::F16, DType::BF16}); }

// A length near `want` (the consistent one) or anything small, in elements of `dtype`.
size_t pick_len(FuzzedDataProvider& f, int64_t want) {
  const int64_t w = want < 0 ? 0 : want;
  switch (f.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return (size_t)(w > 0 ? w - 1 : 0);
    case 1: return (size_t)(w + 1);
    case 2: return 0;
    case 3: return f.ConsumeIntegralInRange<size_t>(0, 4096);
    default: return (size_t)w;
  }
}

// `len` elements of `elem` bytes; now and then no data at all with the length still claimed
Buffer make_raw(FuzzedDataProvider& f, size_t len, size_t elem) {
  Buffer b;
  b.span.dtype = DType::F32;
  b.span.len = len;
  if (f.ConsumeIntegralInRange<int>(0, 31) == 0) return b;
  const size_t bytes = len * elem;
  b.bytes.reset(new uint8_t[bytes ? bytes : 1]);
  const std::vector<uint8_t> fill = f.ConsumeBytes<uint8_t>(std::min<size_t>(bytes, f.remaining_bytes() / 2));
  if (!fill.empty()) std::memcpy(b.bytes.get(), fill.data(), fill.size());
  if (bytes > fill.size()) std::memset(b.bytes.get() + fill.size(), 0x3c, bytes - fill.size());
  b.span.data = b.bytes.get();
  return b;
}

Buffer make(FuzzedDataProvider& f, size_t len, DType dtype) {
  Buffer b = make_raw(f, len, qf::dtype_size(dtype));
  b.span.dtype = dtype;
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = [] { qf::set_num_threads(2); return true; }();
  (void)once;
  FuzzedDataProvider f(data, size);
  const int op = f.ConsumeIntegralInRange<int>(0, 9);
  // dims: usually small and valid, sometimes zero, negative or huge
  auto dim = [&]() -> int64_t {
    switch (f.ConsumeIntegralInRange<int>(0, 15)) {
      case 0: return 0;
      case 1: return -f.ConsumeIntegralInRange<int64_t>(1, 1 << 20);
      case 2: return f.ConsumeIntegralInRange<int64_t>(1, int64_t(1) << 40);
      default: return f.ConsumeIntegralInRange<int64_t>(1, 70);
    }
  };
  const int64_t N = dim(), K = dim(), M = dim();
  qf::QuantSpec spec;
  spec.bits = f.PickValueInArray({2, 3, 4, 8, 4, 4, 0, 5, 16, -1});
  spec.group_size = f.ConsumeBool() ? f.ConsumeIntegralInRange<int64_t>(1, 72) : dim();
  spec.symmetric = f.ConsumeBool();
  spec.f16_params = f.ConsumeBool();
  const bool valid_dims = N > 0 && K > 0 && N <= 4096 && K <= 4096;
  const int64_t G = valid_dims && spec.group_size > 0 ? qf_num_groups(K, spec.group_size) : 0;
  const int64_t rb = valid_dims && (spec.bits == 2 || spec.bits == 3 || spec.bits == 4 || spec.bits == 8) ? qf_packed_row_bytes(spec.bits, K) : 0;
  // a byte span is carried with dtype F32 and counts bytes (the addon's convention)
  auto bytes = [&](int64_t want) { return make_raw(f, pick_len(f, want), 1); };
  const int64_t NK = valid_dims ? N * K : 16;
  switch (op) {
    case 0: {  // quantize
      const DType wd = pick_dtype(f), pd = f.ConsumeBool() ? DType::F32 : DType::F16;
      Buffer w = make(f, pick_len(f, NK), wd), codes = bytes(N * rb), s = make(f, pick_len(f, N * G), pd), z = make(f, pick_len(f, N * G), pd);
      (void)qf::quantize(codes.span, s.span, z.span, w.span, N, K, spec);
      break;
    }
    case 1: {  // pack
      Buffer c8 = bytes(NK), codes = bytes(N * rb);
      (void)qf::pack(codes.span, c8.span, N, K, spec.bits);
      break;
    }
    case 2: {  // unpack
      Buffer c8 = bytes(NK), codes = bytes(N * rb);
      (void)qf::unpack(c8.span, codes.span, N, K, spec.bits);
      break;
    }
    case 3: {  // dequantize
      const DType od = pick_dtype(f), pd = f.ConsumeBool() ? DType::F32 : DType::F16;
      Buffer out = make(f, pick_len(f, NK), od), codes = bytes(N * rb), s = make(f, pick_len(f, N * G), pd), z = make(f, pick_len(f, N * G), pd);
      (void)qf::dequantize(out.span, codes.span, s.span, z.span, N, K, spec);
      break;
    }
    case 4: {  // fake quant forward
      Buffer out = make(f, pick_len(f, NK), DType::F32), w = make(f, pick_len(f, NK), DType::F32),
             s = make(f, pick_len(f, N * G), DType::F32), z = make(f, pick_len(f, N * G), DType::F32);
      (void)qf::fake_quant_forward(out.span, w.span, s.span, z.span, N, K, spec);
      break;
    }
    case 5: {  // fake quant backward
      Buffer dw = make(f, pick_len(f, NK), DType::F32), ds = make(f, pick_len(f, N * G), DType::F32), dz = make(f, pick_len(f, N * G), DType::F32),
             g = make(f, pick_len(f, NK), DType::F32), w = make(f, pick_len(f, NK), DType::F32),
             s = make(f, pick_len(f, N * G), DType::F32), z = make(f, pick_len(f, N * G), DType::F32);
      (void)qf::fake_quant_backward(dw.span, ds.span, dz.span, g.span, w.span, s.span, z.span, N, K, spec);
      break;
    }
    case 6:
    case 7: {  // dequant-matmul, canonical or prepared
      const DType pd = f.ConsumeBool() ? DType::F32 : DType::F16, xd = pick_dtype(f);
      Buffer codes = bytes(N * rb), s = make(f, pick_len(f, N * G), pd), z = make(f, pick_len(f, N * G), pd);
      qf::CanonicalWeight cw{codes.span, s.span, z.span, N, K, spec};
      const int64_t MK = valid_dims && M > 0 && M <= 64 ? M * K : 16, MN = valid_dims && M > 0 && M <= 64 ? M * N : 16;
      Buffer x = make(f, pick_len(f, MK), xd), y = make(f, pick_len(f, MN), DType::F32);
      const qf::MatmulAccuracy acc = f.ConsumeBool() ? qf::MatmulAccuracy::F32 : qf::MatmulAccuracy::Int8;
      if (op == 7) {
        qf::PreparedInt4 p;
        if (qf::prepare_int4(&p, cw).ok()) {
          (void)qf::dequant_matmul(y.span, x.span, M, &cw, &p, acc);
          Buffer c2 = bytes(N * rb), s2 = make(f, pick_len(f, N * G), pd), z2 = make(f, pick_len(f, N * G), pd);
          (void)qf::unprepare_int4(p, c2.span, s2.span, z2.span);
        }
      } else {
        (void)qf::dequant_matmul(y.span, x.span, M, &cw, nullptr, acc);
      }
      break;
    }
    case 8: {  // sgemm
      const int64_t MK = valid_dims && M > 0 && M <= 64 ? M * K : 16, MN = valid_dims && M > 0 && M <= 64 ? M * N : 16;
      Buffer y = make(f, pick_len(f, MN), DType::F32), x = make(f, pick_len(f, MK), DType::F32), w = make(f, pick_len(f, NK), DType::F32);
      (void)qf::sgemm_nt(y.span, x.span, w.span, M, N, K);
      break;
    }
    case 9: {  // non-finite scan
      Buffer b = make(f, f.ConsumeIntegralInRange<size_t>(0, 5000), pick_dtype(f));
      int64_t index = 0;
      (void)qf::first_non_finite(b.span, &index);
      if (index >= (int64_t)b.span.len) __builtin_trap();
      break;
    }
  }
  return 0;
}
