// TEQ (Intel Neural Compressor's trainable equivalent transformation, Cheng et al.
// 2023): one trainable per-input-channel scale alpha (init 1, kept >= 1e-5) for each
// group of linears sharing an input: input RMSNorm -> {q, k, v} and post-attention
// RMSNorm -> {gate, up}. Training forward: y = (x / alpha) . Q(W diag(alpha))^T with
// Q = RTN fake-quant recomputed every step (native block step, teq = true), Q's
// rounding straight-through. Merge: gamma <- gamma / alpha, W <- W diag(alpha), so the
// quantized model carries no extra op.
import { fromNative, invalidParameter, need, QuantformError } from '../errors.js';
import { native } from '../native.js';
import { seededRandom } from '../engine/calib.js';
import { AdamW, learningRate } from '../engine/optim.js';
import { HF_LINEAR, TrainableLlama } from '../engine/llama.js';
import type { MethodContext, MethodResult, QuantMethod, TrainState } from './types.js';

/**
 * Applies trained scales, alpha (layers, A) with A = model.alphaPerLayer(extra):
 * gamma <- gamma / alpha, W <- W diag(alpha) for {q, k, v} and {gate, up}; with
 * `extra`, v_proj rows / alpha_v and o_proj columns * alpha_v (repeated over the q
 * heads of each kv head), up_proj rows / alpha_d and down_proj columns * alpha_d.
 * The merge is the engine's (block_merge_scales), one call per layer.
 */
export function mergeTeqScales(model: TrainableLlama, alpha: Float32Array, extra = false): void {
  need.instance(model, TrainableLlama, 'model');
  need.bool(extra, 'extra');
  const A = model.alphaPerLayer(extra);
  if (!(alpha instanceof Float32Array) || alpha.length !== model.shape.layers * A)
    throw invalidParameter(`Float32Array of ${model.shape.layers} x ${A} scales`, 'alpha', alpha, 'QF_SHAPE_MISMATCH');
  const cfg = model.blockConfig(1, 1, null, true, extra);
  try {
    for (let l = 0; l < model.shape.layers; l++) native().engine.blockMergeScales(cfg, model.blocks[l], alpha.subarray(l * A, (l + 1) * A));
  } catch (e) {
    throw fromNative(e);
  }
}

/** (Hq * hd) the v-channel scales repeated for the q heads that read each kv head. */
function expandVScales(model: TrainableLlama, av: Float32Array): Float32Array {
  const s = model.shape, ao = new Float32Array(s.heads * s.headDim);
  try {
    native().engine.teqExpandVScales(ao, av, s.heads, s.kvHeads, s.headDim);
  } catch (e) {
    throw fromNative(e);
  }
  return ao;
}

/** Deterministic batch order: epoch e visits the samples in a seeded permutation. */
export function batchIndices(samples: number, batch: number, step: number, seed: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < batch; i++) {
    const flat = step * batch + i;
    const epoch = Math.floor(flat / samples);
    const r = seededRandom(seed * 1000003 + epoch);
    const perm = Array.from({ length: samples }, (_, j) => j);
    for (let j = samples - 1; j > 0; j--) {
      const k = Math.floor(r() * (j + 1));
      [perm[j], perm[k]] = [perm[k], perm[j]];
    }
    out.push(perm[flat % samples]);
  }
  return out;
}

/** Progress, checkpoints when due, and Ctrl-C (checkpoint, then QF_ABORTED), for one run over all its steps (TEQ, EfficientQAT). */
export class Trainer {
  private t0 = performance.now();
  private stepsDone = 0;
  private stage: string | undefined;
  constructor(private readonly ctx: Pick<MethodContext, 'onProgress' | 'signal' | 'checkpoint' | 'checkpointEvery'>, private readonly total: number) {}

  /** Reports progress (steps/s and ETA per stage); saves a checkpoint when due or when aborted (then throws). */
  async after(step: number, loss: number, lr: number, state: () => TrainState, layer?: number, stage?: string): Promise<void> {
    const ctx = this.ctx;
    if (stage !== this.stage) {
      this.stage = stage;
      this.t0 = performance.now();
      this.stepsDone = 0;
    }
    this.stepsDone++;
    const sec = (performance.now() - this.t0) / 1000;
    const sps = this.stepsDone / Math.max(sec, 1e-9);
    ctx.onProgress?.({ phase: 'train', step: step + 1, totalSteps: this.total, loss, lr, stepsPerSecond: sps, etaSeconds: (this.total - step - 1) / sps, layer, stage });
    const aborted = ctx.signal?.aborted === true;
    if (ctx.checkpoint && (aborted || ((step + 1) % ctx.checkpointEvery === 0 && step + 1 < this.total))) await ctx.checkpoint(state());
    if (aborted) throw new QuantformError('QF_ABORTED', `Training stopped at step ${step + 1} of ${this.total}; the checkpoint can be resumed`);
  }
}

export function nonFinite(step: number, loss: number): QuantformError {
  return new QuantformError('QF_NON_FINITE',
    `Training loss became ${loss} at step ${step + 1}: stopped; the last checkpoint (if any) holds the last good state. Try a lower lr.`);
}

async function trainEndToEnd(model: TrainableLlama, ctx: MethodContext, opt: AdamW, curve: number[], start: number): Promise<void> {
  const nb = native().engine;
  const cal = ctx.calibration!;
  const s = model.shape, D = s.hidden, L = s.layers;
  const B = Math.min(ctx.train.batchSize, cal.samples), S = cal.seqLen, T = B * S;
  const cfg = model.blockConfig(B, S, ctx.quant, true, ctx.train.extraScales);
  const actN = nb.blockSizes(cfg).saved;
  const A = model.alphaPerLayer(ctx.train.extraScales);
  const acts = Array.from({ length: L }, () => new Float32Array(actN));  // saved activations, one block each
  const xs = Array.from({ length: L + 1 }, () => new Float32Array(T * D));  // (T, D) block inputs/outputs
  let dx = new Float32Array(T * D), dprev = new Float32Array(T * D);
  const tok = new Int32Array(T), tgt = new Int32Array(T), nll = new Float32Array(T);
  const total = ctx.train.steps;
  const trainer = new Trainer(ctx, total);
  for (let step = start; step < total; step++) {
    const idx = batchIndices(cal.samples, B, step, ctx.train.seed);
    for (let b = 0; b < B; b++)
      for (let t = 0; t < S; t++) {
        tok[b * S + t] = cal.tokens[idx[b] * S + t];
        tgt[b * S + t] = t + 1 < S ? cal.tokens[idx[b] * S + t + 1] : -1;  // last position has no target
      }
    opt.zeroGrad();
    nb.embeddingForward(xs[0], tok, model.embed, T, s.vocab, D);
    for (let l = 0; l < L; l++)
      await nb.blockForward(cfg, xs[l + 1], acts[l], xs[l], model.blocks[l], opt.params.subarray(l * A, (l + 1) * A), true);
    await nb.lmHeadLoss(nll, dx, null, null, xs[L], model.finalNorm, model.lmHead, tgt, T, D, s.vocab, s.rmsEps, 1 / (B * (S - 1)), true);
    let loss = 0;
    for (let i = 0; i < T; i++) loss += nll[i];
    loss /= B * (S - 1);
    if (!Number.isFinite(loss)) throw nonFinite(step, loss);
    for (let l = L - 1; l >= 0; l--) {
      await nb.blockBackward(cfg, dprev, null, opt.grads.subarray(l * A, (l + 1) * A), dx, acts[l], model.blocks[l],
        opt.params.subarray(l * A, (l + 1) * A), true);
      [dx, dprev] = [dprev, dx];
    }
    const lr = learningRate(ctx.train.lr, step, { kind: ctx.train.schedule, steps: total, warmup: ctx.train.warmup });
    await opt.update(lr);
    curve.push(loss);
    await trainer.after(step, loss, lr, () => ({ step: step + 1, arena: opt.arena.slice(), lossCurve: curve.slice() }));
  }
}

async function trainBlockwise(model: TrainableLlama, ctx: MethodContext, opt: AdamW, curve: number[], start: number): Promise<void> {
  const nb = native().engine;
  const cal = ctx.calibration!;
  const s = model.shape, D = s.hidden, L = s.layers;
  const N = cal.samples, S = cal.seqLen;
  const B = Math.min(ctx.train.batchSize, N), T = B * S;
  const steps = ctx.train.steps, total = steps * L, P = opt.size;
  // Inputs of block l for every calibration sample, from the fp32 model: (N*S, D).
  // Only one block's activations and these inputs are held at a time.
  let xin: Float32Array = new Float32Array(N * S * D);
  nb.embeddingForward(xin, cal.tokens, model.embed, N * S, s.vocab, D);
  const fpCfgAll = model.blockConfig(1, S, null, false);
  const cfg = model.blockConfig(B, S, ctx.quant, true, ctx.train.extraScales);
  const acts = new Float32Array(nb.blockSizes(cfg).saved);
  const A = model.alphaPerLayer(ctx.train.extraScales);
  const xb = new Float32Array(T * D), yb = new Float32Array(T * D), out = new Float32Array(T * D), dout = new Float32Array(T * D), dx = new Float32Array(T * D);
  const trainer = new Trainer(ctx, total);
  const firstLayer = Math.floor(start / steps);
  const forwardFp = async (l: number, from: Float32Array): Promise<Float32Array> => {
    const to = new Float32Array(N * S * D);
    for (let n = 0; n < N; n++)
      await nb.blockForward(fpCfgAll, to.subarray(n * S * D, (n + 1) * S * D), null, from.subarray(n * S * D, (n + 1) * S * D), model.blocks[l], null, true);
    return to;
  };
  // blocks finished before a resume: zero moments, as the uninterrupted run left them
  // (a checkpoint written at a block's last step still holds that block's moments)
  for (let l = 0; l < firstLayer; l++) {
    opt.arena.fill(0, 2 * P + l * A, 2 * P + (l + 1) * A);
    opt.arena.fill(0, 3 * P + l * A, 3 * P + (l + 1) * A);
    xin = await forwardFp(l, xin);
  }
  for (let l = firstLayer; l < L; l++) {
    const yout = await forwardFp(l, xin);  // fp32 targets
    const alpha = opt.params.subarray(l * A, (l + 1) * A), dalpha = opt.grads.subarray(l * A, (l + 1) * A);
    for (let k = l === firstLayer ? start - l * steps : 0; k < steps; k++) {
      const step = l * steps + k;
      const idx = batchIndices(N, B, step, ctx.train.seed);
      for (let b = 0; b < B; b++) {
        xb.set(xin.subarray(idx[b] * S * D, (idx[b] + 1) * S * D), b * S * D);
        yb.set(yout.subarray(idx[b] * S * D, (idx[b] + 1) * S * D), b * S * D);
      }
      opt.zeroGrad();
      await nb.blockForward(cfg, out, acts, xb, model.blocks[l], alpha, true);
      let loss = 0;
      const scale = 2 / (T * D);
      for (let i = 0; i < T * D; i++) {
        const d = out[i] - yb[i];
        loss += d * d;
        dout[i] = scale * d;
      }
      loss /= T * D;
      if (!Number.isFinite(loss)) throw nonFinite(step, loss);
      await nb.blockBackward(cfg, dx, null, dalpha, dout, acts, model.blocks[l], alpha, true);
      const lr = learningRate(ctx.train.lr, k, { kind: ctx.train.schedule, steps, warmup: ctx.train.warmup });
      // One arena for all blocks; the step count (bias correction) restarts per block,
      // and finished blocks get zero moments below so later updates leave them alone.
      opt.step = k;
      await opt.update(lr);
      curve.push(loss);
      await trainer.after(step, loss, lr, () => ({ step: step + 1, arena: opt.arena.slice(), lossCurve: curve.slice() }), l);
    }
    opt.arena.fill(0, 2 * P + l * A, 2 * P + (l + 1) * A);
    opt.arena.fill(0, 3 * P + l * A, 3 * P + (l + 1) * A);
    xin = yout;
  }
}

export const teq: QuantMethod = {
  name: 'teq',
  description: 'TEQ: trainable per-channel scales merged into RMSNorm weights and the following linears',
  needsCalibration: true,
  async prepare(model: TrainableLlama, ctx: MethodContext): Promise<MethodResult> {
    if (!ctx.calibration) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'teq' needs calibration data");
    const s = model.shape;
    const extra = ctx.train.extraScales;
    const A = model.alphaPerLayer(extra);
    const P = s.layers * A;
    const opt = new AdamW(P, { lr: ctx.train.lr, betas: ctx.train.betas, weightDecay: ctx.train.weightDecay, minValue: 1e-5 });
    opt.params.fill(1);
    const curve: number[] = [];
    let start = 0;
    if (ctx.resume) {
      const total = ctx.train.loss === 'e2e' ? ctx.train.steps : ctx.train.steps * s.layers;
      if (ctx.resume.step > total)
        throw new QuantformError('QF_CORRUPT_FILE', `The checkpoint is at step ${ctx.resume.step}, past the ${total} steps of this run`);
      opt.load({ step: ctx.resume.step, arena: ctx.resume.arena });
      curve.push(...ctx.resume.lossCurve);
      start = ctx.resume.step;
    }
    try {
      if (ctx.train.loss === 'e2e') await trainEndToEnd(model, ctx, opt, curve, start);
      else await trainBlockwise(model, ctx, opt, curve, start);
    } catch (e) {
      throw fromNative(e);
    }
    mergeTeqScales(model, opt.params, extra);
    const inputScales = new Map<string, Float32Array>(), outputScales = new Map<string, Float32Array>();
    const D = s.hidden, Dkv = s.kvHeads * s.headDim;
    for (let l = 0; l < s.layers; l++) {
      const at = (off: number, n: number) => opt.params.slice(l * A + off, l * A + off + n);
      const name = (n: keyof typeof HF_LINEAR) => `model.layers.${l}.${HF_LINEAR[n]}`;
      for (const n of ['q_proj', 'k_proj', 'v_proj'] as const) inputScales.set(name(n), at(0, D));
      for (const n of ['gate_proj', 'up_proj'] as const) inputScales.set(name(n), at(D, D));
      if (!extra) continue;
      const av = at(2 * D, Dkv), ad = at(2 * D + Dkv, s.intermediate);
      outputScales.set(name('v_proj'), av);
      inputScales.set(name('o_proj'), expandVScales(model, av));
      outputScales.set(name('up_proj'), ad);
      inputScales.set(name('down_proj'), ad);
    }
    return { lossCurve: curve, inputScales, outputScales };
  },
};
