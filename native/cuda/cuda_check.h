// CUDA error handling for the CUDA module: every runtime call is checked and a
// failure returns a Status (code Cuda) quoting the call and CUDA's message; native
// code never exits. Usable from .cu and .cpp files.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "quantform/status.h"

namespace qf {

inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return error(Code::Cuda, std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

}  // namespace qf

// Returns from the enclosing function (which returns Status) on a CUDA error.
#define QF_CUDA_CHECK(call)                                     \
  do {                                                          \
    const ::qf::Status qf_cuda_st_ = ::qf::cuda_status((call), #call); \
    if (!qf_cuda_st_.ok()) return qf_cuda_st_;                  \
  } while (0)
