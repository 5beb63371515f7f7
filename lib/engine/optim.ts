// AdamW over one flat arena and learning-rate schedules. The arena holds
// [params P | grads P | m P | v P] in one Float32Array so a step is one native
// loop (llm.c's layout); callers take `params`/`grads` views and write into them.
import { fromNative, invalidParameter, is, need } from '../errors.js';
import { native } from '../native.js';

export interface AdamWOptions {
  /** Default 1e-3. */
  lr?: number;
  /** Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay. Default 0. */
  weightDecay?: number;
  /** Parameters are clamped to at least this after each step (TEQ keeps scales >= 1e-5). Default -Infinity. */
  minValue?: number;
  /**
   * Sizes of consecutive parameter groups (summing to size), each stepped at its own learning
   * rate: update([lr0, lr1, ...]) (EfficientQAT: weights, then step sizes and zero points). Default [size].
   */
  groups?: number[];
}

export class AdamW {
  readonly size: number;
  /** (4 * size): params | grads | m | v */
  readonly arena: Float32Array;
  readonly params: Float32Array;
  readonly grads: Float32Array;
  readonly opts: Required<Omit<AdamWOptions, 'groups'>>;
  /** [begin, end) of every parameter group */
  readonly groups: readonly (readonly [number, number])[];
  step = 0;

  constructor(size: number, opts: AdamWOptions = {}) {
    if (!is.positiveInteger(size)) throw invalidParameter('positive integer', 'size', size);
    const betas = opts.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2 || betas.some((b) => !(b >= 0 && b < 1)))
      throw invalidParameter('two numbers in [0, 1)', 'betas', betas);
    const o = { lr: opts.lr ?? 1e-3, betas, eps: opts.eps ?? 1e-8, weightDecay: opts.weightDecay ?? 0, minValue: opts.minValue ?? -Infinity };
    if (!is.finiteNumber(o.lr) || o.lr < 0) throw invalidParameter('non-negative number', 'lr', o.lr);
    if (!is.finiteNumber(o.eps) || o.eps <= 0) throw invalidParameter('positive number', 'eps', o.eps);
    if (!is.finiteNumber(o.weightDecay) || o.weightDecay < 0) throw invalidParameter('non-negative number', 'weightDecay', o.weightDecay);
    if (typeof o.minValue !== 'number' || Number.isNaN(o.minValue)) throw invalidParameter('number', 'minValue', o.minValue);
    const sizes = opts.groups ?? [size];
    if (!Array.isArray(sizes) || sizes.length === 0 || sizes.some((n) => !is.positiveInteger(n)) || sizes.reduce((a, b) => a + b, 0) !== size)
      throw invalidParameter(`positive group sizes summing to ${size}`, 'groups', sizes);
    let at = 0;
    this.groups = sizes.map((n) => { at += n; return [at - n, at] as const; });
    this.size = size;
    this.opts = o;
    this.arena = new Float32Array(4 * size);
    this.params = this.arena.subarray(0, size);
    this.grads = this.arena.subarray(size, 2 * size);
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }

  /** One AdamW update at learning rate `lr` (the schedule's value for this step), or one per parameter group. */
  async update(lr: number | readonly number[] = this.opts.lr): Promise<void> {
    const lrs = typeof lr === 'number' ? this.groups.map(() => lr) : lr;
    if (!Array.isArray(lrs) || lrs.length !== this.groups.length)
      throw invalidParameter(`a number or ${this.groups.length} numbers (one per parameter group)`, 'lr', lr);
    for (const v of lrs) if (!is.finiteNumber(v) || v < 0) throw invalidParameter('non-negative number', 'lr', v);
    this.step++;
    const o = this.opts;
    try {
      for (let g = 0; g < this.groups.length; g++)
        await native().engine.adamw(this.arena, this.size, this.groups[g][0], this.groups[g][1], this.step, lrs[g], o.betas[0], o.betas[1], o.eps,
          o.weightDecay, o.minValue, true);
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** Optimizer state for checkpoints: the whole arena and the step count. */
  state(): { step: number; arena: Float32Array } {
    return { step: this.step, arena: this.arena.slice() };
  }

  load(state: { step: number; arena: Float32Array }): void {
    if (state.arena.length !== this.arena.length)
      throw invalidParameter(`optimizer state of ${this.arena.length} floats`, 'state.arena', state.arena, 'QF_SHAPE_MISMATCH');
    this.arena.set(state.arena);
    this.step = state.step;
  }
}

export type ScheduleKind = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  kind: ScheduleKind;
  /** Total steps the schedule spans. */
  steps: number;
  /** Fraction of steps spent warming up linearly from 0. Default 0. */
  warmup?: number;
}

/**
 * Learning rate at 0-based `step`: linear warm-up over ceil(warmup * steps) steps,
 * then constant, linear decay to 0 (Hugging Face get_linear_schedule_with_warmup,
 * the TEQ reference's default) or cosine decay to 0.
 */
export function learningRate(base: number, step: number, opts: ScheduleOptions): number {
  if (!is.finiteNumber(base) || base < 0) throw invalidParameter('non-negative number', 'base', base);
  need.nonNegativeInteger(step, 'step');
  need.object(opts, 'options');
  if (!is.oneOf(opts.kind, ['constant', 'linear', 'cosine'] as const)) throw invalidParameter("'constant', 'linear' or 'cosine'", 'schedule', opts.kind);
  if (!is.positiveInteger(opts.steps)) throw invalidParameter('positive integer', 'steps', opts.steps);
  const warm = opts.warmup ?? 0;
  if (!(warm >= 0 && warm < 1)) throw invalidParameter('number in [0, 1)', 'warmup', warm);
  const w = Math.ceil(warm * opts.steps);
  if (step < w) return (base * (step + 1)) / w;
  if (opts.kind === 'constant') return base;
  const progress = (step - w) / Math.max(1, opts.steps - w);
  if (opts.kind === 'linear') return base * Math.max(0, 1 - progress);
  return base * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
}
