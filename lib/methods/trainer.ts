// The training loop's bookkeeping every trainable method shares: progress events (steps/s and
// ETA per stage), checkpoints every N steps and on Ctrl-C (then QF_ABORTED), and the non-finite stop.
import { QuantformError } from '../errors.js';
import type { MethodContext, ProgressEvent, TrainState } from './types.js';

export class Trainer {
  private t0 = performance.now();
  private stepsDone = 0;
  private stageKey: string | undefined;
  /**
   * total: the run's steps (step indices are global across phases). validate: called before a
   * checkpoint is written; it throws when the state must not be kept (the last good one stays).
   */
  constructor(private readonly ctx: Pick<MethodContext, 'onProgress' | 'signal' | 'checkpoint' | 'checkpointEvery'>,
    private readonly total: number, private readonly validate?: () => void) {}

  /**
   * Reports progress; saves a checkpoint when due or when aborted (then throws). phase (FPTQuant's
   * 'local', 'e2e') and stage (EfficientQAT's 'block-ap', 'e2e-qp') go into the event; steps/s and
   * the ETA restart whenever either changes, since stages run at different speeds.
   */
  async after(step: number, loss: number, lr: number, state: () => TrainState, layer?: number,
    phase: ProgressEvent['phase'] = 'train', stage?: string): Promise<void> {
    const ctx = this.ctx;
    const key = `${phase}/${stage ?? ''}`;
    if (key !== this.stageKey) {
      this.stageKey = key;
      this.t0 = performance.now();
      this.stepsDone = 0;
    }
    this.stepsDone++;
    const sec = (performance.now() - this.t0) / 1000;
    const sps = this.stepsDone / Math.max(sec, 1e-9);
    ctx.onProgress?.({ phase, step: step + 1, totalSteps: this.total, loss, lr, stepsPerSecond: sps, etaSeconds: (this.total - step - 1) / sps, layer, stage });
    const aborted = ctx.signal?.aborted === true;
    if (ctx.checkpoint && (aborted || ((step + 1) % ctx.checkpointEvery === 0 && step + 1 < this.total))) {
      this.validate?.();
      await ctx.checkpoint(state());
    }
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
