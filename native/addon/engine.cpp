// N-API entry points of the engine (registered as exports.engine):
//   - every op of QF_ENGINE_OPS, bound without per-op code: each parameter of the op's
//     C++ signature is unwrapped by its type (Span: Float32Array or null, IdSpan:
//     Int32Array, int64_t: integer, float: number, bool: boolean), an optional last
//     `async` argument runs it on a worker thread; outputs are caller-owned (the
//     ops check every length natively, so nothing here is sized by an argument)
//   - ops() and kernels(): the op list and which tier implements each kernel
//   - the block step: the config object and buffers are copied into a baton
//     (BlockDesc) on the main thread; the worker computes on it with no N-API calls.
// Lengths are checked natively by the ops (engine_ops.cpp, engine_block.cpp).
#include <algorithm>
#include <cctype>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "napi_util.h"
#include "quantform/dispatch.h"
#include "quantform/engine.h"
#include "quantform/formats.h"

namespace qf {
namespace {

[[noreturn]] void fail(Code c, std::string msg) { throw ArgError{error(c, std::move(msg))}; }

std::string camel(const char* snake) {
  std::string out;
  for (const char* p = snake; *p; p++) {
    if (*p == '_' && p[1]) out += (char)std::toupper((unsigned char)*++p);
    else out += *p;
  }
  return out;
}

std::vector<std::string> split_names(const char* list) {
  std::vector<std::string> out(1);
  for (const char* p = list; *p; p++) {
    if (*p == ',') out.emplace_back();
    else if (*p != ' ') out.back() += *p;
  }
  return out;
}

constexpr size_t count_names(const char* s) { return *s == 0 ? 1 : (*s == ',' ? 1 : 0) + count_names(s + 1); }
template <class... A>
constexpr size_t arity(Status (*)(A...)) { return sizeof...(A); }

IdSpan arg_ids(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Span s = arg_int32(info, i, name);
  return IdSpan{static_cast<const int32_t*>(s.data), s.len};
}

void check_status(const Status& st) {
  if (!st.ok()) throw ArgError{st};
}

// One parameter of an op, unwrapped by its C++ type.
template <class T>
struct Unwrap;
template <>
struct Unwrap<Span> {
  static Span get(const Napi::CallbackInfo& info, size_t i, const char* name) { return f32_or_null(info, i, name); }
};
template <>
struct Unwrap<IdSpan> {
  static IdSpan get(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_ids(info, i, name); }
};
template <>
struct Unwrap<I8Span> {
  static I8Span get(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_int8(info, i, name); }
};
template <>
struct Unwrap<int64_t> {
  static int64_t get(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_int(info, i, name); }
};
template <>
struct Unwrap<float> {
  static float get(const Napi::CallbackInfo& info, size_t i, const char* name) { return (float)arg_number(info, i, name); }
};
template <>
struct Unwrap<bool> {
  static bool get(const Napi::CallbackInfo& info, size_t i, const char* name) { return arg_bool(info, i, name); }
};

template <class... A, size_t... I>
std::tuple<A...> unwrap_all(const Napi::CallbackInfo& info, const std::vector<std::string>& names,
                            std::index_sequence<I...>) {
  return std::tuple<A...>{Unwrap<A>::get(info, I, names[I].c_str())...};
}

// fn(args...) now, or on a worker thread when an extra `true` follows the arguments.
template <class... A>
Napi::Value call_op(const Napi::CallbackInfo& info, Status (*fn)(A...), const char* op, const char* arg_list) {
  constexpr size_t n = sizeof...(A);
  const std::vector<std::string> names = split_names(arg_list);
  if (info.Length() != n && info.Length() != n + 1)
    fail(Code::InvalidArgument, "Expected " + std::to_string(n) + " arguments (" + arg_list + ") [, async] for " + camel(op) +
                                    " but received " + std::to_string(info.Length()));
  const bool async = info.Length() == n + 1 && arg_bool(info, n, "async");
  const std::tuple<A...> args = unwrap_all<A...>(info, names, std::index_sequence_for<A...>{});
  std::vector<Napi::Value> keep;
  for (size_t i = 0; i < n; i++) keep.push_back(info[i]);
  return run_op(info, async, std::move(keep), [fn, args] { return std::apply(fn, args); },
                [](Napi::Env env) { return env.Undefined(); });
}

#define QF_BIND_OP(name, args)                                                                        \
  static_assert(count_names(args) == arity(&::qf::name), "argument names of " #name " do not match"); \
  Napi::Value name##_js(const Napi::CallbackInfo& info) { return call_op(info, &::qf::name, #name, args); }
QF_ENGINE_OPS(QF_BIND_OP)
#undef QF_BIND_OP

// ops() -> camelCase names of every op of the list (the test enumerator reads it).
Napi::Value ops_js(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env());
  uint32_t i = 0;
#define QF_OP_NAME(name, args) a.Set(i++, camel(#name));
  QF_ENGINE_OPS(QF_OP_NAME)
#undef QF_OP_NAME
  return a;
}

// kernels() -> [{ name, ref, avx2, avx512, active }]: which tier's code runs each kernel
// when that tier (or the active one) is selected.
Napi::Value kernels_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<KernelImpl> tiers[3] = {engine_kernel_impls(Tier::Ref), engine_kernel_impls(Tier::Avx2),
                                            engine_kernel_impls(Tier::Avx512)};
  const std::vector<KernelImpl> active = engine_kernel_impls(active_tier());
  Napi::Array a = Napi::Array::New(env, active.size());
  for (size_t i = 0; i < active.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", camel(active[i].name));
    o.Set("ref", tiers[0][i].impl);
    o.Set("avx2", tiers[1][i].impl);
    o.Set("avx512", tiers[2][i].impl);
    o.Set("active", active[i].impl);
    a.Set((uint32_t)i, o);
  }
  return a;
}

// ---------------------------------------------------------------------------
// The block step
// ---------------------------------------------------------------------------

double get_number(const Napi::Object& o, const char* key) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) fail(Code::InvalidArgument, std::string("Expected number for config.") + key);
  return v.As<Napi::Number>().DoubleValue();
}
int64_t get_int(const Napi::Object& o, const char* key) {
  const double d = get_number(o, key);
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0) || d != (double)(int64_t)d)
    fail(Code::InvalidArgument, std::string("Expected integer for config.") + key + " but received " + std::to_string(d));
  return (int64_t)d;
}
bool get_bool(const Napi::Object& o, const char* key, bool dflt) {
  const Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  if (!v.IsBoolean()) fail(Code::InvalidArgument, std::string("Expected boolean for config.") + key);
  return v.As<Napi::Boolean>().Value();
}

// A block description and what it owns: a copy of the RoPE inverse frequencies (the
// tables for positions [0, T) are built on the worker), the tables themselves, and the
// canonical weights of a packed block (E2E-QP) that desc.linear points to.
struct BlockBaton {
  BlockDesc desc;
  bool fq = false;                    // config.fq: EfficientQAT's learned fake quant
  bool packed = false;                // config.fq.packed: E2E-QP, the linears are packed codes
  std::vector<float> inv_freq;        // (hd/2)
  std::vector<float> cos, sin;        // (T, hd/2)
  CanonicalWeight canon[kBlockLinears] = {};
  Status tables() {
    const int64_t half = desc.dims.hd / 2, T = desc.dims.T;
    cos.resize((size_t)(T * half));
    sin.resize((size_t)(T * half));
    QF_TRY(rope_tables(Span{cos.data(), cos.size(), DType::F32}, Span{sin.data(), sin.size(), DType::F32},
                       Span{inv_freq.data(), inv_freq.size(), DType::F32}, T, desc.dims.hd));
    desc.rope_cos = cos.data();
    desc.rope_sin = sin.data();
    desc.rope_len = T;
    return Status::Ok();
  }
};

// config: { B, T, D, F, Hq, Hkv, hd, eps, invFreq: Float32Array (hd/2), bits (0: no fake quant),
//           groupSize, symmetric, teq, teqExtra?, fpt?, fq? }
std::shared_ptr<BlockBaton> read_config(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsObject()) fail(Code::InvalidArgument, "Expected a block config object");
  const Napi::Object o = info[i].As<Napi::Object>();
  auto b = std::make_shared<BlockBaton>();
  BlockDesc& d = b->desc;
  d.dims = BlockDims{get_int(o, "B"), get_int(o, "T"), get_int(o, "D"), get_int(o, "F"),
                     get_int(o, "Hq"), get_int(o, "Hkv"), get_int(o, "hd")};
  d.eps = (float)get_number(o, "eps");
  const int64_t bits = get_int(o, "bits");
  d.rtn = bits != 0;
  d.rtn_spec = QuantSpec{(int)bits, get_int(o, "groupSize"), get_bool(o, "symmetric", false), true};
  d.teq.on = get_bool(o, "teq", false);
  d.teq.extra = get_bool(o, "teqExtra", false);
  // fpt: { qk, v, mlp, residualScaling, hadamardBlock, actBits, inputBits, kvBits, merged, lpAct, lpWeight, lpP }
  const Napi::Value fv = o.Get("fpt");
  if (!fv.IsUndefined() && !fv.IsNull()) {
    if (!fv.IsObject()) fail(Code::InvalidArgument, "Expected an object or null for config.fpt");
    const Napi::Object f = fv.As<Napi::Object>();
    FptTransforms& t = d.fpt;
    t.on = true;
    t.qk = get_bool(f, "qk", false);
    t.v = get_bool(f, "v", false);
    t.v_hadamard = get_bool(f, "vHadamard", false);
    t.mlp = get_bool(f, "mlp", false);
    t.merged = get_bool(f, "merged", false);
    t.residual_scaling = get_bool(f, "residualScaling", false);
    auto opt_num = [&](const char* key, double dflt) { return f.Get(key).IsUndefined() ? dflt : get_number(f, key); };
    auto opt_int = [&](const char* key) { return f.Get(key).IsUndefined() ? (int64_t)0 : get_int(f, key); };
    t.hadamard_block = opt_int("hadamardBlock");
    t.act_bits = (int)std::min<int64_t>(opt_int("actBits"), 1 << 20);
    fpt_input_bits(f, t.input_bits);
    t.kv_bits = (int)std::min<int64_t>(opt_int("kvBits"), 1 << 20);
    t.lp_act = (float)opt_num("lpAct", 0);
    t.lp_weight = (float)opt_num("lpWeight", 0);
    t.lp_p = (float)opt_num("lpP", 4);
    // the checks below run before buffers are bound: a placeholder stands for the parameters and
    // the carry, which the entry points check and set
    static float placeholder = 1.f;
    t.params = &placeholder;
  }
  const Napi::Value fq = o.Get("fq");
  if (!fq.IsUndefined() && !fq.IsNull()) {
    if (!fq.IsObject()) fail(Code::InvalidArgument, "Expected an object { bits, groupSize, symmetric, packed } or null for config.fq");
    const Napi::Object f = fq.As<Napi::Object>();
    d.learned_fq.spec = QuantSpec{(int)get_int(f, "bits"), get_int(f, "groupSize"), get_bool(f, "symmetric", false), false};
    if (!qf_bits_supported(d.learned_fq.spec.bits))
      fail(Code::UnsupportedBits, "Expected bits in {2, 3, 4, 8} for config.fq.bits but received " + std::to_string(d.learned_fq.spec.bits));
    if (d.learned_fq.spec.group_size <= 0)
      fail(Code::InvalidArgument, "Expected positive integer for config.fq.groupSize but received " + std::to_string(d.learned_fq.spec.group_size));
    if (d.rtn || d.teq.on) fail(Code::InvalidArgument, "Expected config.fq without config.teq and with config.bits = 0");
    b->fq = true;
    b->packed = get_bool(f, "packed", false);
    // FPTQuant's merged step runs on packed codes (its range stage after GPTQ), not on a learned fake quant
    if (d.fpt.on && (!b->packed || !d.fpt.merged || !d.learned_fq.spec.symmetric))
      fail(Code::InvalidArgument, "Expected config.fq with config.fpt only as packed symmetric codes under a merged FPTQuant step");
    d.learned_fq.on = !b->packed;
  }
  check_status(check_block(d));
  const Span f = value_span(info.Env(), o.Get("invFreq"), "config.invFreq", DType::F32);
  if ((int64_t)f.len != d.dims.hd / 2)
    fail(Code::ShapeMismatch, "Expected hd/2 = " + std::to_string(d.dims.hd / 2) + " elements for config.invFreq but received " +
                                  std::to_string(f.len));
  const float* fp = static_cast<const float*>(f.data);
  b->inv_freq.assign(fp, fp + f.len);
  return b;
}

// The parameter arena: Float32Array (f32) or Uint16Array (bf16).
Span arena_span(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array)
    return arg_span(info, i, name, DType::BF16);
  return arg_span(info, i, name, DType::F32);
}

void set_teq_alpha(BlockDesc* d, const Span& alpha);
void bind_packed(BlockBaton* b, const Napi::Object& po, float* const* sc, float* const* zc, std::vector<Napi::Value>* keep);

// A typed array held in an object (method state, packed block): Float32Array, or Uint8Array bytes.
Span value_span(const Napi::Value& v, const std::string& name, bool bytes) {
  return bytes ? value_typed(v.Env(), v, name.c_str(), napi_uint8_array, "Uint8Array") : qf::value_span(v.Env(), v, name.c_str(), DType::F32);
}

// obj[key]: an array of 7 entries, one per linear (wq wk wv wo w_gate w_up w_down).
Napi::Array per_linear(const Napi::Object& obj, const char* what, const char* key) {
  const Napi::Value v = obj.Get(key);
  if (!v.IsArray() || v.As<Napi::Array>().Length() != kBlockLinears)
    fail(Code::InvalidArgument, std::string("Expected an array of 7 entries (one per linear) for ") + what + "." + key);
  return v.As<Napi::Array>();
}

// (rows, cols) of linear j and the groups of its learned quantizer.
void linear_dims(const BlockBaton& b, int j, int64_t* N, int64_t* K, QuantSpec* spec) {
  const BlockLayout L = block_layout(b.desc.dims);
  *N = L.linear[j].rows;
  *K = L.linear[j].cols;
  *spec = b.desc.learned_fq.spec;
  spec->group_size = std::min<int64_t>(spec->group_size, *K);
}

// Step sizes and zero points of EfficientQAT ({ scales, zeros }: 7 entries each, Float32Array (N, G)
// or null), or its gradients; values are kept alive in `keep` while a worker reads them.
void read_fq_arrays(const BlockBaton& b, const Napi::Object& obj, const char* what, bool grads, float* scales[kBlockLinears],
                    float* zeros[kBlockLinears], std::vector<Napi::Value>* keep) {
  const Napi::Array S = per_linear(obj, what, "scales"), Z = per_linear(obj, what, "zeros");
  for (uint32_t j = 0; j < (uint32_t)kBlockLinears; j++) {
    int64_t N, K;
    QuantSpec spec;
    linear_dims(b, (int)j, &N, &K, &spec);
    const size_t NG = (size_t)(N * qf_num_groups(K, spec.group_size));
    const Napi::Value sv = S.Get(j), zv = Z.Get(j);
    const std::string at = std::string(what) + ".scales[" + std::to_string(j) + "]";
    const std::string atz = std::string(what) + ".zeros[" + std::to_string(j) + "]";
    scales[j] = zeros[j] = nullptr;
    if (!sv.IsNull() && !sv.IsUndefined()) {
      const Span sp = value_span(sv, at, false);
      if (sp.len != NG)
        fail(Code::ShapeMismatch, "Expected " + std::to_string(NG) + " elements (N, G) for " + at + " but received " + std::to_string(sp.len));
      scales[j] = static_cast<float*>(sp.data);
      keep->push_back(sv);
    }
    if (!zv.IsNull() && !zv.IsUndefined()) {
      if (spec.symmetric) fail(Code::InvalidArgument, "Expected null for " + atz + " (symmetric quantization has no zero points)");
      const Span zp = value_span(zv, atz, false);
      if (zp.len != NG)
        fail(Code::ShapeMismatch, "Expected " + std::to_string(NG) + " elements (N, G) for " + atz + " but received " + std::to_string(zp.len));
      zeros[j] = static_cast<float*>(zp.data);
      keep->push_back(zv);
    } else if (scales[j] && !spec.symmetric && !grads) {
      fail(Code::InvalidArgument, "Expected a Float32Array for " + atz + " (asymmetric quantization)");
    }
  }
}

// The block's weights and method state: params is an arena (Float32Array f32, Uint16Array bf16)
// or a packed block { attnNorm, ffnNorm: Float32Array (D), codes: Uint8Array[7] (N, row_bytes) }
// whose step sizes and zero points are the method state's (E2E-QP); method is null, TEQ's alpha
// (Float32Array) or EfficientQAT's { scales, zeros } (config.fq).
void bind_block(BlockBaton* b, const Napi::CallbackInfo& info, size_t ip, size_t im, std::vector<Napi::Value>* keep) {
  BlockDesc& d = b->desc;
  const Napi::Value m = info[im];
  const bool fq_state = m.IsObject() && !m.IsTypedArray() && !m.IsNull();
  if (fq_state && !b->fq) fail(Code::InvalidArgument, "Expected config.fq with a { scales, zeros } method state");
  if (b->fq && !fq_state) fail(Code::InvalidArgument, "Expected a { scales, zeros } method state with config.fq");
  if (!fq_state) set_teq_alpha(&d, f32_or_null(info, im, "alpha"));
  float* sc[kBlockLinears];
  float* zc[kBlockLinears];
  if (fq_state) read_fq_arrays(*b, m.As<Napi::Object>(), "method", false, sc, zc, keep);
  const Napi::Value p = info[ip];
  if (b->packed == p.IsTypedArray())
    fail(Code::InvalidArgument, b->packed ? "Expected a packed block { attnNorm, ffnNorm, codes } for params with config.fq.packed"
                                          : "Expected a parameter arena for params (config.fq.packed is false)");
  if (p.IsTypedArray()) {
    check_status(block_bind_arena(&d, arena_span(info, ip, "params")));
    if (fq_state)
      for (int j = 0; j < kBlockLinears; j++) {
        d.learned_fq.scales[j] = sc[j];
        d.learned_fq.zeros[j] = zc[j];
      }
    return;
  }
  if (!p.IsObject() || p.IsNull()) fail(Code::InvalidArgument, "Expected a packed block { attnNorm, ffnNorm, codes } for params");
  bind_packed(b, p.As<Napi::Object>(), sc, zc, keep);
}

// A packed block { attnNorm, ffnNorm: Float32Array (D), codes: Uint8Array[7] (N, row_bytes) } with the
// step sizes sc and zero points zc of each linear: desc.linear become Quantized sources on them.
void bind_packed(BlockBaton* b, const Napi::Object& po, float* const* sc, float* const* zc, std::vector<Napi::Value>* keep) {
  BlockDesc& d = b->desc;
  const int64_t D = d.dims.D;
  for (const char* key : {"attnNorm", "ffnNorm"}) {
    const Napi::Value v = po.Get(key);
    const Span s = value_span(v, std::string("params.") + key, false);
    if ((int64_t)s.len != D)
      fail(Code::ShapeMismatch, "Expected " + std::to_string(D) + " elements (D) for params." + key + " but received " + std::to_string(s.len));
    WeightSource w;
    w.kind = WeightSource::Kind::F32;
    w.data = s.data;
    (std::string(key) == "attnNorm" ? d.attn_norm : d.ffn_norm) = w;
    keep->push_back(v);
  }
  const Napi::Array C = per_linear(po, "params", "codes");
  for (uint32_t j = 0; j < (uint32_t)kBlockLinears; j++) {
    int64_t N, K;
    QuantSpec spec;
    linear_dims(*b, (int)j, &N, &K, &spec);
    if (!sc[j]) fail(Code::InvalidArgument, "Expected step sizes method.scales[" + std::to_string(j) + "] for a packed block");
    const Napi::Value cv = C.Get(j);
    const Span codes = value_span(cv, "params.codes[" + std::to_string(j) + "]", true);
    keep->push_back(cv);
    const size_t NG = (size_t)(N * qf_num_groups(K, spec.group_size));
    b->canon[j] = CanonicalWeight{codes, Span{sc[j], NG, DType::F32}, Span{zc[j], zc[j] ? NG : 0, DType::F32}, N, K, spec};
    check_status(check_canonical(b->canon[j]));
    d.linear[j].kind = WeightSource::Kind::Quantized;
    d.linear[j].canon = &b->canon[j];
    d.linear[j].prepared = nullptr;
  }
}

void set_teq_alpha(BlockDesc* d, const Span& alpha) {
  if (!d->teq.on) {
    if (alpha.data) fail(Code::InvalidArgument, "Expected alpha null when config.teq is false");
    return;
  }
  const int64_t want = block_alpha_count(*d);
  if (!alpha.data || (int64_t)alpha.len != want)
    fail(Code::ShapeMismatch, "Expected " + std::to_string(want) + " elements for alpha but received " +
                                  std::to_string(alpha.data ? (int64_t)alpha.len : 0));
  d->teq.alpha = static_cast<const float*>(alpha.data);
}

// blockSizes(config) -> { params, saved, alpha }
Napi::Value block_sizes_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("params", (double)block_param_count(b->desc.dims));
  o.Set("saved", (double)block_saved_count(b->desc));
  o.Set("alpha", (double)block_alpha_count(b->desc));
  o.Set("fpt", (double)fpt_layout(b->desc.dims).total);
  return o;
}

// blockLayout(config) -> { total, attn_norm: { offset, rows, cols }, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down }
Napi::Value block_layout_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const BlockLayout L = block_layout(b->desc.dims);
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  auto put = [&](const BlockTensorSlot& s) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("offset", (double)s.offset);
    t.Set("rows", (double)s.rows);
    t.Set("cols", (double)s.cols);
    o.Set(s.name, t);
  };
  put(L.attn_norm);
  for (int j = kWq; j <= kWo; j++) put(L.linear[j]);
  put(L.ffn_norm);
  for (int j = kWGate; j <= kWDown; j++) put(L.linear[j]);
  o.Set("total", (double)L.total);
  return o;
}

// blockSavedLayout(config) -> { total, x, rstd1, xn1, xs1, q, k, v, probs, att, atts, h, rstd2, xn2, xs2, g, u, a, as, eff }
Napi::Value block_saved_layout_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const BlockSavedLayout L = block_saved_layout(b->desc);
  Napi::Object o = Napi::Object::New(info.Env());
  const std::pair<const char*, int64_t> at[] = {{"x", L.x},       {"rstd1", L.rstd1}, {"xn1", L.xn1}, {"xs1", L.xs1},
                                                {"q", L.q},       {"k", L.k},         {"v", L.v},     {"probs", L.probs},
                                                {"att", L.att},   {"atts", L.atts},   {"h", L.h},     {"rstd2", L.rstd2},
                                                {"xn2", L.xn2},   {"xs2", L.xs2},     {"g", L.g},     {"u", L.u},
                                                {"a", L.a},       {"as", L.as},       {"eff", L.eff}, {"c", L.c},
                                                {"kr", L.kr},     {"vr", L.vr},       {"ao", L.ao},   {"ah", L.ah},
                                                {"total", L.total}};
  for (const auto& kv : at) o.Set(kv.first, (double)kv.second);
  return o;
}

// blockForward(config, out, saved | null, x, params, method | null, async): params and method as bind_block reads them
Napi::Value block_forward_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span out = arg_span(info, 1, "out", DType::F32), saved = f32_or_null(info, 2, "saved"),
             x = arg_span(info, 3, "x", DType::F32);
  std::vector<Napi::Value> keep{info[1], info[2], info[3], info[4], info[5]};
  bind_block(b.get(), info, 4, 5, &keep);
  return run_op(info, arg_bool(info, 6, "async"), std::move(keep),
                [b, out, saved, x] {
                  QF_TRY(b->tables());
                  Workspace ws;
                  return block_forward(out, saved, x, b->desc, nullptr, &ws);
                },
                [](Napi::Env env) { return env.Undefined(); });
}

// The block backward of a bound baton (blockBackward, fptBlockBackward), now or on a worker (argument 8: async).
Napi::Value run_block_backward(const Napi::CallbackInfo& info, const std::shared_ptr<BlockBaton>& b, std::vector<Napi::Value> keep,
                               const BlockGrads& g, const Span& dx, const Span& dout, const Span& saved) {
  return run_op(info, arg_bool(info, 8, "async"), std::move(keep),
                [b, g, dx, dout, saved] {
                  QF_TRY(b->tables());
                  Workspace ws;
                  return block_backward(dx, g, dout, saved, b->desc, &ws);
                },
                [](Napi::Env env) { return env.Undefined(); });
}

// blockBackward(config, dx, grads | null, methodGrads | null, dout, saved, params, method | null, async):
// methodGrads is TEQ's dalpha or EfficientQAT's { scales, zeros } gradients (accumulated; null entries skipped)
Napi::Value block_backward_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span dx = arg_span(info, 1, "dx", DType::F32), grads = f32_or_null(info, 2, "grads"),
             dout = arg_span(info, 4, "dout", DType::F32), saved = arg_span(info, 5, "saved", DType::F32);
  std::vector<Napi::Value> keep{info[1], info[2], info[3], info[4], info[5], info[6], info[7]};
  bind_block(b.get(), info, 6, 7, &keep);
  BlockGrads g;
  if (b->fq) {
    if (!info[3].IsObject() || info[3].IsTypedArray())
      fail(Code::InvalidArgument, "Expected { scales, zeros } gradients for methodGrads with config.fq");
    read_fq_arrays(*b, info[3].As<Napi::Object>(), "methodGrads", true, g.fq_scales, g.fq_zeros, &keep);
  }
  const Span dalpha = b->fq ? Span{nullptr, 0, DType::F32} : f32_or_null(info, 3, "dalpha");
  if (grads.data) {
    if ((int64_t)grads.len != block_param_count(b->desc.dims))
      fail(Code::ShapeMismatch, "Expected " + std::to_string(block_param_count(b->desc.dims)) +
                                    " elements for grads but received " + std::to_string(grads.len));
    g.params = static_cast<float*>(grads.data);
  }
  if (b->desc.teq.on) {
    if (!dalpha.data || (int64_t)dalpha.len != block_alpha_count(b->desc))
      fail(Code::ShapeMismatch, "Expected " + std::to_string(block_alpha_count(b->desc)) + " elements for dalpha but received " +
                                    std::to_string(dalpha.data ? (int64_t)dalpha.len : 0));
    g.alpha = static_cast<float*>(dalpha.data);
  }
  return run_block_backward(info, b, std::move(keep), g, dx, dout, saved);
}

// blockMergeScales(config, params, alpha): TEQ's merge into one f32 arena, in place.
Napi::Value block_merge_scales_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  check_status(block_merge_scales(arg_span(info, 1, "params", DType::F32), arg_span(info, 2, "alpha", DType::F32),
                                  b->desc.dims, b->desc.teq.extra));
  return info.Env().Undefined();
}

// FPTQuant's parameters of one block: bound after the arena, lengths checked.
void bind_fpt(BlockDesc* d, const Span& params, const Span& c_in, const Span& c_out, const Span& lp_out) {
  if (!d->fpt.on) fail(Code::InvalidArgument, "Expected config.fpt for an FPTQuant block step");
  const int64_t P = fpt_layout(d->dims).total, BT = d->dims.BT();
  if (!params.data || (int64_t)params.len != P)
    fail(Code::ShapeMismatch, "Expected " + std::to_string(P) + " elements for fptParams but received " +
                                  std::to_string(params.data ? (int64_t)params.len : 0));
  d->fpt.params = static_cast<const float*>(params.data);
  d->fpt.c_in = nullptr;
  d->fpt.c_out = nullptr;
  if (c_in.data) {
    if ((int64_t)c_in.len != BT) fail(Code::ShapeMismatch, "Expected " + std::to_string(BT) + " elements (BT) for cIn but received " + std::to_string(c_in.len));
    d->fpt.c_in = static_cast<const float*>(c_in.data);
  }
  if (c_out.data) {
    if ((int64_t)c_out.len != BT) fail(Code::ShapeMismatch, "Expected " + std::to_string(BT) + " elements (BT) for cOut but received " + std::to_string(c_out.len));
    d->fpt.c_out = static_cast<float*>(c_out.data);
  }
  d->fpt.lp_out = nullptr;
  if (lp_out.data) {
    if (lp_out.len != 1) fail(Code::ShapeMismatch, "Expected 1 element for lpOut but received " + std::to_string(lp_out.len));
    d->fpt.lp_out = static_cast<float*>(lp_out.data);
  }
}

// FPTQuant's block weights: an arena (Float32Array f32, Uint16Array bf16), or with config.fq.packed a
// packed block { attnNorm, ffnNorm, codes, scales, zeros } (E2E-QP of the merged model: the codes of
// each linear and its step sizes / zero points, as blockForward's block and method state); with grads
// (the backward) also its { scales, zeros } gradients at params.grads, accumulated.
void bind_fpt_weights(BlockBaton* b, const Napi::CallbackInfo& info, size_t ip, std::vector<Napi::Value>* keep, BlockGrads* g) {
  const Napi::Value p = info[ip];
  if (b->packed == p.IsTypedArray())
    fail(Code::InvalidArgument, b->packed ? "Expected a packed block { attnNorm, ffnNorm, codes, scales, zeros } for params with config.fq.packed"
                                          : "Expected a parameter arena for params (config.fq.packed is false)");
  if (!b->packed) {
    if (b->fq) fail(Code::InvalidArgument, "Expected config.fq only with packed: true for an FPTQuant block step");
    check_status(block_bind_arena(&b->desc, arena_span(info, ip, "params")));
    return;
  }
  if (!p.IsObject() || p.IsNull()) fail(Code::InvalidArgument, "Expected a packed block { attnNorm, ffnNorm, codes, scales, zeros } for params");
  const Napi::Object po = p.As<Napi::Object>();
  float* sc[kBlockLinears];
  float* zc[kBlockLinears];
  read_fq_arrays(*b, po, "params", false, sc, zc, keep);
  bind_packed(b, po, sc, zc, keep);
  if (!g) return;
  const Napi::Value gv = po.Get("grads");
  if (!gv.IsObject() || gv.IsTypedArray() || gv.IsNull()) fail(Code::InvalidArgument, "Expected { scales, zeros } gradients for params.grads");
  read_fq_arrays(*b, gv.As<Napi::Object>(), "params.grads", true, g->fq_scales, g->fq_zeros, keep);
}

// fptLayout(config) -> { qkLogScale, qkAngle, vLu, mlpLogScale, actLogScale, kvLogScale, total }
Napi::Value fpt_layout_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const FptLayout L = fpt_layout(b->desc.dims);
  Napi::Object o = Napi::Object::New(info.Env());
  const std::pair<const char*, int64_t> at[] = {{"qkLogScale", L.qk_log_scale}, {"qkAngle", L.qk_angle}, {"vLu", L.v_lu},
                                                {"mlpLogScale", L.mlp_log_scale}, {"actLogScale", L.act_log_scale},
                                                {"kvLogScale", L.kv_log_scale},   {"total", L.total}};
  for (const auto& kv : at) o.Set(kv.first, (double)kv.second);
  return o;
}

// fptBlockForward(config, out, saved | null, x, params, fptParams, cIn | null, cOut | null, lpOut | null, async);
// params: an arena, or a packed block with its step sizes (bind_fpt_weights)
Napi::Value fpt_block_forward_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span out = arg_span(info, 1, "out", DType::F32), saved = f32_or_null(info, 2, "saved"),
             x = arg_span(info, 3, "x", DType::F32), fparams = arg_span(info, 5, "fptParams", DType::F32),
             cin = f32_or_null(info, 6, "cIn"), cout = f32_or_null(info, 7, "cOut"), lp = f32_or_null(info, 8, "lpOut");
  std::vector<Napi::Value> keep{info[1], info[2], info[3], info[4], info[5], info[6], info[7], info[8]};
  bind_fpt_weights(b.get(), info, 4, &keep, nullptr);
  bind_fpt(&b->desc, fparams, cin, cout, lp);
  return run_op(info, arg_bool(info, 9, "async"), std::move(keep),
                [b, out, saved, x] {
                  QF_TRY(b->tables());
                  Workspace ws;
                  return block_forward(out, saved, x, b->desc, nullptr, &ws);
                },
                [](Napi::Env env) { return env.Undefined(); });
}

// fptBlockBackward(config, dx, dFpt, dc | null, dout, saved, params, fptParams, async): dFpt (and a packed
// block's params.grads) accumulated; with
// residualScaling dc (BT) holds dL/dc_out and becomes dL/dc_in.
Napi::Value fpt_block_backward_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span dx = arg_span(info, 1, "dx", DType::F32), dfpt = arg_span(info, 2, "dFpt", DType::F32),
             dc = f32_or_null(info, 3, "dc"), dout = arg_span(info, 4, "dout", DType::F32),
             saved = arg_span(info, 5, "saved", DType::F32), fparams = arg_span(info, 7, "fptParams", DType::F32);
  std::vector<Napi::Value> keep{info[1], info[2], info[3], info[4], info[5], info[6], info[7]};
  BlockGrads g;
  bind_fpt_weights(b.get(), info, 6, &keep, &g);
  bind_fpt(&b->desc, fparams, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32});
  const int64_t P = fpt_layout(b->desc.dims).total, BT = b->desc.dims.BT();
  if ((int64_t)dfpt.len != P) fail(Code::ShapeMismatch, "Expected " + std::to_string(P) + " elements for dFpt but received " + std::to_string(dfpt.len));
  g.fpt = static_cast<float*>(dfpt.data);
  if (b->desc.fpt.residual_scaling) {
    if (!dc.data || (int64_t)dc.len != BT)
      fail(Code::ShapeMismatch, "Expected " + std::to_string(BT) + " elements (BT) for dc but received " + std::to_string(dc.data ? (int64_t)dc.len : 0));
    g.dc = static_cast<float*>(dc.data);
  }
  return run_block_backward(info, b, std::move(keep), g, dx, dout, saved);
}

// fptMerge(config, params, fptParams, rotation | null): the enabled transforms (and the residual rotation) merged
// into one f32 arena, in place.
Napi::Value fpt_merge_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span params = arg_span(info, 1, "params", DType::F32), fparams = arg_span(info, 2, "fptParams", DType::F32),
             rot = f32_or_null(info, 3, "rotation");
  bind_fpt(&b->desc, fparams, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32});
  check_status(fpt_merge(params, rot, b->desc.dims, b->desc.fpt));
  return info.Env().Undefined();
}

// fptCheck(config, fptParams): throws QF_NON_FINITE when the parameters give no valid step.
Napi::Value fpt_check_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span fparams = arg_span(info, 1, "fptParams", DType::F32);
  bind_fpt(&b->desc, fparams, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32});
  check_status(fpt_check_params(fparams, b->desc.dims, b->desc.fpt));
  return info.Env().Undefined();
}

// fptMergeBackward(config, dFpt, deff, params, fptParams): dFpt += the merge's backward of deff.
Napi::Value fpt_merge_backward_js(const Napi::CallbackInfo& info) {
  const auto b = read_config(info, 0);
  const Span dfpt = arg_span(info, 1, "dFpt", DType::F32), deff = arg_span(info, 2, "deff", DType::F32),
             params = arg_span(info, 3, "params", DType::F32), fparams = arg_span(info, 4, "fptParams", DType::F32);
  bind_fpt(&b->desc, fparams, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32}, Span{nullptr, 0, DType::F32});
  check_status(fpt_merge_backward(dfpt, deff, params, b->desc.dims, b->desc.fpt));
  return info.Env().Undefined();
}

// lmHeadLoss(nll, dx | null, dnorm | null, dhead | null, x, normWeight, head, targets, BT, D, V, eps, lossScale, async)
Napi::Value lm_head_loss_js(const Napi::CallbackInfo& info) {
  const Span nll = arg_span(info, 0, "nll", DType::F32), dx = f32_or_null(info, 1, "dx"),
             dnorm = f32_or_null(info, 2, "dnorm"), dhead = f32_or_null(info, 3, "dhead"),
             x = arg_span(info, 4, "x", DType::F32), nw = arg_span(info, 5, "normWeight", DType::F32),
             head = arg_span(info, 6, "head", DType::F32);
  const IdSpan targets = arg_ids(info, 7, "targets");
  const int64_t BT = arg_int(info, 8, "BT"), D = arg_int(info, 9, "D"), V = arg_int(info, 10, "V");
  const float eps = (float)arg_number(info, 11, "eps"), scale = (float)arg_number(info, 12, "lossScale");
  return run_op(info, arg_bool(info, 13, "async"), {info[0], info[1], info[2], info[3], info[4], info[5], info[6], info[7]},
                [=] { return lm_head_loss(nll, dx, dnorm, dhead, x, nw, head, targets, BT, D, V, eps, scale); },
                [](Napi::Env env) { return env.Undefined(); });
}

}  // namespace

void register_engine(Napi::Env env, Napi::Object root) {
  Napi::Object exports = Napi::Object::New(env);
  root.Set("engine", exports);
#define QF_REGISTER_OP(name, args) QF_EXPORT_IN(exports, "engine", camel(#name).c_str(), name##_js);
  QF_ENGINE_OPS(QF_REGISTER_OP)
#undef QF_REGISTER_OP
  QF_EXPORT_IN(exports, "engine", "ops", ops_js);
  QF_EXPORT_IN(exports, "engine", "kernels", kernels_js);
  QF_EXPORT_IN(exports, "engine", "blockSizes", block_sizes_js);
  QF_EXPORT_IN(exports, "engine", "blockLayout", block_layout_js);
  QF_EXPORT_IN(exports, "engine", "blockSavedLayout", block_saved_layout_js);
  QF_EXPORT_IN(exports, "engine", "blockForward", block_forward_js);
  QF_EXPORT_IN(exports, "engine", "blockBackward", block_backward_js);
  QF_EXPORT_IN(exports, "engine", "blockMergeScales", block_merge_scales_js);
  QF_EXPORT_IN(exports, "engine", "lmHeadLoss", lm_head_loss_js);
  QF_EXPORT_IN(exports, "engine", "fptLayout", fpt_layout_js);
  QF_EXPORT_IN(exports, "engine", "fptBlockForward", fpt_block_forward_js);
  QF_EXPORT_IN(exports, "engine", "fptBlockBackward", fpt_block_backward_js);
  QF_EXPORT_IN(exports, "engine", "fptMerge", fpt_merge_js);
  QF_EXPORT_IN(exports, "engine", "fptCheck", fpt_check_js);
  QF_EXPORT_IN(exports, "engine", "fptMergeBackward", fpt_merge_backward_js);
}

}  // namespace qf
