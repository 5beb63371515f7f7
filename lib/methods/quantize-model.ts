// The entry points of model quantization, all on the streaming block pipeline
// (lib/engine/pipeline.ts), with the method looked up by name (lib/methods):
//   quantizeCheckpoint   any Checkpoint -> a GPTQ directory, block by block in bounded
//                        memory (what the CLI runs, at any model size)
//   quantizeModel        a TrainableLlama in memory -> a QuantizedModel in memory
//   quantizeCheckpointRtn  quantizeCheckpoint with method 'rtn' (tensor by tensor)
//   quantizePlan         what a run will hold, checked against the budget, before it starts
//   quantizeCheckpointE2eQp  EfficientQAT's E2E-QP of a quantized (GPTQ) checkpoint, packed throughout
// A method with a stage after the block pass (EfficientQAT's E2E-QP, MethodRun.afterBlocks)
// gets the pass's packed result; the output is written once that stage has trained it.
// Every linear a method does not quantize itself is RTN-quantized with f16 scales, the
// parameters the GPTQ export stores. quantizedCheckpoint / rtnCheckpoint: results as
// runtime Checkpoints, so the one evaluator (lib/eval) scores them on the INT4 kernels.
// A method with a whole-model stage (FPTQuant) gets the fp32 model (a clone, or loaded from the
// checkpoint) after its memory is checked against the budget; the block pass reads what it made.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { CalibrationSet } from '../engine/calib.js';
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import type { ActivationDType } from '../io/activation-store.js';
import { writeTiming } from '../io/atomic.js';
import { readSafetensors, readSafetensorsMetadata, writeSafetensors, type SafeTensor } from '../io/safetensors.js';
import { getMethod, type MethodRun, type ProgressEvent, type QuantMethod, type TrainOptions, type TrainState } from './index.js';
import { trainStateFromCheckpoint } from './checkpoint.js';
import { checkFinite } from '../ops/finite.js';
import { dequantize, SUPPORTED_BITS, type Bits, type QuantizedTensor } from '../ops/quant.js';
import { checkpointBlocks, configOfModel, modelBlocks, type BlockSource, type FrozenDType } from '../engine/block-source.js';
import type { EndToEndPlan } from '../engine/end-to-end.js';
import { blockLayout, HF_LINEAR, LINEARS, RUNTIME_LINEAR, TrainableLlama, type BlockQuant } from '../engine/llama.js';
import type { ScheduleKind } from '../engine/optim.js';
import {
  defaultBudget, formatBytes, planBlockPass, rtnLinear, runBlockPass, type BlockPassPlan, type BlockResult, type BlockSink, type LinearReport, type MemoryItem,
  type PipelineBlock,
} from '../engine/pipeline.js';
import { GptqWriter, gptqSourceOf, isQuantizedLinear, needSaveOptions, tokenizerDirOf, type SaveOptions } from '../export/save.js';
import { needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { weightShape } from '../model/config.js';
import { hfModuleName } from '../model/hf.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { GptqMethodOptions } from './gptq.js';
import type { FptActivationQuant, FptQuantOptions } from './fptquant.js';
import { activationConfig } from '../model/fpt.js';
import { e2eSteps, packedFromCheckpoint, resolveEfficientQat, trainStepSizes, type EfficientQatOptions, type PackedLlama } from './efficientqat.js';
import { Trainer } from './trainer.js';

export type { LinearReport } from '../engine/pipeline.js';

export interface QuantizeModelOptions {
  /** A registered method: 'rtn', 'gptq', 'teq'. */
  method: string;
  bits: Bits;
  /** Default 128 (capped at each linear's input size). */
  groupSize?: number;
  /** Default false. */
  symmetric?: boolean;
  /** Calibration windows (trainable methods). */
  calibration?: CalibrationSet;
  steps?: number;
  lr?: number;
  betas?: [number, number];
  weightDecay?: number;
  schedule?: ScheduleKind;
  warmup?: number;
  batchSize?: number;
  loss?: 'e2e' | 'block';
  seed?: number;
  /** TEQ: also the mergeable v->o and up->down scales. Default false. */
  extraScales?: boolean;
  /** GPTQ: damping, lazy batch, where group parameters are read. */
  gptq?: GptqMethodOptions;
  /** Bytes the run may hold in RAM (weights, working sets, activations). Default: what the OS reports available. */
  maxMemoryBytes?: number;
  /** Storage of calibration activations: 'f32' (default, exact) or 'bf16' (half the memory, rounded). */
  activationDtype?: ActivationDType;
  /** Frozen weights of an end-to-end stage: default exact (bf16 for BF16 checkpoints, else fp32); 'bf16' rounds fp32 ones. */
  frozenDtype?: FrozenDType;
  /** Directory of activation spill files. Default the OS temp dir. */
  tmpDir?: string;
  /** FPTQuant: activation / KV bits, transforms, stages (lib/methods/fptquant.ts). */
  fpt?: FptQuantOptions;
  /** EfficientQAT: phases, init, learning rates, E2E-QP's quantized start. */
  efficientqat?: EfficientQatOptions;
}

export interface QuantizeModelHooks {
  onProgress?: (e: ProgressEvent) => void;
  /** Ctrl-C: the trainer checkpoints and stops with QF_ABORTED. */
  signal?: AbortSignal;
  /** Checkpoint file (written atomically) and period in steps. */
  checkpoint?: { path: string; every?: number };
  /** Continue from `checkpoint.path`. */
  resume?: boolean;
  /** How the memory budget is named in errors (the CLI: `--max-memory 2 GB`). */
  budgetLabel?: string;
}

export interface QuantizeReport {
  method: string;
  bits: Bits;
  groupSize: number;
  symmetric: boolean;
  linears: LinearReport[];
  lossCurve: number[];
  /** the loss per stage when a method has several (EfficientQAT: each Block-AP block, E2E-QP) */
  lossCurves?: { label: string; losses: number[] }[];
  trainSeconds: number;
  /** of totalSeconds, the block pass's wait for checkpoint reads (reads overlapped with compute count only their wait) */
  readSeconds: number;
  /** of totalSeconds, writing the output (writes and fsyncs; the process's AtomicFile time across the run) */
  writeSeconds: number;
  totalSeconds: number;
  /** FPTQuant: static activation / KV bits and the run-time transforms */
  activations?: { actBits: number; kvBits: number; onlineTransforms: string[]; residualRotation: boolean };
}

export interface QuantizedModel {
  /** the transformed fp32 model the linears were quantized from (norms merged; GPTQ: its linears dequantized) */
  model: TrainableLlama;
  quant: BlockQuant;
  /** HF linear names (model.layers.<l>.self_attn.q_proj ...) -> quantized weight (RTN, or the method's own) */
  linears: Map<string, QuantizedTensor>;
  report: QuantizeReport;
  /** static activation / KV quantization and run-time transforms (FPTQuant), saved with the checkpoint */
  activations?: FptActivationQuant;
}

function resolveTrain(o: QuantizeModelOptions): TrainOptions {
  const t: TrainOptions = {
    steps: o.steps ?? 1000, lr: o.lr ?? 1e-3, betas: o.betas ?? [0.9, 0.9], weightDecay: o.weightDecay ?? 0,
    schedule: o.schedule ?? 'linear', warmup: o.warmup ?? 0.05, batchSize: o.batchSize ?? 2, loss: o.loss ?? 'e2e', seed: o.seed ?? 0,
    extraScales: o.extraScales ?? false,
  };
  if (!is.bool(t.extraScales)) throw invalidParameter('boolean', 'extraScales', t.extraScales);
  if (!is.positiveInteger(t.steps)) throw invalidParameter('positive integer', 'steps', t.steps);
  if (!is.finiteNumber(t.lr) || t.lr <= 0) throw invalidParameter('positive number', 'lr', t.lr);
  if (!is.positiveInteger(t.batchSize)) throw invalidParameter('positive integer', 'batchSize', t.batchSize);
  if (!is.oneOf(t.loss, ['e2e', 'block'] as const)) throw invalidParameter("'e2e' or 'block'", 'loss', t.loss);
  if (!is.nonNegativeInteger(t.seed)) throw invalidParameter('non-negative integer', 'seed', t.seed);
  return t;
}

/** What a checkpoint must match to be resumed: the model's weights, shapes and every option that changes the result. */
function fingerprint(src: BlockSource, o: QuantizeModelOptions, t: TrainOptions, quant: BlockQuant): string {
  const h = createHash('sha256');
  const { start, ...eqat } = o.efficientqat ?? {};
  h.update(JSON.stringify({ method: o.method, quant, train: t, samples: o.calibration?.samples, seqLen: o.calibration?.seqLen,
    activations: o.activationDtype ?? 'f32', frozen: o.frozenDtype ?? null, gptq: o.gptq ?? null, efficientqat: eqat, ...(o.fpt ? { fpt: o.fpt } : {}) }));
  for (const q of start?.values() ?? []) h.update(new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength)).update(q.codes);
  h.update(src.identity());
  if (o.calibration) h.update(new Uint8Array(o.calibration.tokens.buffer, o.calibration.tokens.byteOffset, o.calibration.tokens.byteLength));
  return h.digest('hex');
}

/** Writes training state atomically (safetensors: 'arena' and the named tensors; step, loss curve and fingerprint as metadata). */
function stateWriter(file: string, fingerprint: string): (s: TrainState) => Promise<void> {
  return async (s) => {
    const tensors = new Map<string, SafeTensor>([['arena', { dtype: 'F32', shape: [s.arena.length], data: s.arena }]]);
    for (const [k, v] of s.tensors ?? []) tensors.set(k, { dtype: v instanceof Int32Array ? 'I32' : 'F32', shape: [v.length], data: v });
    writeSafetensors(file, tensors, { fingerprint, step: String(s.step), lossCurve: JSON.stringify(s.lossCurve) });
  };
}

function readCheckpoint(file: string, expect: string): TrainState {
  if (!existsSync(file)) throw new QuantformError('QF_IO', `No checkpoint to resume at ${file}`);
  const t = readSafetensors(file);
  const meta = readSafetensorsMetadata(file);
  if (meta.fingerprint !== expect)
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `Checkpoint ${file} was written for another model, calibration set or configuration: it cannot be resumed with these options`);
  return trainStateFromCheckpoint(file, meta, t.get('arena'), t);
}

/** A QuantizedModel passed in by a caller: quantizeModel's result shape. */
export function needQuantizedModel(q: unknown): asserts q is QuantizedModel {
  need.object(q, 'quantized model');
  const o = q as Record<string, unknown>;
  need.instance(o.model, TrainableLlama, 'quantized model.model');
  need.instance(o.linears, Map, 'quantized model.linears');
  need.object(o.quant, 'quantized model.quant');
  need.object(o.report, 'quantized model.report');
}

interface Prepared {
  method: QuantMethod;
  run: MethodRun;
  quant: BlockQuant;
  block: BlockPassPlan;
  endToEnd: EndToEndPlan | null;
}

/** Options checked, the method started (resumed), and both stages' memory planned: everything that can fail before any work. */
function prepare(src: BlockSource, opts: QuantizeModelOptions, hooks: QuantizeModelHooks): Prepared {
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  need.object(hooks, 'hooks');
  if (hooks.onProgress !== undefined) need.func(hooks.onProgress, 'hooks.onProgress');
  if (hooks.signal !== undefined) need.instance(hooks.signal, AbortSignal, 'hooks.signal');
  if (hooks.checkpoint !== undefined) { need.object(hooks.checkpoint, 'hooks.checkpoint'); need.string(hooks.checkpoint.path, 'hooks.checkpoint.path'); }
  const method = getMethod(opts.method);
  const quant = quantSpec(opts);
  const train = resolveTrain(opts);
  const cal = opts.calibration;
  const s = src.shape;
  if (method.needsCalibration && !cal) throw new QuantformError('QF_INVALID_ARGUMENT', `Method '${method.name}' needs calibration data (options.calibration)`);
  if (cal && cal.seqLen > s.maxSeq) throw invalidParameter(`seqLen <= ${s.maxSeq} (the model's context)`, 'seqLen', cal.seqLen);
  if (cal) for (const id of cal.tokens) if (id < 0 || id >= s.vocab) throw invalidParameter(`token ids in [0, ${s.vocab})`, 'calibration.tokens', id);
  if (opts.maxMemoryBytes !== undefined && !(is.finiteNumber(opts.maxMemoryBytes) && opts.maxMemoryBytes > 0))
    throw invalidParameter('positive number of bytes', 'maxMemoryBytes', opts.maxMemoryBytes);
  const ck = hooks.checkpoint;
  if (hooks.resume && !ck) throw new QuantformError('QF_INVALID_ARGUMENT', 'resume needs a checkpoint path');
  const fp = ck && method.needsCalibration ? fingerprint(src, opts, train, quant) : '';
  const resume = hooks.resume ? readCheckpoint(ck?.path ?? '', fp) : undefined;
  try {
    const run = method.start({
      shape: s, quant, calibration: cal, train, onProgress: hooks.onProgress, signal: hooks.signal, checkpointEvery: ck?.every ?? 100, resume,
      gptq: opts.gptq, efficientqat: opts.efficientqat, maxMemoryBytes: opts.maxMemoryBytes, budgetLabel: hooks.budgetLabel, frozen: opts.frozenDtype,
      fpt: opts.fpt, checkpoint: ck ? stateWriter(ck.path, fp) : undefined,
    });
    // in the order they run: an end-to-end stage first, then the block pass
    const endToEnd = run.planEndToEnd?.(src) ?? null;
    const label = `${method.name}${method.needsCalibration && method.name === 'teq' ? ` (${train.loss === 'block' ? 'block' : 'end-to-end'} loss)` : ''}`;
    // a whole-model stage holds its model through the block pass: the blocks get the rest of the budget
    const wholeBytes = run.whole ? planWhole(run.whole.memory(), method.name, src.path, opts.maxMemoryBytes, hooks.budgetLabel) : 0;
    const block = planBlockPass(src, run, {
      calibration: cal, quant, maxMemoryBytes: wholeBytes ? (opts.maxMemoryBytes ?? defaultBudget()) - wholeBytes : opts.maxMemoryBytes,
      budgetLabel: hooks.budgetLabel, activationDtype: opts.activationDtype, tmpDir: opts.tmpDir, label: method.name === 'rtn' ? 'RTN' : label,
    });
    return { method, run, quant, block, endToEnd };
  } catch (e) {
    // a method (registered by name, possibly a user's) that calls the binding directly and
    // lets its error through still ends in a QuantformError with the native code
    throw fromNative(e);
  }
}

/** Bytes of a whole-model stage, or QF_OUT_OF_MEMORY naming the budget when they exceed it (before anything is read). */
function planWhole(items: MemoryItem[], method: string, path: string, maxMemoryBytes: number | undefined, budgetLabel: string | undefined): number {
  const bytes = items.reduce((a, i) => a + i.bytes, 0), budget = maxMemoryBytes ?? defaultBudget();
  if (bytes > budget)
    throw new QuantformError('QF_OUT_OF_MEMORY', `${budgetLabel ?? `maxMemoryBytes ${budget} (${formatBytes(budget)})`} is too small for ${method} on ${path}: ` +
      `it needs the whole model in memory, ${items.map((i) => `${i.what} (${formatBytes(i.bytes)})`).join(', ')}: ${formatBytes(bytes)} in all`);
  return bytes;
}

/** The memory a run of `opts` on `ck` (or a model in memory) will hold; throws the too-small error quantize would. */
export function quantizePlan(model: Checkpoint | TrainableLlama, opts: QuantizeModelOptions): { block: BlockPassPlan; endToEnd: EndToEndPlan | null } {
  if (!(model instanceof TrainableLlama)) needCheckpoint(model);
  const p = prepare(model instanceof TrainableLlama ? modelBlocks(model) : checkpointBlocks(model), opts, {});
  return { block: p.block, endToEnd: p.endToEnd };
}

/**
 * The block pass's output held back for a stage after it (MethodRun.afterBlocks): linears packed,
 * norms and embeddings as given (copies: the pipeline reuses its arena), then handed to the
 * real sink in the order they came, with the stage's linears.
 */
class DeferredSink {
  private sink: BlockSink | null = null;
  private readonly items: { name: string; data?: ArrayBufferView; q?: QuantizedTensor }[] = [];

  open(sink: BlockSink): BlockSink {
    this.sink = sink;
    return {
      plain: (name, data) => this.items.push({ name, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice() }),
      linear: (name, q) => this.items.push({ name, q }),
      block: sink.block ? (l, arena) => sink.block!(l, arena) : undefined,
    };
  }

  private f32(name: string): Float32Array {
    const it = this.items.find((i) => i.name === name);
    if (!it?.data || it.data.byteLength % 4 !== 0) throw new QuantformError('QF_INTERNAL', `The block pass left no fp32 ${name} for the stage after it`);
    return new Float32Array(it.data.buffer, it.data.byteOffset, it.data.byteLength / 4);
  }

  /** The block pass's result as E2E-QP trains it: fp32 embedding, LM head and norms (rewritten by the method), packed linears. */
  packed(src: BlockSource): PackedLlama {
    const s = src.shape;
    const embed = src.weight('embed');
    const linears = new Map<string, QuantizedTensor>();
    for (const it of this.items) if (it.q) linears.set(hfModuleName(it.name), it.q);
    return { shape: s, embed, finalNorm: src.weight('final_norm'), lmHead: s.tied ? embed : src.weight('lm_head'), linears,
      norms: Array.from({ length: s.layers }, (_, l) => ({ input: this.f32(`layers.${l}.attn_norm`), post: this.f32(`layers.${l}.ffn_norm`) })) };
  }

  flush(trained: Map<string, QuantizedTensor>): void {
    const sink = this.sink!;
    for (const it of this.items) {
      if (it.data) sink.plain(it.name, it.data);
      else sink.linear(it.name, trained.get(hfModuleName(it.name)) ?? it.q!);
    }
    this.items.length = 0;
  }
}

/**
 * Runs a prepared method over `src` into the sink `open(source)` returns; the report of every linear. A method with a
 * whole-model stage gets the model `load()` returns, and the block pass reads the model it transformed (returned too);
 * one with a stage after the block pass (afterBlocks) trains the pass's packed result before the sink sees it.
 */
async function execute(src: BlockSource, p: Prepared, open: (src: BlockSource) => BlockSink, hooks: QuantizeModelHooks, abortNote: string,
  load: () => TrainableLlama): Promise<{ report: QuantizeReport; whole: TrainableLlama | null }> {
  const t0 = performance.now();
  let trainMs = 0;
  const run = p.run;
  let whole: TrainableLlama | null = null;
  if (run.whole) {
    whole = load();
    const t = performance.now();
    try {
      await run.whole.run(whole);
    } catch (e) {
      throw fromNative(e);
    } finally {
      trainMs += performance.now() - t;
    }
    src = modelBlocks(whole);
    p = { ...p, block: planBlockPass(src, run, p.block.options) };
  }
  if (run.endToEnd) {
    const t = performance.now();
    try {
      await run.endToEnd(src);
    } catch (e) {
      throw fromNative(e);  // as prepare(): a method's own native call still ends in a QuantformError
    } finally {
      trainMs += performance.now() - t;
    }
  }
  const block = run.block ? async (b: PipelineBlock): Promise<BlockResult> => {
    const t = performance.now();
    try {
      return await run.block!(b);
    } catch (e) {
      throw fromNative(e);
    } finally {
      trainMs += performance.now() - t;
    }
  } : undefined;
  const sec = () => (performance.now() - t0) / 1000;
  const timing = { readMs: 0 }, written = writeTiming.ms;
  // a stage after the block pass retrains its linears: the sink gets them (and the norms and embeddings, in the
  // order they came) only after it; until then they are held packed
  const deferred = run.afterBlocks ? new DeferredSink() : null;
  let linears: LinearReport[];
  try {
    const forward = run.forward?.bind(run);
    linears = await runBlockPass(src, { needs: run.needs, rewritesNorms: run.rewritesNorms, memory: () => run.memory(), block, forward }, p.block,
      deferred ? () => deferred.open(open(src)) : () => open(src), {
      signal: hooks.signal, abortNote, timing,
      onProgress: (e) => hooks.onProgress?.({ phase: 'quantize', step: e.step, totalSteps: e.totalSteps, loss: NaN, lr: 0, stepsPerSecond: e.step / sec(),
        etaSeconds: ((e.totalSteps - e.step) * sec()) / e.step, layer: e.layer }),
    });
    if (deferred) {
      const t = performance.now();
      try {
        deferred.flush(await run.afterBlocks!(deferred.packed(src)));
      } finally {
        trainMs += performance.now() - t;
      }
    }
  } catch (e) {
    throw fromNative(e);
  }
  const q = p.quant, aq = run.activations?.() ?? null;
  const report: QuantizeReport = { method: p.method.name, bits: q.bits, groupSize: q.groupSize, symmetric: q.symmetric, linears, lossCurve: run.lossCurve().slice(),
    lossCurves: run.lossCurves?.(), trainSeconds: trainMs / 1000, readSeconds: timing.readMs / 1000,
    writeSeconds: (writeTiming.ms - written) / 1000, totalSeconds: sec() };
  if (aq) report.activations = { actBits: aq.actBits, kvBits: aq.kvBits, residualRotation: aq.residualRotation,
    onlineTransforms: (activationConfig(aq).online_transforms as string[] | undefined) ?? [] };
  return { report, whole };
}

/** A method on a model in memory; the result (and the transformed fp32 model) in memory. */
export async function quantizeModel(source: TrainableLlama, opts: QuantizeModelOptions, hooks: QuantizeModelHooks = {}): Promise<QuantizedModel> {
  const t0 = performance.now();
  need.instance(source, TrainableLlama, 'model');
  const src = modelBlocks(source);
  const p = prepare(src, opts, hooks);
  // every tensor, not only the linears quantize() sees: a NaN embedding or norm would train and save silently
  // (a Checkpoint's tensors are checked as checkpointBlocks reads them)
  for (const [name, w, shape] of source.weights()) checkFinite(w, name, shape);
  const linears = new Map<string, QuantizedTensor>();
  const blocks: Float32Array[] = source.blocks.map(() => new Float32Array(0));
  const sink: BlockSink = {
    plain: () => {},
    linear: (name, q) => linears.set(hfModuleName(name), q),
    block: (l, arena) => { blocks[l] = arena.slice(); },
  };
  // a whole-model stage transforms a copy: the caller's model is never modified
  const { report, whole } = await execute(src, p, () => sink, hooks, '', () => source.clone());
  // a stage after the block pass changed the linears: the model holds what they dequantize to
  if (p.run.afterBlocks)
    blocks.forEach((arena, l) => {
      // a method that quantizes tensor by tensor (FPTQuant with RTN weights) hands no arena: the norms are the model's
      const b = arena.length > 0 ? arena : (blocks[l] = (whole ?? source).blocks[l].slice());
      for (const n of LINEARS) {
        const { offset, rows, cols } = blockLayout(source.shape).linears[n];
        dequantize(linears.get(`model.layers.${l}.${HF_LINEAR[n]}`)!, { out: b.subarray(offset, offset + rows * cols) });
      }
    });
  const base = whole ?? source;
  const embed = whole ? whole.embed : source.embed.slice();
  const model = new TrainableLlama(base.shape, embed, whole ? whole.finalNorm : source.finalNorm.slice(),
    base.shape.tied ? embed : whole ? whole.lmHead : source.lmHead.slice(),
    blocks.map((b, l) => (b.length ? b : whole ? whole.blocks[l] : source.blocks[l].slice())), base.hfConfig);
  report.totalSeconds = (performance.now() - t0) / 1000;
  // the map in the order of the model's linears (block by block, arena order), as the report
  const ordered = new Map<string, QuantizedTensor>();
  for (let l = 0; l < source.shape.layers; l++) for (const n of LINEARS) ordered.set(`model.layers.${l}.${HF_LINEAR[n]}`, linears.get(`model.layers.${l}.${HF_LINEAR[n]}`)!);
  const activations = p.run.activations?.() ?? undefined;
  return { model, quant: p.quant, linears: ordered, report, ...(activations ? { activations } : {}) };
}

/** The quantized model as fp32 weights (each linear dequantized), for evaluation. */
export function dequantizedModel(q: QuantizedModel): TrainableLlama {
  needQuantizedModel(q);
  const m = q.model.clone();
  for (let l = 0; l < m.shape.layers; l++)
    for (const n of LINEARS) m.linear(l, n).set(dequantize(q.linears.get(`model.layers.${l}.${HF_LINEAR[n]}`)!).data as Float32Array);
  return m;
}

function quantSpec(o: { bits: Bits; groupSize?: number; symmetric?: boolean }): BlockQuant {
  if (!is.oneOf(o.bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', o.bits, 'QF_UNSUPPORTED_BITS');
  const groupSize = o.groupSize ?? 128;
  if (!is.positiveInteger(groupSize)) throw invalidParameter('positive integer', 'groupSize', groupSize);
  const symmetric = o.symmetric ?? false;
  if (!is.bool(symmetric)) throw invalidParameter('boolean', 'symmetric', symmetric);
  return { bits: o.bits, groupSize, symmetric };
}

export interface StreamHooks extends QuantizeModelHooks {
  /** where the tokenizer comes from, shard size, GPTQ format */
  save?: SaveOptions;
}

/** The tokenizer a saved result carries: the source's files (HF, GPTQ), else its vocabulary as tokenizer.bin (llama2.c, GGUF). */
async function saveOptionsOf(ck: Checkpoint, save: SaveOptions | undefined): Promise<SaveOptions> {
  const tokenizerDir = save?.tokenizerDir ?? tokenizerDirOf(ck);
  return { ...save, tokenizerDir, tokenizer: save?.tokenizer ?? (tokenizerDir ? undefined : await ck.tokenizer()) };
}

/**
 * A method on any runtime Checkpoint, streamed block by block into a GPTQ directory
 * (lib/engine/pipeline.ts): only the current block's weights, the method's working
 * state and the calibration activations (RAM under the budget, a spill file beyond)
 * are held. The directory appears only when complete; on an error or Ctrl-C nothing
 * is left (trainable methods keep their resumable checkpoint).
 */
export async function quantizeCheckpoint(ck: Checkpoint, out: string, opts: QuantizeModelOptions, hooks: StreamHooks = {}): Promise<QuantizeReport> {
  needCheckpoint(ck);
  need.string(out, 'out');
  need.object(hooks, 'hooks');
  if (hooks.save !== undefined) needSaveOptions(hooks.save);
  const src = checkpointBlocks(ck);
  const p = prepare(src, opts, hooks);
  // the tokenizer travels with the output: its files (HF, GPTQ), else its vocabulary as tokenizer.bin (llama2.c, GGUF)
  const save = await saveOptionsOf(ck, hooks.save);
  const rewritten = (name: string) => p.run.rewritesNorms && /^layers\.\d+\.(attn_norm|ffn_norm)$/.test(name);
  let writer: GptqWriter | null = null;
  // `from`: the checkpoint, or the model a whole-model stage transformed (opened after that stage: its activation scales are known)
  const open = (from: BlockSource): BlockSink => {
    writer = new GptqWriter({
      config: from.config, hfConfig: from.hfConfig, quant: p.quant,
      plainDtype: (name) => (rewritten(name) ? 'F32' : from.stored(name).dtype),
      activations: p.run.activations?.() ?? undefined,
    }, out, save);
    const w = writer;
    return { plain: (name, data) => w.writePlain(name, data), linear: (name, q) => w.writeLinear(name, q) };
  };
  const written = writeTiming.ms;
  try {
    // a whole-model stage loads the checkpoint in fp32 (its memory was checked against the budget by prepare())
    const { report } = await execute(src, p, open, hooks, `; nothing was written to ${out}`, () => TrainableLlama.fromCheckpoint(ck));
    writer!.finish(report, p.run.activations?.() ?? undefined);
    // the returned report counts the shards' final fsyncs too (the saved one cannot)
    report.writeSeconds = (writeTiming.ms - written) / 1000;
    return report;
  } catch (e) {
    (writer as GptqWriter | null)?.abort();
    throw e;
  }
}

/**
 * RTN from any runtime Checkpoint straight into a GPTQ directory, one tensor at a
 * time: each linear is read (natively widened to fp32), quantized, packed, written
 * and dropped; norms and embeddings are copied as stored. Peak memory is about
 * ten bytes per weight of the largest linear, whatever the model's size.
 */
export async function quantizeCheckpointRtn(ck: Checkpoint, out: string, opts: { bits: Bits; groupSize?: number; symmetric?: boolean },
  hooks: StreamHooks = {}): Promise<QuantizeReport> {
  needCheckpoint(ck);
  need.string(out, 'out');
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  return quantizeCheckpoint(ck, out, { method: 'rtn', bits: opts.bits, groupSize: opts.groupSize, symmetric: opts.symmetric }, hooks);
}

export interface CheckpointTrainHooks extends StreamHooks {
  /** Checkpoint file (written atomically) and period in steps. */
  checkpoint?: { path: string; every?: number };
  /** Continue from `checkpoint.path`. */
  resume?: boolean;
}

/**
 * EfficientQAT's E2E-QP from a quantized checkpoint (a GPTQ directory) straight into a new
 * GPTQ directory, the model packed throughout: the embedding, norms and LM head are read
 * as fp32, the linears stay as stored (codes, zero points frozen), and only the step sizes
 * and their optimizer state are fp32. Norms and embeddings are copied to the output as stored.
 */
export async function quantizeCheckpointE2eQp(ck: Checkpoint, out: string, opts: { calibration: CalibrationSet; efficientqat?: EfficientQatOptions; seed?: number },
  hooks: CheckpointTrainHooks = {}): Promise<QuantizeReport> {
  const t0 = performance.now();
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  const { model, quant } = packedFromCheckpoint(ck);
  const cal = opts.calibration;
  if (!cal) throw new QuantformError('QF_INVALID_ARGUMENT', 'E2E-QP needs calibration data (options.calibration)');
  if (cal.seqLen > model.shape.maxSeq) throw invalidParameter(`seqLen <= ${model.shape.maxSeq} (the model's context)`, 'seqLen', cal.seqLen);
  for (const id of cal.tokens) if (id < 0 || id >= model.shape.vocab) throw invalidParameter(`token ids in [0, ${model.shape.vocab})`, 'calibration.tokens', id);
  const o = resolveEfficientQat({ ...opts.efficientqat, start: undefined, phases: 'e2e-qp' }, quant.bits);
  if (o.e2eBatchSize > cal.samples)
    throw new QuantformError('QF_INVALID_ARGUMENT', `Calibration holds ${cal.samples} windows, too few for e2eBatchSize ${o.e2eBatchSize}: pass more samples or a smaller batch`);
  const seed = opts.seed ?? 0;
  const ckp = hooks.checkpoint;
  let fp = '';
  if (ckp) {
    const h = createHash('sha256');
    h.update(JSON.stringify({ config: ck.config, quant, efficientqat: o, samples: cal.samples, seqLen: cal.seqLen, seed }));
    h.update(new Uint8Array(model.embed.buffer, model.embed.byteOffset, model.embed.byteLength));
    for (const q of model.linears.values()) h.update(new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength)).update(q.codes);
    h.update(new Uint8Array(cal.tokens.buffer, cal.tokens.byteOffset, cal.tokens.byteLength));
    fp = h.digest('hex');
  }
  if (hooks.resume && !ckp) throw new QuantformError('QF_INVALID_ARGUMENT', 'resume needs a checkpoint path');
  const resume = hooks.resume ? readCheckpoint(ckp!.path, fp) : undefined;
  const curve = resume ? resume.lossCurve.slice() : [];
  const trainer = new Trainer({ onProgress: hooks.onProgress, signal: hooks.signal, checkpoint: ckp ? stateWriter(ckp.path, fp) : undefined,
    checkpointEvery: ckp?.every ?? 100 }, e2eSteps(cal.samples, o));
  const tTrain = performance.now();
  const trained = await trainStepSizes(model, cal, quant, o, {
    k0: resume?.step ?? 0, resumeArena: resume?.arena ?? null, seed,
    after: async (k, loss, lr, arena) => {
      curve.push(loss);
      await trainer.after(k, loss, lr, () => ({ step: k + 1, arena: arena.slice(), lossCurve: curve.slice() }), undefined, 'train', 'e2e-qp');
    },
  });
  const trainSeconds = (performance.now() - tTrain) / 1000;
  const written = writeTiming.ms;
  // norms and embeddings as stored (checked as read), the linears as trained
  const src = checkpointBlocks(ck);
  const writer = new GptqWriter({ config: src.config, hfConfig: src.hfConfig, quant, plainDtype: (name) => src.stored(name).dtype }, out, await saveOptionsOf(ck, hooks.save));
  try {
    for (const name of writer.names)
      if (isQuantizedLinear(name)) writer.writeLinear(name, trained.get(hfModuleName(name))!);
      else writer.writePlain(name, src.stored(name).data());
    const report: QuantizeReport = { method: 'efficientqat', bits: quant.bits, groupSize: quant.groupSize, symmetric: quant.symmetric, linears: [],
      lossCurve: curve, lossCurves: [{ label: 'E2E-QP (cross-entropy)', losses: curve }], trainSeconds, readSeconds: (tTrain - t0) / 1000,
      writeSeconds: (writeTiming.ms - written) / 1000, totalSeconds: (performance.now() - t0) / 1000 };
    writer.finish(report);
    report.writeSeconds = (writeTiming.ms - written) / 1000;
    return report;
  } catch (e) {
    writer.abort();
    throw e;
  }
}

/**
 * A quantizeModel result as a runtime Checkpoint: the block linears are handed to
 * the model packed (they run on the dequant-matmul kernels, as the saved GPTQ
 * directory would), norms and embeddings as transformed by the method.
 */
export function quantizedCheckpoint(q: QuantizedModel, tokenizer: Tokenizer): Checkpoint {
  const src = gptqSourceOf(q);
  need.object(tokenizer, 'tokenizer');
  need.func(tokenizer.encode, 'tokenizer.encode');
  return {
    format: 'memory',
    path: `memory:${q.report.method}-w${q.quant.bits}g${q.quant.groupSize}`,
    config: src.config,
    hfConfig: src.hfConfig,
    weight: (name) => (isQuantizedLinear(name) ? dequantize(src.linear(name)).data as Float32Array : src.plain(name) as Float32Array),
    quantizedWeight: (name) => (isQuantizedLinear(name) ? src.linear(name) : null),
    activationQuant: () => q.activations ?? null,
    tokenizer: async () => tokenizer,
    close: () => {},
  };
}

/** An fp32 training model as a runtime Checkpoint (evaluation of a trained fp32 model). */
export function modelCheckpoint(m: TrainableLlama, tokenizer: Tokenizer): Checkpoint {
  need.instance(m, TrainableLlama, 'model');
  need.object(tokenizer, 'tokenizer');
  need.func(tokenizer.encode, 'tokenizer.encode');
  const config = configOfModel(m);
  return {
    format: 'memory',
    path: 'memory:fp32',
    config,
    hfConfig: m.hfConfig,
    weight: (name) => {
      if (name === 'embed') return m.embed;
      if (name === 'final_norm') return m.finalNorm;
      if (name === 'lm_head') return m.lmHead;
      const [, l, w] = name.split('.');
      if (w === 'attn_norm' || w === 'ffn_norm') return m.norm(Number(l), w === 'attn_norm' ? 'input' : 'post');
      const n = LINEARS.find((x) => RUNTIME_LINEAR[x] === w);
      if (!n) throw new QuantformError('QF_INTERNAL', `No weight ${name} in the model`);
      return m.linear(Number(l), n);
    },
    tokenizer: async () => tokenizer,
    close: () => {},
  };
}

/**
 * `ck` with every block linear RTN-quantized when the runtime asks for it (one at a
 * time, nothing written): the baseline a method is compared against, at any size.
 */
export function rtnCheckpoint(ck: Checkpoint, opts: { bits: Bits; groupSize?: number; symmetric?: boolean }): Checkpoint {
  needCheckpoint(ck);
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  const quant = quantSpec(opts);
  const src = checkpointBlocks(ck);
  const rtn = (name: string) => {
    const [N, K] = weightShape(ck.config, name);
    return rtnLinear(src.readLinear(name), N, K, quant);
  };
  return {
    format: 'memory',
    path: `memory:rtn-w${quant.bits}g${quant.groupSize}:${ck.path}`,
    config: ck.config,
    hfConfig: ck.hfConfig,
    weight: (name) => (isQuantizedLinear(name) ? dequantize(rtn(name)).data as Float32Array : src.weight(name)),
    quantizedWeight: (name) => (isQuantizedLinear(name) ? rtn(name) : null),
    tokenizer: () => ck.tokenizer(),
    close: () => {},
  };
}
