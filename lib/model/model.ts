// loadModel(): any supported checkpoint -> a Model whose weights live in native
// memory (one LlamaModel per Model) and whose forward pass is one native call.
import { existsSync, statSync } from 'node:fs';
import { QuantformError, fromNative, invalidParameter, is, need } from '../errors.js';
import { native, type NativeLlamaModel, type NativeStoredWeight } from '../native.js';
import { Tensor } from '../ops/tensor.js';
import { checkFinite, checkQuantizedFinite } from '../ops/finite.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint } from './checkpoint.js';
import { LINEAR_WEIGHTS, invFreq, needConfig, weightNames, weightShape, type LlamaConfig } from './config.js';
import { CheckpointFile } from '../io/file.js';
import { nativeFloatDtype, rowsCols } from '../io/tensors.js';
import { GgufCheckpoint } from './gguf.js';
import { Fp32Linear, QuantizedLinear, type Linear } from './linear.js';
import { Llama2cCheckpoint } from './llama2c.js';
import { SafetensorsCheckpoint } from './hf.js';
import { GptqCheckpoint, gptqConfig } from './gptq.js';
import { SyntheticCheckpoint, type SyntheticOptions } from './synthetic.js';

export interface LoadOptions {
  /** llama2.c tokenizer.bin when it is not next to the checkpoint */
  tokenizer?: string;
  /** KV cache / RoPE capacity in positions (default: the model's context length, at most 4096) */
  maxSeq?: number;
}

export interface ForwardOptions {
  /** position of the first token (0 starts a new sequence; otherwise continues the KV cache) */
  pos0?: number;
  /** only the last position's logits (generation) */
  lastOnly?: boolean;
}

export interface ForwardResult {
  /** (B, T, V) or (B, V) with lastOnly */
  logits: Float32Array;
  B: number;
  T: number;
  V: number;
}

/** Opens a checkpoint without loading weights: format by directory / magic / extension. */
export function openCheckpoint(pathOrDir: string, opts: LoadOptions = {}): Checkpoint {
  if (!is.string(pathOrDir) || pathOrDir.length === 0) throw invalidParameter('model path', 'model', pathOrDir);
  if (!existsSync(pathOrDir)) throw new QuantformError('QF_IO', `Model path ${pathOrDir} does not exist`);
  if (statSync(pathOrDir).isDirectory()) return gptqConfig(pathOrDir) ? new GptqCheckpoint(pathOrDir) : new SafetensorsCheckpoint(pathOrDir);
  const f = new CheckpointFile(pathOrDir);
  let magic = -1;
  try {
    if (f.size >= 4) magic = f.read(0, 4, 'magic').readUInt32LE(0);
  } finally {
    f.close();
  }
  if (magic === 0x46554747 || pathOrDir.endsWith('.gguf')) return new GgufCheckpoint(pathOrDir);
  return new Llama2cCheckpoint(pathOrDir, opts.tokenizer);
}

export class Model {
  readonly config: LlamaConfig;
  /** positions the KV cache holds */
  readonly maxSeq: number;
  private handle: NativeLlamaModel | null = null;
  private readonly linears = new Map<string, Linear>();

  constructor(readonly checkpoint: Checkpoint, readonly tokenizer: Tokenizer, opts: LoadOptions = {}) {
    need.object(checkpoint, 'checkpoint');
    need.func(checkpoint.weight, 'checkpoint.weight');
    needConfig(checkpoint.config, 'checkpoint.config');
    need.object(tokenizer, 'tokenizer');
    need.func(tokenizer.encode, 'tokenizer.encode');
    need.func(tokenizer.decode, 'tokenizer.decode');
    need.object(opts, 'options');
    const cfg = checkpoint.config;
    this.config = cfg;
    const maxSeq = opts.maxSeq ?? Math.min(cfg.maxSeq, 4096);
    if (!is.positiveInteger(maxSeq)) throw invalidParameter('positive integer', 'maxSeq', maxSeq);
    this.maxSeq = maxSeq;
    try {
      this.handle = new (native().LlamaModel)({
        dim: cfg.dim, hiddenDim: cfg.hiddenDim, nLayers: cfg.nLayers, nHeads: cfg.nHeads, nKvHeads: cfg.nKvHeads,
        headDim: cfg.headDim, vocabSize: cfg.vocabSize, maxSeq, normEps: cfg.normEps, invFreq: invFreq(cfg), tied: cfg.tiedEmbeddings,
      });
      // one tensor at a time. A stored float tensor is read and widened natively
      // straight into the model's memory; quantized checkpoints hand their linears
      // over packed (they run on the INT4 kernels); anything else (synthetic,
      // dequantized) goes through weight().
      const stored: NativeStoredWeight[] = [];
      for (const name of weightNames(cfg)) {
        const q = checkpoint.quantizedWeight?.(name) ?? null;
        const src = q ? null : checkpoint.tensorSource?.(name) ?? null;
        if (q) {
          checkQuantizedFinite(q, `${checkpoint.path}: ${name}`);
          this.handle.setQuantizedWeight(name, q.codes, q.scales, q.zeros, q.paramDtype, q.shape[0], q.shape[1], q.bits, q.groupSize, q.symmetric);
          this.linears.set(name, new QuantizedLinear(q));
        } else if (src) {
          // read natively into the model, scanned for NaN/Inf there (llama.cpp check_finite_weight)
          const [rows, cols] = rowsCols(src.tensor);
          stored.push({ name, what: `${checkpoint.path}: ${name}`, fd: src.tensor.file.fd, offset: src.tensor.offset,
            dtype: nativeFloatDtype(src.tensor), rows, cols, dstRow: src.dstRow });
        } else {
          const w = checkpoint.weight(name);
          checkFinite(w, `${checkpoint.path}: ${name}`, weightShape(cfg, name));
          this.handle.setWeight(name, w);
        }
      }
      this.handle.setWeightsFromFile(stored);
    } catch (e) {
      this.handle?.dispose();
      throw fromNative(e);
    }
  }

  private live(): NativeLlamaModel {
    if (!this.handle) throw new QuantformError('QF_INVALID_ARGUMENT', 'Model was disposed');
    return this.handle;
  }

  /** Names of the linear layers (layers.<l>.wq ... w_down, plus lm_head when untied). */
  linearNames(): string[] {
    const out: string[] = [];
    for (let l = 0; l < this.config.nLayers; l++) for (const w of LINEAR_WEIGHTS) out.push(`layers.${l}.${w}`);
    if (!this.config.tiedEmbeddings) out.push('lm_head');
    return out;
  }

  /** The linear layer `name`: the one set with setLinear, else the checkpoint's fp32 weight (read on demand). */
  linear(name: string): Linear {
    need.string(name, 'name');
    const set = this.linears.get(name);
    if (set) return set;
    if (!this.linearNames().includes(name)) throw invalidParameter(`one of the model's linear names`, 'name', name);
    return new Fp32Linear(new Tensor(this.checkpoint.weight(name), weightShape(this.config, name)));
  }

  /** Replaces a linear layer (e.g. with a QuantizedLinear); shapes must match. */
  setLinear(name: string, linear: Linear): void {
    need.string(name, 'name');
    if (!is.object(linear) || !is.func(linear.toFloat32) || !is.positiveInteger(linear.outFeatures) || !is.positiveInteger(linear.inFeatures))
      throw invalidParameter('Linear (Fp32Linear, QuantizedLinear or an object with outFeatures, inFeatures and toFloat32)', 'linear', linear);
    if (!this.linearNames().includes(name)) throw invalidParameter(`one of the model's linear names`, 'name', name);
    const [o, i] = weightShape(this.config, name);
    if (linear.outFeatures !== o || linear.inFeatures !== i)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected a [${o}, ${i}] linear for ${name} but received [${linear.outFeatures}, ${linear.inFeatures}]`);
    try {
      if (linear instanceof QuantizedLinear) {
        const q = linear.weight;
        checkQuantizedFinite(q, name);
        this.live().setQuantizedWeight(name, q.codes, q.scales, q.zeros, q.paramDtype, q.shape[0], q.shape[1], q.bits, q.groupSize, q.symmetric);
      } else {
        const w = linear.toFloat32();
        checkFinite(w, name, [o, i]);
        this.live().setWeight(name, w);
      }
    } catch (e) {
      throw fromNative(e);
    }
    this.linears.set(name, linear);
  }

  private prepare(tokens: Int32Array | readonly number[] | readonly (readonly number[])[], opts: ForwardOptions) {
    need.object(opts, 'options');
    let rows: readonly (readonly number[])[] | null = null;
    let flat: Int32Array, B: number, T: number;
    if (tokens instanceof Int32Array) {
      flat = tokens; B = 1; T = tokens.length;
    } else if (Array.isArray(tokens) && tokens.length > 0 && Array.isArray(tokens[0])) {
      rows = tokens as readonly (readonly number[])[];
      B = rows.length; T = rows[0].length;
      if (rows.some((r) => r.length !== T)) throw invalidParameter('sequences of equal length', 'tokens', tokens);
      flat = new Int32Array(B * T);
      rows.forEach((r, b) => flat.set(r, b * T));
    } else if (Array.isArray(tokens)) {
      flat = Int32Array.from(tokens as number[]); B = 1; T = flat.length;
    } else throw invalidParameter('Int32Array or array of token ids', 'tokens', tokens);
    if (T === 0) throw invalidParameter('at least one token', 'tokens', tokens);
    const V = this.config.vocabSize;
    for (let i = 0; i < flat.length; i++)
      if (!(flat[i] >= 0 && flat[i] < V)) throw invalidParameter(`token ids in [0, ${V})`, `tokens[${i}]`, flat[i]);
    const pos0 = opts.pos0 ?? 0;
    if (!is.nonNegativeInteger(pos0)) throw invalidParameter('non-negative integer', 'pos0', pos0);
    if (pos0 + T > this.maxSeq) throw invalidParameter(`pos0 + T <= maxSeq = ${this.maxSeq}`, 'pos0 + T', pos0 + T);
    return { flat, B, T, V, pos0, lastOnly: opts.lastOnly ?? false };
  }

  /** Logits for a batch of equal-length sequences (B, T) or one sequence. */
  forward(tokens: Int32Array | readonly number[] | readonly (readonly number[])[], opts: ForwardOptions = {}): ForwardResult {
    const p = this.prepare(tokens, opts);
    try {
      return { logits: this.live().forward(p.flat, p.B, p.T, p.pos0, p.lastOnly, false), B: p.B, T: p.T, V: p.V };
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** forward() on a worker thread: the event loop stays free (progress bars, servers). */
  async forwardAsync(tokens: Int32Array | readonly number[] | readonly (readonly number[])[], opts: ForwardOptions = {}): Promise<ForwardResult> {
    const p = this.prepare(tokens, opts);
    try {
      return { logits: await this.live().forward(p.flat, p.B, p.T, p.pos0, p.lastOnly, true), B: p.B, T: p.T, V: p.V };
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** Frees native memory and closes the checkpoint files. */
  dispose(): void {
    this.handle?.dispose();
    this.handle = null;
    this.checkpoint.close();
  }
}

/** Loads a model: HF directory, llama2.c .bin, GGUF file, or a synthetic one ({ synthetic: {...} }). */
export async function loadModel(pathOrDir: string | { synthetic: SyntheticOptions }, opts: LoadOptions = {}): Promise<Model> {
  need.object(opts, 'options');
  if (opts.tokenizer !== undefined) need.string(opts.tokenizer, 'options.tokenizer');
  const ckpt = typeof pathOrDir === 'object' && pathOrDir !== null && 'synthetic' in pathOrDir
    ? new SyntheticCheckpoint(pathOrDir.synthetic)
    : openCheckpoint(pathOrDir as string, opts);
  try {
    const tok = await ckpt.tokenizer();
    return new Model(ckpt, tok, opts);
  } catch (e) {
    ckpt.close();
    throw e;
  }
}
