// The LlamaModel class: weights and the KV cache in native memory, a whole forward
// pass per call (the engine's block step for every layer). The single ops live in
// engine.cpp. Arguments arrive validated by lib/model/; lengths are re-checked in
// llama_model.cpp.
#include <atomic>
#include <cmath>
#include <memory>

#include "napi_util.h"
#include "quantform/convert.h"
#include "quantform/finite.h"
#include "quantform/llama_model.h"

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

// The message lib/ops/finite.ts checkFinite gives, for weights read natively
// (straight from the file into the model: no JS array to scan).
Status check_finite_weight(const float* w, int64_t rows, int64_t cols, const std::string& what) {
  const int64_t i = first_non_finite(w, rows * cols);
  if (i < 0) return Status::Ok();
  const float v = w[i];
  const std::string val = std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
  const std::string at = rows > 1 ? "[" + std::to_string(i / cols) + ", " + std::to_string(i % cols) + "] (flat index " +
                                        std::to_string(i) + ")"
                                  : "index " + std::to_string(i);
  return error(Code::NonFinite, what + " holds " + val + " at " + at + ": NaN and Inf weights cannot be run or quantized");
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
  //                  invFreq: Float32Array (headDim/2), tied, accuracy?: 'fp32' | 'int8' | 'bf16' })
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
      const Span f = value_span(info.Env(), o.Get("invFreq"), "config.invFreq", DType::F32);
      c.inv_freq.assign(f32(f), f32(f) + f.len);
      const Napi::Value acc = o.Get("accuracy");
      if (!acc.IsUndefined()) {
        const std::string s = acc.IsString() ? acc.As<Napi::String>().Utf8Value() : "";
        if (s == "fp32") c.accuracy = MatmulAccuracy::F32;
        else if (s == "int8") c.accuracy = MatmulAccuracy::Int8;
        else if (s == "bf16") c.accuracy = MatmulAccuracy::Bf16;
        else fail(error(Code::InvalidArgument, "Expected 'fp32', 'int8' or 'bf16' for config.accuracy"));
      }
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

  // setWeightsFromFile([{ name, what, fd, offset, dtype, rows, cols, dstRow: Int32Array | null }]): stored
  // tensors read and widened straight into the model's storage (convert.h read_tensor_f32),
  // no JS-side copy; the storage of all of them is first touched in parallel. Each is
  // scanned for NaN/Inf once read (`what` names it in that error).
  Napi::Value SetWeightsFromFile(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.setWeightsFromFile", [&] {
      LlamaModel& m = live();
      if (!info[0].IsArray()) fail(error(Code::InvalidArgument, "Expected an array of stored tensors for entries"));
      Napi::Array a = info[0].As<Napi::Array>();
      struct Entry {
        std::string name, what;
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
        const Napi::Value name = o.Get("name"), what = o.Get("what"), dt = o.Get("dtype"), perm = o.Get("dstRow");
        if (!name.IsString() || !what.IsString() || !dt.IsString())
          fail(error(Code::InvalidArgument, "Expected string name, what and dtype for entries[" + std::to_string(i) + "]"));
        e.name = name.As<Napi::String>().Utf8Value();
        e.what = what.As<Napi::String>().Utf8Value();
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
        // the model allocates each weight before reading it: a range past the file's end is
        // refused first, so no allocation is sized by what the entry claims
        check(check_tensor_range((int)e.fd, e.offset, e.dtype, e.rows, e.cols, e.what.c_str()));
        e.perm = nullptr;
        e.perm_len = 0;
        if (!perm.IsNull() && !perm.IsUndefined()) {
          const Span p = value_int32(info.Env(), perm, ("the dstRow of '" + e.name + "'").c_str());
          e.perm = static_cast<int32_t*>(p.data);
          e.perm_len = p.len;
        }
      }
      std::vector<LlamaModel::WeightFill> items;
      items.reserve(es.size());
      for (const Entry& e : es)
        items.push_back({e.name, (size_t)(e.rows * e.cols), [&e](float* dst) {
                           QF_TRY(read_tensor_f32((int)e.fd, e.offset, e.dtype, e.rows, e.cols, e.perm, e.perm_len, dst,
                                                  (size_t)(e.rows * e.cols), e.what.c_str()));
                           return check_finite_weight(dst, e.rows, e.cols, e.what);
                         }});
      check(m.fill_weights(items));
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

  // setFpt(null) | setFpt({ residualScaling, hadamardBlock, actBits, inputBits?, kvBits }, params: Float32Array[] (one per
  // layer, fpt_param_count each)): FPTQuant's run-time quantizers and transforms (llama_model.h FptRuntime).
  Napi::Value SetFpt(const Napi::CallbackInfo& info) {
    return guard(info, "LlamaModel.setFpt", [&] {
      LlamaModel& m = live();
      FptRuntime r;
      if (!info[0].IsNull() && !info[0].IsUndefined()) {
        if (!info[0].IsObject()) fail(error(Code::InvalidArgument, "Expected an options object or null for setFpt"));
        const Napi::Object o = info[0].As<Napi::Object>();
        r.on = true;
        r.residual_scaling = o.Get("residualScaling").ToBoolean().Value();
        r.hadamard_block = get_int(o, "hadamardBlock");
        r.act_bits = (int)std::min<int64_t>(get_int(o, "actBits"), 1 << 20);
        fpt_input_bits(o, r.input_bits);
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
      if (B <= 0 || T <= 0 || (size_t)T > tok.len || (size_t)B > tok.len / (size_t)T || (size_t)(B * T) != tok.len)
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

void register_llama(Napi::Env env, Napi::Object exports) { exports.Set("LlamaModel", LlamaModelWrap::Define(env)); }

}  // namespace qf
