// The streaming block pipeline: how every method (RTN, GPTQ, TEQ; FPTQuant's weights after
// its whole-model stage) quantizes a model of any size in bounded memory. One block is in
// memory at a time; the calibration activations live in ActivationStores (RAM under
// the budget, an unlinked memory-mapped file beyond it); the output is written tensor
// by tensor as blocks finish.
//
// ## API (for method authors)
//
//   const src = checkpointBlocks(openCheckpoint(path));   // or modelBlocks(trainableLlama)  (block-source.ts)
//   const plan = planBlockPass(src, method, { calibration, maxMemoryBytes, activationDtype });   // throws when one block does not fit
//   const reports = await runBlockPass(src, method, plan, () => sink, { signal, onBlock });
//
// `method` is a BlockMethod:
//   needs: ActivationNeeds        which activations the pipeline keeps for it:
//     fpInputs     X_fp(l): block l's inputs in the fp model
//     fpTargets    Y_fp(l) = fp block l(X_fp(l)), computed before block() is called
//     quantInputs  X_q(l): block l's inputs through the already-quantized blocks 0..l-1
//   rewritesNorms                 block() changes the norms (then written as F32, else copied as stored)
//   memory(): MemoryItem[]        what block() holds besides the pipeline's buffers (--max-memory)
//   block?(b: PipelineBlock): Promise<BlockResult>
//   forward?(layer, arena, x, out, batch)  the block step of the method's model when it is not the fp block (FPTQuant)
//     b.index, b.shape, b.calibration, b.chunk (samples per forward the pipeline uses)
//     b.arena        block l's fp32 working copy (blockLayout order); block() may rewrite it
//                    (merge transforms, store dequantized values), the pipeline reads it back
//     b.fpInputs, b.fpTargets, b.quantInputs: ActivationStore (samples, seqLen, hidden) or null
//     b.forward(arena, x, out, batch)  the fp block step on `batch` sequences, no saved activations
//   BlockResult: linears it quantized itself (LinearName -> QuantizedTensor, f16 params, the run's
//     bits / group size), and TEQ-style inputScales / outputScales per linear (for the report);
//     every linear it leaves out is RTN-quantized from b.arena.
//   No block(): RTN tensor by tensor, no block is ever loaded (peak: one linear).
//
// Per block l the pipeline: reads block l (fp32, every tensor checked against the config);
// computes Y_fp(l) when asked; calls block(); RTN-quantizes the remaining linears; reports
// each linear's error (before: RTN of the original, after: the result with the scales
// undone, on up to 2^20 weights); writes the block's norms and linears to the sink; when
// X_q is kept, replaces b.arena's linears by their dequantized values and recomputes X_q
// through it (in place, chunk by chunk); X_fp(l + 1) = Y_fp(l). The embedding, final norm
// and lm_head are read when needed (the embedding once, to embed the calibration tokens)
// and written once, after the blocks. Stores are removed on success, error and Ctrl-C
// (their file is unlinked at creation); a sink is opened only after every store exists,
// so a full disk or a budget too small for one block leaves nothing written.
//
// End-to-end losses run on frozen weights: lib/engine/end-to-end.ts (EndToEnd).
import os from 'node:os';
import { QuantformError, fromNative, invalidParameter, is, need } from '../errors.js';
import { ActivationStore, type ActivationDType } from '../io/activation-store.js';
import { native } from '../native.js';
import { dequantize, quantize, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { weightShape } from '../model/config.js';
import type { CalibrationSet } from './calib.js';
import { blockConfigOf, blockLayout, HF_LINEAR, LINEARS, RUNTIME_LINEAR, type BlockQuant, type LinearName, type LlamaShape } from './llama.js';
import { needBlockSource, type BlockSource } from './block-source.js';

export interface ActivationNeeds {
  fpInputs: boolean;
  fpTargets: boolean;
  quantInputs: boolean;
}

export const NO_ACTIVATIONS: ActivationNeeds = { fpInputs: false, fpTargets: false, quantInputs: false };

/** Something held in memory, in words, for --max-memory plans and errors. */
export interface MemoryItem {
  what: string;
  bytes: number;
}

export function formatBytes(b: number): string {
  return b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`;
}

export interface PipelineBlock {
  readonly index: number;
  readonly shape: LlamaShape;
  readonly calibration: CalibrationSet;
  /** (blockLayout().total) fp32 working copy of the block */
  readonly arena: Float32Array;
  readonly fpInputs: ActivationStore | null;
  readonly fpTargets: ActivationStore | null;
  readonly quantInputs: ActivationStore | null;
  /** samples per forward the pipeline uses (activations of about 256 MB) */
  readonly chunk: number;
  /** out (batch * seqLen, D) = fp block(x) with the weights of `arena` */
  forward(arena: Float32Array, x: Float32Array, out: Float32Array, batch: number): Promise<void>;
}

export interface BlockResult {
  linears?: Partial<Record<LinearName, QuantizedTensor>>;
  /** per-input-channel scales folded into a linear (the transformed weight is W diag(s)) */
  inputScales?: Partial<Record<LinearName, Float32Array>>;
  /** per-output-row scales folded into a linear (its rows were divided by them) */
  outputScales?: Partial<Record<LinearName, Float32Array>>;
}

export interface BlockMethod {
  readonly needs: ActivationNeeds;
  readonly rewritesNorms: boolean;
  memory(): MemoryItem[];
  block?(b: PipelineBlock): Promise<BlockResult>;
  /** block `layer`'s step when the method's model is not the plain fp block (FPTQuant merged: S_n, online Hadamard); X_fp, Y_fp and X_q go through it */
  forward?(layer: number, arena: Float32Array, x: Float32Array, out: Float32Array, batch: number): Promise<void>;
}

/** Where the pipeline's results go (a GPTQ directory being written, or memory). */
export interface BlockSink {
  /** a norm or embedding: fp32 values (rewritten by the method) or the stored bytes */
  plain(name: string, data: ArrayBufferView): void;
  linear(name: string, q: QuantizedTensor): void;
  /** block l's fp32 weights after the method (norms merged), before anything else touches them */
  block?(l: number, arena: Float32Array): void;
}

export interface LinearReport {
  name: string;
  shape: [number, number];
  /** ||Q(W) - W|| / ||W|| of plain RTN on the original weight (on 2^20 weights in 16 row blocks above 2^21) */
  errorBefore: number;
  /** the same for the quantized result, measured in the original function space (scales undone) */
  errorAfter: number;
}

export interface BlockPassOptions {
  calibration?: CalibrationSet;
  quant: BlockQuant;
  /** Bytes the run may hold (weights, working sets, activations in RAM). Default: what the OS reports available. */
  maxMemoryBytes?: number;
  /** How the budget is named in errors (the CLI: `--max-memory 2 GB`). */
  budgetLabel?: string;
  /** Storage of the calibration activations. Default 'f32' (exact). */
  activationDtype?: ActivationDType;
  /** Directory of the spill files. Default the OS temp dir. */
  tmpDir?: string;
  /** how the method is named in errors */
  label: string;
}

export interface BlockPassPlan {
  options: BlockPassOptions;
  budget: number;
  /** what one block needs at its peak (the activation stores come on top, under the rest of the budget) */
  items: MemoryItem[];
  fixedBytes: number;
  /** bytes of every activation store together, and how many of them may stay in RAM */
  storeBytes: number;
  storeRamBytes: number;
  chunk: number;
}

/** The budget when none is given: what the OS reports available. */
export function defaultBudget(): number {
  return os.freemem();
}

/** Rows a linear's error is measured on: all of them up to 2^21 weights, else 16 evenly spaced row blocks of about 2^20 weights in all. */
export function sampleRows(N: number, K: number): [number, number][] {
  if (N * K <= 1 << 21) return [[0, N]];
  const chunks = 16, rowsPer = Math.max(1, Math.floor((1 << 20) / K / chunks));
  return Array.from({ length: chunks }, (_, c) => {
    const r0 = Math.floor((c * (N - rowsPer)) / (chunks - 1));
    return [r0, Math.min(N, r0 + rowsPer)];
  });
}

/** Rows [r0, r1) of a quantized matrix (rows are independent in the packed format); views, no copy. */
export function quantizedRows(q: QuantizedTensor, r0: number, r1: number): QuantizedTensor {
  const G = q.numGroups, rb = q.codes.length / q.shape[0];
  return new QuantizedTensor(q.codes.subarray(r0 * rb, r1 * rb), q.scales.subarray(r0 * G, r1 * G), q.zeros ? q.zeros.subarray(r0 * G, r1 * G) : null,
    [r1 - r0, q.shape[1]], q.bits, q.groupSize, q.symmetric, q.paramDtype);
}

/**
 * ||Ŵ - W|| / ||W|| over sampleRows: `w` holds those rows of W one after another,
 * Ŵ = dequant(q) with input scales divided out and output scales multiplied back.
 */
function relErrorOnRows(q: QuantizedTensor, w: Float32Array, rows: [number, number][], inSc?: Float32Array, outSc?: Float32Array): number {
  const K = q.shape[1];
  let e = 0, d = 0, o = 0;
  for (const [r0, r1] of rows) {
    const back = dequantize(quantizedRows(q, r0, r1)).data as Float32Array;
    if (inSc) for (let r = 0; r < r1 - r0; r++) for (let k = 0; k < K; k++) back[r * K + k] /= inSc[k];
    if (outSc) for (let r = 0; r < r1 - r0; r++) for (let k = 0; k < K; k++) back[r * K + k] *= outSc[r0 + r];
    for (let i = 0; i < back.length; i++, o++) {
      e += (back[i] - w[o]) ** 2;
      d += w[o] ** 2;
    }
  }
  return Math.sqrt(e / Math.max(d, 1e-30));
}

function rowsOf(w: Float32Array, K: number, rows: [number, number][]): Float32Array {
  if (rows.length === 1 && rows[0][0] === 0 && rows[0][1] * K === w.length) return w.slice();
  const out = new Float32Array(rows.reduce((a, [r0, r1]) => a + (r1 - r0) * K, 0));
  let o = 0;
  for (const [r0, r1] of rows) {
    out.set(w.subarray(r0 * K, r1 * K), o);
    o += (r1 - r0) * K;
  }
  return out;
}

/** Rows `rows` of a (?, K) bf16 / f16 matrix, one after another, widened to fp32. */
function widenRows(h: Uint16Array, dtype: 'bf16' | 'f16', K: number, rows: [number, number][]): Float32Array {
  const n = rows.reduce((a, [r0, r1]) => a + (r1 - r0) * K, 0);
  const picked = new Uint16Array(n), out = new Float32Array(n);
  let o = 0;
  for (const [r0, r1] of rows) {
    picked.set(h.subarray(r0 * K, r1 * K), o);
    o += (r1 - r0) * K;
  }
  try {
    native().io.convert(out, 'f32', picked, dtype);
  } catch (e) {
    throw fromNative(e);
  }
  return out;
}

/** RTN with the f16 parameters the GPTQ export stores. */
export function rtnLinear(w: Float32Array, N: number, K: number, q: BlockQuant): QuantizedTensor {
  return quantize(new Tensor(w, [N, K]), { bits: q.bits, groupSize: Math.min(q.groupSize, K), symmetric: q.symmetric, paramDtype: 'f16' });
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** Samples per block forward: activations of about 256 MB at most (the engine's workspace for `chunk` sequences). */
export function forwardChunk(shape: LlamaShape, seq: number, samples: number): number {
  const perSeq = native().engine.blockSizes(blockConfigOf(shape, 1, seq, null, false)).saved * 4;
  return Math.max(1, Math.min(samples, Math.floor((256 << 20) / perSeq)));
}

function largestLinear(shape: LlamaShape): number {
  return Math.max(...LINEARS.map((n) => {
    const s = blockLayout(shape).linears[n];
    return s.rows * s.cols;
  }));
}

/**
 * What a block pass holds at its peak, checked against the budget before anything
 * is read or written: too small for one block is a clear error with the numbers.
 */
/** A BlockMethod passed in by a caller (plain JS). */
function needBlockMethod(m: unknown): asserts m is BlockMethod {
  need.object(m, 'method');
  const o = m as Record<string, unknown>;
  need.object(o.needs, 'method.needs');
  need.func(o.memory, 'method.memory');
  if (o.block !== undefined) need.func(o.block, 'method.block');
  if (o.forward !== undefined) need.func(o.forward, 'method.forward');
}

export function planBlockPass(src: BlockSource, method: BlockMethod, o: BlockPassOptions): BlockPassPlan {
  needBlockSource(src);
  needBlockMethod(method);
  need.object(o, 'options');
  need.object(o.quant, 'options.quant');
  need.string(o.label, 'options.label');
  const budget = o.maxMemoryBytes ?? defaultBudget();
  if (!is.finiteNumber(budget) || budget <= 0) throw invalidParameter('positive number of bytes', 'maxMemoryBytes', budget);
  const dtype = o.activationDtype ?? 'f32';
  if (!is.oneOf(dtype, ['f32', 'bf16'] as const)) throw invalidParameter("'f32' or 'bf16'", 'activationDtype', dtype);
  const s = src.shape, cfg = src.config;
  const needs = method.needs;
  const stores = (needs.fpInputs || needs.fpTargets ? 2 : 0) + (needs.quantInputs ? 1 : 0);
  const cal = o.calibration;
  if (stores > 0 && !cal) throw new QuantformError('QF_INVALID_ARGUMENT', `${o.label} needs calibration data`);
  let items: MemoryItem[];
  let chunk = 1;
  if (!method.block) {
    // tensor by tensor: the fp32 weight, its dequantized sample, a byte per code while packing, the packed codes
    let worst = { name: '', n: 0 };
    for (const name of ['embed', 'lm_head', ...LINEARS.map((n) => `layers.0.${RUNTIME_LINEAR[n]}`)]) {
      if (name === 'lm_head' && cfg.tiedEmbeddings) continue;
      const n = numel(weightShape(cfg, name));
      if (n > worst.n) worst = { name, n };
    }
    items = [{ what: `one tensor at a time; the largest, ${worst.name} [${weightShape(cfg, worst.name).join(', ')}],`, bytes: worst.n * 10 }];
    // bf16 / f16 linears: read as stored into two buffers by turns (the next one arrives while this one is quantized)
    if (src.halfLinears) items.push({ what: 'two read buffers of the largest linear', bytes: largestLinear(s) * 4 });
  } else {
    const S = cal?.seqLen ?? 1, N = cal?.samples ?? 1, D = s.hidden;
    const maxLinear = largestLinear(s);
    const blockPhase: MemoryItem[] = [
      { what: "the block's fp32 weights", bytes: blockLayout(s).total * 4 },
      ...method.memory(),
      // RTN's codes and GPTQ words of the largest linear, and the report's samples (original, quantized, dequantized)
      { what: 'packing its linears for the output', bytes: maxLinear * 2 + 12 * Math.min(maxLinear, 1 << 20) },
    ];
    if (stores > 0) {
      // samples per forward: as many as the budget leaves room for, up to about 256 MB of activations (results do not depend on it)
      const perSample = S * D * 8 + native().engine.blockSizes(blockConfigOf(s, 1, S, null, false)).saved * 4;
      const spare = budget - blockPhase.reduce((a, i) => a + i.bytes, 0) - (128 << 20);
      chunk = Math.max(1, Math.min(forwardChunk(s, S, N), Math.floor(spare / perSample)));
      blockPhase.push({ what: `forward buffers of ${chunk} x ${S} tokens`, bytes: chunk * perSample });
    }
    const embedPhase = stores > 0 ? s.vocab * D * 4 + chunk * S * D * 4 : 0;
    const blockBytes = blockPhase.reduce((a, i) => a + i.bytes, 0);
    items = embedPhase > blockBytes ? [{ what: 'the fp32 embedding (while the calibration tokens are embedded)', bytes: embedPhase }] : blockPhase;
  }
  const fixedBytes = items.reduce((a, i) => a + i.bytes, 0);
  if (fixedBytes > budget) {
    const label = o.budgetLabel ?? `maxMemoryBytes ${budget} (${formatBytes(budget)})`;
    throw new QuantformError('QF_INVALID_ARGUMENT', `${label} is too small for one block of ${src.path}: ${o.label} holds ` +
      `${items.map((i) => `${i.what} ${items.length > 1 ? `(${formatBytes(i.bytes)})` : `needs ${formatBytes(i.bytes)}`}`).join(', ')}` +
      `${items.length > 1 ? `: ${formatBytes(fixedBytes)} in all` : ''}`);
  }
  const storeBytes = stores > 0 && cal ? stores * cal.samples * cal.seqLen * s.hidden * (dtype === 'f32' ? 4 : 2) : 0;
  // the process itself (Node, the addon, the JS heap) is not in the items: leave it some room
  const storeRamBytes = Math.max(0, Math.min(storeBytes, budget - fixedBytes - (128 << 20)));
  return { options: { ...o, activationDtype: dtype }, budget, items, fixedBytes, storeBytes, storeRamBytes, chunk };
}

export interface BlockPassHooks {
  signal?: AbortSignal;
  /** 'quantize' progress: one event per tensor (RTN) or per block */
  onProgress?: (e: { step: number; totalSteps: number; layer?: number }) => void;
  /** appended to the abort message (RTN: where nothing was written) */
  abortNote?: string;
  /** readMs grows by the time spent reading the checkpoint (a read overlapped with compute: only the wait for it) */
  timing?: { readMs: number };
}

const BLOCK_NORMS = ['attn_norm', 'ffn_norm'] as const;

/**
 * Runs `method` over every block of `src` (see the API at the top of this file);
 * returns the error report of every linear, in block and arena order.
 */
export async function runBlockPass(src: BlockSource, method: BlockMethod, plan: BlockPassPlan, openSink: () => BlockSink,
  hooks: BlockPassHooks = {}): Promise<LinearReport[]> {
  needBlockSource(src);
  needBlockMethod(method);
  need.object(plan, 'plan');
  need.object(plan.options, 'plan.options');
  need.func(openSink, 'openSink');
  need.object(hooks, 'hooks');
  const o = plan.options, s = src.shape, quant = o.quant;
  const cal = o.calibration;
  const needs = method.needs;
  const fp = needs.fpInputs || needs.fpTargets;
  const nb = native().engine;
  const D = s.hidden, L = s.layers;
  const lay = blockLayout(s);
  const reports: LinearReport[] = [];
  const stores: ActivationStore[] = [];
  const count = (fp ? 2 : 0) + (needs.quantInputs ? 1 : 0);
  const newStore = () => {
    const st = new ActivationStore({ samples: cal!.samples, tokens: cal!.seqLen, hidden: D, dtype: o.activationDtype, tmpDir: o.tmpDir,
      maxMemoryBytes: plan.storeRamBytes / count });
    stores.push(st);
    return st;
  };
  let ahead: Promise<{ dtype: 'bf16' | 'f16'; data: Uint16Array } | null> | null = null;
  const timing = hooks.timing ?? { readMs: 0 };
  const reading = <T>(f: () => T): T => {
    const t = performance.now();
    try {
      return f();
    } finally {
      timing.readMs += performance.now() - t;
    }
  };
  try {
    let xfp = fp ? newStore() : null, yfp = fp ? newStore() : null;
    const xq = needs.quantInputs ? newStore() : null;
    const sink = openSink();
    const S = cal?.seqLen ?? 1, N = cal?.samples ?? 0, chunk = plan.chunk;
    const cfgs = new Map<number, ReturnType<typeof blockConfigOf>>();
    const cfgOf = (b: number) => {
      let c = cfgs.get(b);
      if (!c) cfgs.set(b, (c = blockConfigOf(s, b, S, null, false)));
      return c;
    };
    const forward = async (arena: Float32Array, x: Float32Array, out: Float32Array, batch: number) => {
      try {
        await nb.blockForward(cfgOf(batch), out, null, x, arena, null, true);
      } catch (e) {
        throw fromNative(e);
      }
    };
    const xbuf = count > 0 ? new Float32Array(chunk * S * D) : new Float32Array(0);  // (chunk * S, D)
    const ybuf = count > 0 ? new Float32Array(chunk * S * D) : new Float32Array(0);
    // to <- block(from), chunk by chunk (to may be from: a chunk is read before it is overwritten)
    const sweep = async (l: number, arena: Float32Array, from: ActivationStore, to: ActivationStore) => {
      for (let s0 = 0; s0 < N; s0 += chunk) {
        const n = Math.min(chunk, N - s0), x = xbuf.subarray(0, n * S * D), y = ybuf.subarray(0, n * S * D);
        from.read(s0, n, x);
        if (method.forward) await method.forward(l, arena, x, y, n);
        else await forward(arena, x, y, n);
        to.write(s0, y);
      }
    };
    if (count > 0) {
      const embed = reading(() => src.weight('embed'));  // (V, D), dropped after this
      for (let s0 = 0; s0 < N; s0 += chunk) {
        const n = Math.min(chunk, N - s0), x = xbuf.subarray(0, n * S * D);
        try {
          nb.embeddingForward(x, cal!.tokens.subarray(s0 * S, (s0 + n) * S), embed, n * S, s.vocab, D);
        } catch (e) {
          throw fromNative(e);
        }
        xfp?.write(s0, x);
        xq?.write(s0, x);
      }
    }
    const totalTensors = L * 9 + (s.tied ? 2 : 3);
    let tensors = 0;
    const tensorDone = (layer?: number) => {
      tensors++;
      if (!method.block) hooks.onProgress?.({ step: tensors, totalSteps: totalTensors, layer });
      if (!method.block && hooks.signal?.aborted)
        throw new QuantformError('QF_ABORTED', `Quantization interrupted after ${tensors} of ${totalTensors} tensors${hooks.abortNote ?? ''}`);
    };
    const report = (l: number, n: LinearName, q: QuantizedTensor, orig: Float32Array, rows: [number, number][], before: number, res?: BlockResult) => {
      const { rows: N_, cols } = lay.linears[n];
      reports.push({ name: `model.layers.${l}.${HF_LINEAR[n]}`, shape: [N_, cols], errorBefore: before,
        errorAfter: relErrorOnRows(q, orig, rows, res?.inputScales?.[n], res?.outputScales?.[n]) });
    };
    let arena: Float32Array | null = null;
    let scratch = new Float32Array(0);
    // RTN: linears in the order they are written, read as stored half bits into two buffers by turns
    const linearNames = method.block ? [] : Array.from({ length: L }, (_, l) => LINEARS.map((n) => `layers.${l}.${RUNTIME_LINEAR[n]}`)).flat();
    const halves = linearNames.length && src.halfLinears && src.readLinearHalfAsync ? [0, 1].map(() => new Uint16Array(largestLinear(s))) : [];
    const fetchHalf = (i: number) => (halves.length ? src.readLinearHalfAsync!(linearNames[i], halves[i & 1]) : Promise.resolve(null));
    let li = 0;
    ahead = null;
    for (let l = 0; l < L; l++) {
      if (!method.block) {
        // RTN: one tensor at a time, nothing of the block held
        for (const w of ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_up', 'w_down'] as const) {
          const name = `layers.${l}.${w}`;
          if (w === 'attn_norm' || w === 'ffn_norm') sink.plain(name, reading(() => src.stored(name).data()));
          else {
            const n = LINEARS.find((x) => RUNTIME_LINEAR[x] === w)!;
            const { rows, cols } = lay.linears[n];
            const sr = sampleRows(rows, cols);
            if (linearNames[li] !== name) throw new QuantformError('QF_INTERNAL', `RTN read ${linearNames[li]} ahead of ${name}`);
            // the next linear's bytes arrive (a libuv worker) while this one is quantized
            const waited = performance.now();
            const half = await (ahead ?? fetchHalf(li));
            timing.readMs += performance.now() - waited;
            ahead = li + 1 < linearNames.length ? fetchHalf(li + 1) : null;
            ahead?.catch(() => {});  // awaited below or in the finally: never an unhandled rejection
            li++;
            let q: QuantizedTensor, orig: Float32Array;
            if (half) {
              // the stored bf16 / f16 bits quantized as they are (widened in cache by the kernel), the report's rows widened alone
              q = quantize(new Tensor(half.data, [rows, cols], half.dtype), { bits: quant.bits, groupSize: Math.min(quant.groupSize, cols), symmetric: quant.symmetric, paramDtype: 'f16' });
              orig = widenRows(half.data, half.dtype, cols, sr);
            } else {
              // one fp32 buffer for every linear: a fresh 180 MB array per 7B linear would fault its pages in each time
              if (scratch.length < rows * cols) scratch = new Float32Array(rows * cols);
              const wt = reading(() => src.readLinear(name, scratch.subarray(0, rows * cols)));
              q = rtnLinear(wt, rows, cols, quant);
              orig = rowsOf(wt, cols, sr);
            }
            const err = relErrorOnRows(q, orig, sr);
            reports.push({ name: `model.layers.${l}.${HF_LINEAR[n]}`, shape: [rows, cols], errorBefore: err, errorAfter: err });
            sink.linear(name, q);
          }
          tensorDone(l);
        }
        await new Promise((r) => setImmediate(r));  // lets Ctrl-C and progress output through between blocks
        continue;
      }
      arena = reading(() => src.readBlock(l, arena ?? undefined));
      // the original weights the report compares against (sampled rows) and plain RTN's error on them
      const orig = LINEARS.map((n) => {
        const { offset, rows, cols } = lay.linears[n];
        const sr = sampleRows(rows, cols);
        const w = rowsOf(arena!.subarray(offset, offset + rows * cols), cols, sr);
        const before = relErrorOnRows(rtnLinear(w, w.length / cols, cols, quant), w, [[0, w.length / cols]]);
        return { w, sr, before };
      });
      if (fp) await sweep(l, arena, xfp!, yfp!);
      const res = await method.block({
        index: l, shape: s, calibration: cal!, arena, chunk, forward,
        fpInputs: xfp, fpTargets: needs.fpTargets ? yfp : null, quantInputs: xq,
      });
      sink.block?.(l, arena);
      for (const w of BLOCK_NORMS) {
        const name = `layers.${l}.${w}`, slot = w === 'attn_norm' ? lay.g1 : lay.g2;
        sink.plain(name, method.rewritesNorms ? arena.subarray(slot.offset, slot.offset + D) : reading(() => src.stored(name).data()));
        tensorDone(l);
      }
      const qs = LINEARS.map((n, i) => {
        const { offset, rows, cols } = lay.linears[n];
        const own = res.linears?.[n];
        if (own && (own.shape[0] !== rows || own.shape[1] !== cols || own.bits !== quant.bits || own.symmetric !== quant.symmetric ||
          own.groupSize !== Math.min(quant.groupSize, cols) || own.paramDtype !== 'f16'))
          throw new QuantformError('QF_INTERNAL', `${o.label} returned layers.${l}.${RUNTIME_LINEAR[n]} as [${own.shape}] INT${own.bits} g${own.groupSize} ${own.paramDtype}, ` +
            `not [${rows}, ${cols}] INT${quant.bits} g${Math.min(quant.groupSize, cols)} f16`);
        const q = own ?? rtnLinear(arena!.slice(offset, offset + rows * cols), rows, cols, quant);
        report(l, n, q, orig[i].w, orig[i].sr, orig[i].before, res);
        sink.linear(`layers.${l}.${RUNTIME_LINEAR[n]}`, q);
        tensorDone(l);
        return q;
      });
      if (xq) {
        // the next block's quantized-path inputs: this block as it will run, quantized
        LINEARS.forEach((n, i) => {
          const { offset, rows, cols } = lay.linears[n];
          dequantize(qs[i], { out: arena!.subarray(offset, offset + rows * cols) });
        });
        await sweep(l, arena, xq, xq);
      }
      if (fp) [xfp, yfp] = [yfp, xfp];
      hooks.onProgress?.({ step: l + 1, totalSteps: L, layer: l });
    }
    for (const name of ['embed', 'final_norm', ...(s.tied ? [] : ['lm_head'])]) {
      sink.plain(name, reading(() => src.stored(name).data()));
      tensorDone();
    }
    return reports;
  } finally {
    // a read still in flight finishes before the caller may close the checkpoint under it
    await (ahead as Promise<unknown> | null)?.catch(() => {});
    for (const st of stores) st.dispose();
  }
}
