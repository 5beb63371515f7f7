// TEQ (Intel Neural Compressor's trainable equivalent transformation, Cheng et al.
// 2023): one trainable per-input-channel scale alpha (init 1, kept >= 1e-5) for each
// group of linears sharing an input: input RMSNorm -> {q, k, v} and post-attention
// RMSNorm -> {gate, up}. Training forward: y = (x / alpha) . Q(W diag(alpha))^T with
// Q = RTN fake-quant recomputed every step (native block step, teq = true), Q's
// rounding straight-through. Merge: gamma <- gamma / alpha, W <- W diag(alpha), so the
// quantized model carries no extra op.
import { fromNative, invalidParameter, need, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig } from '../native.js';
import type { BlockSource } from '../engine/block-source.js';
import { seededRandom } from '../engine/calib.js';
import { EndToEnd, type EndToEndPlan, type FrozenBlock } from '../engine/end-to-end.js';
import { AdamW, learningRate } from '../engine/optim.js';
import { blockConfigOf, TrainableLlama, type LinearName, type LlamaShape } from '../engine/llama.js';
import { NO_ACTIVATIONS, type ActivationNeeds, type BlockResult, type MemoryItem, type PipelineBlock } from '../engine/pipeline.js';
import type { MethodContext, MethodRun, QuantMethod, TrainState } from './types.js';

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
function expandVScales(s: LlamaShape, av: Float32Array): Float32Array {
  const ao = new Float32Array(s.heads * s.headDim);
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

  /** Ctrl-C outside a training step (while blocks are quantized): the state as it is, then QF_ABORTED. */
  async checkAbort(done: number, state: () => TrainState): Promise<void> {
    if (this.ctx.signal?.aborted !== true) return;
    if (this.ctx.checkpoint) await this.ctx.checkpoint(state());
    throw new QuantformError('QF_ABORTED', `Stopped after step ${done} of ${this.total}${this.ctx.checkpoint ? '; the checkpoint can be resumed' : ''}`);
  }
}

export function nonFinite(step: number, loss: number): QuantformError {
  return new QuantformError('QF_NON_FINITE',
    `Training loss became ${loss} at step ${step + 1}: stopped; the last checkpoint (if any) holds the last good state. Try a lower lr.`);
}

/** A TEQ run: the scales of every block in one AdamW arena (layers x A), trained end to end or block by block. */
class TeqRun implements MethodRun {
  readonly needs: ActivationNeeds;
  readonly rewritesNorms = true;
  private readonly opt: AdamW;
  private readonly curve: number[] = [];
  private readonly A: number;
  private readonly trainer: Trainer;
  /** steps finished (resume: where the checkpoint was) */
  private done = 0;
  private readonly B: number;

  constructor(private readonly ctx: MethodContext) {
    const cal = ctx.calibration;
    if (!cal) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'teq' needs calibration data");
    const s = ctx.shape, t = ctx.train;
    this.A = native().engine.blockSizes(blockConfigOf(s, 1, 1, null, true, t.extraScales)).alpha;
    this.opt = new AdamW(s.layers * this.A, { lr: t.lr, betas: t.betas, weightDecay: t.weightDecay, minValue: 1e-5 });
    this.opt.params.fill(1);
    if (ctx.resume) {
      const total = t.loss === 'e2e' ? t.steps : t.steps * s.layers;
      if (ctx.resume.step > total)
        throw new QuantformError('QF_CORRUPT_FILE', `The checkpoint is at step ${ctx.resume.step}, past the ${total} steps of this run`);
      this.opt.load({ step: ctx.resume.step, arena: ctx.resume.arena });
      this.curve.push(...ctx.resume.lossCurve);
      this.done = ctx.resume.step;
    }
    this.B = Math.min(t.batchSize, cal.samples);
    this.needs = t.loss === 'block' ? { fpInputs: true, fpTargets: true, quantInputs: false } : NO_ACTIVATIONS;
    this.trainer = new Trainer(ctx, t.loss === 'block' ? t.steps * s.layers : t.steps);
  }

  private cfg(batch: number, seq: number): NativeBlockConfig {
    return blockConfigOf(this.ctx.shape, batch, seq, this.ctx.quant, true, this.ctx.train.extraScales);
  }

  private state = (): TrainState => ({ step: this.done, arena: this.opt.arena.slice(), lossCurve: this.curve.slice() });

  private alpha(l: number): Float32Array {
    return this.opt.params.subarray(l * this.A, (l + 1) * this.A);
  }

  private dalpha(l: number): Float32Array {
    return this.opt.grads.subarray(l * this.A, (l + 1) * this.A);
  }

  memory(): MemoryItem[] {
    const S = this.ctx.calibration!.seqLen, T = this.B * S, D = this.ctx.shape.hidden;
    const items: MemoryItem[] = [{ what: 'the scales, gradients and Adam moments', bytes: this.opt.arena.byteLength }];
    if (this.ctx.train.loss === 'block')
      items.push({ what: `saved activations and effective weights of ${this.B} x ${S} tokens`, bytes: native().engine.blockSizes(this.cfg(this.B, S)).saved * 4 },
        { what: 'batch buffers', bytes: 5 * T * D * 4 });
    return items;
  }

  private e2eOptions(): ConstructorParameters<typeof EndToEnd>[2] {
    const c = this.ctx;
    return { batch: this.B, seq: c.calibration!.seqLen, frozen: c.frozen, maxMemoryBytes: c.maxMemoryBytes, budgetLabel: c.budgetLabel,
      label: 'teq (end-to-end loss)', methodMemory: [{ what: 'the scales, gradients and Adam moments', bytes: this.opt.arena.byteLength }] };
  }

  planEndToEnd(src: BlockSource): EndToEndPlan | null {
    if (this.ctx.train.loss !== 'e2e') return null;
    return EndToEnd.plan(src, native().engine.blockSizes(this.cfg(this.B, this.ctx.calibration!.seqLen)).saved, this.e2eOptions());
  }

  /** The default loss: next-token cross-entropy of the whole model, the block weights frozen. */
  async endToEnd(src: BlockSource): Promise<void> {
    if (this.ctx.train.loss !== 'e2e') return;
    const nb = native().engine;
    const ctx = this.ctx, cal = ctx.calibration!, opt = this.opt;
    const B = this.B, S = cal.seqLen, T = B * S;
    const cfg = this.cfg(B, S);
    const step = {
      savedFloats: nb.blockSizes(cfg).saved,
      forward: async (l: number, w: FrozenBlock, x: Float32Array, out: Float32Array, saved: Float32Array | null) => {
        await nb.blockForward(cfg, out, saved, x, w, this.alpha(l), true);
      },
      backward: async (l: number, w: FrozenBlock, dout: Float32Array, dx: Float32Array, saved: Float32Array) => {
        await nb.blockBackward(cfg, dx, null, this.dalpha(l), dout, saved, w, this.alpha(l), true);
      },
    };
    const e2e = new EndToEnd(src, step, this.e2eOptions());
    const tok = new Int32Array(T), tgt = new Int32Array(T);
    const total = ctx.train.steps;
    try {
      for (let k = this.done; k < total; k++) {
        const idx = batchIndices(cal.samples, B, k, ctx.train.seed);
        for (let b = 0; b < B; b++)
          for (let t = 0; t < S; t++) {
            tok[b * S + t] = cal.tokens[idx[b] * S + t];
            tgt[b * S + t] = t + 1 < S ? cal.tokens[idx[b] * S + t + 1] : -1;  // last position has no target
          }
        opt.zeroGrad();
        const loss = (await e2e.lossAndGrad(tok, tgt, 1 / (B * (S - 1)))) / (B * (S - 1));
        if (!Number.isFinite(loss)) throw nonFinite(k, loss);
        const lr = learningRate(ctx.train.lr, k, { kind: ctx.train.schedule, steps: total, warmup: ctx.train.warmup });
        await opt.update(lr);
        this.curve.push(loss);
        this.done = k + 1;
        await this.trainer.after(k, loss, lr, this.state);
      }
    } finally {
      e2e.dispose();
    }
  }

  /** Block-wise loss: output MSE against the fp block on fp inputs; then (both losses) the scales merge into the block. */
  async block(b: PipelineBlock): Promise<BlockResult> {
    const ctx = this.ctx, l = b.index, s = ctx.shape, D = s.hidden;
    await this.trainer.checkAbort(this.done, this.state);
    if (ctx.train.loss === 'block') await this.trainBlock(b);
    const alpha = this.alpha(l);
    try {
      native().engine.blockMergeScales(blockConfigOf(s, 1, 1, null, true, ctx.train.extraScales), b.arena, alpha);
    } catch (e) {
      throw fromNative(e);
    }
    const at = (off: number, n: number) => alpha.slice(off, off + n);
    const inputScales: Partial<Record<LinearName, Float32Array>> = { q_proj: at(0, D), k_proj: at(0, D), v_proj: at(0, D), gate_proj: at(D, D), up_proj: at(D, D) };
    const outputScales: Partial<Record<LinearName, Float32Array>> = {};
    if (ctx.train.extraScales) {
      const Dkv = s.kvHeads * s.headDim;
      const av = at(2 * D, Dkv), ad = at(2 * D + Dkv, s.intermediate);
      outputScales.v_proj = av;
      inputScales.o_proj = expandVScales(s, av);
      outputScales.up_proj = ad;
      inputScales.down_proj = ad;
    }
    return { inputScales, outputScales };
  }

  private async trainBlock(b: PipelineBlock): Promise<void> {
    const nb = native().engine;
    const ctx = this.ctx, cal = ctx.calibration!, opt = this.opt, l = b.index;
    const D = ctx.shape.hidden, N = cal.samples, S = cal.seqLen, B = this.B, T = B * S;
    const steps = ctx.train.steps, P = opt.size, A = this.A;
    const cfg = this.cfg(B, S);
    const acts = new Float32Array(nb.blockSizes(cfg).saved);
    const xb = new Float32Array(T * D), yb = new Float32Array(T * D), out = new Float32Array(T * D), dout = new Float32Array(T * D), dx = new Float32Array(T * D);
    const alpha = this.alpha(l), dalpha = this.dalpha(l);
    const xin = b.fpInputs!, yout = b.fpTargets!;
    for (let k = Math.max(0, this.done - l * steps); k < steps; k++) {
      const step = l * steps + k;
      const idx = batchIndices(N, B, step, ctx.train.seed);
      for (let i = 0; i < B; i++) {
        xin.read(idx[i], 1, xb.subarray(i * S * D, (i + 1) * S * D));
        yout.read(idx[i], 1, yb.subarray(i * S * D, (i + 1) * S * D));
      }
      opt.zeroGrad();
      try {
        await nb.blockForward(cfg, out, acts, xb, b.arena, alpha, true);
      } catch (e) {
        throw fromNative(e);
      }
      let loss = 0;
      const scale = 2 / (T * D);
      for (let i = 0; i < T * D; i++) {
        const d = out[i] - yb[i];
        loss += d * d;
        dout[i] = scale * d;
      }
      loss /= T * D;
      if (!Number.isFinite(loss)) throw nonFinite(step, loss);
      try {
        await nb.blockBackward(cfg, dx, null, dalpha, dout, acts, b.arena, alpha, true);
      } catch (e) {
        throw fromNative(e);
      }
      const lr = learningRate(ctx.train.lr, k, { kind: ctx.train.schedule, steps, warmup: ctx.train.warmup });
      // One arena for all blocks; the step count (bias correction) restarts per block,
      // and finished blocks get zero moments below so later updates leave them alone.
      opt.step = k;
      await opt.update(lr);
      this.curve.push(loss);
      this.done = step + 1;
      await this.trainer.after(step, loss, lr, this.state, l);
    }
    opt.arena.fill(0, 2 * P + l * A, 2 * P + (l + 1) * A);
    opt.arena.fill(0, 3 * P + l * A, 3 * P + (l + 1) * A);
  }

  lossCurve(): number[] {
    return this.curve;
  }
}

export const teq: QuantMethod = {
  name: 'teq',
  description: 'TEQ: trainable per-channel scales merged into RMSNorm weights and the following linears',
  needsCalibration: true,
  start: (ctx) => new TeqRun(ctx),
};
