// N-API entry points of the Llama family: one function per forward op (for tests
// and for callers composing their own graphs) and the LlamaModel class, which
// keeps weights and the KV cache in native memory and runs a whole forward pass
// per call. Arguments arrive validated by lib/model/; lengths are re-checked in
// llama_ops.cpp / llama_model.cpp.
#include <atomic>
#include <memory>

#include "napi_util.h"
#include "quantform/llama_model.h"
#include "quantform/llama_ops.h"

namespace qf {
namespace {

[[noreturn]] void fail(Status st) { throw ArgError{std::move(st)}; }

struct I32Span {
  int32_t* data;
  size_t len;
};

I32Span arg_i32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Span s = arg_int32(info, i, name);
  return I32Span{static_cast<int32_t*>(s.data), s.len};
}

float* f32(const Span& s) { return static_cast<float*>(s.data); }

Napi::Float32Array new_f32(Napi::Env env, size_t n, float** data) {
  Span s;
  Napi::Object a = make_float_array(env, DType::F32, n, &s);
  *data = static_cast<float*>(s.data);
  return a.As<Napi::Float32Array>();
}

void check(const Status& st) {
  if (!st.ok()) fail(st);
}

// embeddingForward(tokens Int32Array (N), wte (V, C), C) -> (N, C)
Napi::Value embedding_js(const Napi::CallbackInfo& info) {
  I32Span tok = arg_i32(info, 0, "tokens");
  Span wte = arg_span(info, 1, "wte", DType::F32);
  const int64_t C = arg_int(info, 2, "C");
  float* o;
  Napi::Float32Array out = new_f32(info.Env(), tok.len * (size_t)std::max<int64_t>(C, 0), &o);
  check(embedding_forward(o, out.ElementLength(), tok.data, tok.len, f32(wte), wte.len, C));
  return out;
}

// rmsnormForward(inp (N, C), weight (C), C, eps) -> { out (N, C), rstd (N) }
Napi::Value rmsnorm_js(const Napi::CallbackInfo& info) {
  Span inp = arg_span(info, 0, "inp", DType::F32);
  Span w = arg_span(info, 1, "weight", DType::F32);
  const int64_t C = arg_int(info, 2, "C");
  const float eps = (float)arg_number(info, 3, "eps");
  if (C <= 0) fail(error(Code::InvalidArgument, "Expected positive integer for C but received " + std::to_string(C)));
  float *o, *r;
  Napi::Float32Array out = new_f32(info.Env(), inp.len, &o);
  Napi::Float32Array rstd = new_f32(info.Env(), inp.len / (size_t)C, &r);
  check(rmsnorm_forward(o, out.ElementLength(), r, rstd.ElementLength(), f32(inp), inp.len, f32(w), w.len, C, eps));
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("out", out);
  res.Set("rstd", rstd);
  return res;
}

// matmulForward(inp (M, K), weight (N, K), bias (N) | null, M, N, K, async) -> (M, N)
Napi::Value matmul_js(const Napi::CallbackInfo& info) {
  Span inp = arg_span(info, 0, "inp", DType::F32);
  Span w = arg_span(info, 1, "weight", DType::F32);
  Span bias{nullptr, 0, DType::F32};
  if (!arg_is_null(info, 2)) bias = arg_span(info, 2, "bias", DType::F32);
  const int64_t M = arg_int(info, 3, "M"), N = arg_int(info, 4, "N"), K = arg_int(info, 5, "K");
  const bool async = arg_bool(info, 6, "async");
  if (M <= 0 || N <= 0 || K <= 0 || M > ((int64_t)1 << 31) || N > ((int64_t)1 << 31))
    fail(error(Code::InvalidArgument, "Expected positive M, N, K below 2^31 but received M=" + std::to_string(M) +
                                          ", N=" + std::to_string(N) + ", K=" + std::to_string(K)));
  float* o;
  Napi::Float32Array out = new_f32(info.Env(), (size_t)(M * N), &o);
  const size_t no = out.ElementLength();
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
  return run_op(info, async, {info[0], info[1], info[2], out},
                [=] { return matmul_forward(o, no, f32(inp), inp.len, f32(w), w.len, f32(bias), bias.len, M, N, K); },
                [ref](Napi::Env) { return ref->Value(); });
}

// ropeForward(x (N, H, HS), pos Int32Array (N), cos (S, HS/2), sin (S, HS/2), H, HS) -> rotated copy
Napi::Value rope_js(const Napi::CallbackInfo& info) {
  Span x = arg_span(info, 0, "x", DType::F32);
  I32Span pos = arg_i32(info, 1, "pos");
  Span c = arg_span(info, 2, "cos", DType::F32);
  Span s = arg_span(info, 3, "sin", DType::F32);
  const int64_t H = arg_int(info, 4, "H"), HS = arg_int(info, 5, "HS");
  if (c.len != s.len) fail(error(Code::ShapeMismatch, "Expected cos and sin tables of equal length but received " + std::to_string(c.len) + " and " + std::to_string(s.len)));
  float* o;
  Napi::Float32Array out = new_f32(info.Env(), x.len, &o);
  std::copy(f32(x), f32(x) + x.len, o);
  check(rope_forward(o, out.ElementLength(), pos.data, pos.len, f32(c), f32(s), c.len, H, HS));
  return out;
}

// attentionForward(q (B, T, NH, HS), kc, vc (B, S, NKV, HS), B, T, NH, NKV, HS, S, pos0)
//   -> { out (B, T, NH, HS), att (B, NH, T, pos0 + T) }
Napi::Value attention_js(const Napi::CallbackInfo& info) {
  Span q = arg_span(info, 0, "q", DType::F32);
  Span kc = arg_span(info, 1, "kcache", DType::F32);
  Span vc = arg_span(info, 2, "vcache", DType::F32);
  const int64_t B = arg_int(info, 3, "B"), T = arg_int(info, 4, "T"), NH = arg_int(info, 5, "NH"),
                NKV = arg_int(info, 6, "NKV"), HS = arg_int(info, 7, "HS"), S = arg_int(info, 8, "S"),
                pos0 = arg_int(info, 9, "pos0");
  if (kc.len != vc.len) fail(error(Code::ShapeMismatch, "Expected kcache and vcache of equal length but received " + std::to_string(kc.len) + " and " + std::to_string(vc.len)));
  if (B <= 0 || T <= 0 || NH <= 0 || pos0 < 0 || B * NH * T * (pos0 + T) > ((int64_t)1 << 31))
    fail(error(Code::InvalidArgument, "Expected positive B, T, NH and pos0 >= 0 with B*NH*T*(pos0+T) < 2^31"));
  float *o, *a;
  Napi::Float32Array out = new_f32(info.Env(), q.len, &o);
  Napi::Float32Array att = new_f32(info.Env(), (size_t)(B * NH * T * (pos0 + T)), &a);
  check(attention_forward(o, out.ElementLength(), a, att.ElementLength(), f32(q), q.len, f32(kc), f32(vc), kc.len, B, T,
                          NH, NKV, HS, S, pos0));
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("out", out);
  res.Set("att", att);
  return res;
}

// swigluForward(gate, up) -> silu(gate) * up
Napi::Value swiglu_js(const Napi::CallbackInfo& info) {
  Span g = arg_span(info, 0, "gate", DType::F32);
  Span u = arg_span(info, 1, "up", DType::F32);
  if (g.len != u.len) fail(error(Code::ShapeMismatch, "Expected gate and up of equal length but received " + std::to_string(g.len) + " and " + std::to_string(u.len)));
  float* o;
  Napi::Float32Array out = new_f32(info.Env(), g.len, &o);
  check(swiglu_forward(o, out.ElementLength(), f32(g), f32(u), u.len));
  return out;
}

// residualForward(a, b) -> a + b
Napi::Value residual_js(const Napi::CallbackInfo& info) {
  Span a = arg_span(info, 0, "a", DType::F32);
  Span b = arg_span(info, 1, "b", DType::F32);
  if (a.len != b.len) fail(error(Code::ShapeMismatch, "Expected a and b of equal length but received " + std::to_string(a.len) + " and " + std::to_string(b.len)));
  float* o;
  Napi::Float32Array out = new_f32(info.Env(), a.len, &o);
  check(residual_forward(o, out.ElementLength(), f32(a), f32(b), b.len));
  return out;
}

double get_number(const Napi::Object& o, const char* key) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) fail(error(Code::InvalidArgument, std::string("Expected number for config.") + key));
  return v.As<Napi::Number>().DoubleValue();
}

int64_t get_int(const Napi::Object& o, const char* key) {
  const double d = get_number(o, key);
  if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d)
    fail(error(Code::InvalidArgument, std::string("Expected non-negative integer for config.") + key + " but received " + std::to_string(d)));
  return (int64_t)d;
}

class LlamaModelWrap : public Napi::ObjectWrap<LlamaModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LlamaModel",
                       {InstanceMethod("setWeight", &LlamaModelWrap::SetWeight),
                        InstanceMethod("setQuantizedWeight", &LlamaModelWrap::SetQuantizedWeight),
                        InstanceMethod("missing", &LlamaModelWrap::Missing),
                        InstanceMethod("forward", &LlamaModelWrap::Forward),
                        InstanceMethod("dispose", &LlamaModelWrap::Dispose)});
  }

  // new LlamaModel({ dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize, maxSeq, normEps,
  //                  invFreq: Float32Array (headDim/2), tied })
  explicit LlamaModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LlamaModelWrap>(info) {
    guarded(info, "new LlamaModel", [&] {
      if (!info[0].IsObject()) fail(error(Code::InvalidArgument, "Expected config object"));
      Napi::Object o = info[0].As<Napi::Object>();
      LlamaConfig c;
      c.dim = get_int(o, "dim");
      c.hidden_dim = get_int(o, "hiddenDim");
      c.n_layers = get_int(o, "nLayers");
      c.n_heads = get_int(o, "nHeads");
      c.n_kv_heads = get_int(o, "nKvHeads");
      c.head_dim = get_int(o, "headDim");
      c.vocab_size = get_int(o, "vocabSize");
      c.max_seq = get_int(o, "maxSeq");
      c.norm_eps = (float)get_number(o, "normEps");
      Napi::Value f = o.Get("invFreq");
      if (!f.IsTypedArray() || f.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        fail(error(Code::InvalidArgument, "Expected Float32Array for config.invFreq"));
      Napi::Float32Array fa = f.As<Napi::Float32Array>();
      c.inv_freq.assign(fa.Data(), fa.Data() + fa.ElementLength());
      std::unique_ptr<LlamaModel> m;
      check(LlamaModel::create(c, &m));
      model_ = std::move(m);
      model_->tie_lm_head(o.Get("tied").ToBoolean().Value());
      return info.Env().Undefined();
    });
  }

 private:
  LlamaModel& live() {
    if (!model_) fail(error(Code::InvalidArgument, "LlamaModel was disposed"));
    if (busy_) fail(error(Code::InvalidArgument, "LlamaModel is busy with an async forward; await it first"));
    return *model_;
  }

  Napi::Value SetWeight(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.setWeight", [&] {
      LlamaModel& m = live();
      const std::string name = arg_string(info, 0, "name");
      Span w = arg_span(info, 1, "data", DType::F32);
      check(m.set_weight(name, f32(w), w.len));
      return info.Env().Undefined();
    });
  }

  // setQuantizedWeight(name, codes Uint8Array, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric)
  Napi::Value SetQuantizedWeight(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.setQuantizedWeight", [&] {
      LlamaModel& m = live();
      const std::string name = arg_string(info, 0, "name");
      CanonicalWeight w;
      w.codes = arg_bytes(info, 1, "codes");
      const DType pd = arg_dtype(info, 4, "paramDtype");
      w.scales = arg_span(info, 2, "scales", pd);
      w.N = arg_int(info, 5, "N");
      w.K = arg_int(info, 6, "K");
      w.spec = arg_quant_spec(info, 7);
      w.zeros = arg_zeros(info, 3, w.spec.symmetric, pd);
      check(m.set_quantized_weight(name, w));
      return info.Env().Undefined();
    });
  }

  Napi::Value Missing(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.missing", [&] {
      const std::vector<std::string> miss = live().missing();
      Napi::Array a = Napi::Array::New(info.Env(), miss.size());
      for (size_t i = 0; i < miss.size(); i++) a.Set((uint32_t)i, miss[i]);
      return Napi::Value(a);
    });
  }

  // forward(tokens Int32Array (B*T), B, T, pos0, lastOnly, async) -> logits (B, T|1, V)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.forward", [&] {
      LlamaModel& m = live();
      I32Span tok = arg_i32(info, 0, "tokens");
      const int64_t B = arg_int(info, 1, "B"), T = arg_int(info, 2, "T"), pos0 = arg_int(info, 3, "pos0");
      const bool last_only = arg_bool(info, 4, "lastOnly"), async = arg_bool(info, 5, "async");
      if (B <= 0 || T <= 0 || (size_t)(B * T) != tok.len)
        fail(error(Code::ShapeMismatch, "Expected B*T tokens (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
                                            ") but received " + std::to_string(tok.len)));
      const int64_t V = m.config().vocab_size;
      float* o;
      Napi::Float32Array out = new_f32(info.Env(), (size_t)((last_only ? B : B * T) * V), &o);
      const size_t no = out.ElementLength();
      auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
      // the worker holds its own reference: dispose() during an async forward frees the model when it ends
      std::shared_ptr<LlamaModel> mp = model_;
      std::atomic<bool>* busy = &busy_;
      // cleared when the forward ends, error, exception or not (the wrapper is kept alive by `keep`)
      struct ClearBusy {
        std::atomic<bool>* b;
        ~ClearBusy() { b->store(false); }
      };
      if (async) busy_ = true;
      try {
        return run_op(info, async, {info[0], out, Value()},
                      [=] {
                        ClearBusy clear{busy};
                        return mp->forward(o, no, tok.data, tok.len, B, T, pos0, last_only);
                      },
                      [ref](Napi::Env) { return ref->Value(); });
      } catch (...) {
        if (async) busy_ = false;  // never queued
        throw;
      }
    });
  }

  // Later calls fail with 'disposed'; a running async forward keeps the model until it ends.
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.dispose", [&] {
      model_.reset();
      return info.Env().Undefined();
    });
  }

  template <class F>
  Napi::Value guard(const Napi::CallbackInfo& info, const char* op, F&& fn) {
    return guarded(info, op, std::forward<F>(fn));
  }

  std::shared_ptr<LlamaModel> model_;
  std::atomic<bool> busy_{false};
};

}  // namespace

void register_llama(Napi::Env env, Napi::Object exports) {
  QF_EXPORT(exports, "embeddingForward", embedding_js);
  QF_EXPORT(exports, "rmsnormForward", rmsnorm_js);
  QF_EXPORT(exports, "matmulForward", matmul_js);
  QF_EXPORT(exports, "ropeForward", rope_js);
  QF_EXPORT(exports, "attentionForward", attention_js);
  QF_EXPORT(exports, "swigluForward", swiglu_js);
  QF_EXPORT(exports, "residualForward", residual_js);
  exports.Set("LlamaModel", LlamaModelWrap::Define(env));
}

}  // namespace qf
