// FPTQuant's pieces of the block step (engine.h FptTransforms), shared by the block step
// (engine_block.cpp) and FPTQuant's ops (engine_fpt.cpp). Internal to native/common.
#pragma once
#include <cstdint>
#include <vector>

#include "quantform/engine.h"

namespace qf {
namespace fpt {

// 2^(bits-1) - 1: the symmetric signed grid of the activation and KV quantizers.
inline float qmax_of(int bits) { return (float)((1 << (bits - 1)) - 1); }

// The step's view of one block's parameters: scales exponentiated, the T_v matrices and
// their inverses built and checked once per call.
struct Prep {
  BlockDims dims;
  FptTransforms f;
  FptLayout lay;
  const float* p = nullptr;      // params (fpt_param_count)
  float act[FptTransforms::kActInputs] = {1.f, 1.f, 1.f, 1.f};  // activation scales
  std::vector<float> kv;         // (2, Hkv) key scales | value scales
  std::vector<float> qk_s;       // (Hkv, hd/2) exp(qk_log_scale)
  std::vector<float> mlp_s;      // (F) exp(mlp_log_scale)
  std::vector<float> A, Ainv;    // (Hkv, hd, hd) T_v and its inverse (v only)
  std::vector<double> L, U;      // (Hkv, hd, hd) the LU factors (v only)
};

// Flags, bits, Hadamard block and params of d.fpt against d.dims (no pointer but params is read).
Status check(const BlockDesc& d);
// Builds the Prep of d.fpt (params read; T_v condition checked: QF_NON_FINITE above kFptMaxCond).
Status prepare(Prep* p, const BlockDims& dims, const FptTransforms& f);
// Whether the step derives effective weights from the stored ones (training on unmerged weights).
bool transforms_weights(const FptTransforms& f);
// out (rows, cols) = the enabled transforms applied to linear j's stored weight W (out != W).
// pack: slots * kGemmPackFloats floats of GEMM scratch.
void apply_linear(int j, float* out, const float* W, const Prep& p, float* pack, int64_t slots);
// dparams += gradient of <dW', apply_linear(j, W)>; Wm is apply_linear(j, W) (the merged weight);
// dW' may be overwritten (T_u's Hadamard side transforms it in place).
// The contractions run on `gpu` when given (fpt_merge_backward's CUDA variant), else on the CPU.
Status linear_backward(int j, float* dparams, float* dWm, const float* Wm, const float* W, const Prep& p,
                       float* pack, int64_t slots, const FptContractions* gpu = nullptr);
// lp_ratio's value and (when dx != null) gradient, scale applied: returns scale * mean over groups.
double lp_ratio_acc(float* dx, const float* x, int64_t n, int64_t group, float p, float scale);

}  // namespace fpt
}  // namespace qf
