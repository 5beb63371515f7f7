// quantizeModel: the one entry point of model quantization. A registered method
// (lib/methods) transforms the fp32 model exactly (or not at all), then every linear
// is RTN-quantized with f16 scales, the parameters the GPTQ export stores.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { CalibrationSet } from '../engine/calib.js';
import { invalidParameter, is, need, QuantformError } from '../errors.js';
import { readSafetensors, readSafetensorsMetadata, writeSafetensors } from '../io/safetensors.js';
import { getMethod, type ProgressEvent, type TrainOptions, type TrainState } from './index.js';
import { trainStateFromCheckpoint } from './checkpoint.js';
import { checkFinite } from '../ops/finite.js';
import { dequantize, quantize, SUPPORTED_BITS, type Bits, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { blockLayout, HF_LINEAR, LINEARS, TrainableLlama, type BlockQuant } from '../engine/llama.js';
import type { ScheduleKind } from '../engine/optim.js';

export interface QuantizeModelOptions {
  /** A registered method: 'rtn', 'teq'. */
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
  /** ||Q(W) - W|| / ||W|| of plain RTN on the original weight */
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
  trainSeconds: number;
  totalSeconds: number;
}

export interface QuantizedModel {
  /** the transformed fp32 model the linears were quantized from (norms already merged) */
  model: TrainableLlama;
  quant: BlockQuant;
  /** HF linear names (model.layers.<l>.self_attn.q_proj ...) -> RTN-quantized weight */
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
  h.update(JSON.stringify({ shape: model.shape, method: o.method, quant, train: t, samples: o.calibration?.samples, seqLen: o.calibration?.seqLen }));
  h.update(new Uint8Array(model.embed.buffer, model.embed.byteOffset, model.embed.byteLength));
  for (const b of model.blocks) h.update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
  if (o.calibration) h.update(new Uint8Array(o.calibration.tokens.buffer, o.calibration.tokens.byteOffset, o.calibration.tokens.byteLength));
  return h.digest('hex');
}

function readCheckpoint(file: string, expect: string): TrainState {
  if (!existsSync(file)) throw new QuantformError('QF_IO', `No checkpoint to resume at ${file}`);
  const t = readSafetensors(file);
  const meta = readSafetensorsMetadata(file);
  if (meta.fingerprint !== expect)
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `Checkpoint ${file} was written for another model, calibration set or configuration: it cannot be resumed with these options`);
  return trainStateFromCheckpoint(file, meta, t.get('arena'));
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
  if (!is.oneOf(opts.bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', opts.bits, 'QF_UNSUPPORTED_BITS');
  const groupSize = opts.groupSize ?? 128;
  if (!is.positiveInteger(groupSize)) throw invalidParameter('positive integer', 'groupSize', groupSize);
  const symmetric = opts.symmetric ?? false;
  if (!is.bool(symmetric)) throw invalidParameter('boolean', 'symmetric', symmetric);
  const quant: BlockQuant = { bits: opts.bits, groupSize, symmetric };
  const train = resolveTrain(opts);
  const cal = opts.calibration;
  if (method.needsCalibration && !cal) throw new QuantformError('QF_INVALID_ARGUMENT', `Method '${method.name}' needs calibration data (options.calibration)`);
  if (cal && cal.seqLen > source.shape.maxSeq)
    throw invalidParameter(`seqLen <= ${source.shape.maxSeq} (the model's context)`, 'seqLen', cal.seqLen);
  if (cal) for (const id of cal.tokens) if (id < 0 || id >= source.shape.vocab) throw invalidParameter(`token ids in [0, ${source.shape.vocab})`, 'calibration.tokens', id);

  // every tensor, not only the linears quantize() sees: a NaN embedding or norm would train and save silently
  for (const [name, t] of source.tensors()) checkFinite(t.data as Float32Array, name, t.shape);
  const model = source.clone();
  const ck = hooks.checkpoint;
  const fp = ck ? fingerprint(source, opts, train, quant) : '';
  const resume = hooks.resume ? readCheckpoint(ck?.path ?? '', fp) : undefined;
  if (hooks.resume && !ck) throw new QuantformError('QF_INVALID_ARGUMENT', 'resume needs a checkpoint path');
  const tTrain = performance.now();
  const res = await method.prepare(model, {
    quant, calibration: cal, train, onProgress: hooks.onProgress, signal: hooks.signal, checkpointEvery: ck?.every ?? 100, resume,
    checkpoint: ck ? async (s: TrainState) => {
      writeSafetensors(ck.path, new Map([['arena', { dtype: 'F32', shape: [s.arena.length], data: s.arena }]]),
        { fingerprint: fp, step: String(s.step), lossCurve: JSON.stringify(s.lossCurve) });
    } : undefined,
  });
  const trainSeconds = (performance.now() - tTrain) / 1000;

  const linears = new Map<string, QuantizedTensor>();
  const reports: LinearReport[] = [];
  const lay = blockLayout(model.shape);
  for (let l = 0; l < model.shape.layers; l++)
    for (const n of LINEARS) {
      const name = `model.layers.${l}.${HF_LINEAR[n]}`;
      const { rows, cols } = lay.linears[n];
      const w = model.linear(l, n).slice();
      const q = quantize(new Tensor(w, [rows, cols]), { bits: quant.bits, groupSize: Math.min(groupSize, cols), symmetric, paramDtype: 'f16' });
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
    report: { method: method.name, bits: quant.bits, groupSize, symmetric, linears: reports, lossCurve: res.lossCurve, trainSeconds, totalSeconds: (performance.now() - t0) / 1000 },
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
