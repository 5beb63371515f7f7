// CUDA error handling: every runtime call is checked and turned into a Status
// that names the call and the failing code; nothing in the CUDA module exits.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "quantform/status.h"

#define QF_CUDA_CHECK(expr)                                                                                 \
  do {                                                                                                      \
    cudaError_t qf_err_ = (expr);                                                                           \
    if (qf_err_ != cudaSuccess)                                                                             \
      return ::qf::error(::qf::Code::Cuda, std::string(#expr) + " failed: " + cudaGetErrorName(qf_err_) + \
                                               " (" + cudaGetErrorString(qf_err_) + ")");                   \
  } while (0)

namespace qf {

// A device allocation freed on scope exit, so early error returns never leak.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  Status alloc(size_t n) {
    bytes = n;
    QF_CUDA_CHECK(cudaMalloc(&ptr, n > 0 ? n : 1));
    return Status::Ok();
  }
  template <class T>
  T* as() const { return static_cast<T*>(ptr); }
};

// A fresh device allocation of `bytes` holding h's bytes (h null or bytes 0: allocated, not filled).
inline Status upload_bytes(DeviceBuffer& d, const void* h, size_t bytes) {
  QF_TRY(d.alloc(bytes));
  if (h && bytes) QF_CUDA_CHECK(cudaMemcpy(d.ptr, h, bytes, cudaMemcpyHostToDevice));
  return Status::Ok();
}

inline Status download_bytes(void* h, const DeviceBuffer& d, size_t bytes) {
  if (h && bytes) QF_CUDA_CHECK(cudaMemcpy(h, d.ptr, bytes, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

// The same in elements of T.
template <class T>
Status upload(DeviceBuffer& d, const T* h, int64_t n) {
  return upload_bytes(d, h, sizeof(T) * (size_t)n);
}

template <class T>
Status download(T* h, const DeviceBuffer& d, int64_t n) {
  return download_bytes(h, d, sizeof(T) * (size_t)n);
}

}  // namespace qf
