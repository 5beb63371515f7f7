// End-to-end losses over a model that does not fit in fp32: the forward and backward
// of the whole model per step, with the block weights in a frozen form (bf16 when the
// checkpoint stores BF16, which is then exact, else fp32; bf16 on request) and only
// the trainable parameters in fp32 (the method's own arrays). Pieces of the budget, in
// the order they are given out (see EndToEnd.plan):
//   fixed    the fp32 embedding and LM head, the logits of one batch, every block's
//            input (B*S, D) (the activation checkpoints), one block's saved activations,
//            one block's frozen weights: too small for these is a clear error
//   saved    more blocks keep their saved activations from the forward (the last ones,
//            which the backward reaches first); every other block is recomputed from its
//            checkpointed input just before its backward (one extra block forward each)
//   cached   frozen weights of the first blocks stay in RAM; the others are re-read from
//            the checkpoint (page cache or disk) each time a step needs them
// Recomputing costs one block forward; caching saves a read of the block's bytes, so
// saved activations get the budget first.
//
//   const e2e = new EndToEnd(src, step, { batch: B, seq: S, maxMemoryBytes, label: 'teq (end-to-end loss)' });
//   const nllSum = await e2e.lossAndGrad(tokens /* (B*S) */, targets /* (B*S), -1: none */, 1 / count);
//   e2e.dispose();
// `step` (E2EStep) is the method's block step: its forward saves what its backward needs
// when handed a buffer of step.savedFloats, and its backward accumulates the method's
// gradients. TEQ's: the engine's block step with the block's alpha; EfficientQAT's E2E-QP
// can hand packed weights to its own step the same way.
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { native } from '../native.js';
import { needBlockSource, type BlockSource, type FrozenDType } from './block-source.js';
import { blockLayout, LINEARS } from './llama.js';
import { defaultBudget, formatBytes, type MemoryItem } from './pipeline.js';

export type FrozenBlock = Float32Array | Uint16Array;

export interface E2EStep {
  /** floats of one block's saved activations (what its backward reads) */
  readonly savedFloats: number;
  /** out (B*S, D) = block l(x); saves into `saved` when given */
  forward(l: number, w: FrozenBlock, x: Float32Array, out: Float32Array, saved: Float32Array | null): Promise<void>;
  /** dx (B*S, D) from dout and the saved activations; accumulates the method's gradients */
  backward(l: number, w: FrozenBlock, dout: Float32Array, dx: Float32Array, saved: Float32Array): Promise<void>;
}

export interface EndToEndOptions {
  batch: number;
  seq: number;
  /** Frozen weights' storage. Default: the source's exact dtype (exactFrozen). */
  frozen?: FrozenDType;
  /** Default: what the OS reports available. */
  maxMemoryBytes?: number;
  budgetLabel?: string;
  /** how the method is named in errors */
  label: string;
  /** what the method holds besides (trainable parameters, gradients, optimizer state) */
  methodMemory?: MemoryItem[];
}

export interface EndToEndPlan {
  items: MemoryItem[];
  fixedBytes: number;
  /** blocks whose saved activations stay from the forward (the last ones); the rest are recomputed */
  keepSaved: number;
  /** blocks whose frozen weights stay in RAM (the first ones); the rest are re-read per use */
  cachedBlocks: number;
  frozen: FrozenDType;
}

export class EndToEnd {
  readonly plan: EndToEndPlan;
  private readonly embed: Float32Array;
  private readonly finalNorm: Float32Array;
  private readonly lmHead: Float32Array;
  private readonly xs: Float32Array[];
  private readonly saved: (Float32Array | null)[];
  private readonly recompute: Float32Array | null;
  private readonly cache: (FrozenBlock | null)[];
  private reread: FrozenBlock | null = null;
  private dx: Float32Array;
  private dprev: Float32Array;
  private readonly nll: Float32Array;
  /** blocks read from the source so far (cache fills and re-reads), for reports */
  reads = 0;

  /** The memory plan of a run (throws when the fixed part exceeds the budget). */
  static plan(src: BlockSource, savedFloats: number, o: EndToEndOptions): EndToEndPlan {
    needBlockSource(src);
    if (!is.positiveInteger(savedFloats)) throw invalidParameter('positive integer', 'savedFloats', savedFloats);
    need.object(o, 'options');
    if (!is.positiveInteger(o.batch)) throw invalidParameter('positive integer', 'batch', o.batch);
    if (!is.positiveInteger(o.seq)) throw invalidParameter('positive integer', 'seq', o.seq);
    const budget = o.maxMemoryBytes ?? defaultBudget();
    if (!is.finiteNumber(budget) || budget <= 0) throw invalidParameter('positive number of bytes', 'maxMemoryBytes', budget);
    const frozen = o.frozen ?? src.exactFrozen;
    if (!is.oneOf(frozen, ['f32', 'bf16'] as const)) throw invalidParameter("'f32' or 'bf16'", 'frozen', frozen);
    const s = src.shape, T = o.batch * o.seq, D = s.hidden, L = s.layers;
    const P = blockLayout(s).total;
    const maxLinear = Math.max(...LINEARS.map((n) => blockLayout(s).linears[n].rows * blockLayout(s).linears[n].cols));
    const resident = src.resident !== undefined && frozen === 'f32';
    const blockFrozen = P * (frozen === 'bf16' ? 2 : 4);
    const savedBytes = savedFloats * 4;
    const items: MemoryItem[] = [
      { what: `the fp32 embedding${s.tied ? ' (tied LM head)' : ' and LM head'}`, bytes: s.vocab * D * 4 * (s.tied ? 1 : 2) },
      { what: `logits of ${o.batch} x ${o.seq} tokens`, bytes: 2 * T * s.vocab * 4 },
      { what: `the ${L + 1} block inputs and 2 gradients of ${o.batch} x ${o.seq} tokens`, bytes: (L + 3) * T * D * 4 },
      { what: "one block's saved activations", bytes: savedBytes },
      ...(resident ? [] : [{ what: `one block's frozen ${frozen} weights (and one widened linear)`, bytes: blockFrozen + (frozen === 'bf16' ? maxLinear * 4 : 0) }]),
      ...(o.methodMemory ?? []),
    ];
    const fixedBytes = items.reduce((a, i) => a + i.bytes, 0);
    if (fixedBytes > budget) {
      const label = o.budgetLabel ?? `maxMemoryBytes ${budget} (${formatBytes(budget)})`;
      throw new QuantformError('QF_INVALID_ARGUMENT', `${label} is too small for the end-to-end stage of ${src.path}: ${o.label} holds ` +
        `${items.map((i) => `${i.what} (${formatBytes(i.bytes)})`).join(', ')}: ${formatBytes(fixedBytes)} in all`);
    }
    let left = budget - fixedBytes - (128 << 20);
    const keepSaved = Math.max(1, Math.min(L, 1 + Math.floor(Math.max(0, left) / savedBytes)));
    left -= (keepSaved - 1) * savedBytes;
    const cachedBlocks = resident ? L : Math.max(0, Math.min(L, Math.floor(Math.max(0, left) / blockFrozen)));
    return { items, fixedBytes, keepSaved, cachedBlocks, frozen };
  }

  constructor(private readonly src: BlockSource, private readonly step: E2EStep, private readonly o: EndToEndOptions) {
    needBlockSource(src);
    need.object(step, 'step');
    need.func(step.forward, 'step.forward');
    need.func(step.backward, 'step.backward');
    this.plan = EndToEnd.plan(src, step.savedFloats, o);
    const s = src.shape, T = o.batch * o.seq, D = s.hidden, L = s.layers;
    this.embed = src.weight('embed');
    this.finalNorm = src.weight('final_norm');
    this.lmHead = s.tied ? this.embed : src.weight('lm_head');
    this.xs = Array.from({ length: L + 1 }, () => new Float32Array(T * D));  // (T, D) block inputs/outputs
    this.saved = Array.from({ length: L }, (_, l) => (l >= L - this.plan.keepSaved ? new Float32Array(step.savedFloats) : null));
    this.recompute = this.plan.keepSaved < L ? new Float32Array(step.savedFloats) : null;
    this.cache = Array.from({ length: L }, () => null);
    this.dx = new Float32Array(T * D);
    this.dprev = new Float32Array(T * D);
    this.nll = new Float32Array(T);
  }

  /** Block l's frozen weights: resident (an in-memory model), cached, or read again into one reused buffer. */
  private weights(l: number): FrozenBlock {
    const p = this.plan;
    if (this.src.resident && p.frozen === 'f32') return this.src.resident(l);
    const c = this.cache[l];
    if (c) return c;
    const cached = l < p.cachedBlocks;
    const into = cached ? undefined : this.reread ?? undefined;
    this.reads++;
    const w = p.frozen === 'bf16' ? this.src.readBlockBf16(l, into as Uint16Array | undefined) : this.src.readBlock(l, into as Float32Array | undefined);
    if (cached) this.cache[l] = w;
    else this.reread = w;
    return w;
  }

  /**
   * One forward and backward of the whole model on tokens (B*S) with next-token
   * targets (B*S, -1 where there is none): returns the sum of the NLLs; the method's
   * gradients of lossScale * sum are accumulated by its step's backward.
   */
  async lossAndGrad(tokens: Int32Array, targets: Int32Array, lossScale: number): Promise<number> {
    const nb = native().engine;
    const s = this.src.shape, T = this.o.batch * this.o.seq, D = s.hidden, L = s.layers;
    if (!(tokens instanceof Int32Array) || tokens.length !== T) throw invalidParameter(`Int32Array of ${T} token ids`, 'tokens', tokens);
    if (!(targets instanceof Int32Array) || targets.length !== T) throw invalidParameter(`Int32Array of ${T} targets`, 'targets', targets);
    const xs = this.xs;
    try {
      nb.embeddingForward(xs[0], tokens, this.embed, T, s.vocab, D);
      for (let l = 0; l < L; l++) await this.step.forward(l, this.weights(l), xs[l], xs[l + 1], this.saved[l]);
      await nb.lmHeadLoss(this.nll, this.dx, null, null, xs[L], this.finalNorm, this.lmHead, targets, T, D, s.vocab, s.rmsEps, lossScale, true);
      let sum = 0;
      for (let i = 0; i < T; i++) sum += this.nll[i];
      if (!Number.isFinite(sum)) return sum;  // the caller stops: no gradient is worth computing
      for (let l = L - 1; l >= 0; l--) {
        const w = this.weights(l);
        let saved = this.saved[l];
        if (!saved) {
          // the block's activations again, from its checkpointed input (the output lands in dprev, overwritten below)
          saved = this.recompute!;
          await this.step.forward(l, w, xs[l], this.dprev, saved);
        }
        await this.step.backward(l, w, this.dx, this.dprev, saved);
        [this.dx, this.dprev] = [this.dprev, this.dx];
      }
      return sum;
    } catch (e) {
      throw fromNative(e);
    }
  }

  dispose(): void {
    this.cache.fill(null);
    this.reread = null;
  }
}
