// N-API entry points for checkpoint I/O (exports.io): readTensor (positional reads
// widened to f32 natively), convert (f32 <-> f16/bf16 on the active tier, the
// entry the tier tests use) and SpillBuffer (the activation store's storage).
// Arguments arrive validated by lib/io/; lengths are re-checked in convert_ops.cpp
// and spill_buffer.cpp.
#include <memory>

#include "napi_util.h"
#include "quantform/convert.h"
#include "quantform/spill_buffer.h"

namespace qf {
namespace {

[[noreturn]] void fail(Status st) { throw ArgError{std::move(st)}; }

// readTensor(fd, offset, dtype, rows, cols, dstRow Int32Array (rows) | null, out Float32Array (rows*cols), what, async)
Napi::Value read_tensor_js(const Napi::CallbackInfo& info) {
  const int64_t fd = arg_int(info, 0, "fd");
  const int64_t offset = arg_int(info, 1, "offset");
  const DType dt = arg_dtype(info, 2, "dtype");
  const int64_t rows = arg_int(info, 3, "rows"), cols = arg_int(info, 4, "cols");
  const I32Array perm = arg_int32_array(info, 5, "dstRow", true);
  const Span out = arg_span(info, 6, "out", DType::F32);
  const std::string what = arg_string(info, 7, "what");
  const bool async = arg_bool(info, 8, "async");
  if (fd < 0 || fd > 0x7fffffff) fail(error(Code::InvalidArgument, "Expected a file descriptor for fd but received " + std::to_string(fd)));
  return run_op(info, async, {info[5], info[6]},
                [=] {
                  return read_tensor_f32((int)fd, offset, dt, rows, cols, perm.data, perm.len, static_cast<float*>(out.data),
                                         out.len, what.c_str());
                },
                [](Napi::Env env) { return env.Undefined(); });
}

// convert(dst, dstDtype, src, srcDtype): f32 -> bf16, f16 -> f32, bf16 -> f32
Napi::Value convert_js(const Napi::CallbackInfo& info) {
  const DType dd = arg_dtype(info, 1, "dstDtype"), sd = arg_dtype(info, 3, "srcDtype");
  const Span dst = arg_span(info, 0, "dst", dd), src = arg_span(info, 2, "src", sd);
  const Status st = convert_span(dst, src);
  if (!st.ok()) fail(st);
  return info.Env().Undefined();
}

class SpillBufferWrap : public Napi::ObjectWrap<SpillBufferWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SpillBuffer",
                       {InstanceMethod("write", &SpillBufferWrap::Write), InstanceMethod("read", &SpillBufferWrap::Read),
                        InstanceMethod("info", &SpillBufferWrap::Info), InstanceMethod("dispose", &SpillBufferWrap::Dispose)});
  }

  // new SpillBuffer(elements, dtype 'f32' | 'bf16', memoryElements, dir)
  explicit SpillBufferWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SpillBufferWrap>(info) {
    guarded(info, "new SpillBuffer", [&] {
      const int64_t n = arg_int(info, 0, "elements");
      const DType dt = arg_dtype(info, 1, "dtype");
      const int64_t mem = arg_int(info, 2, "memoryElements");
      const std::string dir = arg_string(info, 3, "dir");
      const Status st = SpillBuffer::create(n, dt, mem, dir, &buf_);
      if (!st.ok()) fail(st);
      return info.Env().Undefined();
    });
  }

 private:
  SpillBuffer& live() {
    if (!buf_) fail(error(Code::InvalidArgument, "SpillBuffer was disposed"));
    return *buf_;
  }

  // write(offset, src Float32Array)
  Napi::Value Write(const Napi::CallbackInfo& info) {
    return guarded(info, "SpillBuffer.write", [&] {
      SpillBuffer& b = live();
      const int64_t off = arg_int(info, 0, "offset");
      const Span src = arg_span(info, 1, "src", DType::F32);
      const Status st = b.write(off, static_cast<const float*>(src.data), (int64_t)src.len);
      if (!st.ok()) fail(st);
      return info.Env().Undefined();
    });
  }

  // read(offset, dst Float32Array)
  Napi::Value Read(const Napi::CallbackInfo& info) {
    return guarded(info, "SpillBuffer.read", [&] {
      SpillBuffer& b = live();
      const int64_t off = arg_int(info, 0, "offset");
      const Span dst = arg_span(info, 1, "dst", DType::F32);
      const Status st = b.read(off, static_cast<float*>(dst.data), (int64_t)dst.len);
      if (!st.ok()) fail(st);
      return info.Env().Undefined();
    });
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    return guarded(info, "SpillBuffer.info", [&] {
      SpillBuffer& b = live();
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("elements", (double)b.elements());
      o.Set("memoryElements", (double)b.memory_elements());
      o.Set("file", b.file_path().empty() ? info.Env().Null() : Napi::Value(Napi::String::New(info.Env(), b.file_path())));
      return Napi::Value(o);
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    buf_.reset();
    return info.Env().Undefined();
  }

  std::unique_ptr<SpillBuffer> buf_;
};

}  // namespace

void register_io(Napi::Env env, Napi::Object exports) {
  Napi::Object io = Napi::Object::New(env);
  QF_EXPORT_IN(io, "io", "readTensor", read_tensor_js);
  QF_EXPORT_IN(io, "io", "convert", convert_js);
  io.Set("SpillBuffer", SpillBufferWrap::Define(env));
  exports.Set("io", io);
}

}  // namespace qf
