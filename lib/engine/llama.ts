// A Llama model held for training: per-layer parameter arenas in the native block
// layout (native/include/quantform/engine.h, read through blockLayout()), forward and
// backward through the engine's block step. Perplexity is the evaluator's
// (lib/eval/perplexity.ts) on a runtime Model, not the trainer's.
// Built from any runtime Checkpoint (lib/model: HF single or sharded, llama2.c,
// GGUF, GPTQ dequantized to fp32, synthetic) by fromCheckpoint.
import { fromNative, invalidParameter, need, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig, type NativeBlockLayout } from '../native.js';
import type { Bits } from '../ops/quant.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { hfConfigFromLlama, invFreq as modelInvFreq, needConfig, weightShape, type LlamaConfig } from '../model/config.js';
import { activationConfig, needsRuntime } from '../model/fpt.js';
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
  /** (headDim / 2) RoPE inverse frequencies with rope_scaling applied; default: from ropeTheta */
  invFreq?: Float32Array;
}

/** (headDim / 2) RoPE inverse frequencies of a shape: its own, or rope_theta^(-2i/headDim). */
export function shapeInvFreq(s: LlamaShape): Float32Array {
  return s.invFreq ?? Float32Array.from({ length: s.headDim / 2 }, (_, i) => 1 / Math.pow(s.ropeTheta, (2 * i) / s.headDim));
}

/** The training shape of a runtime config; the engine's RoPE tables come from inv_freq, so Llama 3 rope_scaling trains as it runs. */
export function shapeOfConfig(c: LlamaConfig): LlamaShape {
  return {
    hidden: c.dim, intermediate: c.hiddenDim, layers: c.nLayers, heads: c.nHeads, kvHeads: c.nKvHeads, headDim: c.headDim,
    vocab: c.vocabSize, maxSeq: c.maxSeq, rmsEps: c.normEps, ropeTheta: c.ropeTheta, tied: c.tiedEmbeddings, invFreq: modelInvFreq(c),
  };
}

/** The engine's block config for a shape (native/include/quantform/engine.h names). */
export function blockConfigOf(s: LlamaShape, B: number, T: number, quant?: BlockQuant | null, teq = false, teqExtra = false): NativeBlockConfig {
  return {
    B, T, D: s.hidden, F: s.intermediate, Hq: s.heads, Hkv: s.kvHeads, hd: s.headDim, eps: s.rmsEps, invFreq: shapeInvFreq(s),
    bits: quant ? quant.bits : 0, groupSize: quant ? quant.groupSize : 128, symmetric: quant ? quant.symmetric : false, teq, teqExtra,
  };
}

/** Linears of one block, in arena order, with their HF names and (out, in) shapes. */
export const LINEARS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearName = (typeof LINEARS)[number];
/** The runtime's names of the same linears (lib/model/config.ts). */
export const RUNTIME_LINEAR: Record<LinearName, string> = {
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

const layouts = new Map<string, ReturnType<typeof blockLayout>>();

/** A LlamaShape passed in by a caller: sizes are positive integers, invFreq (headDim / 2) when given. */
function needShape(s: unknown): asserts s is LlamaShape {
  need.object(s, 'shape');
  const o = s as Record<string, unknown>;
  for (const k of ['hidden', 'intermediate', 'layers', 'heads', 'kvHeads', 'headDim', 'vocab', 'maxSeq'] as const) need.positiveInteger(o[k], `shape.${k}`);
  if (o.invFreq !== undefined && !(o.invFreq instanceof Float32Array && o.invFreq.length === (o.headDim as number) / 2))
    throw invalidParameter(`Float32Array of headDim / 2 = ${(o.headDim as number) / 2} elements`, 'shape.invFreq', o.invFreq, 'QF_SHAPE_MISMATCH');
}

/** Offsets in the block arena (attn_norm | wq | wk | wv | wo | ffn_norm | w_gate | w_up | w_down), as the engine lays it out. */
export function blockLayout(s: LlamaShape): { g1: Slot; g2: Slot; linears: Record<LinearName, Slot>; total: number } {
  needShape(s);
  const key = `${s.hidden},${s.intermediate},${s.heads},${s.kvHeads},${s.headDim}`;
  let lay = layouts.get(key);
  if (!lay) {
    let n: NativeBlockLayout;
    try {
      n = native().engine.blockLayout(blockConfigOf(s, 1, 1));
    } catch (e) {
      throw fromNative(e);
    }
    const linears = {} as Record<LinearName, Slot>;
    for (const l of LINEARS) linears[l] = n[RUNTIME_LINEAR[l] as keyof NativeBlockLayout] as Slot;
    lay = { g1: n.attn_norm, g2: n.ffn_norm, linears, total: n.total };
    layouts.set(key, lay);
  }
  return lay;
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
  /** (V, D); the same array as embed when tied (untieHead() gives it its own copy) */
  lmHead: Float32Array;
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

  /** Gives the LM head its own copy of the tied embedding (a transform that changes one but not the other). */
  untieHead(): void {
    if (!this.shape.tied) return;
    this.lmHead = this.embed.slice();
    this.shape.tied = false;
    this.hfConfig.tie_word_embeddings = false;
  }

  clone(): TrainableLlama {
    const embed = this.embed.slice();
    return new TrainableLlama({ ...this.shape }, embed, this.finalNorm.slice(), this.shape.tied ? embed : this.lmHead.slice(),
      this.blocks.map((b) => b.slice()), { ...this.hfConfig });
  }

  /** Floats of TEQ scales per layer: (2, D), plus (Dkv + F) with the extra v->o and up->down scales. */
  alphaPerLayer(extra: boolean): number {
    try {
      return native().engine.blockSizes(this.blockConfig(1, 1, null, true, extra)).alpha;
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** The engine's config for a block step on (B, T) tokens. */
  blockConfig(batch: number, seq: number, quant?: BlockQuant | null, teq = false, teqExtra = false): NativeBlockConfig {
    return blockConfigOf(this.shape, batch, seq, quant, teq, teqExtra);
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

  /** Every weight under its runtime name (lib/model/config.ts), with its shape: views, not copies. */
  *weights(): Generator<[string, Float32Array, number[]]> {
    const s = this.shape, lay = blockLayout(s);
    yield ['embed', this.embed, [s.vocab, s.hidden]];
    yield ['final_norm', this.finalNorm, [s.hidden]];
    if (!s.tied) yield ['lm_head', this.lmHead, [s.vocab, s.hidden]];
    for (let l = 0; l < s.layers; l++) {
      yield [`layers.${l}.attn_norm`, this.norm(l, 'input'), [s.hidden]];
      yield [`layers.${l}.ffn_norm`, this.norm(l, 'post'), [s.hidden]];
      for (const n of LINEARS) yield [`layers.${l}.${RUNTIME_LINEAR[n]}`, this.linear(l, n), [lay.linears[n].rows, lay.linears[n].cols]];
    }
  }

  /** Final hidden states x (B*S, D) for tokens (B, S), every block fp32 or fake-quantized. */
  async hidden(tokens: Int32Array, batch: number, seq: number, quant?: BlockQuant | null): Promise<Float32Array> {
    const eng = native().engine;
    const s = this.shape, T = batch * seq;
    let x = new Float32Array(T * s.hidden);
    let y = new Float32Array(T * s.hidden);
    try {
      eng.embeddingForward(x, tokens, this.embed, T, s.vocab, s.hidden);
      const cfg = this.blockConfig(batch, seq, quant);
      for (const b of this.blocks) {
        await eng.blockForward(cfg, y, null, x, b, null, true);  // no saved activations: nothing to backpropagate
        [x, y] = [y, x];
      }
    } catch (e) {
      throw fromNative(e);
    }
    return x;
  }

  /** logits (B*S, V) */
  async logits(tokens: Int32Array, batch: number, seq: number, quant?: BlockQuant | null): Promise<Float32Array> {
    const eng = native().engine;
    const s = this.shape, T = batch * seq;
    const x = await this.hidden(tokens, batch, seq, quant);
    const n = new Float32Array(T * s.hidden), out = new Float32Array(T * s.vocab);
    try {
      eng.rmsnormForward(n, null, x, this.finalNorm, T, s.hidden, s.rmsEps);
      eng.gemm(out, n, this.lmHead, T, s.vocab, s.hidden, false, true, false);
    } catch (e) {
      throw fromNative(e);
    }
    return out;
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
    const aq = ck.activationQuant?.() ?? null;
    if (aq && needsRuntime(aq))
      throw new QuantformError('QF_UNSUPPORTED',
        `${ck.path} quantizes activations or applies transforms at run time (${JSON.stringify(activationConfig(aq))}): ` +
        'its dequantized weights alone are not the model, so it cannot be trained further; start from the fp checkpoint');
    const shape = shapeOfConfig(c);
    const hf = ck.hfConfig ?? hfConfigFromLlama(c);
    // every weight, whatever the format, passes the one NaN/Inf check before training sees it
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
}
