// EfficientQAT (Chen et al. 2024; reference code OpenGVLab/EfficientQAT), two phases on
// the engine's block step:
//   Block-AP  block by block, every linear's weights, the two RMSNorm weights and every
//             group's step size s and zero point z train through the reference's quantizer
//             (engine.h LearnedFakeQuant: w_q = (clamp(round(w / s') + z', 0, 2^b - 1) - z') s',
//             s' = clamp(s, 1e-4, 1e4), z' = clamp(round(z)), rounding and the parameter clamps
//             straight-through) on the MSE between the fp block's output on fp inputs and the
//             quantized block's output on the inputs through the already-quantized blocks.
//             AdamW (wd 0), lr 1e-4 for s and z, 1e-5 for weights (2e-5 at 2 bits), cosine to
//             lr / 20 over the block's steps, batch 2, 2 epochs. After a block its codes come
//             from the trained s and z, its weights become their dequantized values (f16 step
//             sizes, as saved), and the next block's quantized inputs run through it.
//   E2E-QP    the codes and zero points frozen, only the step sizes train on next-token
//             cross-entropy of the whole model, which stays packed: the block step runs on
//             the packed codes with f32 step sizes (dequant-matmul forward, quantized-linear
//             backward), so no fp32 copy of the weights exists. AdamW (wd 0), cosine with 3 %
//             warm-up, gradient-norm clip 0.3, lr 2e-5 at 2 bits, 1e-5 at 3/4/8 bits.
// Block-AP starts from min-max RTN (the reference) or from GPTQ's codes and scales
// (init 'gptq': GPTQ's block method on the same quantized-path inputs; its weights become
// GPTQ's dequantized values, so training starts at GPTQ's block); E2E-QP starts from
// Block-AP, or from any quantized linears (a GPTQ checkpoint's).
// Both run on the streaming block pipeline (lib/engine/pipeline.ts): Block-AP is the block
// method (one block in memory, X_fp / Y_fp / X_q in ActivationStores under --max-memory),
// returning each block's linears with its trained norms; E2E-QP is the stage after the block
// pass (MethodRun.afterBlocks) on its packed result, which is all it ever holds of the linears.
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';
import { native, type NativeBlockConfig, type NativeFqState, type NativePackedBlock } from '../native.js';
import { batchIndices, needCalibration, type CalibrationSet } from '../engine/calib.js';
import { AdamW, learningRate } from '../engine/optim.js';
import { blockConfigOf, blockLayout, HF_LINEAR, LINEARS, RUNTIME_LINEAR, shapeOfConfig, TrainableLlama, type BlockQuant, type LinearName, type LlamaShape } from '../engine/llama.js';
import { needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { dequantize, numGroups, pack, packedRowBytes, QuantizedTensor, SUPPORTED_BITS, type Bits } from '../ops/quant.js';
import { gptq } from './gptq.js';
import { nonFinite, Trainer } from './trainer.js';
import { formatBytes, NO_ACTIVATIONS, type ActivationNeeds, type BlockResult, type MemoryItem, type PipelineBlock } from '../engine/pipeline.js';
import type { MethodContext, MethodRun, QuantMethod, TrainState } from './types.js';

export type EfficientQatPhases = 'block-ap' | 'e2e-qp' | 'both';

export interface EfficientQatOptions {
  /** Default 'both'. 'e2e-qp' alone starts from `start`, else from the init quantizer's codes (no Block-AP). */
  phases?: EfficientQatPhases;
  /** Block-AP's starting point: 'rtn' (min-max, the reference) or 'gptq' (GPTQ's codes and scales). Default 'rtn'. */
  init?: 'rtn' | 'gptq';
  /** Block-AP: passes over the calibration windows per block. Default 2. */
  epochs?: number;
  /** Block-AP: windows per step. Default 2. */
  batchSize?: number;
  /** Block-AP: lr of step sizes and zero points. Default 1e-4. */
  lrQuant?: number;
  /** Block-AP: lr of weights and norms. Default 1e-5, 2e-5 at 2 bits. */
  lrWeight?: number;
  /** Block-AP: the cosine schedule ends at lr / minLrFactor. Default 20. */
  minLrFactor?: number;
  /** E2E-QP: passes over the calibration windows. Default 1. */
  e2eEpochs?: number;
  /** E2E-QP: windows per step. Default 2. */
  e2eBatchSize?: number;
  /** E2E-QP: lr of the step sizes. Default 2e-5 at 2 bits, 1e-5 otherwise. */
  e2eLr?: number;
  /** E2E-QP: warm-up fraction of the cosine schedule. Default 0.03. */
  e2eWarmup?: number;
  /** E2E-QP: global gradient-norm clip. Default 0.3. */
  clipNorm?: number;
  /** E2E-QP: saved activations of every block are kept up to this many bytes; above, blocks are recomputed. Default 2e9. */
  e2eMemoryBytes?: number;
  /**
   * E2E-QP's starting point when phases is 'e2e-qp': quantized linears by HF name
   * (model.layers.<l>.self_attn.q_proj ...), e.g. a GPTQ checkpoint's (checkpointLinears).
   */
  start?: Map<string, QuantizedTensor>;
}

/**
 * Named recipes. 'reference': the reference's hyperparameters (tuned on 7B-70B models).
 * 'small': what measured best on stories260K (bench efficientqat, README): Block-AP's weight
 * learning rate 1e-4 (the reference's 1e-5 / 2e-5 leaves most of the block reconstruction
 * error; 5e-5 to 2e-4 all beat it, W3 and W2 by far) and E2E-QP at 1e-4. Starting Block-AP
 * from GPTQ ('init: gptq') measured worse than from RTN at every learning rate tried.
 */
export const EFFICIENTQAT_RECIPES: Record<string, (bits: Bits) => EfficientQatOptions> = {
  reference: () => ({}),
  small: () => ({ lrWeight: 1e-4, e2eLr: 1e-4 }),
};

export type ResolvedEfficientQat = Required<Omit<EfficientQatOptions, 'start'>> & { start?: Map<string, QuantizedTensor> };

export function resolveEfficientQat(o: EfficientQatOptions = {}, bits: Bits): ResolvedEfficientQat {
  if (o === null || typeof o !== 'object') throw invalidParameter('options object', 'efficientqat', o);
  const r: ResolvedEfficientQat = {
    phases: o.phases ?? 'both', init: o.init ?? 'rtn', epochs: o.epochs ?? 2, batchSize: o.batchSize ?? 2, lrQuant: o.lrQuant ?? 1e-4,
    lrWeight: o.lrWeight ?? (bits === 2 ? 2e-5 : 1e-5), minLrFactor: o.minLrFactor ?? 20, e2eEpochs: o.e2eEpochs ?? 1,
    e2eBatchSize: o.e2eBatchSize ?? 2, e2eLr: o.e2eLr ?? (bits === 2 ? 2e-5 : 1e-5), e2eWarmup: o.e2eWarmup ?? 0.03,
    clipNorm: o.clipNorm ?? 0.3, e2eMemoryBytes: o.e2eMemoryBytes ?? 2e9, start: o.start,
  };
  if (!is.oneOf(r.phases, ['block-ap', 'e2e-qp', 'both'] as const)) throw invalidParameter("'block-ap', 'e2e-qp' or 'both'", 'phases', r.phases);
  if (!is.oneOf(r.init, ['rtn', 'gptq'] as const)) throw invalidParameter("'rtn' or 'gptq'", 'init', r.init);
  for (const k of ['epochs', 'batchSize', 'e2eEpochs', 'e2eBatchSize'] as const)
    if (!is.positiveInteger(r[k])) throw invalidParameter('positive integer', k, r[k]);
  for (const k of ['lrQuant', 'lrWeight', 'e2eLr', 'e2eMemoryBytes'] as const)
    if (!is.finiteNumber(r[k]) || r[k] < 0) throw invalidParameter('non-negative number', k, r[k]);
  if (!is.finiteNumber(r.minLrFactor) || r.minLrFactor < 1) throw invalidParameter('number >= 1', 'minLrFactor', r.minLrFactor);
  if (!(r.e2eWarmup >= 0 && r.e2eWarmup < 1)) throw invalidParameter('number in [0, 1)', 'e2eWarmup', r.e2eWarmup);
  if (!is.finiteNumber(r.clipNorm) || r.clipNorm <= 0) throw invalidParameter('positive number', 'clipNorm', r.clipNorm);
  if (r.start !== undefined && !(r.start instanceof Map)) throw invalidParameter('Map of HF linear names to QuantizedTensor', 'start', r.start);
  if (r.start && r.phases !== 'e2e-qp')
    throw new QuantformError('QF_INVALID_ARGUMENT', `Expected phases 'e2e-qp' with start (quantized linears to refine) but received phases '${r.phases}'`);
  return r;
}

/** Cosine decay from lr to lr / factor over `steps`, no warm-up (torch CosineAnnealingLR, the reference's Block-AP schedule). */
export function cosineToFloor(lr: number, step: number, steps: number, factor: number): number {
  const min = lr / factor;
  return min + (lr - min) * 0.5 * (1 + Math.cos((Math.PI * Math.min(step, steps)) / Math.max(1, steps)));
}

/** Block-AP steps per block: epochs over the windows in batches (the reference's epochs * train_size / batch_size). */
export function blockApSteps(samples: number, o: ResolvedEfficientQat): number {
  return o.epochs * Math.max(1, Math.floor(samples / Math.min(o.batchSize, samples)));
}

export function e2eSteps(samples: number, o: ResolvedEfficientQat): number {
  return o.e2eEpochs * Math.max(1, Math.floor(samples / Math.min(o.e2eBatchSize, samples)));
}

const name = (l: number, n: LinearName) => `model.layers.${l}.${HF_LINEAR[n]}`;

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

/** (rows, cols, offset in the block arena, group size capped at cols, groups per row) of every linear. */
function linearDims(shape: LlamaShape, quant: BlockQuant) {
  const lay = blockLayout(shape);
  return LINEARS.map((n) => {
    const { rows, cols, offset } = lay.linears[n];
    const gs = Math.min(quant.groupSize, cols);
    return { n, rows, cols, offset, gs, G: numGroups(cols, gs) };
  });
}

/**
 * The packed weight the trained quantizer gives w (N, K): codes clamp(round(w / s') + z') from
 * the f32 step sizes it trained with, stored with f16 step sizes (as saved) and integer zeros.
 */
function packLearned(w: Float32Array, s: Float32Array, z: Float32Array | null, N: number, K: number, gs: number, quant: BlockQuant): QuantizedTensor {
  const codes = new Float32Array(N * K);
  call(() => native().engine.learnedFqCodes(codes, w, s, z, N, K, quant.bits, gs, quant.symmetric));
  const hi = 2 ** quant.bits - 1;
  const s16 = Uint16Array.from(s, (v) => f32ToF16(Math.min(Math.max(v, Math.fround(1e-4)), 1e4)));
  const z16 = z ? Uint16Array.from(z, (v) => f32ToF16(Math.min(Math.max(Math.round(v), 0), hi))) : null;
  return new QuantizedTensor(pack(new Uint8Array(codes), [N, K], quant.bits), s16, z16, [N, K], quant.bits, gs, quant.symmetric, 'f16');
}

/** A BlockQuant handed in by a caller (plain JS). */
function needBlockQuant(q: unknown, name = 'quant'): asserts q is BlockQuant {
  need.object(q, name);
  const o = q as Record<string, unknown>;
  if (!is.oneOf(o.bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', `${name}.bits`, o.bits, 'QF_UNSUPPORTED_BITS');
  need.positiveInteger(o.groupSize, `${name}.groupSize`);
  need.bool(o.symmetric, `${name}.symmetric`);
}

/** A PackedLlama handed in by a caller (plain JS): the fp32 parts and the linears' map. */
function needPackedLlama(m: unknown, name = 'model'): asserts m is PackedLlama {
  need.object(m, name);
  const o = m as Record<string, unknown>;
  need.object(o.shape, `${name}.shape`);
  need.positiveInteger((o.shape as Record<string, unknown>).layers, `${name}.shape.layers`);
  for (const k of ['embed', 'finalNorm', 'lmHead'] as const) need.instance(o[k], Float32Array, `${name}.${k}`);
  need.instance(o.linears, Map, `${name}.linears`);
  if (!Array.isArray(o.norms) || o.norms.length !== (o.shape as LlamaShape).layers)
    throw invalidParameter(`array of ${(o.shape as LlamaShape).layers} { input, post } norms`, `${name}.norms`, o.norms);
}

/** Bytes of the packed codes of a (rows, cols) linear. */
function packedBytes(rows: number, cols: number, bits: Bits): number {
  return rows * packedRowBytes(bits, cols);
}

/** f32 copies of a quantized weight's step sizes and zero points. */
function paramsOf(q: QuantizedTensor): { s: Float32Array; z: Float32Array | null } {
  const widen = (a: ArrayLike<number>) => (q.paramDtype === 'f16' ? Float32Array.from(a, (h) => f16ToF32(h)) : Float32Array.from(a));
  return { s: widen(q.scales), z: q.zeros ? widen(q.zeros) : null };
}

/** Checks quantized linears handed in as E2E-QP's start against the model and the run's quantization. */
export function checkStart(shape: LlamaShape, start: Map<string, QuantizedTensor>, quant: BlockQuant): void {
  for (let l = 0; l < shape.layers; l++)
    for (const d of linearDims(shape, quant)) {
      const q = start.get(name(l, d.n));
      if (!q) throw new QuantformError('QF_INVALID_ARGUMENT', `The quantized start holds no ${name(l, d.n)}: it is not a checkpoint of this model`);
      if (q.shape[0] !== d.rows || q.shape[1] !== d.cols)
        throw new QuantformError('QF_SHAPE_MISMATCH',
          `The quantized start's ${name(l, d.n)} is [${q.shape.join(', ')}] but the model's is [${d.rows}, ${d.cols}]: it is a checkpoint of another model`);
      if (q.bits !== quant.bits || q.symmetric !== quant.symmetric || q.groupSize !== d.gs)
        throw new QuantformError('QF_INVALID_ARGUMENT',
          `The quantized start's ${name(l, d.n)} is INT${q.bits} g${q.groupSize} ${q.symmetric ? 'sym' : 'asym'}, not the requested INT${quant.bits} g${d.gs} ${quant.symmetric ? 'sym' : 'asym'}`);
    }
}

/** What a finished Block-AP block leaves for E2E-QP and the checkpoint: f16-rounded step sizes and zero points (f32), per linear. */
interface FinishedParams {
  s: Float32Array;
  z: Float32Array | null;
}

/** Per layer and linear, in arena order; a checkpoint's 'fq' tensor is these concatenated (s, then z). */
function flattenFinished(done: FinishedParams[][]): Float32Array {
  const parts = done.flatMap((ls) => ls.flatMap((p) => (p.z ? [p.s, p.z] : [p.s])));
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function unflattenFinished(flat: Float32Array, layers: number, dims: ReturnType<typeof linearDims>, sym: boolean): FinishedParams[][] {
  const out: FinishedParams[][] = [];
  let o = 0;
  const take = (n: number) => {
    if (o + n > flat.length) throw new QuantformError('QF_CORRUPT_FILE', `The checkpoint's step sizes end at ${flat.length} floats, before layer ${out.length}`);
    o += n;
    return flat.slice(o - n, o);
  };
  for (let l = 0; l < layers; l++) out.push(dims.map((d) => { const s = take(d.rows * d.G); return { s, z: sym ? null : take(d.rows * d.G) }; }));
  return out;
}

/** Checks of the options against the model and the calibration, before anything is read. */
function checkRun(shape: LlamaShape, cal: CalibrationSet, quant: BlockQuant, o: ResolvedEfficientQat): void {
  if (cal.seqLen > shape.maxSeq) throw invalidParameter(`seqLen <= ${shape.maxSeq} (the model's context)`, 'calibration.seqLen', cal.seqLen);
  // a group size is either within every linear's input or per-channel for all of them
  const dims = linearDims(shape, quant);
  const small = dims.reduce((a, d) => (d.cols < a.cols ? d : a)), large = Math.max(...dims.map((d) => d.cols));
  if (quant.groupSize > small.cols && quant.groupSize < large)
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `Expected groupSize <= ${small.cols} (the input size of ${HF_LINEAR[small.n]}) or >= ${large} (one group per row of every linear) but received ${quant.groupSize}`);
  for (const k of ['batchSize', 'e2eBatchSize'] as const)
    if (o[k] > cal.samples)
      throw new QuantformError('QF_INVALID_ARGUMENT', `Calibration holds ${cal.samples} windows, too few for ${k} ${o[k]}: pass more samples or a smaller batch`);
}

/** A quantized weight with f16 parameters (what the pipeline writes); the same tensor when it has them. */
function withF16Params(q: QuantizedTensor): QuantizedTensor {
  if (q.paramDtype === 'f16') return q;
  const p = paramsOf(q);
  return new QuantizedTensor(q.codes, Uint16Array.from(p.s, (v) => f32ToF16(v)), p.z ? Uint16Array.from(p.z, (v) => f32ToF16(v)) : null,
    q.shape, q.bits, q.groupSize, q.symmetric, 'f16');
}

/**
 * An EfficientQAT run on the streaming block pipeline (lib/engine/pipeline.ts). Block-AP is
 * the block method: per block it needs what TEQ's block loss needs plus the quantized-path
 * inputs (X_fp for the fp targets Y_fp, X_q for the quantized block's inputs) and returns
 * the block's quantized linears, its trained norms rewritten in the arena. E2E-QP is the
 * stage after the block pass (afterBlocks) on the packed result. The finished blocks are
 * kept packed (their codes, f16 step sizes and zero points, and their norms): E2E-QP trains
 * them, and a checkpoint stores them, so nothing of the size of the fp32 model is held.
 */
class EfficientQatMethodRun implements MethodRun {
  readonly needs: ActivationNeeds;
  readonly rewritesNorms = true;
  private readonly nb = native().engine;
  private readonly o: ResolvedEfficientQat;
  private readonly cal: CalibrationSet;
  private readonly quant: BlockQuant;
  private readonly dims: ReturnType<typeof linearDims>;
  private readonly curve: number[] = [];
  private readonly trainer: Trainer;
  private readonly apSteps: number;
  private readonly e2e: number;
  private readonly B: number;
  /** GPTQ's block method (init 'gptq'): its codes and scales start each block */
  private readonly gptq: MethodRun | null;
  /** every finished block: its linears (by arena order) and its two norms */
  private readonly finished: { linears: QuantizedTensor[]; norms: Float32Array }[] = [];
  /** resume: the step the checkpoint was taken at, and whether it is inside E2E-QP */
  private readonly start0: number;
  private readonly inE2e: boolean;
  private bufs: { saved: Float32Array; xb: Float32Array; yb: Float32Array; out: Float32Array; dout: Float32Array; dx: Float32Array } | null = null;

  constructor(private readonly ctx: MethodContext) {
    const cal = ctx.calibration;
    if (!cal) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'efficientqat' needs calibration data");
    needBlockQuant(ctx.quant);
    this.cal = cal;
    this.quant = ctx.quant;
    const o = (this.o = resolveEfficientQat(ctx.efficientqat ?? {}, ctx.quant.bits));
    const s = ctx.shape, L = s.layers;
    checkRun(s, cal, ctx.quant, o);
    this.dims = linearDims(s, ctx.quant);
    if (o.start) checkStart(s, o.start, ctx.quant);
    this.apSteps = o.phases === 'e2e-qp' ? 0 : blockApSteps(cal.samples, o);
    this.e2e = o.phases === 'block-ap' ? 0 : e2eSteps(cal.samples, o);
    this.B = Math.min(o.batchSize, cal.samples);
    this.trainer = new Trainer(ctx, L * this.apSteps + this.e2e);
    this.gptq = o.init === 'gptq' && !o.start ? gptq.start({ ...ctx, onProgress: undefined }) : null;
    if (this.e2e > 0) {
      this.afterBlocks = (m) => this.e2eQp(m);
      // E2E-QP runs after the block pass: a budget too small for it fails now, not after every block trained
      const budget = ctx.maxMemoryBytes, items = this.e2eFixed(), bytes = items.reduce((a, i) => a + i.bytes, 0);
      if (budget !== undefined && bytes > budget)
        throw new QuantformError('QF_INVALID_ARGUMENT', `${ctx.budgetLabel ?? `maxMemoryBytes ${budget} (${formatBytes(budget)})`} is too small for E2E-QP of this model: ` +
          `it holds ${items.map((i) => `${i.what} (${formatBytes(i.bytes)})`).join(', ')}: ${formatBytes(bytes)} in all`);
    }
    this.needs = this.apSteps > 0 ? { fpInputs: true, fpTargets: true, quantInputs: true } : this.gptq ? this.gptq.needs : NO_ACTIVATIONS;
    // a checkpoint taken at step n resumes at n: inside Block-AP (n <= totalAp; its block is finalized on
    // resume when n ends it) or inside E2E-QP (every block finished)
    const resume = ctx.resume;
    this.start0 = resume?.step ?? 0;
    this.inE2e = resume !== undefined && this.start0 > this.totalAp;
    if (resume) {
      if (this.start0 > this.totalAp + this.e2e)
        throw new QuantformError('QF_CORRUPT_FILE', `The checkpoint is at step ${this.start0}, past the ${this.totalAp + this.e2e} steps of this run`);
      this.curve.push(...resume.lossCurve);
      const layersDone = this.inE2e ? (o.start ? 0 : L) : this.start0 === 0 || this.apSteps === 0 ? 0 : Math.floor((this.start0 - 1) / this.apSteps);
      this.restore(resume, layersDone);
    }
  }

  private get totalAp(): number {
    return this.ctx.shape.layers * this.apSteps;
  }

  /** The finished blocks of a checkpoint: 'fq' (f16-rounded s, z per linear), 'norms' (2 D per block), 'codes' (packed, per linear, 4-byte aligned). */
  private restore(st: TrainState, layers: number): void {
    const fq = st.tensors?.get('fq'), norms = st.tensors?.get('norms'), codes = st.tensors?.get('codes');
    const D = this.ctx.shape.hidden;
    if (!(fq instanceof Float32Array) || !(norms instanceof Float32Array) || !(codes instanceof Int32Array) || norms.length < layers * 2 * D)
      throw new QuantformError('QF_CORRUPT_FILE', 'The EfficientQAT checkpoint holds no finished blocks (fq, norms, codes) of this model');
    const params = unflattenFinished(fq, layers, this.dims, this.quant.symmetric);
    const bytes = new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength);
    let off = 0;
    for (let l = 0; l < layers; l++) {
      const linears = this.dims.map((d, j) => {
        const n = packedBytes(d.rows, d.cols, this.quant.bits);
        if (off + n > bytes.length) throw new QuantformError('QF_CORRUPT_FILE', `The checkpoint's codes end at ${bytes.length} bytes, before layer ${l}`);
        const c = bytes.slice(off, off + n);
        off += (n + 3) & ~3;
        const p = params[l][j];
        return new QuantizedTensor(c, Uint16Array.from(p.s, (v) => f32ToF16(v)), p.z ? Uint16Array.from(p.z, (v) => f32ToF16(v)) : null,
          [d.rows, d.cols], this.quant.bits, d.gs, this.quant.symmetric, 'f16');
      });
      this.finished.push({ linears, norms: norms.slice(l * 2 * D, (l + 1) * 2 * D) });
    }
  }

  /** Checkpoint state: the optimizer arena of the phase and the finished blocks, packed. */
  private state(step: number, arena: Float32Array): TrainState {
    const fq = flattenFinished(this.finished.map((b) => b.linears.map(paramsOf)));
    const norms = new Float32Array(this.finished.length * 2 * this.ctx.shape.hidden);
    this.finished.forEach((b, l) => norms.set(b.norms, l * b.norms.length));
    const total = this.finished.reduce((a, b) => a + b.linears.reduce((x, q) => x + ((q.codes.length + 3) & ~3), 0), 0);
    const bytes = new Uint8Array(total);
    let off = 0;
    for (const b of this.finished)
      for (const q of b.linears) {
        bytes.set(q.codes, off);
        off += (q.codes.length + 3) & ~3;
      }
    return { step, arena: arena.slice(), lossCurve: this.curve.slice(),
      tensors: new Map<string, Float32Array | Int32Array>([['fq', fq], ['norms', norms], ['codes', new Int32Array(bytes.buffer)]]) };
  }

  memory(): MemoryItem[] {
    const s = this.ctx.shape, S = this.cal.seqLen, D = s.hidden, T = this.B * S, L = s.layers;
    const Pb = blockLayout(s).total;
    const Q = this.dims.reduce((a, d) => a + d.rows * d.G * (this.quant.symmetric ? 1 : 2), 0);
    const packed = this.dims.reduce((a, d) => a + packedBytes(d.rows, d.cols, this.quant.bits) + d.rows * d.G * 4, 0) + 2 * D * 4;
    const items: MemoryItem[] = [{ what: `the finished blocks, packed (${L} at the end)`, bytes: L * packed }];
    if (this.apSteps > 0)
      items.push({ what: "the block's weights, norms, step sizes and zero points with gradients and Adam moments", bytes: 4 * (Pb + Q) * 4 },
        { what: `saved activations of ${this.B} x ${S} tokens`, bytes: this.nb.blockSizes(this.cfg()).saved * 4 },
        { what: 'batch buffers', bytes: 5 * T * D * 4 });
    if (this.gptq) items.push(...this.gptq.memory());
    return items;
  }

  private cfg(): NativeBlockConfig {
    const q = this.quant;
    return { ...blockConfigOf(this.ctx.shape, this.B, this.cal.seqLen, null, false), fq: { bits: q.bits, groupSize: q.groupSize, symmetric: q.symmetric } };
  }

  /** Step sizes and zero points at the start of a block, and its arena's linears as the init leaves them. */
  private async init(b: PipelineBlock): Promise<{ s: Float32Array; z: Float32Array | null }[]> {
    const { quant } = this, arena = b.arena;
    const from = this.gptq ? (await this.gptq.block!(b)).linears ?? {} : {};
    return this.dims.map((d) => {
      const w = arena.subarray(d.offset, d.offset + d.rows * d.cols);
      const g = from[d.n];
      if (g) {
        w.set(dequantize(g).data as Float32Array);
        return paramsOf(g);
      }
      const s = new Float32Array(d.rows * d.G), z = quant.symmetric ? null : new Float32Array(d.rows * d.G);
      call(() => this.nb.learnedFqInit(s, z, w, d.rows, d.cols, quant.bits, d.gs, quant.symmetric));
      return { s, z };
    });
  }

  /**
   * The block as saved: its linears' codes from the trained quantizer (f16 step sizes), its
   * weights their dequantized values; the linears are then re-derived from those values and
   * the f16 parameters (what a checkpoint restores), so a resumed run returns the same bits.
   */
  private finish(b: PipelineBlock, st: NativeFqState): Partial<Record<LinearName, QuantizedTensor>> {
    const arena = b.arena, lay = blockLayout(this.ctx.shape), D = this.ctx.shape.hidden;
    const out: Partial<Record<LinearName, QuantizedTensor>> = {};
    const linears = this.dims.map((d, j) => {
      const w = arena.subarray(d.offset, d.offset + d.rows * d.cols);
      const q = packLearned(w, st.scales[j]!, st.zeros[j], d.rows, d.cols, d.gs, this.quant);
      w.set(dequantize(q).data as Float32Array);
      const p = paramsOf(q);
      return (out[d.n] = packLearned(w, p.s, p.z, d.rows, d.cols, d.gs, this.quant));
    });
    const norms = new Float32Array(2 * D);
    norms.set(arena.subarray(lay.g1.offset, lay.g1.offset + D));
    norms.set(arena.subarray(lay.g2.offset, lay.g2.offset + D), D);
    this.finished.push({ linears, norms });
    return out;
  }

  async block(b: PipelineBlock): Promise<BlockResult> {
    const l = b.index, s = this.ctx.shape, D = s.hidden, lay = blockLayout(s);
    if (l < this.finished.length) {
      // resume: a block the checkpoint finished, as it left it
      const f = this.finished[l];
      b.arena.set(f.norms.subarray(0, D), lay.g1.offset);
      b.arena.set(f.norms.subarray(D), lay.g2.offset);
      const out: Partial<Record<LinearName, QuantizedTensor>> = {};
      this.dims.forEach((d, j) => {
        out[d.n] = f.linears[j];
        dequantize(f.linears[j], { out: b.arena.subarray(d.offset, d.offset + d.rows * d.cols) });
      });
      return { linears: out };
    }
    if (this.o.start && this.apSteps === 0) {
      // E2E-QP from given linears: the block as they make it
      const out: Partial<Record<LinearName, QuantizedTensor>> = {};
      const D2 = new Float32Array(2 * D);
      D2.set(b.arena.subarray(lay.g1.offset, lay.g1.offset + D));
      D2.set(b.arena.subarray(lay.g2.offset, lay.g2.offset + D), D);
      const linears = this.dims.map((d) => {
        const q = withF16Params(this.o.start!.get(name(l, d.n))!);
        dequantize(q, { out: b.arena.subarray(d.offset, d.offset + d.rows * d.cols) });
        return (out[d.n] = q);
      });
      this.finished.push({ linears, norms: D2 });
      return { linears: out };
    }
    if (this.apSteps === 0) await this.trainer.checkAbort(0, () => this.state(0, new Float32Array(0)));
    const p0 = await this.init(b);
    if (this.apSteps === 0) return { linears: this.finish(b, { scales: p0.map((x) => x.s), zeros: p0.map((x) => x.z) }) };
    return { linears: await this.train(b, p0) };
  }

  /** Block-AP of one block: weights, norms, s and z on the MSE against the fp block's output, from the quantized-path inputs. */
  private async train(b: PipelineBlock, p0: { s: Float32Array; z: Float32Array | null }[]): Promise<Partial<Record<LinearName, QuantizedTensor>>> {
    const { nb, o, cal } = this, l = b.index, arena = b.arena;
    const s = this.ctx.shape, D = s.hidden, N = cal.samples, S = cal.seqLen, B = this.B, T = B * S;
    const cfg = this.cfg();
    this.bufs ??= { saved: new Float32Array(nb.blockSizes(cfg).saved), xb: new Float32Array(T * D), yb: new Float32Array(T * D),
      out: new Float32Array(T * D), dout: new Float32Array(T * D), dx: new Float32Array(T * D) };
    const { saved, xb, yb, out, dout, dx } = this.bufs;
    const xq = b.quantInputs!, yfp = b.fpTargets!;
    const Pb = blockLayout(s).total;
    // one arena per block: [weights and norms Pb | s, z of every linear]
    const Q = p0.reduce((a, p) => a + p.s.length + (p.z ? p.z.length : 0), 0);
    const opt = new AdamW(Pb + Q, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, groups: [Pb, Q] });
    opt.params.set(arena);
    const st: NativeFqState = { scales: [], zeros: [] }, gr: NativeFqState = { scales: [], zeros: [] };
    let off = Pb;
    const take = (v: Float32Array) => {
      opt.params.set(v, off);
      off += v.length;
      return [opt.params.subarray(off - v.length, off), opt.grads.subarray(off - v.length, off)] as const;
    };
    for (const p of p0) {
      const [ps, gs] = take(p.s);
      st.scales.push(ps);
      gr.scales.push(gs);
      const [pz, gz] = p.z ? take(p.z) : [null, null];
      st.zeros.push(pz);
      gr.zeros.push(gz);
    }
    const weights = opt.params.subarray(0, Pb), dweights = opt.grads.subarray(0, Pb);
    const k0 = this.ctx.resume && !this.inE2e && l === Math.floor((this.start0 - 1) / this.apSteps) ? this.start0 - l * this.apSteps : 0;
    if (k0 > 0) opt.load({ step: k0, arena: this.ctx.resume!.arena });
    for (let k = k0; k < this.apSteps; k++) {
      const step = l * this.apSteps + k;
      const idx = batchIndices(N, B, step, this.ctx.train.seed);
      for (let i = 0; i < B; i++) {
        xq.read(idx[i], 1, xb.subarray(i * S * D, (i + 1) * S * D));
        yfp.read(idx[i], 1, yb.subarray(i * S * D, (i + 1) * S * D));
      }
      opt.zeroGrad();
      await nb.blockForward(cfg, out, saved, xb, weights, st, true);
      let loss = 0;
      const scale = 2 / (T * D);
      for (let i = 0; i < T * D; i++) {
        const e = out[i] - yb[i];
        loss += e * e;
        dout[i] = scale * e;
      }
      loss /= T * D;
      if (!Number.isFinite(loss)) throw nonFinite(step, loss);
      await nb.blockBackward(cfg, dx, dweights, gr, dout, saved, weights, st, true);
      const lrW = cosineToFloor(o.lrWeight, k, this.apSteps, o.minLrFactor), lrQ = cosineToFloor(o.lrQuant, k, this.apSteps, o.minLrFactor);
      await opt.update([lrW, lrQ]);
      this.curve.push(loss);
      await this.trainer.after(step, loss, lrQ, () => this.state(step + 1, opt.arena), l, 'train', 'block-ap');
    }
    arena.set(weights);
    return this.finish(b, st);
  }

  /** E2E-QP on the packed result of the block pass (absent without E2E-QP, so the pass writes as it goes) */
  readonly afterBlocks?: (m: PackedLlama) => Promise<Map<string, QuantizedTensor>>;

  /** What E2E-QP holds besides the blocks' saved activations. */
  private e2eFixed(): MemoryItem[] {
    const s = this.ctx.shape, L = s.layers, D = s.hidden, V = s.vocab, T = Math.min(this.o.e2eBatchSize, this.cal.samples) * this.cal.seqLen;
    const P = L * this.dims.reduce((a, d) => a + d.rows * d.G, 0);
    return [
      { what: 'the packed linears', bytes: L * this.dims.reduce((a, d) => a + packedBytes(d.rows, d.cols, this.quant.bits) + d.rows * d.G * 4, 0) },
      { what: 'the fp32 embedding, LM head and norms', bytes: ((s.tied ? 1 : 2) * V * D + (2 * L + 1) * D) * 4 },
      { what: 'the step sizes with gradients and Adam moments', bytes: 4 * P * 4 },
      { what: `every block's input and the logits of ${T} tokens`, bytes: ((L + 4) * T * D + 2 * T * V) * 4 },
    ];
  }

  /** E2E-QP: the linears of the block pass with trained (f16) step sizes; blocks keep their saved activations while the budget allows. */
  private async e2eQp(m: PackedLlama): Promise<Map<string, QuantizedTensor>> {
    const k0 = this.inE2e ? this.start0 - this.totalAp : 0;
    const budget = this.ctx.maxMemoryBytes;
    const fixed = this.e2eFixed().reduce((a, i) => a + i.bytes, 0);
    const o = budget === undefined ? this.o : { ...this.o, e2eMemoryBytes: Math.min(this.o.e2eMemoryBytes, Math.max(0, budget - fixed - (128 << 20))) };
    return trainStepSizes(m, this.cal, this.quant, o, {
      k0, resumeArena: this.ctx.resume && k0 > 0 ? this.ctx.resume.arena : null, seed: this.ctx.train.seed, stepBase: this.totalAp,
      after: async (k, loss, lr, arena) => {
        const step = this.totalAp + k;
        this.curve.push(loss);
        await this.trainer.after(step, loss, lr, () => this.state(step + 1, arena), undefined, 'train', 'e2e-qp');
      },
    });
  }

  lossCurve(): number[] {
    return this.curve;
  }

  lossCurves(): { label: string; losses: number[] }[] {
    const curves: { label: string; losses: number[] }[] = [];
    for (let l = 0; l < this.ctx.shape.layers && this.apSteps > 0; l++)
      curves.push({ label: `Block-AP block ${l} (MSE)`, losses: this.curve.slice(l * this.apSteps, (l + 1) * this.apSteps) });
    if (this.e2e > 0) curves.push({ label: 'E2E-QP (cross-entropy)', losses: this.curve.slice(this.totalAp) });
    return curves;
  }
}

/**
 * A model as E2E-QP trains it: frozen fp32 embedding, norms and LM head, and packed linears
 * (by HF name), so no fp32 copy of any linear exists; only the step sizes and their
 * optimizer state are fp32.
 */
export interface PackedLlama {
  shape: LlamaShape;
  /** (V, D) */
  embed: Float32Array;
  /** (D) */
  finalNorm: Float32Array;
  /** (V, D) */
  lmHead: Float32Array;
  /** per layer: the input and post-attention RMSNorm weights (D) */
  norms: { input: Float32Array; post: Float32Array }[];
  linears: Map<string, QuantizedTensor>;
}

export interface StepSizeHooks {
  /** first step (resume) and the optimizer arena to continue from */
  k0?: number;
  resumeArena?: Float32Array | null;
  /** seed of the batch order */
  seed?: number;
  /** added to step numbers in messages (the phases before) */
  stepBase?: number;
  /** after every step: its loss, learning rate and the optimizer arena (checkpoints) */
  after?: (k: number, loss: number, lr: number, arena: Float32Array) => Promise<void>;
}

/**
 * E2E-QP on a packed model: the step sizes of every linear train end to end on next-token
 * cross-entropy (codes and zero points frozen) through the block step on the packed codes.
 * Returns the linears with their trained step sizes rounded to f16, as saved.
 */
export async function trainStepSizes(m: PackedLlama, cal: CalibrationSet, quant: BlockQuant, o: ResolvedEfficientQat, h: StepSizeHooks = {}): Promise<Map<string, QuantizedTensor>> {
  needPackedLlama(m);
  needCalibration(cal);
  needBlockQuant(quant);
  need.object(o, 'options');
  need.object(h, 'hooks');
  const nb = native().engine;
  const s = m.shape, L = s.layers, dims = linearDims(s, quant);
  const B = Math.min(o.e2eBatchSize, cal.samples);
  const cfg: NativeBlockConfig = { ...blockConfigOf(s, B, cal.seqLen, null, false), fq: { bits: quant.bits, groupSize: quant.groupSize, symmetric: quant.symmetric, packed: true } };
  // every step size of the model in one arena; codes and zero points frozen
  const P = L * dims.reduce((a, d) => a + d.rows * d.G, 0);
  const opt = new AdamW(P, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const blocks: NativePackedBlock[] = [], states: NativeFqState[] = [], grads: NativeFqState[] = [];
  let off = 0;
  for (let l = 0; l < L; l++) {
    blocks.push({ attnNorm: m.norms[l].input, ffnNorm: m.norms[l].post, codes: [] });
    states.push({ scales: [], zeros: [] });
    grads.push({ scales: [], zeros: [] });
    for (const d of dims) {
      const q = m.linears.get(name(l, d.n));
      if (!q) throw new QuantformError('QF_INVALID_ARGUMENT', `The packed model holds no ${name(l, d.n)}`);
      const p = paramsOf(q);
      opt.params.set(p.s, off);
      blocks[l].codes.push(q.codes);
      states[l].scales.push(opt.params.subarray(off, off + p.s.length));
      states[l].zeros.push(p.z);
      grads[l].scales.push(opt.grads.subarray(off, off + p.s.length));
      grads[l].zeros.push(null);
      off += p.s.length;
    }
  }
  const k0 = h.k0 ?? 0;
  if (h.resumeArena && k0 > 0) opt.load({ step: k0, arena: h.resumeArena });
  await endToEndLoop(m, cal, o, opt, {
    savedFloats: nb.blockSizes(cfg).saved,
    forward: (l, x, y, saved) => nb.blockForward(cfg, y, saved, x, blocks[l], states[l], true) as Promise<void>,
    backward: (l, dy, dx, saved) => nb.blockBackward(cfg, dx, null, grads[l], dy, saved, blocks[l], states[l], true) as Promise<void>,
  }, k0, (k, loss, lr) => h.after?.(k, loss, lr, opt.arena) ?? Promise.resolve(), h.stepBase ?? 0, h.seed ?? 0);
  const out = new Map<string, QuantizedTensor>();
  for (let l = 0; l < L; l++)
    for (const [j, d] of dims.entries()) {
      const q = m.linears.get(name(l, d.n))!;
      const z16 = q.zeros ? (q.paramDtype === 'f16' ? q.zeros : Uint16Array.from(q.zeros, (v) => f32ToF16(v))) : null;
      out.set(name(l, d.n), new QuantizedTensor(q.codes, Uint16Array.from(states[l].scales[j]!, (v) => f32ToF16(v)), z16, q.shape, q.bits, q.groupSize, q.symmetric, 'f16'));
    }
  return out;
}

/** One block's forward (saving what its backward needs when handed a buffer) and backward, for the end-to-end loop. */
interface EndToEndStep {
  savedFloats: number;
  forward(l: number, x: Float32Array, out: Float32Array, saved: Float32Array | null): Promise<void>;
  /** dx from dy; accumulates the trained parameters' gradients */
  backward(l: number, dy: Float32Array, dx: Float32Array, saved: Float32Array): Promise<void>;
  /** before each step's forward (the control rebuilds its weights from the step sizes) */
  prepare?(): void;
}

/**
 * Next-token cross-entropy over the calibration windows, the embedding, final norm and
 * LM head frozen: per step the forward through every block, the backward, the global
 * gradient norm clipped, cosine with warm-up. Blocks keep their saved activations up to
 * e2eMemoryBytes; beyond, each is recomputed from its input before its backward.
 * `after(k, loss, lr)` runs once per step (curve, progress, checkpoints).
 */
async function endToEndLoop(model: Pick<PackedLlama, 'shape' | 'embed' | 'finalNorm' | 'lmHead'>, cal: CalibrationSet, o: ResolvedEfficientQat, opt: AdamW, step: EndToEndStep, k0: number,
  after: (k: number, loss: number, lr: number) => Promise<void>, stepBase: number, seed: number): Promise<void> {
  const nb = native().engine;
  const s = model.shape, D = s.hidden, L = s.layers, N = cal.samples, S = cal.seqLen;
  const B = Math.min(o.e2eBatchSize, N), T = B * S, total = e2eSteps(N, o), P = opt.size;
  const keep = L * step.savedFloats * 4 <= o.e2eMemoryBytes;
  const acts = Array.from({ length: keep ? L : 1 }, () => new Float32Array(step.savedFloats));
  const xs = Array.from({ length: L + 1 }, () => new Float32Array(T * D));  // (T, D) every block's input, and the last output
  let dx = new Float32Array(T * D), dprev = new Float32Array(T * D);
  const scratch = keep ? null : new Float32Array(T * D);
  const tok = new Int32Array(T), tgt = new Int32Array(T), nll = new Float32Array(T);
  const count = B * (S - 1);
  for (let k = k0; k < total; k++) {
    const idx = batchIndices(N, B, k, seed + 7919);  // another order than Block-AP's
    for (let b = 0; b < B; b++)
      for (let t = 0; t < S; t++) {
        tok[b * S + t] = cal.tokens[idx[b] * S + t];
        tgt[b * S + t] = t + 1 < S ? cal.tokens[idx[b] * S + t + 1] : -1;  // the last position has no target
      }
    opt.zeroGrad();
    step.prepare?.();
    call(() => nb.embeddingForward(xs[0], tok, model.embed, T, s.vocab, D));
    for (let l = 0; l < L; l++) await step.forward(l, xs[l], xs[l + 1], keep ? acts[l] : null);
    await nb.lmHeadLoss(nll, dx, null, null, xs[L], model.finalNorm, model.lmHead, tgt, T, D, s.vocab, s.rmsEps, 1 / count, true);
    let loss = 0;
    for (let i = 0; i < T; i++) loss += nll[i];
    loss /= count;
    if (!Number.isFinite(loss)) throw nonFinite(stepBase + k, loss);
    for (let l = L - 1; l >= 0; l--) {
      if (!keep) await step.forward(l, xs[l], scratch!, acts[0]);
      await step.backward(l, dx, dprev, keep ? acts[l] : acts[0]);
      [dx, dprev] = [dprev, dx];
    }
    let sq = 0;
    for (let i = 0; i < P; i++) sq += opt.grads[i] * opt.grads[i];
    const norm = Math.sqrt(sq);
    if (norm > o.clipNorm) {
      const c = o.clipNorm / (norm + 1e-6);  // torch clip_grad_norm_
      for (let i = 0; i < P; i++) opt.grads[i] *= c;
    }
    const lr = learningRate(o.e2eLr, k, { kind: 'cosine', steps: total, warmup: o.e2eWarmup });
    await opt.update(lr);
    await after(k, loss, lr);
  }
}

/**
 * The fine-tuning control of E2E-QP: per-group step sizes of the UNquantized model
 * trained end to end with E2E-QP's recipe (W4 g32 groups): every weight is s_g * c with
 * c = w / s_g0 continuous (no rounding), s_g0 the min-max step size. What it gains is
 * in-domain fine-tuning alone; the returned clone holds the trained fp32 weights.
 */
export async function e2eControl(source: TrainableLlama, cal: CalibrationSet, options: EfficientQatOptions = {}): Promise<TrainableLlama> {
  need.instance(source, TrainableLlama, 'model');
  needCalibration(cal);
  const quant: BlockQuant = { bits: 4, groupSize: 32, symmetric: false };
  const o = resolveEfficientQat(options, quant.bits);
  const model = source.clone(), nb = native().engine;
  const s = model.shape, L = s.layers, dims = linearDims(model.shape, quant);
  const B = Math.min(o.e2eBatchSize, cal.samples), cfg = model.blockConfig(B, cal.seqLen, null, false);
  const Pl = dims.reduce((a, d) => a + d.rows * d.G, 0);
  const opt = new AdamW(L * Pl, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const codes: Float32Array[][] = [];  // c = w / s0 per linear
  for (let l = 0; l < L; l++) {
    codes.push([]);
    let off = l * Pl;
    for (const d of dims) {
      const w = model.linear(l, d.n), s0 = new Float32Array(d.rows * d.G), z0 = new Float32Array(d.rows * d.G);
      call(() => nb.learnedFqInit(s0, z0, w, d.rows, d.cols, quant.bits, d.gs, false));
      codes[l].push(Float32Array.from(w, (v, i) => v / s0[Math.floor(i / d.cols) * d.G + Math.floor((i % d.cols) / d.gs)]));
      opt.params.set(s0, off);
      off += s0.length;
    }
  }
  const grads = model.blocks.map((b) => new Float32Array(b.length));
  const each = (l: number, fn: (j: number, d: (typeof dims)[number], off: number) => void) => {
    let off = l * Pl;
    for (const [j, d] of dims.entries()) {
      fn(j, d, off);
      off += d.rows * d.G;
    }
  };
  await endToEndLoop(model, cal, o, opt, {
    savedFloats: nb.blockSizes(cfg).saved,
    prepare: () => {
      for (let l = 0; l < L; l++)
        each(l, (j, d, off) => {
          const w = model.linear(l, d.n), c = codes[l][j];
          for (let i = 0; i < w.length; i++) w[i] = opt.params[off + Math.floor(i / d.cols) * d.G + Math.floor((i % d.cols) / d.gs)] * c[i];
        });
      for (const g of grads) g.fill(0);
    },
    forward: (l, x, y, saved) => nb.blockForward(cfg, y, saved, x, model.blocks[l], null, true) as Promise<void>,
    backward: async (l, dy, dx, saved) => {
      await nb.blockBackward(cfg, dx, grads[l], null, dy, saved, model.blocks[l], null, true);
      const lay = blockLayout(s);
      each(l, (j, d, off) => {
        const g = grads[l].subarray(lay.linears[d.n].offset), c = codes[l][j];
        for (let i = 0; i < d.rows * d.cols; i++) opt.grads[off + Math.floor(i / d.cols) * d.G + Math.floor((i % d.cols) / d.gs)] += g[i] * c[i];
      });
    },
  }, 0, async () => {}, 0, 0);
  for (let l = 0; l < L; l++)
    each(l, (j, d, off) => {
      const w = model.linear(l, d.n), c = codes[l][j];
      for (let i = 0; i < w.length; i++) w[i] = opt.params[off + Math.floor(i / d.cols) * d.G + Math.floor((i % d.cols) / d.gs)] * c[i];
    });
  return model;
}

export const efficientqat: QuantMethod = {
  name: 'efficientqat',
  description: 'EfficientQAT (Chen et al. 2024): Block-AP (weights, norms, step sizes and zero points block by block), then E2E-QP (step sizes end to end from packed codes)',
  needsCalibration: true,
  start: (ctx) => new EfficientQatMethodRun(ctx),
};

/**
 * A quantized checkpoint as E2E-QP trains it: the embedding, norms and LM head as fp32 (the
 * only fp32 weights), every linear packed as stored. Throws for a checkpoint without them.
 */
export function packedFromCheckpoint(ck: Checkpoint): { model: PackedLlama; quant: BlockQuant } {
  needCheckpoint(ck);
  const { linears, quant } = checkpointLinears(ck);
  const shape = shapeOfConfig(ck.config);
  const embed = ck.weight('embed');
  const norms = Array.from({ length: shape.layers }, (_, l) => ({ input: ck.weight(`layers.${l}.attn_norm`), post: ck.weight(`layers.${l}.ffn_norm`) }));
  return { model: { shape, embed, finalNorm: ck.weight('final_norm'), lmHead: shape.tied ? embed : ck.weight('lm_head'), norms, linears }, quant };
}

/**
 * The quantized linears of a checkpoint (a GPTQ directory, a quantized GGUF), by HF name, and the
 * quantization they share: E2E-QP's start. A checkpoint without them is a clear error.
 */
export function checkpointLinears(ck: Checkpoint): { linears: Map<string, QuantizedTensor>; quant: BlockQuant } {
  needCheckpoint(ck);
  const linears = new Map<string, QuantizedTensor>();
  let quant = null as BlockQuant | null;
  for (let l = 0; l < ck.config.nLayers; l++)
    for (const n of LINEARS) {
      const q = ck.quantizedWeight?.(`layers.${l}.${RUNTIME_LINEAR[n]}`) ?? null;
      if (!q) throw new QuantformError('QF_INVALID_ARGUMENT', `${ck.path} holds no quantized ${name(l, n)}: E2E-QP starts from a quantized (GPTQ) checkpoint`);
      if (quant && (q.bits !== quant.bits || q.symmetric !== quant.symmetric))
        throw new QuantformError('QF_UNSUPPORTED', `${ck.path} mixes INT${quant.bits} and INT${q.bits} (or sym and asym) linears: E2E-QP trains one quantization`);
      quant = { bits: q.bits, symmetric: q.symmetric, groupSize: Math.max(quant?.groupSize ?? 0, q.groupSize) };
      linears.set(name(l, n), q);
    }
  if (!quant) throw new QuantformError('QF_INVALID_ARGUMENT', `${ck.path} has no layers`);
  return { linears, quant };
}

/** Whether a quantized start checkpoint was made from `model`: the same shapes and the same embedding (a GPTQ export copies it). */
export function checkSameModel(model: { shape: LlamaShape; embed: Float32Array }, start: Checkpoint): void {
  const s = model.shape, c = start.config;
  const mine = [s.hidden, s.intermediate, s.layers, s.heads, s.kvHeads, s.vocab], theirs = [c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.vocabSize];
  if (mine.some((v, i) => v !== theirs[i]))
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `${start.path} is a checkpoint of another model: (hidden, intermediate, layers, heads, kv heads, vocab) = (${theirs.join(', ')}), the model's (${mine.join(', ')})`);
  const e = start.weight('embed');
  let d = 0, n = 0;
  for (let i = 0; i < e.length; i++) {
    d += (e[i] - model.embed[i]) ** 2;
    n += model.embed[i] ** 2;
  }
  // a copy stored as f16 or bf16 differs by < 1e-2 relative; another model's embedding by ~1
  if (!(Math.sqrt(d / Math.max(n, 1e-30)) < 1e-2))
    throw new QuantformError('QF_INVALID_ARGUMENT', `${start.path} is a checkpoint of another model: its embedding differs from the model's (relative difference ${Math.sqrt(d / Math.max(n, 1e-30)).toFixed(3)})`);
}
