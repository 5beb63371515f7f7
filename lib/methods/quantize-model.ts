// quantizeModel: the one entry point of model quantization. A registered method
// (lib/methods) transforms the fp32 model exactly (or not at all), then every linear
// the method did not quantize itself (MethodResult.linears) is RTN-quantized with
// f16 scales, the parameters the GPTQ export stores.
// quantizeCheckpointRtn: RTN streamed straight from any checkpoint to a GPTQ
// directory, one tensor at a time (read, quantize, write, drop), for models larger
// than memory. quantizedCheckpoint: a result as a runtime Checkpoint, so the one
// evaluator (lib/eval) scores it on the INT4 kernels without writing it first.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { CalibrationSet } from '../engine/calib.js';
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { readSafetensors, readSafetensorsMetadata, writeSafetensors } from '../io/safetensors.js';
import { getMethod, type MethodResult, type ProgressEvent, type TrainOptions, type TrainState } from './index.js';
import { trainStateFromCheckpoint } from './checkpoint.js';
import { checkFinite } from '../ops/finite.js';
import { dequantize, quantize, SUPPORTED_BITS, type Bits, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { blockLayout, HF_LINEAR, LINEARS, RUNTIME_LINEAR, TrainableLlama, type BlockQuant } from '../engine/llama.js';
import type { ScheduleKind } from '../engine/optim.js';
import { configOf, GptqWriter, gptqSourceOf, isQuantizedLinear, needSaveOptions, tokenizerDirOf, type GptqSource, type SaveOptions } from '../export/save.js';
import { FLOAT_DTYPES, readRaw, readTensor, type StoredTensor } from '../io/tensors.js';
import { needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { hfConfigFromLlama, needConfig, weightNames, weightShape, type LlamaConfig } from '../model/config.js';
import { hfModuleName } from '../model/hf.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { GptqMethodOptions } from './gptq.js';
import { e2eSteps, packedFromCheckpoint, resolveEfficientQat, trainStepSizes, type EfficientQatOptions } from './efficientqat.js';
import { Trainer } from './teq.js';

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
}

export interface LinearReport {
  name: string;
  shape: [number, number];
  /** ||Q(W) - W|| / ||W|| of plain RTN on the original weight (streamed RTN: on 2^20 weights in 16 row blocks above 2^21) */
  errorBefore: number;
  /** the same for the quantized result, measured in the original function space (scales undone) */
  errorAfter: number;
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
  totalSeconds: number;
}

export interface QuantizedModel {
  /** the transformed fp32 model the linears were quantized from (norms already merged) */
  model: TrainableLlama;
  quant: BlockQuant;
  /** HF linear names (model.layers.<l>.self_attn.q_proj ...) -> quantized weight (RTN, or the method's own) */
  linears: Map<string, QuantizedTensor>;
  report: QuantizeReport;
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

/** What a checkpoint must match to be resumed: the model's weights, shapes and the whole configuration. */
function fingerprint(model: TrainableLlama, o: QuantizeModelOptions, t: TrainOptions, quant: BlockQuant): string {
  const h = createHash('sha256');
  const { start, ...eqat } = o.efficientqat ?? {};
  h.update(JSON.stringify({ shape: model.shape, method: o.method, quant, train: t, samples: o.calibration?.samples, seqLen: o.calibration?.seqLen,
    gptq: o.gptq, efficientqat: eqat }));
  for (const q of start?.values() ?? []) h.update(new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength)).update(q.codes);
  h.update(new Uint8Array(model.embed.buffer, model.embed.byteOffset, model.embed.byteLength));
  for (const b of model.blocks) h.update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
  if (o.calibration) h.update(new Uint8Array(o.calibration.tokens.buffer, o.calibration.tokens.byteOffset, o.calibration.tokens.byteLength));
  return h.digest('hex');
}

/** Writes training state atomically (safetensors: 'arena' and the named tensors; step, loss curve and fingerprint as metadata). */
function stateWriter(file: string, fingerprint: string): (s: TrainState) => Promise<void> {
  return async (s) => {
    const tensors = new Map([['arena', { dtype: 'F32' as const, shape: [s.arena.length], data: s.arena }]]);
    for (const [k, v] of s.tensors ?? []) tensors.set(k, { dtype: 'F32', shape: [v.length], data: v });
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

function relError(a: Float32Array, b: Float32Array): number {
  let e = 0, d = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i] - b[i]) ** 2;
    d += b[i] ** 2;
  }
  return Math.sqrt(e / Math.max(d, 1e-30));
}

export async function quantizeModel(source: TrainableLlama, opts: QuantizeModelOptions, hooks: QuantizeModelHooks = {}): Promise<QuantizedModel> {
  const t0 = performance.now();
  need.instance(source, TrainableLlama, 'model');
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  need.object(hooks, 'hooks');
  if (hooks.onProgress !== undefined) need.func(hooks.onProgress, 'hooks.onProgress');
  if (hooks.checkpoint !== undefined) { need.object(hooks.checkpoint, 'hooks.checkpoint'); need.string(hooks.checkpoint.path, 'hooks.checkpoint.path'); }
  const method = getMethod(opts.method);
  const quant = quantSpec(opts);
  const { groupSize, symmetric } = quant;
  const train = resolveTrain(opts);
  const cal = opts.calibration;
  if (method.needsCalibration && !cal) throw new QuantformError('QF_INVALID_ARGUMENT', `Method '${method.name}' needs calibration data (options.calibration)`);
  if (cal && cal.seqLen > source.shape.maxSeq)
    throw invalidParameter(`seqLen <= ${source.shape.maxSeq} (the model's context)`, 'seqLen', cal.seqLen);
  if (cal) for (const id of cal.tokens) if (id < 0 || id >= source.shape.vocab) throw invalidParameter(`token ids in [0, ${source.shape.vocab})`, 'calibration.tokens', id);

  // every tensor, not only the linears quantize() sees: a NaN embedding or norm would train and save silently
  for (const [name, w, shape] of source.weights()) checkFinite(w, name, shape);
  const model = source.clone();
  const ck = hooks.checkpoint;
  const fp = ck ? fingerprint(source, opts, train, quant) : '';
  const resume = hooks.resume ? readCheckpoint(ck?.path ?? '', fp) : undefined;
  if (hooks.resume && !ck) throw new QuantformError('QF_INVALID_ARGUMENT', 'resume needs a checkpoint path');
  const tTrain = performance.now();
  let res: MethodResult;
  try {
    res = await method.prepare(model, {
      quant, calibration: cal, train, onProgress: hooks.onProgress, signal: hooks.signal, checkpointEvery: ck?.every ?? 100, resume, gptq: opts.gptq,
      efficientqat: opts.efficientqat,
      checkpoint: ck ? stateWriter(ck.path, fp) : undefined,
    });
  } catch (e) {
    // a method (registered by name, possibly a user's) that calls the binding directly and
    // lets its error through still ends in a QuantformError with the native code
    throw fromNative(e);
  }
  const trainSeconds = (performance.now() - tTrain) / 1000;

  const linears = new Map<string, QuantizedTensor>();
  const reports: LinearReport[] = [];
  const lay = blockLayout(model.shape);
  for (let l = 0; l < model.shape.layers; l++)
    for (const n of LINEARS) {
      const name = `model.layers.${l}.${HF_LINEAR[n]}`;
      const { rows, cols } = lay.linears[n];
      const w = model.linear(l, n).slice();
      // a method that quantized this linear itself (GPTQ) keeps its codes and scales
      const own = res.linears?.get(name);
      if (own && (own.shape[0] !== rows || own.shape[1] !== cols || own.bits !== quant.bits || own.symmetric !== symmetric || own.groupSize !== Math.min(groupSize, cols)))
        throw new QuantformError('QF_INTERNAL', `Method '${method.name}' returned ${name} as [${own.shape}] INT${own.bits} g${own.groupSize}, not [${rows}, ${cols}] INT${quant.bits} g${Math.min(groupSize, cols)}`);
      const q = own ?? quantize(new Tensor(w, [rows, cols]), { bits: quant.bits, groupSize: Math.min(groupSize, cols), symmetric, paramDtype: 'f16' });
      linears.set(name, q);
      const orig = source.linear(l, n);
      const before = dequantize(quantize(new Tensor(orig.slice(), [rows, cols]), { bits: quant.bits, groupSize: Math.min(groupSize, cols), symmetric, paramDtype: 'f16' })).data as Float32Array;
      const after = dequantize(q).data as Float32Array;
      const sc = res.inputScales?.get(name), rsc = res.outputScales?.get(name);
      if (sc) for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) after[r * cols + k] /= sc[k];
      if (rsc) for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) after[r * cols + k] *= rsc[r];
      reports.push({ name, shape: [rows, cols], errorBefore: relError(before, orig), errorAfter: relError(after, orig) });
      hooks.onProgress?.({ phase: 'quantize', step: reports.length, totalSteps: model.shape.layers * LINEARS.length, loss: NaN, lr: 0, stepsPerSecond: 0, etaSeconds: 0, layer: l });
    }
  return {
    model, quant, linears,
    report: { method: method.name, bits: quant.bits, groupSize, symmetric, linears: reports, lossCurve: res.lossCurve, lossCurves: res.lossCurves, trainSeconds,
      totalSeconds: (performance.now() - t0) / 1000 },
  };
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

/**
 * ||dequant(q) - w|| / ||w||, on evenly spaced blocks of about 2^20 weights in all
 * when the matrix is larger: the report then costs a few percent of quantizing
 * instead of doubling it, and blocks of whole rows keep the estimate unbiased
 * across row-wise outliers.
 */
function sampledRelError(q: QuantizedTensor, w: Float32Array): number {
  const [N, K] = q.shape;
  const G = q.numGroups, rowBytes = q.codes.length / N;
  const chunks = N * K <= 1 << 21 ? 1 : 16;
  const rowsPer = chunks === 1 ? N : Math.max(1, Math.floor((1 << 20) / K / chunks));
  let e = 0, d = 0;
  for (let c = 0; c < chunks; c++) {
    const r0 = chunks === 1 ? 0 : Math.floor((c * (N - rowsPer)) / (chunks - 1)), r1 = Math.min(N, r0 + rowsPer);
    const part = new QuantizedTensor(q.codes.subarray(r0 * rowBytes, r1 * rowBytes), q.scales.subarray(r0 * G, r1 * G),
      q.zeros ? q.zeros.subarray(r0 * G, r1 * G) : null, [r1 - r0, K], q.bits, q.groupSize, q.symmetric, q.paramDtype);
    const back = dequantize(part).data as Float32Array;
    for (let i = 0, o = r0 * K; i < back.length; i++, o++) {
      e += (back[i] - w[o]) ** 2;
      d += w[o] ** 2;
    }
  }
  return Math.sqrt(e / Math.max(d, 1e-30));
}

/** The NaN/Inf check of a float tensor copied as stored (F32, F16 or BF16 bytes). */
function checkStoredFinite(raw: Buffer, t: StoredTensor, what: string): void {
  // typed views need an aligned offset: small reads come from Buffer's shared pool
  const bytes = raw.byteOffset % 4 === 0 ? raw : new Uint8Array(raw);
  const view = t.dtype === 'F32' ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  checkFinite(view, what, t.shape, t.dtype === 'F32' ? 'f32' : t.dtype === 'F16' ? 'f16' : 'bf16');
}

export interface StreamHooks {
  onProgress?: (e: ProgressEvent) => void;
  /** Ctrl-C: stops after the tensor being written with QF_ABORTED; nothing is left behind */
  signal?: AbortSignal;
  /** where the tokenizer comes from, shard size, GPTQ format */
  save?: SaveOptions;
}

/** A checkpoint's norms and embeddings for a GPTQ writer: stored float tensors in kernel order byte for byte, anything else as fp32. */
function storedPlain(ck: Checkpoint): Pick<GptqSource, 'config' | 'hfConfig' | 'plainDtype' | 'plain'> {
  const stored = (name: string) => {
    const s = ck.tensorSource?.(name) ?? null;
    return s && !s.dstRow && FLOAT_DTYPES.includes(s.tensor.dtype) ? s.tensor : null;
  };
  return {
    config: ck.config,
    hfConfig: ck.hfConfig ?? hfConfigFromLlama(ck.config),
    plainDtype: (name) => (stored(name)?.dtype ?? 'F32') as 'F32' | 'F16' | 'BF16',
    plain: (name) => {
      const t = stored(name);
      if (!t) {
        const w = ck.weight(name);
        checkFinite(w, `${ck.path}: ${name}`, weightShape(ck.config, name));
        return w;
      }
      const raw = readRaw(t);
      checkStoredFinite(raw, t, `${ck.path}: ${name}`);
      return raw;
    },
  };
}

/** The tokenizer a saved result carries: the source's files (HF, GPTQ), else its vocabulary as tokenizer.bin (llama2.c, GGUF). */
async function saveOptionsOf(ck: Checkpoint, save: SaveOptions | undefined): Promise<SaveOptions> {
  const tokenizerDir = save?.tokenizerDir ?? tokenizerDirOf(ck);
  return { ...save, tokenizerDir, tokenizer: save?.tokenizer ?? (tokenizerDir ? undefined : await ck.tokenizer()) };
}

/**
 * RTN from any runtime Checkpoint straight into a GPTQ directory, one tensor at a
 * time: each linear is read (natively widened to fp32), quantized, packed, written
 * and dropped; norms and embeddings are copied as stored. Peak memory is about
 * ten bytes per weight of the largest linear, whatever the model's size.
 */
export async function quantizeCheckpointRtn(ck: Checkpoint, out: string, opts: { bits: Bits; groupSize?: number; symmetric?: boolean },
  hooks: StreamHooks = {}): Promise<QuantizeReport> {
  const t0 = performance.now();
  needCheckpoint(ck);
  need.string(out, 'out');
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  need.object(hooks, 'hooks');
  if (hooks.onProgress !== undefined) need.func(hooks.onProgress, 'hooks.onProgress');
  if (hooks.signal !== undefined) need.instance(hooks.signal, AbortSignal, 'hooks.signal');
  if (hooks.save !== undefined) needSaveOptions(hooks.save);
  const quant = quantSpec(opts);
  const reports: LinearReport[] = [];
  let scratch = new Float32Array(0);
  const src: GptqSource = {
    ...storedPlain(ck),
    quant,
    linear: (name) => {
      const [N, K] = weightShape(ck.config, name);
      const s = ck.tensorSource?.(name) ?? null;
      // one fp32 buffer for every linear: a fresh 180 MB array per 7B linear would fault its pages in each time
      if (s && scratch.length < N * K) scratch = new Float32Array(N * K);
      const w = s ? readTensor(s.tensor, { dstRow: s.dstRow, out: scratch.subarray(0, N * K) }) : ck.weight(name);
      checkFinite(w, `${ck.path}: ${name}`, [N, K]);
      const q = quantize(new Tensor(w, [N, K]), { bits: quant.bits, groupSize: Math.min(quant.groupSize, K), symmetric: quant.symmetric, paramDtype: 'f16' });
      const err = sampledRelError(q, w);
      reports.push({ name: hfModuleName(name), shape: [N, K], errorBefore: err, errorAfter: err });
      return q;
    },
  };
  const writer = new GptqWriter(src, out, await saveOptionsOf(ck, hooks.save));
  try {
    const total = writer.names.length;
    for (let i = 1, name = writer.step(); name !== null; i++, name = writer.step()) {
      const sec = (performance.now() - t0) / 1000;
      const layer = /^layers\.(\d+)\./.exec(name);
      hooks.onProgress?.({ phase: 'quantize', step: i, totalSteps: total, loss: NaN, lr: 0, stepsPerSecond: i / sec, etaSeconds: ((total - i) * sec) / i,
        layer: layer ? Number(layer[1]) : undefined });
      if (hooks.signal?.aborted) throw new QuantformError('QF_ABORTED', `Quantization interrupted after ${i} of ${total} tensors; nothing was written to ${out}`);
      await new Promise((r) => setImmediate(r));  // lets Ctrl-C and progress output through between tensors
    }
    const totalSeconds = (performance.now() - t0) / 1000;
    const report: QuantizeReport = { method: 'rtn', bits: quant.bits, groupSize: quant.groupSize, symmetric: quant.symmetric, linears: reports, lossCurve: [], trainSeconds: 0, totalSeconds };
    writer.finish(report);
    return report;
  } catch (e) {
    writer.abort();
    throw e;
  }
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
      await trainer.after(k, loss, lr, () => ({ step: k + 1, arena: arena.slice(), lossCurve: curve.slice() }), undefined, 'e2e-qp');
    },
  });
  const trainSeconds = (performance.now() - tTrain) / 1000;
  const writer = new GptqWriter({ ...storedPlain(ck), quant, linear: (name) => trained.get(hfModuleName(name))! }, out, await saveOptionsOf(ck, hooks.save));
  try {
    while (writer.step() !== null);
    const report: QuantizeReport = { method: 'efficientqat', bits: quant.bits, groupSize: quant.groupSize, symmetric: quant.symmetric, linears: [],
      lossCurve: curve, lossCurves: [{ label: 'E2E-QP (cross-entropy)', losses: curve }], trainSeconds, totalSeconds: (performance.now() - t0) / 1000 };
    writer.finish(report);
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
    tokenizer: async () => tokenizer,
    close: () => {},
  };
}

/** An fp32 training model as a runtime Checkpoint (evaluation of a trained fp32 model). */
export function modelCheckpoint(m: TrainableLlama, tokenizer: Tokenizer): Checkpoint {
  need.instance(m, TrainableLlama, 'model');
  need.object(tokenizer, 'tokenizer');
  need.func(tokenizer.encode, 'tokenizer.encode');
  const config = configOf(m);
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

export interface MemoryNeed {
  bytes: number;
  /** what is held at the peak, in words, for errors and logs */
  what: string;
}

/**
 * The memory one step of quantization holds at its peak (weights, their packed
 * form, training state): what --max-memory must at least allow. RTN streams one
 * linear at a time; TEQ trains the whole model in fp32 until the block-wise
 * trainer streams blocks.
 */
export function memoryNeed(cfg: LlamaConfig, method: string, train: { samples?: number; seqLen?: number; batchSize?: number } = {}): MemoryNeed {
  needConfig(cfg);
  need.string(method, 'method');
  need.object(train, 'train');
  for (const k of ['samples', 'seqLen', 'batchSize'] as const) if (train[k] !== undefined) need.positiveInteger(train[k], `train.${k}`);
  const gb = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`);
  if (method === 'rtn') {
    let worst = { name: '', n: 0 };
    for (const name of weightNames(cfg)) {
      const n = weightShape(cfg, name).reduce((a, b) => a * b, 1);
      if (n > worst.n) worst = { name, n };
    }
    // fp32 weight + its dequantized copy (error report) + one byte per code while packing + packed codes
    const bytes = worst.n * 10;
    return { bytes, what: `RTN holds one tensor at a time; the largest, ${worst.name} [${weightShape(cfg, worst.name).join(', ')}], needs ${gb(bytes)}` };
  }
  const params = weightNames(cfg).reduce((a, n) => a + weightShape(cfg, n).reduce((x, y) => x * y, 1), 0);
  const T = (train.batchSize ?? 2) * (train.seqLen ?? 256);
  // source + working copy of every weight, Adam state for the scales, one block's activations and the logits
  const acts = T * (cfg.dim * 16 + cfg.hiddenDim * 4 + cfg.vocabSize * 2) * 4;
  const bytes = params * 8 + acts;
  return { bytes, what: `${method} holds the whole model in fp32 (${(params / 1e6).toFixed(1)}M parameters, source and working copy) plus activations of ${T} tokens: ${gb(bytes)}` };
}
