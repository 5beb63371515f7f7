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
// codes and scales themselves (MethodResult.linears): quantizeModel keeps them.
import { fromNative, invalidParameter, is, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig, type NativeBlockSavedLayout } from '../native.js';
import type { CalibrationSet } from '../engine/calib.js';
import { blockLayout, HF_LINEAR, type BlockQuant, type LinearName, type TrainableLlama } from '../engine/llama.js';
import { GptqHessian, gptqObjective, gptqQuantizeAsync, type GptqOptions } from '../ops/gptq.js';
import { dequantize, quantize, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import type { MethodContext, MethodResult, ProgressEvent, QuantMethod } from './types.js';

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
  private readonly cfgs = new Map<number, { cfg: NativeBlockConfig; lay: NativeBlockSavedLayout }>();

  constructor(private readonly model: TrainableLlama, private readonly seq: number, private readonly maxBatch: number) {
    this.acts = new Float32Array(this.layout(maxBatch).lay.total);
  }

  private layout(batch: number): { cfg: NativeBlockConfig; lay: NativeBlockSavedLayout } {
    let c = this.cfgs.get(batch);
    if (!c) {
      const cfg = this.model.blockConfig(batch, this.seq, null, false);
      c = { cfg, lay: this.nb.blockSavedLayout(cfg) };
      this.cfgs.set(batch, c);
    }
    return c;
  }

  config(batch: number): NativeBlockConfig {
    return this.layout(batch).cfg;
  }

  /** Runs the block on x (batch * seq, D) with parameter arena `params`; out receives its output. */
  async forward(params: Float32Array, x: Float32Array, out: Float32Array, batch: number): Promise<void> {
    const { cfg, lay } = this.layout(batch);
    await this.nb.blockForward(cfg, out, this.acts.subarray(0, lay.total), x, params, null, true);
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
  const r = { damp: o.damp ?? 0.01, blockSize: o.blockSize ?? 128, paramsFrom: o.paramsFrom ?? 'updated', objectives: o.objectives ?? false };
  if (!is.finiteNumber(r.damp) || r.damp < 0) throw invalidParameter('number >= 0', 'damp', r.damp);
  if (!is.positiveInteger(r.blockSize) || r.blockSize > 512) throw invalidParameter('integer in [1, 512]', 'blockSize', r.blockSize);
  if (!is.oneOf(r.paramsFrom, ['updated', 'batch-start', 'best'] as const)) throw invalidParameter("'updated', 'batch-start' or 'best'", 'paramsFrom', r.paramsFrom);
  if (!is.bool(r.objectives)) throw invalidParameter('boolean', 'objectives', r.objectives);
  return r;
}

/** Sequences per block forward: activations of about 256 MB at most (the attention probabilities dominate). */
function forwardBatch(model: TrainableLlama, seq: number, samples: number): number {
  const perSeq = native().engine.blockSizes(model.blockConfig(1, seq, null, false)).saved * 4;
  return Math.max(1, Math.min(samples, Math.floor((256 << 20) / perSeq)));
}

export interface GptqHooks {
  /** one 'train' event per group of linears (loss = GPTQ's error sum) */
  onProgress?: (e: ProgressEvent) => void;
  /** checked between groups of linears: stops with QF_ABORTED (GPTQ keeps no checkpoint) */
  signal?: AbortSignal;
}

/** True-sequential GPTQ of every linear of `model` (not modified) on the calibration windows. */
export async function runGptq(model: TrainableLlama, cal: CalibrationSet, quant: BlockQuant, options: GptqMethodOptions = {},
  hooks: GptqHooks = {}): Promise<GptqRun> {
  const o = resolve(options);
  const t0 = performance.now();
  const s = model.shape, D = s.hidden, S = cal.seqLen, Ns = cal.samples;
  if (S > s.maxSeq) throw invalidParameter(`seqLen <= ${s.maxSeq} (the model's context)`, 'calibration.seqLen', S);
  const nb = native().engine;
  let B: number, blockIn: BlockInputs;
  try {
    B = forwardBatch(model, S, Ns);
    blockIn = new BlockInputs(model, S, B);
  } catch (e) {
    throw fromNative(e);
  }
  const lay = blockLayout(s);
  const x = new Float32Array(Ns * S * D);  // (samples * seq, D) inputs of the current block
  const y = new Float32Array(B * S * D);   // (B * seq, D) one chunk's block output
  try {
    nb.embeddingForward(x, cal.tokens, model.embed, Ns * S, s.vocab, D);
  } catch (e) {
    throw fromNative(e);
  }
  const linears = new Map<string, QuantizedTensor>();
  const stats: GptqLinearStats[] = [];
  const total = s.layers * SEQUENCE.length;
  let done = 0;
  // every sample chunk through the block with the current arena; `each` sees the chunk's
  // output (y) and saved inputs before the next chunk runs
  const sweep = async (arena: Float32Array, each: (b0: number, bc: number) => Promise<void> | void, normOnly = false) => {
    for (let b0 = 0; b0 < Ns; b0 += B) {
      const bc = Math.min(B, Ns - b0);
      const xc = x.subarray(b0 * S * D, (b0 + bc) * S * D);
      try {
        if (normOnly) blockIn.inputNorm(arena, xc, bc);
        else await blockIn.forward(arena, xc, y.subarray(0, bc * S * D), bc);
      } catch (e) {
        throw fromNative(e);
      }
      await each(b0, bc);
    }
  };
  for (let l = 0; l < s.layers; l++) {
    const arena = model.blocks[l].slice();  // quantized linears are replaced by their dequantized values
    for (const grp of SEQUENCE) {
      if (hooks.signal?.aborted)
        throw new QuantformError('QF_ABORTED', `GPTQ stopped before layer ${l} ${grp.linears.join('/')} (GPTQ keeps no checkpoint: a new run starts over)`);
      const K = lay.linears[grp.linears[0]].cols;
      const H = new GptqHessian(K);
      await sweep(arena, (_b0, bc) => H.addAsync(blockIn.input(grp.input, bc)), grp.input === 'n1');
      // the group's fp32 weights stacked along rows: (sum of rows, K)
      const rows = grp.linears.map((n) => lay.linears[n].rows);
      const Wst = new Float32Array(rows.reduce((a, b) => a + b, 0) * K);
      let r0 = 0;
      for (let i = 0; i < grp.linears.length; i++) {
        Wst.set(model.linear(l, grp.linears[i]), r0 * K);
        r0 += rows[i];
      }
      const gopts: GptqOptions = {
        bits: quant.bits, groupSize: Math.min(quant.groupSize, K), symmetric: quant.symmetric, paramDtype: 'f16',
        damp: o.damp, blockSize: o.blockSize,
      };
      const wt = new Tensor(Wst, [Wst.length / K, K]);
      let res;
      try {
        if (o.paramsFrom !== 'best') res = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: o.paramsFrom });
        else {
          const a = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: 'updated' });
          const b = await gptqQuantizeAsync(wt, H, { ...gopts, paramsFrom: 'batch-start' });
          res = b.loss < a.loss ? b : a;
        }
      } catch (e) {
        const err = fromNative(e);
        throw new QuantformError(err.code, `GPTQ of layer ${l} ${grp.linears.join('/')}: ${err.message}`, { cause: e });
      }
      r0 = 0;
      for (let i = 0; i < grp.linears.length; i++) {
        const n = grp.linears[i], name = `model.layers.${l}.${HF_LINEAR[n]}`;
        const q = sliceRows(res.q, r0, r0 + rows[i]);
        r0 += rows[i];
        linears.set(name, q);
        const dq = dequantize(q).data as Float32Array;
        arena.set(dq, lay.linears[n].offset);
        const st: GptqLinearStats = { name, loss: res.loss };
        if (o.objectives) {
          const w = new Tensor(model.linear(l, n).slice(), [rows[i], K]);
          st.objective = gptqObjective(w, dq, H);
          st.rtnObjective = gptqObjective(w, quantize(w, { bits: quant.bits, groupSize: gopts.groupSize, symmetric: quant.symmetric, paramDtype: 'f16' }), H);
        }
        stats.push(st);
      }
      done++;
      const sec = (performance.now() - t0) / 1000;
      hooks.onProgress?.({ phase: 'train', step: done, totalSteps: total, loss: res.loss, lr: 0, stepsPerSecond: done / sec, etaSeconds: (total - done) * sec / done, layer: l });
    }
    // the next block's inputs: this block fully quantized (a chunk's inputs are read only by its own forward)
    await sweep(arena, (b0, bc) => x.set(y.subarray(0, bc * S * D), b0 * S * D));
  }
  return { linears, stats, seconds: (performance.now() - t0) / 1000 };
}

/** Rows [r0, r1) of a quantized matrix (rows are independent in the packed format). */
function sliceRows(q: QuantizedTensor, r0: number, r1: number): QuantizedTensor {
  const [, K] = q.shape;
  const rb = q.codes.length / q.shape[0], G = q.numGroups;
  return new QuantizedTensor(q.codes.slice(r0 * rb, r1 * rb), q.scales.slice(r0 * G, r1 * G), q.zeros ? q.zeros.slice(r0 * G, r1 * G) : null,
    [r1 - r0, K], q.bits, q.groupSize, q.symmetric, q.paramDtype);
}

export const gptq: QuantMethod = {
  name: 'gptq',
  description: 'GPTQ (Frantar et al. 2022): Hessian-aware rounding, true-sequential, damping 1 %, lazy batches of 128, act-order off',
  needsCalibration: true,
  async prepare(model: TrainableLlama, ctx: MethodContext): Promise<MethodResult> {
    if (!ctx.calibration) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'gptq' needs calibration data");
    const run = await runGptq(model, ctx.calibration, ctx.quant, ctx.gptq, { onProgress: ctx.onProgress, signal: ctx.signal });
    return { lossCurve: [], linears: run.linears };
  },
};
