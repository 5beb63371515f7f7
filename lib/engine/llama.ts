// A Llama model held for training: per-layer parameter arenas in the native block
// layout (native/include/quantform/train_ops.h), forward/backward through the
// native block step, and the windowed perplexity protocol of shared/data/reference.
// Loads Hugging Face checkpoints (config.json + model.safetensors) and GPTQ
// checkpoints written by lib/export (dequantized to fp32).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { fromNative, invalidParameter, need, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig } from '../native.js';
import { readSafetensors, type SafeTensor } from '../io/safetensors.js';
import { parseJsonObject } from '../io/json.js';
import { dequantizeGptq, type GptqFormat } from '../export/gptq.js';
import type { Bits } from '../ops/quant.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { needConfig, weightShape } from '../model/config.js';
import { checkFinite } from '../ops/finite.js';

export interface LlamaShape {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  maxSeq: number;
  rmsEps: number;
  ropeTheta: number;
  tied: boolean;
}

/** Linears of one block, in arena order, with their HF names and (out, in) shapes. */
export const LINEARS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearName = (typeof LINEARS)[number];
/** The runtime's names of the same linears (lib/model/config.ts). */
const RUNTIME_LINEAR: Record<LinearName, string> = {
  q_proj: 'wq', k_proj: 'wk', v_proj: 'wv', o_proj: 'wo', gate_proj: 'w_gate', up_proj: 'w_up', down_proj: 'w_down',
};

export const HF_LINEAR: Record<LinearName, string> = {
  q_proj: 'self_attn.q_proj', k_proj: 'self_attn.k_proj', v_proj: 'self_attn.v_proj', o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj', up_proj: 'mlp.up_proj', down_proj: 'mlp.down_proj',
};

export interface Slot {
  offset: number;
  rows: number;
  cols: number;
}

/** Offsets in the block arena: g1 | wq | wk | wv | wo | g2 | wg | wu | wd (train_ops.h). */
/** A LlamaShape passed in by a caller: sizes are positive integers. */
function needShape(s: unknown): asserts s is LlamaShape {
  need.object(s, 'shape');
  const o = s as Record<string, unknown>;
  for (const k of ['hidden', 'intermediate', 'layers', 'heads', 'kvHeads', 'headDim', 'vocab', 'maxSeq'] as const) need.positiveInteger(o[k], `shape.${k}`);
}

export function blockLayout(s: LlamaShape): { g1: Slot; g2: Slot; linears: Record<LinearName, Slot>; total: number } {
  needShape(s);
  const D = s.hidden, F = s.intermediate, Dq = s.heads * s.headDim, Dkv = s.kvHeads * s.headDim;
  let o = 0;
  const slot = (rows: number, cols: number): Slot => { const r = { offset: o, rows, cols }; o += rows * cols; return r; };
  const g1 = slot(1, D);
  const q = slot(Dq, D), k = slot(Dkv, D), v = slot(Dkv, D), wo = slot(D, Dq);
  const g2 = slot(1, D);
  const g = slot(F, D), u = slot(F, D), d = slot(D, F);
  return { g1, g2, linears: { q_proj: q, k_proj: k, v_proj: v, o_proj: wo, gate_proj: g, up_proj: u, down_proj: d }, total: o };
}

export interface BlockQuant {
  bits: Bits;
  groupSize: number;
  symmetric: boolean;
}

export class TrainableLlama {
  readonly shape: LlamaShape;
  /** (V, D) */
  readonly embed: Float32Array;
  /** (D) */
  readonly finalNorm: Float32Array;
  /** (V, D); the same array as embed when tied */
  readonly lmHead: Float32Array;
  /** one arena per layer, blockLayout order */
  readonly blocks: Float32Array[];
  /** the HF config.json this model came from (kept for export) */
  readonly hfConfig: Record<string, unknown>;

  constructor(shape: LlamaShape, embed: Float32Array, finalNorm: Float32Array, lmHead: Float32Array, blocks: Float32Array[],
    hfConfig: Record<string, unknown>) {
    needShape(shape);
    need.finiteNumber(shape.rmsEps, 'shape.rmsEps');
    need.finiteNumber(shape.ropeTheta, 'shape.ropeTheta');
    need.bool(shape.tied, 'shape.tied');
    const V = shape.vocab * shape.hidden;
    for (const [name, a, n] of [['embed', embed, V], ['finalNorm', finalNorm, shape.hidden], ['lmHead', lmHead, V]] as const)
      if (!(a instanceof Float32Array) || a.length !== n) throw invalidParameter(`Float32Array of ${n} elements`, name, a, 'QF_SHAPE_MISMATCH');
    if (!Array.isArray(blocks) || blocks.length !== shape.layers || !blocks.every((b) => b instanceof Float32Array))
      throw invalidParameter(`array of ${shape.layers} Float32Array block arenas`, 'blocks', blocks);
    need.object(hfConfig, 'hfConfig');
    this.shape = shape;
    this.embed = embed;
    this.finalNorm = finalNorm;
    this.lmHead = lmHead;
    this.blocks = blocks;
    this.hfConfig = hfConfig;
    const L = blockLayout(shape).total;
    for (const b of blocks) if (b.length !== L) throw new QuantformError('QF_SHAPE_MISMATCH', `Expected block arenas of ${L} floats but received ${b.length}`);
  }

  clone(): TrainableLlama {
    const embed = this.embed.slice();
    return new TrainableLlama(this.shape, embed, this.finalNorm.slice(), this.shape.tied ? embed : this.lmHead.slice(),
      this.blocks.map((b) => b.slice()), this.hfConfig);
  }

  /** Floats of TEQ scales per layer: (2, D), plus (Dkv + F) with the extra v->o and up->down scales. */
  alphaPerLayer(extra: boolean): number {
    const s = this.shape;
    return 2 * s.hidden + (extra ? s.kvHeads * s.headDim + s.intermediate : 0);
  }

  blockConfig(batch: number, seq: number, quant?: BlockQuant | null, teq = false, teqExtra = false): NativeBlockConfig {
    const s = this.shape;
    return {
      batch, seq, hidden: s.hidden, intermediate: s.intermediate, heads: s.heads, kvHeads: s.kvHeads, headDim: s.headDim,
      rmsEps: s.rmsEps, ropeTheta: s.ropeTheta, bits: quant ? quant.bits : 0, groupSize: quant ? quant.groupSize : 128,
      symmetric: quant ? quant.symmetric : false, teq, teqExtra,
    };
  }

  /** (rows, cols) view of a linear of layer l. */
  linear(l: number, name: LinearName): Float32Array {
    const s = blockLayout(this.shape).linears[name];
    return this.blocks[l].subarray(s.offset, s.offset + s.rows * s.cols);
  }

  norm(l: number, which: 'input' | 'post'): Float32Array {
    const lay = blockLayout(this.shape);
    const s = which === 'input' ? lay.g1 : lay.g2;
    return this.blocks[l].subarray(s.offset, s.offset + this.shape.hidden);
  }

  /** Final hidden states x (B*S, D) for tokens (B, S), every block fp32 or fake-quantized. */
  async hidden(tokens: Int32Array, batch: number, seq: number, quant?: BlockQuant | null): Promise<Float32Array> {
    const nb = native().train;
    const s = this.shape, T = batch * seq;
    let x = new Float32Array(T * s.hidden);
    let y = new Float32Array(T * s.hidden);
    try {
      nb.embeddingForward(x, tokens, this.embed, T, s.vocab, s.hidden);
      const cfg = this.blockConfig(batch, seq, quant);
      const acts = new Float32Array(nb.blockSizes(cfg).activations);
      for (const b of this.blocks) {
        await nb.blockForward(cfg, y, acts, x, b, null, true);
        [x, y] = [y, x];
      }
    } catch (e) {
      throw fromNative(e);
    }
    return x;
  }

  /** logits (B*S, V) */
  async logits(tokens: Int32Array, batch: number, seq: number, quant?: BlockQuant | null): Promise<Float32Array> {
    const nb = native().train;
    const s = this.shape, T = batch * seq;
    const x = await this.hidden(tokens, batch, seq, quant);
    const n = new Float32Array(T * s.hidden), rstd = new Float32Array(T), out = new Float32Array(T * s.vocab);
    try {
      nb.rmsnormForward(n, rstd, x, this.finalNorm, T, s.hidden, s.rmsEps);
      nb.trainGemm(out, n, this.lmHead, T, s.vocab, s.hidden, false, true, false);
    } catch (e) {
      throw fromNative(e);
    }
    return out;
  }

  /** Per-token NLL (B*S) of targets (B*S; < 0 ignored). */
  async nll(tokens: Int32Array, targets: Int32Array, batch: number, seq: number, quant?: BlockQuant | null): Promise<Float32Array> {
    const s = this.shape, T = batch * seq;
    const x = await this.hidden(tokens, batch, seq, quant);
    const nll = new Float32Array(T);
    try {
      await native().train.lmHeadLoss(nll, null, null, null, x, this.finalNorm, this.lmHead, targets, T, s.hidden, s.vocab, s.rmsEps, 1, true);
    } catch (e) {
      throw fromNative(e);
    }
    return nll;
  }

  /**
   * The shared/data/reference perplexity protocol: windows ids[W*w : W*w + W + 1],
   * inputs from position 0, NLL of the next W ids; mean over all predictions.
   */
  async perplexity(ids: ArrayLike<number>, window = 256, quant?: BlockQuant | null, batch = 16): Promise<{ meanNll: number; ppl: number; predictions: number }> {
    const nWin = Math.floor((ids.length - 1) / window);
    if (nWin < 1) throw invalidParameter(`at least ${window + 1} token ids`, 'ids', ids.length);
    if (window > this.shape.maxSeq) throw invalidParameter(`window <= ${this.shape.maxSeq} (the model's context)`, 'window', window);
    let sum = 0;
    for (let w0 = 0; w0 < nWin; w0 += batch) {
      const B = Math.min(batch, nWin - w0);
      const tok = new Int32Array(B * window), tgt = new Int32Array(B * window);
      for (let b = 0; b < B; b++)
        for (let t = 0; t < window; t++) {
          tok[b * window + t] = ids[(w0 + b) * window + t];
          tgt[b * window + t] = ids[(w0 + b) * window + t + 1];
        }
      const nll = await this.nll(tok, tgt, B, window, quant);
      for (let i = 0; i < nll.length; i++) {
        if (!Number.isFinite(nll[i])) {
          const w = w0 + Math.floor(i / window);
          throw new QuantformError('QF_NON_FINITE', `Window ${w} (ids ${w * window}..${(w + 1) * window}) has a ${nll[i]} negative log-likelihood: the model's logits are not finite there, so there is no perplexity to report`);
        }
        sum += nll[i];
      }
    }
    const n = nWin * window;
    return { meanNll: sum / n, ppl: Math.exp(sum / n), predictions: n };
  }

  /** HF-named fp32 tensors (norms, embeddings and every linear). */
  tensors(): Map<string, SafeTensor> {
    const s = this.shape;
    const m = new Map<string, SafeTensor>();
    m.set('model.embed_tokens.weight', { dtype: 'F32', shape: [s.vocab, s.hidden], data: this.embed });
    m.set('model.norm.weight', { dtype: 'F32', shape: [s.hidden], data: this.finalNorm });
    if (!s.tied) m.set('lm_head.weight', { dtype: 'F32', shape: [s.vocab, s.hidden], data: this.lmHead });
    const lay = blockLayout(s);
    for (let l = 0; l < s.layers; l++) {
      m.set(`model.layers.${l}.input_layernorm.weight`, { dtype: 'F32', shape: [s.hidden], data: this.norm(l, 'input') });
      m.set(`model.layers.${l}.post_attention_layernorm.weight`, { dtype: 'F32', shape: [s.hidden], data: this.norm(l, 'post') });
      for (const n of LINEARS)
        m.set(`model.layers.${l}.${HF_LINEAR[n]}.weight`, { dtype: 'F32', shape: [lay.linears[n].rows, lay.linears[n].cols], data: this.linear(l, n) });
    }
    return m;
  }

  /**
   * From a runtime Checkpoint (any format the runtime loads, and the synthetic
   * builder): weights arrive in the runtime's names, already in the HF rotate_half
   * RoPE layout the training forward uses.
   */
  static fromCheckpoint(ck: Checkpoint): TrainableLlama {
    need.object(ck, 'checkpoint');
    need.func(ck.weight, 'checkpoint.weight');
    needConfig(ck.config, 'checkpoint.config');
    const c = ck.config;
    if (c.ropeScaling) throw new QuantformError('QF_UNSUPPORTED', `${ck.path}: rope_scaling is not supported by the training forward yet`);
    const shape: LlamaShape = {
      hidden: c.dim, intermediate: c.hiddenDim, layers: c.nLayers, heads: c.nHeads, kvHeads: c.nKvHeads, headDim: c.headDim,
      vocab: c.vocabSize, maxSeq: c.maxSeq, rmsEps: c.normEps, ropeTheta: c.ropeTheta, tied: c.tiedEmbeddings,
    };
    const hf: Record<string, unknown> = {
      architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: c.dim, intermediate_size: c.hiddenDim,
      num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, num_key_value_heads: c.nKvHeads, head_dim: c.headDim,
      vocab_size: c.vocabSize, max_position_embeddings: c.maxSeq, rms_norm_eps: c.normEps, rope_theta: c.ropeTheta,
      tie_word_embeddings: c.tiedEmbeddings, bos_token_id: c.bosId, eos_token_id: c.eosId, hidden_act: 'silu', torch_dtype: 'float32',
    };
    const weight = (name: string): Float32Array => {
      const w = ck.weight(name);
      checkFinite(w, `${ck.path}: ${name}`, weightShape(c, name));
      return w;
    };
    const embed = weight('embed');
    const lay = blockLayout(shape);
    const blocks: Float32Array[] = [];
    for (let l = 0; l < shape.layers; l++) {
      const b = new Float32Array(lay.total);
      b.set(weight(`layers.${l}.attn_norm`), lay.g1.offset);
      b.set(weight(`layers.${l}.ffn_norm`), lay.g2.offset);
      for (const n of LINEARS) b.set(weight(`layers.${l}.${RUNTIME_LINEAR[n]}`), lay.linears[n].offset);
      blocks.push(b);
    }
    return new TrainableLlama(shape, embed, weight('final_norm'), shape.tied ? embed : weight('lm_head'), blocks, hf);
  }

  static fromHfDir(dir: string): TrainableLlama {
    need.string(dir, 'dir');
    const { cfg, shape } = readHfConfig(dir);
    const file = path.join(dir, 'model.safetensors');
    if (!existsSync(file)) throw new QuantformError('QF_IO', `No model.safetensors in ${dir} (sharded checkpoints are not supported yet)`);
    const st = readSafetensors(file);
    const q = cfg.quantization_config as { quant_method?: string; bits?: number; checkpoint_format?: string } | undefined;
    const get = (name: string, rows: number, cols: number): Float32Array => {
      const t = st.get(name + '.weight');
      if (t) {
        if (t.dtype !== 'F32' || t.data.length !== rows * cols)
          throw new QuantformError('QF_CORRUPT_FILE', `${file}: ${name}.weight should be F32 [${rows}, ${cols}] but is ${t.dtype} [${t.shape}]`);
        checkFinite(t.data as Float32Array, `${file}: ${name}.weight`, rows > 1 ? [rows, cols] : undefined);
        return t.data as Float32Array;
      }
      const qw = st.get(name + '.qweight');
      if (qw && q?.quant_method === 'gptq') {
        const part = (suffix: string) => {
          const v = st.get(name + suffix);
          if (!v) throw new QuantformError('QF_CORRUPT_FILE', `${file}: ${name}${suffix} is missing`);
          return v.data;
        };
        const fmt: GptqFormat = q.checkpoint_format === 'gptq_v2' ? 'gptq_v2' : 'gptq';
        const w = dequantizeGptq({ qweight: qw.data as Int32Array, qzeros: part('.qzeros') as Int32Array, scales: part('.scales') as Uint16Array,
          gIdx: part('.g_idx') as Int32Array }, rows, cols, q.bits as Bits, fmt);
        checkFinite(w, `${file}: ${name} (dequantized)`, [rows, cols]);
        return w;
      }
      throw new QuantformError('QF_CORRUPT_FILE', `${file}: tensor ${name}.weight is missing`);
    };
    const D = shape.hidden;
    const embed = get('model.embed_tokens', shape.vocab, D);
    const finalNorm = get('model.norm', 1, D);
    const lmHead = shape.tied ? embed : get('lm_head', shape.vocab, D);
    const lay = blockLayout(shape);
    const blocks: Float32Array[] = [];
    for (let l = 0; l < shape.layers; l++) {
      const b = new Float32Array(lay.total);
      b.set(get(`model.layers.${l}.input_layernorm`, 1, D), lay.g1.offset);
      b.set(get(`model.layers.${l}.post_attention_layernorm`, 1, D), lay.g2.offset);
      for (const n of LINEARS) {
        const s = lay.linears[n];
        b.set(get(`model.layers.${l}.${HF_LINEAR[n]}`, s.rows, s.cols), s.offset);
      }
      blocks.push(b);
    }
    return new TrainableLlama(shape, embed, finalNorm, lmHead, blocks, cfg);
  }
}

export function readHfConfig(dir: string): { cfg: Record<string, unknown>; shape: LlamaShape } {
  const file = path.join(dir, 'config.json');
  let cfg: Record<string, unknown>;
  try {
    cfg = parseJsonObject(readFileSync(file, 'utf8'), file);
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  const num = (k: string, dflt?: number): number => {
    const v = cfg[k] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new QuantformError('QF_CORRUPT_FILE', `${file}: expected a number for ${k} but found ${JSON.stringify(v)}`);
    return v;
  };
  const heads = num('num_attention_heads'), hidden = num('hidden_size');
  if (cfg.rope_scaling) throw new QuantformError('QF_UNSUPPORTED', `${file}: rope_scaling is not supported by the training forward yet`);
  const shape: LlamaShape = {
    hidden, intermediate: num('intermediate_size'), layers: num('num_hidden_layers'), heads,
    kvHeads: num('num_key_value_heads', heads), headDim: num('head_dim', hidden / heads), vocab: num('vocab_size'),
    maxSeq: num('max_position_embeddings'), rmsEps: num('rms_norm_eps', 1e-6), ropeTheta: num('rope_theta', 10000),
    tied: cfg.tie_word_embeddings === true,
  };
  return { cfg, shape };
}

export interface TextTokenizer {
  /** BOS + ids, as the model was trained (tokenizer_config add_bos_token) */
  encode(text: string): number[];
  bos: number;
}

export function loadCalibrationTokenizer(dir: string): TextTokenizer {
  need.string(dir, 'dir');
  const read = (f: string) => {
    try {
      return parseJsonObject(readFileSync(path.join(dir, f), 'utf8'), path.join(dir, f));
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot read ${path.join(dir, f)}: ${(e as Error).message}`, { cause: e });
    }
  };
  const tok = new Tokenizer(read('tokenizer.json'), read('tokenizer_config.json'));
  const bos = tok.encode('a').ids[0];
  return { encode: (text: string) => tok.encode(text).ids, bos };
}
