// A Llama-family model held in native memory: weights in the engine's layouts
// (engine.h), a KV cache, and a forward pass that runs the whole network in one
// call (lib/model/model.ts drives it through the LlamaModel N-API class):
//   x = embed[tokens] (B, T, D); every layer: x = block_forward(x) with the layer's
//   KV cache (B, S, Hkv, hd) at pos0; logits = rmsnorm(x, final_norm) . lm_head^T (B, T, V).
// The block step is the one the trainer runs (engine_block.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quantform/engine.h"
#include "quantform/matmul_ops.h"
#include "quantform/status.h"

namespace qf {

struct LlamaConfig {
  int64_t dim = 0;         // D
  int64_t hidden_dim = 0;  // F (intermediate_size)
  int64_t n_layers = 0;
  int64_t n_heads = 0;     // Hq
  int64_t n_kv_heads = 0;  // Hkv, divides Hq
  int64_t head_dim = 0;    // hd, even
  int64_t vocab_size = 0;  // V
  int64_t max_seq = 0;     // S: RoPE table and KV cache capacity
  float norm_eps = 1e-5f;
  std::vector<float> inv_freq;  // (hd/2) rope_theta and rope_scaling applied
  // every quantized linear's dequant-matmul accuracy (the LM head's too)
  MatmulAccuracy accuracy = MatmulAccuracy::F32;
};

// Every linear layer is one of these: a weight (out, in) applied as x @ w^T.
//   F32:       w (out, in), the engine's fp32 GEMM.
//   Quantized: the canonical packed weight (formats.h) and, for INT4 with a group
//              size the kernels support, its repacked form (matmul.h); the
//              dequant-matmul kernels read it directly, no fp32 copy is kept.
struct Linear {
  enum class Kind { F32, Quantized } kind = Kind::F32;
  int64_t out = 0, in = 0;
  std::vector<float> w;                   // F32: (out, in)
  std::vector<uint8_t> codes;             // Quantized: (out, row_bytes)
  std::vector<uint8_t> scales, zeros;     // Quantized: (out, G) in param_dtype; zeros empty when symmetric
  DType param_dtype = DType::F32;
  QuantSpec spec{};
  std::unique_ptr<PreparedInt4> prepared;  // null when the layout has no fast kernel
  CanonicalWeight canonical() const;        // Quantized: views of codes/scales/zeros
};

struct LlamaLayer {
  std::vector<float> attn_norm, ffn_norm;  // (D)
  Linear linear[kBlockLinears];            // wq (Dq, D) wk, wv (Dkv, D) wo (D, Dq) w_gate, w_up (F, D) w_down (D, F)
};

// FPTQuant at run time (engine.h FptTransforms with merged weights): the static activation and
// KV-cache quantizers, S_n and the online Hadamard. params: per layer fpt_param_count floats (only
// the act_log_scale and kv_log_scale entries are read: the transforms are in the weights).
struct FptRuntime {
  bool on = false;
  bool residual_scaling = false;
  int64_t hadamard_block = 0;
  int act_bits = 0, kv_bits = 0;
  int input_bits[FptTransforms::kActInputs] = {0, 0, 0, 0};  // FptTransforms::input_bits
  std::vector<std::vector<float>> params;  // (layers, fpt_param_count)
};

class LlamaModel {
 public:
  static Status create(const LlamaConfig& cfg, std::unique_ptr<LlamaModel>* out);

  const LlamaConfig& config() const { return cfg_; }
  // Names: embed (V, D), final_norm (D), lm_head (V, D), layers.<l>.<attn_norm|ffn_norm|wq|wk|wv|wo|
  // w_gate|w_up|w_down>. data holds n floats; the expected shape is checked.
  Status set_weight(const std::string& name, const float* data, size_t n);
  // set_weight for loaders that produce the floats in place (read_tensor_f32 straight
  // from a checkpoint file), many weights at once: fresh storage for all of them is
  // first touched on the thread pool (the page faults of gigabytes of new memory are
  // the larger part of a load), then each item's fill(dst) writes its n floats. The
  // weights are replaced only when every fill succeeds.
  struct WeightFill {
    std::string name;
    size_t n;
    std::function<Status(float*)> fill;
  };
  Status fill_weights(const std::vector<WeightFill>& items);
  // A quantized linear (name as above, not a norm or the embedding); w's shape must be the slot's.
  Status set_quantized_weight(const std::string& name, const CanonicalWeight& w);
  // Missing weights, named (lm_head falls back to embed when tied).
  std::vector<std::string> missing() const;
  // tokens (B, T) at positions pos0 .. pos0 + T - 1 of every sequence; pos0 == 0 starts a new
  // cache. logits (B, T, V), or (B, V) for the last position when last_only.
  Status forward(float* logits, size_t n_logits, const int32_t* tokens, size_t n_tokens, int64_t B, int64_t T,
                 int64_t pos0, bool last_only);
  void tie_lm_head(bool tied) { tied_ = tied; }
  // FPTQuant's run-time part (checked against the config; the KV cache becomes int8 with kv_bits).
  Status set_fpt(const FptRuntime& r);
  const FptRuntime& fpt() const { return fpt_; }

 private:
  LlamaConfig cfg_;
  std::vector<float> embed_, final_norm_;
  Linear lm_head_;
  bool tied_ = false;
  std::vector<LlamaLayer> layers_;
  std::vector<float> rope_cos_, rope_sin_;  // (S, hd/2)
  int64_t cache_b_ = 0, cache_len_ = 0;
  std::vector<float> kcache_, vcache_;      // (layers, B, S, Hkv, hd)
  std::vector<int8_t> kcache_q_, vcache_q_;  // (layers, B, S, Hkv, hd) with FPTQuant's quantized KV cache
  FptRuntime fpt_;
  Workspace ws_;                            // reused by every forward (one at a time)
};

}  // namespace qf
