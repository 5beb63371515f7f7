// The LlamaModel class: weights and the KV cache in native memory, a whole forward
// pass per call (the engine's block step for every layer). The single ops live in
// engine.cpp. Arguments arrive validated by lib/model/; lengths are re-checked in
// llama_model.cpp.
#include <atomic>

#include "napi_util.h"
#include "quantform/convert.h"
#include "quantform/llama_model.h"

namespace qf {
namespace {

[[noreturn]] void fail(Status st) { throw ArgError{std::move(st)}; }

struct I32Span {
  int32_t* data;
  size_t len;
};

I32Span arg_i32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    fail(error(Code::DtypeMismatch, std::string("Expected Int32Array for ") + name));
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.ArrayBuffer().IsDetached()) fail(error(Code::InvalidArgument, std::string("Expected attached buffer for ") + name + " but it is detached"));
  return I32Span{reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset()), ta.ElementLength()};
}

float* f32(const Span& s) { return static_cast<float*>(s.data); }

Napi::Float32Array new_f32(Napi::Env env, size_t n, float** data) {
  Napi::Float32Array a = Napi::Float32Array::New(env, n);
  *data = a.Data();
  return a;
}

void check(const Status& st) {
  if (!st.ok()) fail(st);
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
                        InstanceMethod("setWeightsFromFile", &LlamaModelWrap::SetWeightsFromFile),
                        InstanceMethod("missing", &LlamaModelWrap::Missing),
                        InstanceMethod("setFpt", &LlamaModelWrap::SetFpt),
                        InstanceMethod("forward", &LlamaModelWrap::Forward),
                        InstanceMethod("dispose", &LlamaModelWrap::Dispose)});
  }

  // new LlamaModel({ dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize, maxSeq, normEps,
  //                  invFreq: Float32Array (headDim/2), tied })
  explicit LlamaModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LlamaModelWrap>(info) {
    try {
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
      check(LlamaModel::create(c, &model_));
      model_->tie_lm_head(o.Get("tied").ToBoolean().Value());
    } catch (const ArgError& e) {
      to_js_error(info.Env(), e.status).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      to_js_error(info.Env(), error(Code::OutOfMemory, "Out of memory allocating the model")).ThrowAsJavaScriptException();
    }
  }

 private:
  LlamaModel& live() {
    if (!model_) fail(error(Code::InvalidArgument, "LlamaModel was disposed"));
    if (busy_) fail(error(Code::InvalidArgument, "LlamaModel is busy with an async forward; await it first"));
    return *model_;
  }

  Napi::Value SetWeight(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
      LlamaModel& m = live();
      const std::string name = arg_string(info, 0, "name");
      Span w = arg_span(info, 1, "data", DType::F32);
      check(m.set_weight(name, f32(w), w.len));
      return info.Env().Undefined();
    });
  }

  // setWeightsFromFile([{ name, fd, offset, dtype, rows, cols, dstRow: Int32Array | null }]): stored
  // tensors read and widened straight into the model's storage (convert.h read_tensor_f32),
  // no JS-side copy; the storage of all of them is first touched in parallel.
  Napi::Value SetWeightsFromFile(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
      LlamaModel& m = live();
      if (!info[0].IsArray()) fail(error(Code::InvalidArgument, "Expected an array of stored tensors for entries"));
      Napi::Array a = info[0].As<Napi::Array>();
      struct Entry {
        std::string name;
        int64_t fd, offset, rows, cols;
        DType dtype;
        int32_t* perm;
        size_t perm_len;
      };
      std::vector<Entry> es(a.Length());
      for (uint32_t i = 0; i < a.Length(); i++) {
        if (!a.Get(i).IsObject()) fail(error(Code::InvalidArgument, "Expected an object for entries[" + std::to_string(i) + "]"));
        Napi::Object o = a.Get(i).As<Napi::Object>();
        Entry& e = es[i];
        const Napi::Value name = o.Get("name"), dt = o.Get("dtype"), perm = o.Get("dstRow");
        if (!name.IsString() || !dt.IsString())
          fail(error(Code::InvalidArgument, "Expected string name and dtype for entries[" + std::to_string(i) + "]"));
        e.name = name.As<Napi::String>().Utf8Value();
        const std::string d = dt.As<Napi::String>().Utf8Value();
        if (d == "f32") e.dtype = DType::F32;
        else if (d == "f16") e.dtype = DType::F16;
        else if (d == "bf16") e.dtype = DType::BF16;
        else fail(error(Code::DtypeMismatch, "Expected 'f32', 'f16' or 'bf16' for the dtype of '" + e.name + "' but received '" + d + "'"));
        e.fd = get_int(o, "fd");
        e.offset = get_int(o, "offset");
        e.rows = get_int(o, "rows");
        e.cols = get_int(o, "cols");
        if (e.fd > 0x7fffffff || (e.cols > 0 && e.rows > ((int64_t)1 << 40) / e.cols))
          fail(error(Code::InvalidArgument, "Expected fd < 2^31 and rows * cols < 2^40 for '" + e.name + "' but received fd=" +
                                                std::to_string(e.fd) + ", rows=" + std::to_string(e.rows) + ", cols=" + std::to_string(e.cols)));
        e.perm = nullptr;
        e.perm_len = 0;
        if (!perm.IsNull() && !perm.IsUndefined()) {
          if (!perm.IsTypedArray() || perm.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
            fail(error(Code::DtypeMismatch, "Expected Int32Array or null for the dstRow of '" + e.name + "'"));
          Napi::Int32Array p = perm.As<Napi::Int32Array>();
          e.perm = p.Data();
          e.perm_len = p.ElementLength();
        }
      }
      std::vector<LlamaModel::WeightFill> items;
      items.reserve(es.size());
      for (const Entry& e : es)
        items.push_back({e.name, (size_t)(e.rows * e.cols), [&e](float* dst) {
                           return read_tensor_f32((int)e.fd, e.offset, e.dtype, e.rows, e.cols, e.perm, e.perm_len, dst,
                                                  (size_t)(e.rows * e.cols), e.name.c_str());
                         }});
      check(m.fill_weights(items));
      return info.Env().Undefined();
    });
  }

  // setQuantizedWeight(name, codes Uint8Array, scales, zeros|null, paramDtype, N, K, bits, groupSize, symmetric)
  Napi::Value SetQuantizedWeight(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
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

  // setFpt(null) | setFpt({ residualScaling, hadamardBlock, actBits, kvBits }, params: Float32Array[] (one per
  // layer, fpt_param_count each)): FPTQuant's run-time quantizers and transforms (llama_model.h FptRuntime).
  Napi::Value SetFpt(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
      LlamaModel& m = live();
      FptRuntime r;
      if (!info[0].IsNull() && !info[0].IsUndefined()) {
        if (!info[0].IsObject()) fail(error(Code::InvalidArgument, "Expected an options object or null for setFpt"));
        const Napi::Object o = info[0].As<Napi::Object>();
        r.on = true;
        r.residual_scaling = o.Get("residualScaling").ToBoolean().Value();
        r.hadamard_block = get_int(o, "hadamardBlock");
        r.act_bits = (int)std::min<int64_t>(get_int(o, "actBits"), 1 << 20);
        r.kv_bits = (int)std::min<int64_t>(get_int(o, "kvBits"), 1 << 20);
        if (!info[1].IsArray()) fail(error(Code::InvalidArgument, "Expected an array of Float32Array for params"));
        const Napi::Array a = info[1].As<Napi::Array>();
        for (uint32_t l = 0; l < a.Length(); l++) {
          const Napi::Value v = a.Get(l);
          if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
            fail(error(Code::DtypeMismatch, "Expected Float32Array for params[" + std::to_string(l) + "]"));
          const Napi::Float32Array f = v.As<Napi::Float32Array>();
          r.params.emplace_back(f.Data(), f.Data() + f.ElementLength());
        }
      }
      check(m.set_fpt(r));
      return info.Env().Undefined();
    });
  }

  Napi::Value Missing(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
      const std::vector<std::string> miss = live().missing();
      Napi::Array a = Napi::Array::New(info.Env(), miss.size());
      for (size_t i = 0; i < miss.size(); i++) a.Set((uint32_t)i, miss[i]);
      return Napi::Value(a);
    });
  }

  // forward(tokens Int32Array (B*T), B, T, pos0, lastOnly, async) -> logits (B, T|1, V)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
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
      LlamaModel* mp = &m;
      std::atomic<bool>* busy = &busy_;
      // cleared by the worker when the forward ends, error or not (the wrapper is kept alive by `keep`)
      if (async) busy_ = true;
      return run_op(info, async, {info[0], out, Value()},
                    [=] {
                      Status st = mp->forward(o, no, tok.data, tok.len, B, T, pos0, last_only);
                      busy->store(false);
                      return st;
                    },
                    [ref](Napi::Env) { return ref->Value(); });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    return guard(info, [&] {
      if (busy_) fail(error(Code::InvalidArgument, "LlamaModel is busy with an async forward; await it first"));
      model_.reset();
      return info.Env().Undefined();
    });
  }

  template <class F>
  Napi::Value guard(const Napi::CallbackInfo& info, F&& fn) {
    try {
      return fn();
    } catch (const ArgError& e) {
      to_js_error(info.Env(), e.status).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      to_js_error(info.Env(), error(Code::OutOfMemory, "Out of memory")).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
  }

  std::unique_ptr<LlamaModel> model_;
  std::atomic<bool> busy_{false};
};

}  // namespace

void register_llama(Napi::Env env, Napi::Object exports) { exports.Set("LlamaModel", LlamaModelWrap::Define(env)); }

}  // namespace qf
