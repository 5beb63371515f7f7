// libFuzzer harness for the native checks behind main's engine entry points (the
// other harness, ops_fuzzer.cpp, covers quantization and the dequant-matmul):
//   - every op of QF_ENGINE_OPS, generically from its C++ signature, as the addon
//     binds it (engine.cpp): int64 dims first, then each Span gets a length that is
//     one of the products of those dims (the consistent one among them), off by one,
//     empty or absent; IdSpans hold ids in and out of range. A new op of the list is
//     fuzzed without a line here.
//   - the block step (check_block, block_bind_arena, block_forward with and without
//     saved activations and a KV cache, block_backward), fake quant and TEQ included;
//     FPTQuant's fpt slot (transforms, S_n carry, online Hadamard, static activation and
//     KV quantizers with an int8 cache, the outlier penalty, fpt_check_params);
//   - LlamaModel (create, set_weight, set_quantized_weight, set_fpt, fill_weights through
//     read_tensor_f32 from a memfd, forward): the LlamaModel binding's native half;
//   - read_tensor_f32 on its own (offsets, dtypes, row permutations, short files);
//   - GPTQ (hessian_accumulate, inverse_factor, quantize) and the quantized-linear
//     backward.
// Every buffer is its own exact-size heap block: an access one element past a length
// the op did not check is an ASan report. Each call must return a Status.
//
// Build and run (what .ci/run does):
//   cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DQF_FUZZERS=ON && cmake --build build-fuzz -j2
//   build-fuzz/qf_engine_fuzzer -max_total_time=20 <corpus dir>
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "quantform/convert.h"
#include "quantform/engine.h"
#include "quantform/formats.h"
#include "quantform/gptq.h"
#include "quantform/llama_model.h"
#include "quantform/qlinear.h"
#include "quantform/threadpool.h"

namespace {

using qf::DType;
using qf::IdSpan;
using qf::Span;

// Bound on any one buffer (elements): lengths past it are left inconsistent, which the
// op must refuse before touching memory.
constexpr size_t kMaxElements = size_t(1) << 18;

struct Arena {
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  void* alloc(size_t bytes) {
    blocks.emplace_back(new uint8_t[bytes ? bytes : 1]);
    return blocks.back().get();
  }
};

struct Ctx {
  FuzzedDataProvider& f;
  Arena arena;
  std::vector<int64_t> ints;  // the op's int64 arguments, in order

  // A dimension: usually small and valid, sometimes zero, negative or huge.
  int64_t dim() {
    switch (f.ConsumeIntegralInRange<int>(0, 15)) {
      case 0: return 0;
      case 1: return -f.ConsumeIntegralInRange<int64_t>(1, 1 << 20);
      case 2: return f.ConsumeIntegralInRange<int64_t>(1, int64_t(1) << 40);
      case 3: return f.ConsumeIntegralInRange<int64_t>(0, 8) * 2;  // even (head sizes)
      case 4: return ints.empty() ? 8 : (ints.back() + 7) / 8 * 8;  // the previous dim rounded up to 8 (int8 layouts' KP)
      default: return f.ConsumeIntegralInRange<int64_t>(1, 12);
    }
  }

  // A length: a product of up to four of the op's dims (x 1/2 now and then: hd/2
  // tables, 4P arenas), one off, empty or small random.
  size_t len() {
    const int k = f.ConsumeIntegralInRange<int>(0, 9);
    if (k == 0) return 0;
    if (k == 1) return f.ConsumeIntegralInRange<size_t>(0, 300);
    __int128 p = 1;
    const int n = f.ConsumeIntegralInRange<int>(0, 4);
    for (int i = 0; i < n && !ints.empty(); i++) {
      p *= (__int128)ints[f.ConsumeIntegralInRange<size_t>(0, ints.size() - 1)];
      if (p > ((__int128)1 << 64) || p < -((__int128)1 << 64)) p = -1;  // far past any buffer (and 128 bits)
    }
    if (f.ConsumeIntegralInRange<int>(0, 5) == 0) p /= 2;
    if (f.ConsumeIntegralInRange<int>(0, 5) == 0) p *= 4;
    if (k == 2) p += 1;
    if (k == 3) p -= 1;
    if (p < 0 || p > (__int128)kMaxElements) return f.ConsumeIntegralInRange<size_t>(0, 64);
    return (size_t)p;
  }

  // `n` floats, now and then absent (null data, length kept); finite values mostly.
  Span floats(size_t n, bool may_be_null = true) {
    if (may_be_null && f.ConsumeIntegralInRange<int>(0, 15) == 0) return Span{nullptr, f.ConsumeBool() ? 0 : n, DType::F32};
    float* p = static_cast<float*>(arena.alloc(n * 4));
    const int mode = f.ConsumeIntegralInRange<int>(0, 7);
    for (size_t i = 0; i < n; i++) {
      float v = (float)((int)((i * 2654435761u) % 2001) - 1000) / 500.f;
      if (mode == 0 && i == n / 2) v = f.ConsumeBool() ? __builtin_nanf("") : __builtin_inff();
      if (mode == 1) v = 1.f + (float)(i % 7) / 8.f;  // positive (scales, rstd, alpha)
      p[i] = v;
    }
    return Span{p, n, DType::F32};
  }

  IdSpan ids(size_t n) {
    int32_t* p = static_cast<int32_t*>(arena.alloc(n * 4));
    const int64_t hi = ints.empty() ? 16 : std::max<int64_t>(1, std::min<int64_t>(ints[f.ConsumeIntegralInRange<size_t>(0, ints.size() - 1)], 1 << 20));
    for (size_t i = 0; i < n; i++) {
      switch (f.ConsumeIntegralInRange<int>(0, 15)) {
        case 0: p[i] = -1; break;
        case 1: p[i] = (int32_t)hi; break;
        case 2: p[i] = INT32_MAX; break;
        default: p[i] = (int32_t)(i % (size_t)hi);
      }
    }
    return IdSpan{p, n};
  }

  // `n` int8 codes (FPTQuant's quantized activations / KV), now and then absent.
  qf::I8Span codes(size_t n) {
    if (f.ConsumeIntegralInRange<int>(0, 15) == 0) return qf::I8Span{nullptr, f.ConsumeBool() ? 0 : n};
    int8_t* p = static_cast<int8_t*>(arena.alloc(n));
    for (size_t i = 0; i < n; i++) p[i] = (int8_t)((int)((i * 2654435761u) % 255) - 127);
    return qf::I8Span{p, n};
  }
};

// Phase 1: the int64 arguments (dims), in order, so the buffers can be sized from them.
template <class T>
void pre(Ctx& c) {
  if constexpr (std::is_same_v<T, int64_t>) c.ints.push_back(c.dim());
}

template <class T>
struct Make;
template <>
struct Make<int64_t> {
  static int64_t get(Ctx& c, size_t& next_int) { return c.ints[next_int++]; }
};
template <>
struct Make<Span> {
  static Span get(Ctx& c, size_t&) { return c.floats(c.len()); }
};
template <>
struct Make<IdSpan> {
  static IdSpan get(Ctx& c, size_t&) { return c.ids(c.len()); }
};
template <>
struct Make<qf::I8Span> {
  static qf::I8Span get(Ctx& c, size_t&) { return c.codes(c.len()); }
};
template <>
struct Make<float> {
  static float get(Ctx& c, size_t&) {
    return c.f.PickValueInArray({1e-5f, 1e-3f, 0.9f, 0.999f, 1.f, 0.f, -1.f, 1e-8f, -__builtin_inff(), __builtin_nanf("")});
  }
};
template <>
struct Make<bool> {
  static bool get(Ctx& c, size_t&) { return c.f.ConsumeBool(); }
};

template <class... A>
void call_op(Ctx& c, qf::Status (*fn)(A...)) {
  (pre<A>(c), ...);
  size_t next_int = 0;
  // braced initialisation: left to right, as the parameters are declared
  std::tuple<A...> args{Make<A>::get(c, next_int)...};
  (void)std::apply(fn, args);
}

using OpRunner = void (*)(Ctx&);
#define QF_FUZZ_OP(name, args) [](Ctx& c) { call_op(c, &::qf::name); },
const OpRunner kEngineOps[] = {QF_ENGINE_OPS(QF_FUZZ_OP)};
#undef QF_FUZZ_OP
constexpr int kNumEngineOps = (int)(sizeof(kEngineOps) / sizeof(kEngineOps[0]));

int64_t small(FuzzedDataProvider& f, int64_t lo, int64_t hi) {
  // mostly in [lo, hi]; now and then an edge the checks must refuse
  switch (f.ConsumeIntegralInRange<int>(0, 19)) {
    case 0: return 0;
    case 1: return -1;
    case 2: return int64_t(1) << f.ConsumeIntegralInRange<int>(20, 40);
    default: return f.ConsumeIntegralInRange<int64_t>(lo, hi);
  }
}

qf::QuantSpec pick_spec(FuzzedDataProvider& f, bool f16_params) {
  qf::QuantSpec s;
  s.bits = f.PickValueInArray({2, 3, 4, 8, 4, 4, 0, 5});
  s.group_size = f.ConsumeBool() ? f.PickValueInArray<int64_t>({4, 8, 16, 32, 3, 7}) : small(f, 1, 40);
  s.symmetric = f.ConsumeBool();
  s.f16_params = f16_params;
  return s;
}

void fuzz_block(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  qf::BlockDesc d;
  d.dims = qf::BlockDims{small(f, 1, 2), small(f, 1, 6), small(f, 1, 12), small(f, 1, 12),
                         small(f, 1, 4), small(f, 1, 2), f.PickValueInArray<int64_t>({2, 4, 6, 3, 0})};
  d.eps = f.PickValueInArray({1e-5f, 0.f, -1.f, __builtin_nanf("")});
  d.rtn = f.ConsumeBool();
  d.rtn_spec = pick_spec(f, true);
  d.teq.on = f.ConsumeBool();
  d.teq.extra = f.ConsumeBool();
  if (!qf::check_block(d).ok()) return;
  const qf::BlockDims& m = d.dims;
  const int64_t half = m.hd / 2, S = m.T + f.ConsumeIntegralInRange<int64_t>(0, 4);
  std::vector<float> cos((size_t)(S * half), 1.f), sin((size_t)(S * half), 0.f);
  d.rope_cos = cos.data();
  d.rope_sin = sin.data();
  d.rope_len = f.ConsumeBool() ? S : small(f, 0, S);
  const int64_t P = qf::block_param_count(m), BTD = m.BT() * m.D;
  // clamped to kMaxElements: a block larger than any buffer here gets lengths it must refuse
  auto near = [&](int64_t want) {
    return (size_t)std::max<int64_t>(0, std::min<int64_t>(want, (int64_t)kMaxElements) + f.PickValueInArray<int64_t>({0, 0, 0, 0, 1, -1}));
  };
  Span arena = c.floats(near(P), false);
  if (!qf::block_bind_arena(&d, arena).ok()) return;
  Span alpha = c.floats(near(qf::block_alpha_count(d)), false);
  d.teq.alpha = static_cast<const float*>(alpha.data);
  if (d.teq.on && (int64_t)alpha.len != qf::block_alpha_count(d)) return;  // the binding refuses this (set_teq_alpha)
  Span x = c.floats(near(BTD), false), out = c.floats(near(BTD), false);
  qf::Workspace ws;
  const int mode = f.ConsumeIntegralInRange<int>(0, 2);
  if (mode == 0) {  // training forward + backward
    Span saved = c.floats(near(qf::block_saved_count(d)), false);
    if (!qf::block_forward(out, saved, x, d, nullptr, &ws).ok()) return;
    Span dx = c.floats(near(BTD), false), dout = c.floats(near(BTD), false);
    std::vector<float> gp((size_t)std::min<int64_t>(P, (int64_t)kMaxElements)), ga((size_t)qf::block_alpha_count(d));
    qf::BlockGrads g;
    g.params = f.ConsumeBool() ? gp.data() : nullptr;
    g.alpha = d.teq.on ? ga.data() : nullptr;
    (void)qf::block_backward(dx, g, dout, saved, d, &ws);
  } else if (mode == 1) {  // inference step with a KV cache
    const int64_t cap = m.B * S * m.Dkv();
    std::vector<float> k((size_t)std::max<int64_t>(cap, 0)), v(k.size());
    qf::KvCache kv{k.data(), v.data(), S, small(f, 0, S)};
    (void)qf::block_forward(out, Span{nullptr, 0, DType::F32}, x, d, &kv, &ws);
  } else {
    (void)qf::block_forward(out, Span{nullptr, 0, DType::F32}, x, d, nullptr, &ws);
  }
}

// FPTQuant's block step (the fpt slot): transforms on the original weights or merged, S_n with its carry,
// the online Hadamard, static activation and KV quantizers (an int8 cache in inference), the outlier
// penalty, training forward + backward. As the binding (engine.cpp bind_fpt) does, the parameters are
// fpt_layout's count and the carries BT: what the step trusts; their values are fuzzed (NaN, huge, 0).
void fuzz_fpt_block(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  // valid most of the time (the step's own checks and kernels are the target), one thing off now and then
  const bool edgy = f.ConsumeIntegralInRange<int>(0, 3) == 0;
  auto dim = [&](int64_t lo, int64_t hi) { return edgy ? small(f, lo, hi) : f.ConsumeIntegralInRange<int64_t>(lo, hi); };
  qf::BlockDesc d;
  d.dims = qf::BlockDims{dim(1, 2), dim(1, 5), dim(1, 16), f.PickValueInArray<int64_t>({8, 12, 16, 16, 6, 7}),
                         dim(1, 4), dim(1, 2), f.PickValueInArray<int64_t>({2, 4, 8, 8, 6, 3, 0})};
  if (!edgy && d.dims.Hq % d.dims.Hkv != 0) d.dims.Hq = d.dims.Hkv;
  d.eps = f.PickValueInArray({1e-5f, 1e-5f, 1e-5f, 0.f, __builtin_nanf("")});
  d.rtn = f.ConsumeBool();
  d.rtn_spec = pick_spec(f, true);
  qf::FptTransforms& t = d.fpt;
  t.on = true;
  t.merged = f.ConsumeBool();
  t.qk = f.ConsumeBool();
  t.v = f.ConsumeBool();
  t.v_hadamard = f.ConsumeIntegralInRange<int>(0, 3) == 0;
  t.mlp = f.ConsumeBool();
  t.residual_scaling = f.ConsumeBool();
  t.hadamard_block = edgy ? f.PickValueInArray<int64_t>({0, 3, 16, -4, 32}) : f.PickValueInArray<int64_t>({0, 0, 2});
  t.act_bits = edgy ? f.PickValueInArray({0, 8, 4, 3, 16}) : f.PickValueInArray({0, 8, 4});
  t.kv_bits = edgy ? f.PickValueInArray({0, 8, 4, 5}) : f.PickValueInArray({0, 8, 4});
  t.lp_act = f.PickValueInArray({0.f, 0.f, 1e-2f, edgy ? -1.f : 0.f});
  t.lp_weight = f.PickValueInArray({0.f, 0.f, 1e-2f, edgy ? __builtin_nanf("") : 0.f});
  t.lp_p = f.PickValueInArray({4.f, 4.f, 2.f, 0.5f});
  static float placeholder = 1.f;
  t.params = &placeholder;  // check_block runs before the buffers are bound, as in the binding
  if (!qf::check_block(d).ok()) return;
  const qf::BlockDims& m = d.dims;
  const int64_t BT = m.BT(), P = qf::block_param_count(m), FP = qf::fpt_layout(m).total, BTD = BT * m.D;
  if (P > (int64_t)kMaxElements || FP > (int64_t)kMaxElements || BTD > (int64_t)kMaxElements) return;
  const int64_t half = m.hd / 2, S = m.T + f.ConsumeIntegralInRange<int64_t>(0, 4);
  std::vector<float> cos((size_t)(S * half), 1.f), sin((size_t)(S * half), 0.f);
  d.rope_cos = cos.data();
  d.rope_sin = sin.data();
  d.rope_len = S;
  auto near = [&](int64_t want) {
    const int64_t off = f.ConsumeIntegralInRange<int>(0, 15) == 0 ? f.PickValueInArray<int64_t>({1, -1}) : 0;
    return (size_t)std::max<int64_t>(0, std::min<int64_t>(want, (int64_t)kMaxElements) + off);
  };
  Span arena = c.floats(near(P), false);
  if (!qf::block_bind_arena(&d, arena).ok()) return;
  // parameters: small (valid transforms), or the fuzzed values (NaN, large: singular T_v, overflowing scales)
  Span params = c.floats((size_t)FP, false);
  if (f.ConsumeBool())
    for (size_t i = 0; i < params.len; i++) static_cast<float*>(params.data)[i] *= 0.01f;
  t.params = static_cast<const float*>(params.data);
  Span c_in = c.floats((size_t)BT, false), c_out = c.floats((size_t)BT, false);
  t.c_in = f.ConsumeBool() ? static_cast<const float*>(c_in.data) : nullptr;
  t.c_out = t.residual_scaling || f.ConsumeBool() ? static_cast<float*>(c_out.data) : nullptr;
  float lp = 0.f;
  t.lp_out = f.ConsumeBool() ? &lp : nullptr;
  Span x = c.floats(near(BTD), false), out = c.floats(near(BTD), false);
  qf::Workspace ws;
  const int mode = f.ConsumeIntegralInRange<int>(0, 2);
  if (mode == 0) {  // training forward + backward
    Span saved = c.floats(near(qf::block_saved_count(d)), false);
    if (!qf::block_forward(out, saved, x, d, nullptr, &ws).ok()) return;
    Span dx = c.floats(near(BTD), false), dout = c.floats(near(BTD), false);
    std::vector<float> gp((size_t)P), gf((size_t)FP), dc((size_t)BT, 0.5f);
    qf::BlockGrads g;
    g.params = f.ConsumeIntegralInRange<int>(0, 15) == 0 ? gp.data() : nullptr;  // refused: the weights are fixed
    g.fpt = f.ConsumeIntegralInRange<int>(0, 15) ? gf.data() : nullptr;
    g.dc = t.residual_scaling && f.ConsumeIntegralInRange<int>(0, 7) ? dc.data() : nullptr;
    (void)qf::block_backward(dx, g, dout, saved, d, &ws);
  } else if (mode == 1) {  // inference step with a KV cache, int8 codes when the KV cache is quantized
    const int64_t cap = m.B * S * m.Dkv();
    std::vector<float> k((size_t)std::max<int64_t>(cap, 0)), v(k.size());
    std::vector<int8_t> kq(k.size()), vq(k.size());
    qf::KvCache kv{k.data(), v.data(), S, small(f, 0, S)};
    if (t.kv_bits > 0 && f.ConsumeIntegralInRange<int>(0, 7)) {
      kv.kq = kq.data();
      kv.vq = vq.data();
    }
    (void)qf::block_forward(out, Span{nullptr, 0, DType::F32}, x, d, &kv, &ws);
  } else {
    (void)qf::block_forward(out, Span{nullptr, 0, DType::F32}, x, d, nullptr, &ws);
  }
  if (f.ConsumeBool()) (void)qf::fpt_check_params(params, m, t);
}

// An anonymous in-memory file holding the rest of the input: what read_tensor_f32 preads.
struct MemFile {
  int fd = -1;
  explicit MemFile(const std::vector<uint8_t>& bytes) {
    fd = memfd_create("qf-fuzz", 0);
    if (fd >= 0 && !bytes.empty() && write(fd, bytes.data(), bytes.size()) != (ssize_t)bytes.size()) {
      close(fd);
      fd = -1;
    }
  }
  ~MemFile() {
    if (fd >= 0) close(fd);
  }
};

std::vector<int32_t> perm(FuzzedDataProvider& f, int64_t rows) {
  const size_t n = rows > 0 && rows < 4096 ? (size_t)rows + (size_t)f.PickValueInArray<int>({0, 0, 0, 1, -1}) : 3;
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; i++) p[i] = (int32_t)(n - 1 - i);
  if (n > 1 && f.ConsumeIntegralInRange<int>(0, 3) == 0) p[0] = p[1];  // not a permutation
  if (n > 0 && f.ConsumeIntegralInRange<int>(0, 5) == 0) p[n - 1] = (int32_t)n;  // out of range
  return p;
}

void fuzz_read_tensor(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  const DType dt = f.PickValueInArray({DType::F32, DType::F16, DType::BF16});
  const int64_t rows = small(f, 0, 9), cols = small(f, 0, 17);
  const int64_t offset = f.ConsumeBool() ? f.ConsumeIntegralInRange<int64_t>(0, 64) : small(f, 0, 1 << 20);
  const bool use_perm = f.ConsumeBool();
  const std::vector<int32_t> p = use_perm ? perm(f, rows) : std::vector<int32_t>{};
  const size_t dst_len = rows > 0 && cols > 0 && (__int128)rows * cols < (__int128)kMaxElements ? (size_t)(rows * cols) : 16;
  Span dst = c.floats(dst_len + (size_t)f.PickValueInArray<int>({0, 0, 0, 1}), false);
  const int fd_kind = f.ConsumeIntegralInRange<int>(0, 9);
  MemFile file(f.ConsumeBytes<uint8_t>(f.ConsumeIntegralInRange<size_t>(0, 4096)));
  const int fd = fd_kind == 0 ? -1 : fd_kind == 1 ? 1 << 20 : file.fd;
  (void)qf::read_tensor_f32(fd, offset, dt, rows, cols, use_perm ? p.data() : nullptr, p.size(), static_cast<float*>(dst.data),
                            dst.len, "fuzz tensor");
}

const char* const kWeightNames[] = {"embed",           "final_norm",      "lm_head",          "layers.0.attn_norm", "layers.0.ffn_norm",
                                    "layers.0.wq",     "layers.0.wk",     "layers.0.wv",      "layers.0.wo",        "layers.0.w_gate",
                                    "layers.0.w_up",   "layers.0.w_down", "layers.1.wq",      "layers.9.wq",        "layers.-1.wq",
                                    "layers.0",        "layers.0.wq.x",   "",                 "layers.00.wq",       "layers.1.attn_norm"};

// The (rows, cols) the model expects for a weight name, or (1, 1) for names it should refuse.
std::pair<int64_t, int64_t> shape_of(const qf::LlamaConfig& c, const std::string& n) {
  const int64_t D = c.dim, F = c.hidden_dim, Dq = c.n_heads * c.head_dim, Dkv = c.n_kv_heads * c.head_dim;
  if (n == "embed" || n == "lm_head") return {c.vocab_size, D};
  auto ends = [&](const char* s) { return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0; };
  if (ends("norm")) return {1, D};
  if (ends(".wq")) return {Dq, D};
  if (ends(".wk") || ends(".wv")) return {Dkv, D};
  if (ends(".wo")) return {D, Dq};
  if (ends(".w_gate") || ends(".w_up")) return {F, D};
  if (ends(".w_down")) return {D, F};
  return {1, 1};
}

void fuzz_llama_model(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  qf::LlamaConfig cfg;
  cfg.dim = small(f, 1, 16);
  cfg.hidden_dim = small(f, 1, 16);
  cfg.n_layers = small(f, 1, 2);
  cfg.n_heads = small(f, 1, 4);
  cfg.n_kv_heads = small(f, 1, 2);
  cfg.head_dim = f.PickValueInArray<int64_t>({2, 4, 4, 8, 3, 0});
  cfg.vocab_size = small(f, 1, 40);
  cfg.max_seq = small(f, 1, 16);
  cfg.norm_eps = 1e-5f;
  cfg.inv_freq.assign((size_t)std::max<int64_t>(0, std::min<int64_t>(cfg.head_dim, 64) / 2 + f.PickValueInArray<int>({0, 0, 0, 1})), 0.5f);
  std::unique_ptr<qf::LlamaModel> m;
  if (!qf::LlamaModel::create(cfg, &m).ok()) return;
  m->tie_lm_head(f.ConsumeBool());
  const int steps = f.ConsumeIntegralInRange<int>(1, 24);
  for (int s = 0; s < steps && f.remaining_bytes() > 0; s++) {
    const std::string name = kWeightNames[f.ConsumeIntegralInRange<size_t>(0, sizeof(kWeightNames) / sizeof(kWeightNames[0]) - 1)];
    const std::pair<int64_t, int64_t> sh = shape_of(cfg, name);
    const int64_t rows = sh.first, cols = sh.second;
    // the consistent length, unless the model's dims make it larger than any buffer here
    const int64_t want = (__int128)rows * cols <= (__int128)kMaxElements ? rows * cols : 16;
    switch (f.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
      case 1: {
        Span w = c.floats((size_t)std::max<int64_t>(0, want + f.PickValueInArray<int64_t>({0, 0, 0, 1, -1})), false);
        (void)m->set_weight(name, static_cast<const float*>(w.data), w.len);
        break;
      }
      case 2: {  // a quantized linear
        const qf::QuantSpec spec = pick_spec(f, f.ConsumeBool());
        const DType pd = spec.f16_params ? DType::F16 : DType::F32;
        const bool ok_spec = qf::check_spec(spec, rows, cols).ok();
        const bool fits = ok_spec && (__int128)rows * cols <= (__int128)kMaxElements;
        const int64_t G = fits ? qf_num_groups(cols, spec.group_size) : 1, rb = fits ? qf_packed_row_bytes(spec.bits, cols) : 1;
        auto buf = [&](int64_t n, size_t elem) {
          const size_t len = (size_t)std::max<int64_t>(0, n + f.PickValueInArray<int64_t>({0, 0, 0, 1, -1}));
          return Span{c.arena.alloc(len * elem), len, elem == 1 ? DType::F32 : pd};
        };
        qf::CanonicalWeight w;
        const int64_t R = fits ? rows : 4;  // a weight too large for a buffer here: lengths the model must refuse
        w.codes = buf(R * rb, 1);
        w.scales = buf(R * G, qf::dtype_size(pd));
        w.zeros = spec.symmetric ? Span{nullptr, 0, pd} : buf(R * G, qf::dtype_size(pd));
        std::memset(w.scales.data, 0x3c, w.scales.len * qf::dtype_size(pd));
        if (w.zeros.data) std::memset(w.zeros.data, 0, w.zeros.len * qf::dtype_size(pd));
        w.N = rows;
        w.K = cols;
        w.spec = spec;
        (void)m->set_quantized_weight(name, w);
        break;
      }
      case 3: {  // weights read from a file, as setWeightsFromFile does
        MemFile file(f.ConsumeBytes<uint8_t>((size_t)std::min<int64_t>(std::max<int64_t>(want, 0) * 4 + 8, 8192)));
        const int64_t fr = want == rows * cols ? rows + f.PickValueInArray<int64_t>({0, 0, 0, 1}) : 1;
        const DType dt = f.PickValueInArray({DType::F32, DType::F16, DType::BF16});
        const std::vector<int32_t> p = f.ConsumeBool() ? perm(f, fr) : std::vector<int32_t>{};
        // as the binding (llama.cpp SetWeightsFromFile) does: the byte range first, then the allocation
        if (!qf::check_tensor_range(file.fd, 0, dt, fr, cols, name.c_str()).ok()) break;
        std::vector<qf::LlamaModel::WeightFill> items;
        items.push_back({name, (size_t)std::max<int64_t>(0, fr * cols), [&](float* dst) {
                           return qf::read_tensor_f32(file.fd, 0, dt, fr, cols, p.empty() ? nullptr : p.data(), p.size(), dst,
                                                      (size_t)std::max<int64_t>(0, fr * cols), name.c_str());
                         }});
        (void)m->fill_weights(items);
        break;
      }
      case 4:
        if (f.ConsumeBool()) {
          (void)m->missing();
          break;
        }
        {  // FPTQuant's run-time part (setFpt): fuzzed flags, a parameter arena per layer, right-sized or not
          qf::FptRuntime r;
          r.on = f.ConsumeIntegralInRange<int>(0, 7) != 0;
          r.residual_scaling = f.ConsumeBool();
          r.hadamard_block = f.PickValueInArray<int64_t>({0, 2, 4, 8, 3, -1});
          r.act_bits = f.PickValueInArray({0, 8, 4, 2});
          r.kv_bits = f.PickValueInArray({0, 8, 4, 16});
          const qf::BlockDims bd{1, 1, cfg.dim, cfg.hidden_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim};
          const int64_t P = qf::fpt_layout(bd).total;
          const int64_t layers = cfg.n_layers + f.PickValueInArray<int64_t>({0, 0, 0, 1, -1});
          for (int64_t l = 0; l < layers && P >= 0 && P <= 4096; l++) {
            const Span p = c.floats((size_t)std::max<int64_t>(0, P + f.PickValueInArray<int64_t>({0, 0, 0, 0, 1, -1})), false);
            std::vector<float> v(static_cast<float*>(p.data), static_cast<float*>(p.data) + p.len);
            if (f.ConsumeBool())
              for (float& e : v) e *= 0.01f;  // log scales near 0: scales near 1
            r.params.push_back(std::move(v));
          }
          (void)m->set_fpt(r);
        }
        break;
      default: {  // forward: tokens in and out of range, positions past the cache, short logits
        const int64_t B = small(f, 1, 2), T = small(f, 1, 4), pos0 = f.ConsumeBool() ? 0 : small(f, 0, 16);
        const bool last_only = f.ConsumeBool();
        const bool bt_small = B > 0 && T > 0 && (__int128)B * T < 64;
        const size_t nt = bt_small ? (size_t)(B * T) + (size_t)f.PickValueInArray<int>({0, 0, 0, 1}) : 4;
        std::vector<int32_t> tok(nt);
        for (size_t i = 0; i < nt; i++) tok[i] = f.ConsumeIntegralInRange<int>(0, 15) == 0 ? (int32_t)cfg.vocab_size : (int32_t)(i % (size_t)cfg.vocab_size);
        const int64_t rows_out = !bt_small ? 1 : last_only ? B : B * T;
        const size_t nl = cfg.vocab_size <= 4096 ? (size_t)(rows_out * cfg.vocab_size) + (size_t)f.PickValueInArray<int>({0, 0, 0, 1}) : 8;
        std::vector<float> logits(nl);
        (void)m->forward(logits.data(), logits.size(), tok.data(), tok.size(), B, T, pos0, last_only);
      }
    }
  }
}

void fuzz_gptq(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  const int64_t N = small(f, 1, 10), K = small(f, 1, 24), T = small(f, 0, 8);
  // products of fuzzed dims in 128 bits: the harness itself must not overflow
  auto near = [&](__int128 want) {
    return (size_t)std::max<__int128>(0, std::min<__int128>(want, (__int128)kMaxElements) + f.PickValueInArray<int64_t>({0, 0, 0, 1, -1}));
  };
  const int which = f.ConsumeIntegralInRange<int>(0, 2);
  Span H = c.floats(near((__int128)K * K), false);
  // a positive definite H most of the time (identity plus the fuzzed values scaled down)
  if (f.ConsumeBool() && K > 0 && K <= 4096 && H.len == (size_t)(K * K))
    for (int64_t i = 0; i < K; i++)
      for (int64_t j = 0; j < K; j++) static_cast<float*>(H.data)[i * K + j] = i == j ? 2.f : 0.01f;
  const float damp = f.PickValueInArray({0.01f, 0.f, -1.f, __builtin_nanf("")});
  if (which == 0) {
    Span x = c.floats(near((__int128)T * K));
    (void)qf::gptq::hessian_accumulate(H, x, T, K, small(f, 0, 100));
  } else if (which == 1) {
    Span U = c.floats(near((__int128)K * K));
    (void)qf::gptq::inverse_factor(U, H, K, damp);
  } else {
    qf::gptq::Config cfg;
    cfg.N = N;
    cfg.K = K;
    cfg.spec = pick_spec(f, false);
    cfg.damp = damp;
    cfg.block_size = f.PickValueInArray<int64_t>({1, 4, 128, 0, 513});
    cfg.params_from = f.ConsumeBool() ? qf::gptq::ParamSource::Updated : qf::gptq::ParamSource::BatchStart;
    const DType pd = f.ConsumeBool() ? DType::F32 : DType::F16;
    const bool ok = qf::check_spec(cfg.spec, N, K).ok();
    const int64_t G = ok ? qf_num_groups(K, cfg.spec.group_size) : 1, rb = ok ? qf_packed_row_bytes(cfg.spec.bits, K) : 1;
    const size_t nc = near((__int128)N * rb), ns = near((__int128)N * G), nz = near((__int128)N * G);
    Span codes{c.arena.alloc(nc), nc, DType::F32}, scales{c.arena.alloc(ns * 4), ns, pd}, zeros{c.arena.alloc(nz * 4), nz, pd};
    if (cfg.spec.symmetric && f.ConsumeBool()) zeros = Span{nullptr, 0, pd};
    Span w = c.floats(near((__int128)N * K));
    double loss = 0;
    (void)qf::gptq::quantize(codes, scales, zeros, &loss, w, H, cfg);
  }
}

void fuzz_qlinear(Ctx& c) {
  FuzzedDataProvider& f = c.f;
  const int64_t M = small(f, 1, 6), N = small(f, 1, 10), K = small(f, 1, 24);
  const qf::QuantSpec spec = pick_spec(f, false);
  const bool ok = qf::check_spec(spec, N, K).ok();
  const int64_t G = ok ? qf_num_groups(K, spec.group_size) : 1, rb = ok ? qf_packed_row_bytes(spec.bits, K) : 1;
  // products of fuzzed dims in 128 bits: the harness itself must not overflow
  auto near = [&](__int128 want) {
    return (size_t)std::max<__int128>(0, std::min<__int128>(want, (__int128)kMaxElements) + f.PickValueInArray<int64_t>({0, 0, 0, 1, -1}));
  };
  const size_t nc = near((__int128)N * rb);
  Span codes{c.arena.alloc(nc), nc, DType::F32};
  std::memset(codes.data, 0x5a, nc);
  Span dx = c.floats(near((__int128)M * K)), ds = c.floats(near((__int128)N * G)), dy = c.floats(near((__int128)M * N)), x = c.floats(near((__int128)M * K)),
       scales = c.floats(near((__int128)N * G)), zeros = spec.symmetric ? Span{nullptr, 0, DType::F32} : c.floats(near((__int128)N * G));
  (void)qf::quant_linear_backward(dx, ds, dy, x, M, codes, scales, zeros, N, K, spec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = [] { qf::set_num_threads(2); return true; }();
  (void)once;
  FuzzedDataProvider f(data, size);
  Ctx c{f, {}, {}};
  const int op = f.ConsumeIntegralInRange<int>(0, kNumEngineOps + 5);
  if (op < kNumEngineOps) kEngineOps[op](c);
  else if (op == kNumEngineOps) fuzz_block(c);
  else if (op == kNumEngineOps + 1) fuzz_llama_model(c);
  else if (op == kNumEngineOps + 2) fuzz_read_tensor(c);
  else if (op == kNumEngineOps + 3) fuzz_gptq(c);
  else if (op == kNumEngineOps + 4) fuzz_fpt_block(c);
  else fuzz_qlinear(c);
  return 0;
}
