// GPTQ as a model method (Frantar et al. 2022; IST-DASLab/gptq llama.py with
// --true-sequential, act-order off): block by block, and inside a block in the
// order the inputs become available, each group of linears that reads the same
// input is quantized against the Hessian of that input computed through the
// block's already-quantized linears:
//   {q, k, v} <- input-norm output;  o <- attention output;
//   {gate, up} <- post-attention-norm output;  down <- SwiGLU output.
// The next block's inputs come from the quantized blocks. Linears sharing an input
// share one Hessian and are quantized as one stacked matrix (GPTQ treats rows
// independently, so this is exact and factors H once). The result carries the GPTQ
// codes and scales themselves (BlockResult.linears): the pipeline writes them.
import { fromNative, invalidParameter, is, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig, type NativeBlockSavedLayout, type NativeFptConfig } from '../native.js';
import { modelBlocks } from '../engine/block-source.js';
import type { CalibrationSet } from '../engine/calib.js';
import { blockConfigOf, blockLayout, HF_LINEAR, type BlockQuant, type LinearName, type LlamaShape, type TrainableLlama } from '../engine/llama.js';
import {
  forwardChunk, planBlockPass, quantizedRows, runBlockPass, type ActivationNeeds, type BlockResult, type MemoryItem, type PipelineBlock,
} from '../engine/pipeline.js';
import { GptqHessian, gptqObjective, gptqQuantizeAsync, type GptqOptions } from '../ops/gptq.js';
import { dequantize, quantize, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import type { MethodContext, MethodRun, ProgressEvent, QuantMethod } from './types.js';

export interface GptqMethodOptions {
  /** Fraction of the mean Hessian diagonal added to it. Default 0.01. */
  damp?: number;
  /** Lazy batch (columns). Default 128. */
  blockSize?: number;
  /**
   * See GptqOptions.paramsFrom; 'best' runs both readings for every group of linears
   * and keeps the one with the lower GPTQ error (its damped objective). Default 'updated'.
   */
  paramsFrom?: 'updated' | 'batch-start' | 'best';
  /** GptqOptions.clipNorm: the clipping search of each group's range (0: min/max). Default 0. */
  clipNorm?: number;
  /** GptqOptions.actOrder: columns in order of decreasing H[c, c]; per output channel only. Default false. */
  actOrder?: boolean;
  /** Also compute tr((W - Ŵ) H (W - Ŵ)ᵀ) of GPTQ and of RTN for every linear (costs N K² per linear). Default false. */
  objectives?: boolean;
}

export interface GptqLinearStats {
  /** HF linear name (model.layers.<l>.self_attn.q_proj ...) */
  name: string;
  /** GPTQ's error sum of the stacked group this linear was quantized in */
  loss: number;
  /** with `objectives`: GPTQ's objective of this linear, and RTN's on the same Hessian */
  objective?: number;
  rtnObjective?: number;
}

export interface GptqRun {
  /** HF linear names -> GPTQ-quantized weights (f16 parameters) */
  linears: Map<string, QuantizedTensor>;
  stats: GptqLinearStats[];
  seconds: number;
}

/** A model's merged FPTQuant block step (BlockInputs, runGptq). */
export interface BlockFpt {
  config: NativeFptConfig;
  /** per layer, fpt_param_count floats */
  params: Float32Array[];
}

/** Groups of linears that read one input, in the order a block computes them, and that input's slot. */
const SEQUENCE: { linears: LinearName[]; input: 'n1' | 'att' | 'n2' | 'swiglu' }[] = [
  { linears: ['q_proj', 'k_proj', 'v_proj'], input: 'n1' },
  { linears: ['o_proj'], input: 'att' },
  { linears: ['gate_proj', 'up_proj'], input: 'n2' },
  { linears: ['down_proj'], input: 'swiglu' },
];

/**
 * The engine's training block forward (fp32) and where its saved-activation buffer
 * holds the inputs of the linears, as the engine lays it out (blockSavedLayout).
 */
export class BlockInputs {
  private readonly nb = native().engine;
  private readonly acts: Float32Array;
  private readonly carry: Float32Array;
  private readonly cfgs = new Map<number, { cfg: NativeBlockConfig; lay: NativeBlockSavedLayout }>();

  /**
   * `model`: a TrainableLlama or anything with its shape. fpt: the block step of a model whose
   * FPTQuant transforms are merged (online Hadamard, S_n), with each layer's parameters: the
   * linears' inputs are then those the quantized model's linears read.
   */
  constructor(private readonly model: { shape: LlamaShape }, private readonly seq: number, maxBatch: number, private readonly fpt?: BlockFpt) {
    this.acts = new Float32Array(this.layout(maxBatch).lay.total);
    this.carry = new Float32Array(maxBatch * seq);
  }

  private layout(batch: number): { cfg: NativeBlockConfig; lay: NativeBlockSavedLayout } {
    let c = this.cfgs.get(batch);
    if (!c) {
      const plain = blockConfigOf(this.model.shape, batch, this.seq, null, false);
      const cfg = this.fpt ? { ...plain, fpt: this.fpt.config } : plain;
      c = { cfg, lay: this.nb.blockSavedLayout(cfg) };
      this.cfgs.set(batch, c);
    }
    return c;
  }

  config(batch: number): NativeBlockConfig {
    return this.layout(batch).cfg;
  }

  /**
   * Runs block `layer` on x (batch * seq, D) with parameter arena `params`; out receives its output
   * (with S_n, the residual itself: the carry multiplied back in).
   */
  async forward(params: Float32Array, x: Float32Array, out: Float32Array, batch: number, layer = 0): Promise<void> {
    const { cfg, lay } = this.layout(batch);
    const acts = this.acts.subarray(0, lay.total);
    if (!this.fpt) {
      await this.nb.blockForward(cfg, out, acts, x, params, null, true);
      return;
    }
    const T = batch * this.seq, D = this.model.shape.hidden, c = this.carry.subarray(0, T);
    const sn = this.fpt.config.residualScaling === true;
    await this.nb.fptBlockForward(cfg, out, acts, x, params, this.fpt.params[layer], null, sn ? c : null, null, true);
    if (sn) for (let r = 0; r < T; r++) for (let i = 0; i < D; i++) out[r * D + i] *= c[r];
  }

  /**
   * Only the input norm of the block (the q/k/v input needs no more): fills the xn1
   * slot as forward would, with the same kernel, so input('n1') reads it.
   */
  inputNorm(params: Float32Array, x: Float32Array, batch: number): void {
    const s = this.model.shape, T = batch * this.seq, D = s.hidden, g1 = blockLayout(s).g1.offset;
    const lay = this.layout(batch).lay;
    this.nb.rmsnormForward(this.acts.subarray(lay.xn1, lay.xn1 + T * D), this.acts.subarray(lay.rstd1, lay.rstd1 + T), x,
      params.subarray(g1, g1 + D), T, D, s.rmsEps);
  }

  /** The input of one group of linears from the last forward: (batch * seq, cols). */
  input(which: 'n1' | 'att' | 'n2' | 'swiglu', batch: number): Float32Array {
    const s = this.model.shape, T = batch * this.seq;
    const cols = which === 'att' ? s.heads * s.headDim : which === 'swiglu' ? s.intermediate : s.hidden;
    const lay = this.layout(batch).lay;
    const off = { n1: lay.xs1, att: lay.atts, n2: lay.xs2, swiglu: lay.as }[which];
    return this.acts.subarray(off, off + T * cols);
  }
}

function resolve(o: GptqMethodOptions = {}): Required<Omit<GptqMethodOptions, 'objectives'>> & { objectives: boolean } {
  const r = { damp: o.damp ?? 0.01, blockSize: o.blockSize ?? 128, paramsFrom: o.paramsFrom ?? 'updated', clipNorm: o.clipNorm ?? 0, actOrder: o.actOrder ?? false,
    objectives: o.objectives ?? false };
  if (!is.finiteNumber(r.clipNorm) || r.clipNorm < 0 || r.clipNorm > 16) throw invalidParameter('number in [0, 16]', 'clipNorm', r.clipNorm);
  if (!is.finiteNumber(r.damp) || r.damp < 0) throw invalidParameter('number >= 0', 'damp', r.damp);
  if (!is.positiveInteger(r.blockSize) || r.blockSize > 512) throw invalidParameter('integer in [1, 512]', 'blockSize', r.blockSize);
  if (!is.oneOf(r.paramsFrom, ['updated', 'batch-start', 'best'] as const)) throw invalidParameter("'updated', 'batch-start' or 'best'", 'paramsFrom', r.paramsFrom);
  if (!is.bool(r.objectives)) throw invalidParameter('boolean', 'objectives', r.objectives);
  if (!is.bool(r.actOrder)) throw invalidParameter('boolean', 'actOrder', r.actOrder);
  return r;
}

export interface GptqHooks {
  /** one 'train' event per group of linears (loss = GPTQ's error sum) */
  onProgress?: (e: ProgressEvent) => void;
  /** checked between groups of linears: stops with QF_ABORTED (GPTQ keeps no checkpoint) */
  signal?: AbortSignal;
}

/**
 * A GPTQ run: per block, the Hessians of each group of linears from the quantized-path inputs X_q, in true-sequential order.
 * With `fpt` (FPTQuant's merged model), the block step is the model's own (S_n, online Hadamard): for the Hessians and,
 * through forward(), for the pipeline's X_q.
 */
export class GptqMethodRun implements MethodRun {
  readonly needs: ActivationNeeds = { fpInputs: false, fpTargets: false, quantInputs: true };
  readonly rewritesNorms = false;
  readonly stats: GptqLinearStats[] = [];
  /** every linear's result by HF name, when kept (runGptq; a streamed run writes them and lets them go) */
  readonly linears: Map<string, QuantizedTensor> | null;
  private readonly o: ReturnType<typeof resolve>;
  private readonly t0 = performance.now();
  private done = 0;
  private readonly B: number;
  private bufs: { blockIn: BlockInputs; x: Float32Array; y: Float32Array } | null = null;

  readonly forward?: (layer: number, arena: Float32Array, x: Float32Array, out: Float32Array, batch: number) => Promise<void>;

  constructor(private readonly ctx: MethodContext, private readonly hooks: GptqHooks, keep: boolean, private readonly fpt?: BlockFpt) {
    const cal = ctx.calibration;
    if (!cal) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'gptq' needs calibration data");
    this.o = resolve(ctx.gptq);
    const maxK = Math.max(ctx.shape.hidden, ctx.shape.intermediate, ctx.shape.heads * ctx.shape.headDim);
    if (this.o.actOrder && ctx.quant.groupSize < maxK)
      throw new QuantformError('QF_INVALID_ARGUMENT', `GPTQ's act-order needs weights per output channel (a group size of at least ${maxK}) but received ` +
        `group size ${ctx.quant.groupSize}: groups in act order would need a permuted g_idx`);
    if (cal.seqLen > ctx.shape.maxSeq) throw invalidParameter(`seqLen <= ${ctx.shape.maxSeq} (the model's context)`, 'calibration.seqLen', cal.seqLen);
    this.linears = keep ? new Map() : null;
    try {
      this.B = forwardChunk(ctx.shape, cal.seqLen, cal.samples);
    } catch (e) {
      throw fromNative(e);
    }
    // the pipeline's chunks are at most forwardChunk samples, so the block step's buffers fit them
    if (fpt) this.forward = async (layer, arena, x, out, batch) => {
      try {
        await this.buffers(cal.seqLen).blockIn.forward(arena, x, out, batch, layer);
      } catch (e) {
        throw fromNative(e);
      }
    };
  }

  /** the block step's saved activations and one chunk of inputs and outputs, (B * seq, D): allocated once, reused by every block */
  private buffers(S: number): { blockIn: BlockInputs; x: Float32Array; y: Float32Array } {
    const D = this.ctx.shape.hidden, B = this.B;
    try {
      this.bufs ??= { blockIn: new BlockInputs(this.ctx, S, B, this.fpt), x: new Float32Array(B * S * D), y: new Float32Array(B * S * D) };
    } catch (e) {
      throw fromNative(e);
    }
    return this.bufs;
  }

  private bufsConfig(S: number): NativeBlockConfig {
    const cfg = blockConfigOf(this.ctx.shape, this.B, S, null, false);
    return this.fpt ? { ...cfg, fpt: this.fpt.config } : cfg;
  }

  memory(): MemoryItem[] {
    const s = this.ctx.shape, S = this.ctx.calibration!.seqLen, D = s.hidden, F = s.intermediate, lay = blockLayout(s);
    const K = Math.max(D, F, s.heads * s.headDim);
    const rowsK = Math.max(...SEQUENCE.map((g) => g.linears.reduce((a, n) => a + lay.linears[n].rows, 0) * lay.linears[g.linears[0]].cols));
    return [
      { what: `the Hessian and its factorization (${K} x ${K}, four copies)`, bytes: 4 * K * K * 4 },
      { what: 'the stacked weights of one group of linears (input and working copy)', bytes: 2 * rowsK * 4 + rowsK },
      { what: `saved activations of ${this.B} x ${S} tokens and their inputs`, bytes: native().engine.blockSizes(this.bufsConfig(S)).saved * 4 + 2 * this.B * S * D * 4 },
    ];
  }

  async block(b: PipelineBlock): Promise<BlockResult> {
    const ctx = this.ctx, o = this.o, quant = ctx.quant, l = b.index, s = ctx.shape;
    const D = s.hidden, S = b.calibration.seqLen, Ns = b.calibration.samples, B = this.B;
    const lay = blockLayout(s), arena = b.arena, xq = b.quantInputs!;
    const { blockIn, x, y } = this.buffers(S);
    const total = s.layers * SEQUENCE.length;
    const out: Partial<Record<LinearName, QuantizedTensor>> = {};
    // every sample chunk through the block with the current arena (quantized linears hold their dequantized values)
    const sweep = async (each: (bc: number) => Promise<void>, normOnly: boolean) => {
      for (let b0 = 0; b0 < Ns; b0 += B) {
        const bc = Math.min(B, Ns - b0);
        const xc = x.subarray(0, bc * S * D);
        xq.read(b0, bc, xc);
        try {
          if (normOnly) blockIn.inputNorm(arena, xc, bc);
          else await blockIn.forward(arena, xc, y.subarray(0, bc * S * D), bc, l);
        } catch (e) {
          throw fromNative(e);
        }
        await each(bc);
      }
    };
    for (const grp of SEQUENCE) {
      if (ctx.signal?.aborted)
        throw new QuantformError('QF_ABORTED', `GPTQ stopped before layer ${l} ${grp.linears.join('/')} (GPTQ keeps no checkpoint: a new run starts over)`);
      const K = lay.linears[grp.linears[0]].cols;
      const H = new GptqHessian(K);
      await sweep((bc) => H.addAsync(blockIn.input(grp.input, bc)), grp.input === 'n1');
      // the group's fp32 weights stacked along rows: (sum of rows, K)
      const rows = grp.linears.map((n) => lay.linears[n].rows);
      const Wst = new Float32Array(rows.reduce((a, r) => a + r, 0) * K);
      let r0 = 0;
      for (let i = 0; i < grp.linears.length; i++) {
        const sl = lay.linears[grp.linears[i]];
        Wst.set(arena.subarray(sl.offset, sl.offset + sl.rows * sl.cols), r0 * K);
        r0 += rows[i];
      }
      const gopts: GptqOptions = {
        bits: quant.bits, groupSize: Math.min(quant.groupSize, K), symmetric: quant.symmetric, paramDtype: 'f16',
        damp: o.damp, blockSize: o.blockSize, clipNorm: o.clipNorm, actOrder: o.actOrder,
      };
      const wt = new Tensor(Wst, [Wst.length / K, K]);
      let res;
      try {
        if (o.paramsFrom !== 'best') res = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: o.paramsFrom });
        else {
          const a = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: 'updated' });
          const c = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: 'batch-start' });
          res = c.loss < a.loss ? c : a;
        }
      } catch (e) {
        const err = fromNative(e);
        throw new QuantformError(err.code, `GPTQ of layer ${l} ${grp.linears.join('/')}: ${err.message}`, { cause: e });
      }
      r0 = 0;
      for (let i = 0; i < grp.linears.length; i++) {
        const n = grp.linears[i], name = `model.layers.${l}.${HF_LINEAR[n]}`, sl = lay.linears[n];
        const q = copyRows(res.q, r0, r0 + rows[i]);
        r0 += rows[i];
        out[n] = q;
        this.linears?.set(name, q);
        const dq = dequantize(q).data as Float32Array;
        const st: GptqLinearStats = { name, loss: res.loss };
        if (o.objectives) {
          const w = new Tensor(arena.slice(sl.offset, sl.offset + sl.rows * sl.cols), [rows[i], K]);
          st.objective = gptqObjective(w, dq, H);
          st.rtnObjective = gptqObjective(w, quantize(w, { bits: quant.bits, groupSize: gopts.groupSize, symmetric: quant.symmetric, paramDtype: 'f16' }), H);
        }
        // later groups see this linear quantized (true-sequential)
        arena.set(dq, sl.offset);
        this.stats.push(st);
      }
      this.done++;
      const sec = (performance.now() - this.t0) / 1000;
      this.hooks.onProgress?.({ phase: 'train', step: this.done, totalSteps: total, loss: res.loss, lr: 0, stepsPerSecond: this.done / sec,
        etaSeconds: (total - this.done) * sec / this.done, layer: l });
    }
    return { linears: out };
  }

  lossCurve(): number[] {
    return [];
  }
}

/** True-sequential GPTQ of every linear of `model` (not modified) on the calibration windows, through the block pipeline. */
export async function runGptq(model: TrainableLlama, cal: CalibrationSet, quant: BlockQuant, options: GptqMethodOptions = {},
  hooks: GptqHooks = {}): Promise<GptqRun> {
  const t0 = performance.now();
  const train = { steps: 1, lr: 1, betas: [0.9, 0.9] as [number, number], weightDecay: 0, schedule: 'constant' as const, warmup: 0, batchSize: 1, loss: 'block' as const, seed: 0, extraScales: false };
  const run = new GptqMethodRun({ shape: model.shape, quant, calibration: cal, train, checkpointEvery: 1, gptq: options, signal: hooks.signal }, hooks, true);
  const src = modelBlocks(model);
  const plan = planBlockPass(src, run, { calibration: cal, quant, label: 'gptq' });
  await runBlockPass(src, run, plan, () => ({ plain: () => {}, linear: () => {} }));
  return { linears: run.linears!, stats: run.stats, seconds: (performance.now() - t0) / 1000 };
}

/** Rows [r0, r1) of a quantized matrix as a tensor of its own. */
function copyRows(q: QuantizedTensor, r0: number, r1: number): QuantizedTensor {
  const v = quantizedRows(q, r0, r1);
  return new QuantizedTensor(v.codes.slice(), v.scales.slice(), v.zeros ? v.zeros.slice() : null,
    v.shape, v.bits, v.groupSize, v.symmetric, v.paramDtype);
}

export const gptq: QuantMethod = {
  name: 'gptq',
  description: 'GPTQ (Frantar et al. 2022): Hessian-aware rounding, true-sequential, damping 1 %, lazy batches of 128, act-order off',
  needsCalibration: true,
  start: (ctx) => new GptqMethodRun(ctx, { onProgress: ctx.onProgress, signal: ctx.signal }, false),
};
