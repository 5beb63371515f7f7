// The native Llama model: weights, RoPE tables, KV cache and the whole forward
// pass in one call (llama_model.h). Activations are allocated per call, sized by
// (B, T); the cache persists across calls for incremental decoding.
#include "quantform/llama_model.h"
#include "quantform/formats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "quantform/llama_ops.h"
#include "quantform/threadpool.h"

namespace qf {

#define QF_TRY(expr)           \
  do {                         \
    Status st_ = (expr);       \
    if (!st_.ok()) return st_; \
  } while (0)

Status linear_forward(float* y, const float* x, const Linear& lin, int64_t M) {
  switch (lin.kind) {
    case Linear::Kind::F32:
      return matmul_forward(y, (size_t)(M * lin.out), x, (size_t)(M * lin.in), lin.w.data(), lin.w.size(), nullptr,
                            0, M, lin.out, lin.in);
    case Linear::Kind::Quantized: {
      const size_t G = (size_t)qf_num_groups(lin.in, lin.spec.group_size);
      const CanonicalWeight cw{Span{(void*)lin.codes.data(), lin.codes.size(), DType::F32},
                               Span{(void*)lin.scales.data(), (size_t)lin.out * G, lin.param_dtype},
                               Span{lin.zeros.empty() ? nullptr : (void*)lin.zeros.data(),
                                    lin.zeros.empty() ? 0 : (size_t)lin.out * G, lin.param_dtype},
                               lin.out, lin.in, lin.spec};
      return dequant_matmul(Span{y, (size_t)(M * lin.out), DType::F32}, Span{(void*)x, (size_t)(M * lin.in), DType::F32},
                            M, &cw, lin.prepared.get(), MatmulAccuracy::F32);
    }
  }
  return error(Code::Internal, "unknown Linear kind");
}

namespace {

constexpr int64_t kAttentionChunk = 128;  // queries per attention call in forward()

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
  if ((int64_t)c.inv_freq.size() != c.head_dim / 2)
    return error(Code::ShapeMismatch, "Expected headDim/2 = " + std::to_string(c.head_dim / 2) +
                                          " inverse frequencies but received " + std::to_string(c.inv_freq.size()));
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = c;
  m->layers_.resize((size_t)c.n_layers);
  const int64_t half = c.head_dim / 2;
  m->rope_cos_.resize((size_t)(c.max_seq * half));
  m->rope_sin_.resize((size_t)(c.max_seq * half));
  for (int64_t p = 0; p < c.max_seq; p++)
    for (int64_t i = 0; i < half; i++) {
      // angle in float as the references (run.c, transformers) compute it, cos/sin in double
      const float angle = (float)p * c.inv_freq[(size_t)i];
      m->rope_cos_[(size_t)(p * half + i)] = (float)std::cos((double)angle);
      m->rope_sin_[(size_t)(p * half + i)] = (float)std::sin((double)angle);
    }
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
  if (w == "attn_norm") *s = {&L.attn_norm, nullptr, 1, C};
  else if (w == "ffn_norm") *s = {&L.ffn_norm, nullptr, 1, C};
  else if (w == "wq") *s = {nullptr, &L.wq, Q, C};
  else if (w == "wk") *s = {nullptr, &L.wk, KV, C};
  else if (w == "wv") *s = {nullptr, &L.wv, KV, C};
  else if (w == "wo") *s = {nullptr, &L.wo, C, Q};
  else if (w == "w_gate") *s = {nullptr, &L.w_gate, F, C};
  else if (w == "w_up") *s = {nullptr, &L.w_up, F, C};
  else if (w == "w_down") *s = {nullptr, &L.w_down, C, F};
  else return false;
  return true;
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
    return error(Code::OutOfMemory, "Cannot allocate " + std::to_string(total) + " bytes for the " + std::to_string(items.size()) + " weights being loaded");
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
    const Linear* lins[] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    const char* names[] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};
    for (int i = 0; i < 7; i++)
      if (!is_set(*lins[i])) out.push_back(p + names[i]);
  }
  return out;
}

Status LlamaModel::forward(float* logits, size_t n_logits, const int32_t* tokens, size_t n_tokens, int64_t B,
                           int64_t T, int64_t pos0, bool last_only) {
  const LlamaConfig& c = cfg_;
  const std::vector<std::string> miss = missing();
  if (!miss.empty()) return error(Code::InvalidArgument, "Model weight '" + miss[0] + "' was never set");
  if (B <= 0 || T <= 0 || (size_t)(B * T) != n_tokens)
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
  if (n_logits != (size_t)(rows_out * V))
    return error(Code::ShapeMismatch, "Expected " + std::to_string(rows_out * V) + " logits but received " + std::to_string(n_logits));

  const int64_t C = c.dim, F = c.hidden_dim, NH = c.n_heads, NKV = c.n_kv_heads, HS = c.head_dim, S = c.max_seq;
  const int64_t N = B * T, Q = NH * HS, KV = NKV * HS, Lk = pos0 + T;
  const size_t layer_cache = (size_t)(B * S * KV);
  if (pos0 == 0 && (cache_b_ != B || kcache_.size() != layer_cache * (size_t)c.n_layers)) {
    kcache_.assign(layer_cache * (size_t)c.n_layers, 0.0f);  // (L, B, S, NKV, HS)
    vcache_.assign(layer_cache * (size_t)c.n_layers, 0.0f);
  }
  cache_b_ = B;
  cache_len_ = 0;  // invalid until this call completes

  std::vector<float> x((size_t)(N * C)), h((size_t)(N * C));  // (B, T, C)
  std::vector<float> q((size_t)(N * Q)), k((size_t)(N * KV)), v((size_t)(N * KV));  // (B, T, NH|NKV, HS)
  std::vector<float> att_out((size_t)(N * Q));                                      // (B, T, NH, HS)
  // attention runs per sequence in chunks of queries, so its probabilities buffer stays
  // (1, NH, chunk, L) instead of (B, NH, T, L) (2 GB for one 4096-token 7B prefill)
  const int64_t chunk = std::min<int64_t>(T, kAttentionChunk);
  std::vector<float> att((size_t)(NH * chunk * Lk));                                 // (1, NH, chunk, L)
  std::vector<float> gate((size_t)(N * F)), up((size_t)(N * F));                    // (B, T, F)
  std::vector<int32_t> pos((size_t)N);                                              // (B, T)
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) pos[(size_t)(b * T + t)] = (int32_t)(pos0 + t);

  QF_TRY(embedding_forward(x.data(), x.size(), tokens, n_tokens, embed_.data(), embed_.size(), C));
  for (int64_t l = 0; l < c.n_layers; l++) {
    LlamaLayer& L = layers_[(size_t)l];
    float* kcache = kcache_.data() + (size_t)l * layer_cache;  // (B, S, NKV, HS)
    float* vcache = vcache_.data() + (size_t)l * layer_cache;
    QF_TRY(rmsnorm_forward(h.data(), h.size(), nullptr, 0, x.data(), x.size(), L.attn_norm.data(), L.attn_norm.size(), C, c.norm_eps));
    QF_TRY(linear_forward(q.data(), h.data(), L.wq, N));
    QF_TRY(linear_forward(k.data(), h.data(), L.wk, N));
    QF_TRY(linear_forward(v.data(), h.data(), L.wv, N));
    QF_TRY(rope_forward(q.data(), q.size(), pos.data(), pos.size(), rope_cos_.data(), rope_sin_.data(), rope_cos_.size(), NH, HS));
    QF_TRY(rope_forward(k.data(), k.size(), pos.data(), pos.size(), rope_cos_.data(), rope_sin_.data(), rope_cos_.size(), NKV, HS));
    for (int64_t b = 0; b < B; b++) {
      std::copy(k.begin() + b * T * KV, k.begin() + (b + 1) * T * KV, kcache + (b * S + pos0) * KV);
      std::copy(v.begin() + b * T * KV, v.begin() + (b + 1) * T * KV, vcache + (b * S + pos0) * KV);
    }
    for (int64_t b = 0; b < B; b++)
      for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        const int64_t tc = std::min(chunk, T - t0), L = pos0 + t0 + tc;
        const size_t rows = (size_t)((b * T + t0) * Q);  // offset of (b, t0) in (B, T, NH, HS)
        QF_TRY(attention_forward(att_out.data() + rows, (size_t)(tc * Q), att.data(), (size_t)(NH * tc * L), q.data() + rows,
                                 (size_t)(tc * Q), kcache + b * S * KV, vcache + b * S * KV, (size_t)(S * KV), 1, tc, NH, NKV,
                                 HS, S, pos0 + t0));
      }
    QF_TRY(linear_forward(h.data(), att_out.data(), L.wo, N));
    QF_TRY(residual_forward(x.data(), x.size(), x.data(), h.data(), h.size()));
    QF_TRY(rmsnorm_forward(h.data(), h.size(), nullptr, 0, x.data(), x.size(), L.ffn_norm.data(), L.ffn_norm.size(), C, c.norm_eps));
    QF_TRY(linear_forward(gate.data(), h.data(), L.w_gate, N));
    QF_TRY(linear_forward(up.data(), h.data(), L.w_up, N));
    QF_TRY(swiglu_forward(gate.data(), gate.size(), gate.data(), up.data(), up.size()));
    QF_TRY(linear_forward(h.data(), gate.data(), L.w_down, N));
    QF_TRY(residual_forward(x.data(), x.size(), x.data(), h.data(), h.size()));
  }
  const float* final_in = x.data();
  std::vector<float> last;
  if (last_only) {
    last.resize((size_t)(B * C));  // (B, C): the last position of every sequence
    for (int64_t b = 0; b < B; b++) std::copy(x.begin() + ((b + 1) * T - 1) * C, x.begin() + (b + 1) * T * C, last.begin() + b * C);
    final_in = last.data();
  }
  std::vector<float> hn((size_t)(rows_out * C));  // (rows_out, C)
  QF_TRY(rmsnorm_forward(hn.data(), hn.size(), nullptr, 0, final_in, hn.size(), final_norm_.data(), final_norm_.size(), C, c.norm_eps));
  if (tied_ && !is_set(lm_head_))
    QF_TRY(matmul_forward(logits, n_logits, hn.data(), hn.size(), embed_.data(), embed_.size(), nullptr, 0, rows_out, V, C));
  else
    QF_TRY(linear_forward(logits, hn.data(), lm_head_, rows_out));
  cache_len_ = pos0 + T;
  return Status::Ok();
}

}  // namespace qf
