// The native Llama model: weights, RoPE tables, KV cache and the whole forward
// pass in one call (llama_model.h). Every layer is the engine's block_forward over
// the layer's cache; activations live in a workspace reused across calls, the cache
// persists across calls for incremental decoding.
#include "quantform/llama_model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "engine_fpt.h"
#include "quantform/formats.h"
#include "quantform/threadpool.h"

namespace qf {

CanonicalWeight Linear::canonical() const {
  const size_t G = (size_t)qf_num_groups(in, spec.group_size);
  return CanonicalWeight{Span{(void*)codes.data(), codes.size(), DType::F32},
                         Span{(void*)scales.data(), (size_t)out * G, param_dtype},
                         Span{zeros.empty() ? nullptr : (void*)zeros.data(), zeros.empty() ? 0 : (size_t)out * G, param_dtype},
                         out, in, spec};
}

namespace {

// Workspace floats LlamaModel keeps between calls (64 MB).
constexpr size_t kKeepWorkspaceFloats = (size_t)16 << 20;

struct Slot {
  std::vector<float>* vec;
  Linear* lin;
  int64_t rows, cols;
};

}  // namespace

Status LlamaModel::create(const LlamaConfig& c, std::unique_ptr<LlamaModel>* out) {
  const int64_t dims[] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq};
  const char* names[] = {"dim", "hiddenDim", "nLayers", "nHeads", "nKvHeads", "headDim", "vocabSize", "maxSeq"};
  for (int i = 0; i < 8; i++)
    if (dims[i] <= 0 || dims[i] > ((int64_t)1 << 31))
      return error(Code::InvalidArgument, std::string("Expected positive integer below 2^31 for ") + names[i] +
                                              " but received " + std::to_string(dims[i]));
  if (c.n_heads % c.n_kv_heads != 0 || c.head_dim % 2 != 0)
    return error(Code::InvalidArgument, "Expected nKvHeads dividing nHeads and an even headDim but received nHeads=" +
                                            std::to_string(c.n_heads) + ", nKvHeads=" + std::to_string(c.n_kv_heads) +
                                            ", headDim=" + std::to_string(c.head_dim));
  // what create() and the first forward allocate from the config alone (the RoPE tables,
  // one struct per layer, the KV cache): bounded before anything is sized by it
  if (c.n_layers > (int64_t(1) << 16) || c.max_seq > (int64_t(1) << 20) || c.max_seq * (c.head_dim / 2) > (int64_t(1) << 26) ||
      c.n_heads * c.head_dim > (int64_t(1) << 31) || c.n_kv_heads * c.head_dim > (int64_t(1) << 31))
    return error(Code::InvalidArgument, "Expected nLayers <= 65536, maxSeq <= 2^20, maxSeq * headDim/2 <= 2^26 and nHeads * headDim "
                                        "<= 2^31 but received nLayers=" + std::to_string(c.n_layers) + ", maxSeq=" +
                                            std::to_string(c.max_seq) + ", nHeads=" + std::to_string(c.n_heads) +
                                            ", headDim=" + std::to_string(c.head_dim));
  if ((int64_t)c.inv_freq.size() != c.head_dim / 2)
    return error(Code::ShapeMismatch, "Expected headDim/2 = " + std::to_string(c.head_dim / 2) +
                                          " inverse frequencies but received " + std::to_string(c.inv_freq.size()));
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = c;
  m->layers_.resize((size_t)c.n_layers);
  const int64_t half = c.head_dim / 2;
  m->rope_cos_.resize((size_t)(c.max_seq * half));
  m->rope_sin_.resize((size_t)(c.max_seq * half));
  QF_TRY(rope_tables(Span{m->rope_cos_.data(), m->rope_cos_.size(), DType::F32},
                     Span{m->rope_sin_.data(), m->rope_sin_.size(), DType::F32},
                     Span{(void*)c.inv_freq.data(), c.inv_freq.size(), DType::F32}, c.max_seq, c.head_dim));
  *out = std::move(m);
  return Status::Ok();
}

namespace {

bool slot_for(const std::string& name, const LlamaConfig& c, std::vector<float>* embed,
              std::vector<float>* final_norm, Linear* lm_head, std::vector<LlamaLayer>* layers, Slot* s) {
  const int64_t C = c.dim, F = c.hidden_dim, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  if (name == "embed") { *s = {embed, nullptr, c.vocab_size, C}; return true; }
  if (name == "final_norm") { *s = {final_norm, nullptr, 1, C}; return true; }
  if (name == "lm_head") { *s = {nullptr, lm_head, c.vocab_size, C}; return true; }
  if (name.rfind("layers.", 0) != 0) return false;
  const size_t dot = name.find('.', 7);
  if (dot == std::string::npos) return false;
  char* end = nullptr;
  const long l = std::strtol(name.c_str() + 7, &end, 10);
  if (end != name.c_str() + dot || l < 0 || l >= c.n_layers) return false;
  LlamaLayer& L = (*layers)[(size_t)l];
  const std::string w = name.substr(dot + 1);
  if (w == "attn_norm") { *s = {&L.attn_norm, nullptr, 1, C}; return true; }
  if (w == "ffn_norm") { *s = {&L.ffn_norm, nullptr, 1, C}; return true; }
  const int64_t rows[kBlockLinears] = {Q, KV, KV, C, F, F, C}, cols[kBlockLinears] = {C, C, C, Q, C, C, F};
  for (int j = 0; j < kBlockLinears; j++)
    if (w == kBlockLinearNames[j]) {
      *s = {nullptr, &L.linear[j], rows[j], cols[j]};
      return true;
    }
  return false;
}

}  // namespace

Status LlamaModel::set_weight(const std::string& name, const float* data, size_t n) {
  Slot s{};
  if (!slot_for(name, cfg_, &embed_, &final_norm_, &lm_head_, &layers_, &s))
    return error(Code::InvalidArgument, "Unknown weight name '" + name + "'");
  if (n != (size_t)(s.rows * s.cols))
    return error(Code::ShapeMismatch, "Expected " + std::to_string(s.rows * s.cols) + " elements (" +
                                          std::to_string(s.rows) + ", " + std::to_string(s.cols) + ") for weight '" +
                                          name + "' but received " + std::to_string(n));
  if (s.vec) {
    s.vec->assign(data, data + n);
  } else {
    s.lin->kind = Linear::Kind::F32;
    s.lin->out = s.rows;
    s.lin->in = s.cols;
    s.lin->w.assign(data, data + n);
  }
  return Status::Ok();
}

Status LlamaModel::fill_weights(const std::vector<WeightFill>& items) {
  std::vector<Slot> slots(items.size());
  for (size_t i = 0; i < items.size(); i++) {
    const WeightFill& it = items[i];
    Slot& s = slots[i];
    if (!slot_for(it.name, cfg_, &embed_, &final_norm_, &lm_head_, &layers_, &s))
      return error(Code::InvalidArgument, "Unknown weight name '" + it.name + "'");
    if (it.n != (size_t)(s.rows * s.cols))
      return error(Code::ShapeMismatch, "Expected " + std::to_string(s.rows * s.cols) + " elements (" + std::to_string(s.rows) +
                                            ", " + std::to_string(s.cols) + ") for weight '" + it.name + "' but received " +
                                            std::to_string(it.n));
  }
  // first touch balanced over the pool: largest first, each to the least loaded thread
  const int T = num_threads();
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return items[a].n > items[b].n; });
  std::vector<std::vector<size_t>> bins((size_t)T);
  std::vector<size_t> load((size_t)T, 0);
  for (size_t i : order) {
    const size_t b = (size_t)(std::min_element(load.begin(), load.end()) - load.begin());
    bins[b].push_back(i);
    load[b] += items[i].n;
  }
  std::vector<std::vector<float>> bufs(items.size());
  std::atomic<bool> oom{false};
  parallel_for(T, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++)
      for (size_t i : bins[(size_t)b]) {
        try {
          bufs[i].resize(items[i].n);
        } catch (...) {  // bad_alloc must not leave the pool's thread
          oom.store(true);
          return;
        }
      }
  });
  if (oom.load()) {
    size_t total = 0;
    for (const WeightFill& it : items) total += it.n * sizeof(float);
    return error(Code::OutOfMemory, "loading weights: out of memory allocating " + std::to_string(total) + " bytes for the " + std::to_string(items.size()) + " weights being loaded");
  }
  for (size_t i = 0; i < items.size(); i++) QF_TRY(items[i].fill(bufs[i].data()));
  for (size_t i = 0; i < items.size(); i++) {
    Slot& s = slots[i];
    if (s.vec) {
      *s.vec = std::move(bufs[i]);
    } else {
      s.lin->kind = Linear::Kind::F32;
      s.lin->out = s.rows;
      s.lin->in = s.cols;
      s.lin->w = std::move(bufs[i]);
      s.lin->codes.clear();
      s.lin->prepared.reset();
    }
  }
  return Status::Ok();
}

Status LlamaModel::set_quantized_weight(const std::string& name, const CanonicalWeight& w) {
  Slot s{};
  if (!slot_for(name, cfg_, &embed_, &final_norm_, &lm_head_, &layers_, &s))
    return error(Code::InvalidArgument, "Unknown weight name '" + name + "'");
  if (!s.lin) return error(Code::InvalidArgument, "Weight '" + name + "' is not a linear layer and cannot be quantized");
  if (w.N != s.rows || w.K != s.cols)
    return error(Code::ShapeMismatch, "Expected a (" + std::to_string(s.rows) + ", " + std::to_string(s.cols) +
                                          ") quantized weight for '" + name + "' but received (" + std::to_string(w.N) +
                                          ", " + std::to_string(w.K) + ")");
  QF_TRY(check_canonical(w));
  Linear lin;
  lin.kind = Linear::Kind::Quantized;
  lin.out = w.N;
  lin.in = w.K;
  lin.spec = w.spec;
  lin.param_dtype = w.scales.dtype;
  const size_t pbytes = dtype_size(w.scales.dtype);
  const uint8_t* c = static_cast<const uint8_t*>(w.codes.data);
  lin.codes.assign(c, c + w.codes.len);
  const uint8_t* sc = static_cast<const uint8_t*>(w.scales.data);
  lin.scales.assign(sc, sc + w.scales.len * pbytes);
  if (!w.spec.symmetric) {
    const uint8_t* z = static_cast<const uint8_t*>(w.zeros.data);
    lin.zeros.assign(z, z + w.zeros.len * pbytes);
  }
  if (matmul_fast_layout(w.spec.bits, w.K, w.spec.group_size)) {
    lin.prepared = std::make_unique<PreparedInt4>();
    QF_TRY(prepare_int4(lin.prepared.get(), w));
  }
  *s.lin = std::move(lin);
  return Status::Ok();
}

namespace {
bool is_set(const Linear& l) { return l.kind == Linear::Kind::Quantized || !l.w.empty(); }
}  // namespace

Status LlamaModel::set_fpt(const FptRuntime& r) {
  const LlamaConfig& c = cfg_;
  if (!r.on) {
    fpt_ = FptRuntime{};
    return Status::Ok();
  }
  // static activations run on the int8 kernels with their calibrated scales whatever the model's matmul
  // accuracy says: an int8 / bf16 request would be silently ignored (the block linears) or half applied
  // (the LM head), so it is refused
  if (r.act_bits > 0 && c.accuracy != MatmulAccuracy::F32)
    return error(Code::Unsupported, "Static " + std::to_string(r.act_bits) + "-bit activations run on the int8 kernels with the checkpoint's scales; " +
                                        "the model was created with matmul accuracy '" + (c.accuracy == MatmulAccuracy::Bf16 ? "bf16" : "int8") +
                                        "', which would run them another way: load it with accuracy 'fp32' (the default)");
  BlockDesc d;
  d.dims = BlockDims{1, 1, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim};
  const int64_t P = fpt_layout(d.dims).total;
  if ((int64_t)r.params.size() != c.n_layers)
    return error(Code::ShapeMismatch, "Expected FPTQuant parameters for " + std::to_string(c.n_layers) + " layers but received " +
                                          std::to_string(r.params.size()));
  float c1 = 1.f;
  for (size_t l = 0; l < r.params.size(); l++) {
    if ((int64_t)r.params[l].size() != P)
      return error(Code::ShapeMismatch, "Expected " + std::to_string(P) + " FPTQuant parameters for layer " + std::to_string(l) +
                                            " but received " + std::to_string(r.params[l].size()));
    d.fpt.on = true;
    d.fpt.merged = true;
    d.fpt.residual_scaling = r.residual_scaling;
    d.fpt.hadamard_block = r.hadamard_block;
    d.fpt.act_bits = r.act_bits;
    std::copy(r.input_bits, r.input_bits + FptTransforms::kActInputs, d.fpt.input_bits);
    d.fpt.kv_bits = r.kv_bits;
    d.fpt.params = r.params[l].data();
    d.fpt.c_in = &c1;
    d.fpt.c_out = &c1;
    QF_TRY(check_block(d));
    fpt::Prep p;
    QF_TRY(fpt::prepare(&p, d.dims, d.fpt));
  }
  fpt_ = r;
  cache_b_ = 0;  // the cache's format changes: the next call starts a new one
  cache_len_ = 0;
  kcache_.clear();
  vcache_.clear();
  kcache_q_.clear();
  vcache_q_.clear();
  return Status::Ok();
}

std::vector<std::string> LlamaModel::missing() const {
  std::vector<std::string> out;
  if (embed_.empty()) out.push_back("embed");
  if (final_norm_.empty()) out.push_back("final_norm");
  if (!tied_ && !is_set(lm_head_)) out.push_back("lm_head");
  for (size_t l = 0; l < layers_.size(); l++) {
    const LlamaLayer& L = layers_[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    if (L.attn_norm.empty()) out.push_back(p + "attn_norm");
    if (L.ffn_norm.empty()) out.push_back(p + "ffn_norm");
    for (int j = 0; j < kBlockLinears; j++)
      if (!is_set(L.linear[j])) out.push_back(p + kBlockLinearNames[j]);
  }
  return out;
}

Status LlamaModel::forward(float* logits, size_t n_logits, const int32_t* tokens, size_t n_tokens, int64_t B,
                           int64_t T, int64_t pos0, bool last_only) {
  const LlamaConfig& c = cfg_;
  const std::vector<std::string> miss = missing();
  if (!miss.empty()) return error(Code::InvalidArgument, "Model weight '" + miss[0] + "' was never set");
  if (B <= 0 || T <= 0 || (size_t)T > n_tokens || (size_t)B > n_tokens / (size_t)T || (size_t)(B * T) != n_tokens)
    return error(Code::ShapeMismatch, "Expected B*T tokens (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
                                          ") but received " + std::to_string(n_tokens));
  if (pos0 < 0 || pos0 + T > c.max_seq)
    return error(Code::InvalidArgument, "Expected pos0 + T <= maxSeq=" + std::to_string(c.max_seq) +
                                            " but received pos0=" + std::to_string(pos0) + ", T=" + std::to_string(T));
  if (pos0 > 0 && (B != cache_b_ || pos0 != cache_len_))
    return error(Code::InvalidArgument, "Expected pos0 equal to the cached length " + std::to_string(cache_len_) +
                                            " with B=" + std::to_string(cache_b_) + " but received pos0=" +
                                            std::to_string(pos0) + ", B=" + std::to_string(B));
  const int64_t V = c.vocab_size;
  const int64_t rows_out = last_only ? B : B * T;
  if ((__int128)n_logits != (__int128)rows_out * V)
    return error(Code::ShapeMismatch, "Expected " + std::to_string(rows_out * V) + " logits but received " + std::to_string(n_logits));

  const int64_t D = c.dim, S = c.max_seq, Dkv = c.n_kv_heads * c.head_dim, BT = B * T;
  if ((__int128)B * S * Dkv * c.n_layers > ((__int128)1 << 40))
    return error(Code::InvalidArgument, "A KV cache of B=" + std::to_string(B) + " sequences of maxSeq=" + std::to_string(S) +
                                            " positions over " + std::to_string(c.n_layers) + " layers exceeds 2^40 floats");
  const size_t layer_cache = (size_t)(B * S * Dkv);
  const bool qkv = fpt_.on && fpt_.kv_bits > 0;
  if (pos0 == 0 && (cache_b_ != B || (qkv ? kcache_q_.size() : kcache_.size()) != layer_cache * (size_t)c.n_layers)) {
    if (qkv) {
      kcache_q_.assign(layer_cache * (size_t)c.n_layers, 0);  // (layers, B, S, Hkv, hd) int8
      vcache_q_.assign(layer_cache * (size_t)c.n_layers, 0);
    } else {
      kcache_.assign(layer_cache * (size_t)c.n_layers, 0.0f);  // (layers, B, S, Hkv, hd)
      vcache_.assign(layer_cache * (size_t)c.n_layers, 0.0f);
    }
  }
  cache_b_ = B;
  cache_len_ = 0;  // invalid until this call completes

  std::vector<float> x((size_t)(BT * D));  // (B, T, D) the residual stream
  const Span xs{x.data(), x.size(), DType::F32};
  QF_TRY(embedding_forward(xs, IdSpan{tokens, n_tokens}, Span{embed_.data(), embed_.size(), DType::F32}, BT,
                           c.vocab_size, D));
  BlockDesc d;
  d.dims = BlockDims{B, T, D, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim};
  d.eps = c.norm_eps;
  d.accuracy = c.accuracy;
  d.rope_cos = rope_cos_.data();
  d.rope_sin = rope_sin_.data();
  d.rope_len = S;
  std::vector<CanonicalWeight> canon(kBlockLinears);  // views the descriptors point at
  std::vector<float> carry(fpt_.on && fpt_.residual_scaling ? (size_t)BT : 0, 1.f);  // (BT) S_n carry, 1 at the embedding
  if (fpt_.on) {
    d.fpt.on = true;
    d.fpt.merged = true;
    d.fpt.residual_scaling = fpt_.residual_scaling;
    d.fpt.hadamard_block = fpt_.hadamard_block;
    d.fpt.act_bits = fpt_.act_bits;
    std::copy(fpt_.input_bits, fpt_.input_bits + FptTransforms::kActInputs, d.fpt.input_bits);
    d.fpt.kv_bits = fpt_.kv_bits;
    d.fpt.c_in = carry.empty() ? nullptr : carry.data();
    d.fpt.c_out = carry.empty() ? nullptr : carry.data();
  }
  for (int64_t l = 0; l < c.n_layers; l++) {
    LlamaLayer& L = layers_[(size_t)l];
    d.attn_norm = WeightSource{WeightSource::Kind::F32, L.attn_norm.data()};
    d.ffn_norm = WeightSource{WeightSource::Kind::F32, L.ffn_norm.data()};
    for (int j = 0; j < kBlockLinears; j++) {
      const Linear& lin = L.linear[j];
      if (lin.kind == Linear::Kind::F32) {
        d.linear[j] = WeightSource{WeightSource::Kind::F32, lin.w.data()};
      } else {
        canon[(size_t)j] = lin.canonical();
        d.linear[j] = WeightSource{WeightSource::Kind::Quantized, nullptr, &canon[(size_t)j], lin.prepared.get()};
      }
    }
    KvCache kv;
    kv.S = S;
    kv.pos0 = pos0;
    if (qkv) {
      kv.kq = kcache_q_.data() + (size_t)l * layer_cache;
      kv.vq = vcache_q_.data() + (size_t)l * layer_cache;
    } else {
      kv.k = kcache_.data() + (size_t)l * layer_cache;
      kv.v = vcache_.data() + (size_t)l * layer_cache;
    }
    if (fpt_.on) d.fpt.params = fpt_.params[(size_t)l].data();
    QF_TRY(block_forward(xs, Span{nullptr, 0, DType::F32}, xs, d, &kv, &ws_));
  }
  const float* final_in = x.data();
  const float* final_c = carry.empty() ? nullptr : carry.data();
  std::vector<float> last, last_c;
  if (last_only) {
    last.resize((size_t)(B * D));  // (B, D): the last position of every sequence
    for (int64_t b = 0; b < B; b++) std::copy(x.begin() + ((b + 1) * T - 1) * D, x.begin() + (b + 1) * T * D, last.begin() + b * D);
    final_in = last.data();
    if (final_c) {
      last_c.resize((size_t)B);
      for (int64_t b = 0; b < B; b++) last_c[(size_t)b] = carry[(size_t)((b + 1) * T - 1)];
      final_c = last_c.data();
    }
  }
  std::vector<float> hn((size_t)(rows_out * D));  // (rows_out, D)
  // the final RMSNorm of a residual stored as x / c (S_n): eps / c^2, exactly the unscaled norm; without
  // S_n the plain norm, the kernel the trainer's lm_head_loss runs (same logits, bit for bit)
  if (final_c)
    QF_TRY(rmsnorm_scaled_forward(Span{hn.data(), hn.size(), DType::F32}, Span{nullptr, 0, DType::F32},
                                  Span{(void*)final_in, hn.size(), DType::F32}, Span{final_norm_.data(), final_norm_.size(), DType::F32},
                                  Span{(void*)final_c, (size_t)rows_out, DType::F32}, rows_out, D, c.norm_eps));
  else
    QF_TRY(rmsnorm_forward(Span{hn.data(), hn.size(), DType::F32}, Span{nullptr, 0, DType::F32},
                           Span{(void*)final_in, hn.size(), DType::F32}, Span{final_norm_.data(), final_norm_.size(), DType::F32},
                           rows_out, D, c.norm_eps));
  const Span ls{logits, n_logits, DType::F32}, hs{hn.data(), hn.size(), DType::F32};
  if (lm_head_.kind == Linear::Kind::Quantized) {
    const CanonicalWeight cw = lm_head_.canonical();
    QF_TRY(dequant_matmul(ls, hs, rows_out, &cw, lm_head_.prepared.get(), c.accuracy));
  } else {
    const float* head = tied_ && !is_set(lm_head_) ? embed_.data() : lm_head_.w.data();
    const int64_t slots = scratch_slots();
    QF_TRY(ws_.reserve((size_t)(slots * kGemmPackFloats), "the LM head"));
    gemm_run(logits, V, StridedMat{hn.data(), D, 1}, StridedMat{head, 1, D}, rows_out, V, D, false, ws_.data(), slots);
  }
  cache_len_ = pos0 + T;
  // a long prefill's activations are not kept for the decode steps that follow (a
  // 4096-token 7B prefill needs ~0.8 GB of them); decode-sized workspaces stay
  if (ws_.capacity() > kKeepWorkspaceFloats) ws_.release();
  return Status::Ok();
}

}  // namespace qf
