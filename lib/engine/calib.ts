// Calibration data: text -> token windows. Documents are encoded one by one with
// the model's tokenizer (BOS first, as the evaluation protocol encodes them),
// concatenated into one stream, and N windows of L tokens start at seeded random
// offsets. The same file, tokenizer, N, L and seed always give the same windows.
import { readFileSync } from 'node:fs';
import { invalidParameter, is, need, QuantformError } from '../errors.js';

export interface CalibrationOptions {
  /** Number of windows. Default 128. */
  samples?: number;
  /** Tokens per window. Default 256. */
  seqLen?: number;
  /** Seed of the window offsets. Default 0. */
  seed?: number;
  /**
   * Documents separated by this marker are encoded separately. Default
   * '<|endoftext|>' when the text holds it, else the whole file is one document.
   */
  separator?: string;
  /**
   * Leading documents to leave out, so calibration text stays disjoint from
   * evaluation text taken from the start of the same file. Default 0.
   */
  skipDocuments?: number;
}

export interface CalibrationSet {
  /** (samples, seqLen) */
  tokens: Int32Array;
  samples: number;
  seqLen: number;
  /** length of the token stream the windows were drawn from */
  streamLength: number;
}

/** A CalibrationSet handed in by a caller (plain JS): its fields typed and consistent. */
export function needCalibration(cal: unknown, name = 'calibration'): asserts cal is CalibrationSet {
  need.object(cal, name);
  const c = cal as Record<string, unknown>;
  need.positiveInteger(c.samples, `${name}.samples`);
  need.positiveInteger(c.seqLen, `${name}.seqLen`);
  need.instance(c.tokens, Int32Array, `${name}.tokens`);
  const n = (c.samples as number) * (c.seqLen as number);
  if ((c.tokens as Int32Array).length !== n)
    throw invalidParameter(`Int32Array of samples * seqLen = ${n} ids`, `${name}.tokens`, c.tokens, 'QF_SHAPE_MISMATCH');
}

/** mulberry32: small, seedable, and the same on every platform */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function calibrationFromText(text: string, encode: (doc: string) => number[], opts: CalibrationOptions = {}): CalibrationSet {
  if (!is.string(text)) throw invalidParameter('string', 'text', text);
  need.func(encode, 'encode');
  need.object(opts, 'options');
  if (opts.separator !== undefined) need.string(opts.separator, 'separator');
  const samples = opts.samples ?? 128, seqLen = opts.seqLen ?? 256, seed = opts.seed ?? 0, skip = opts.skipDocuments ?? 0;
  if (!is.positiveInteger(samples)) throw invalidParameter('positive integer', 'samples', samples);
  if (!is.positiveInteger(seqLen)) throw invalidParameter('positive integer', 'seqLen', seqLen);
  if (!is.nonNegativeInteger(seed)) throw invalidParameter('non-negative integer', 'seed', seed);
  if (!is.nonNegativeInteger(skip)) throw invalidParameter('non-negative integer', 'skipDocuments', skip);
  const sep = opts.separator ?? (text.includes('<|endoftext|>') ? '<|endoftext|>' : undefined);
  const docs = (sep ? text.split(sep) : [text]).map((d) => d.trim()).filter((d) => d.length > 0).slice(skip);
  const stream: number[] = [];
  for (const d of docs) {
    const ids = encode(d);
    if (!Array.isArray(ids)) throw invalidParameter('array of token ids', 'encode(text) result', ids);
    for (const id of ids) {
      if (!is.nonNegativeInteger(id)) throw invalidParameter('non-negative integer token ids', 'encode(text) result', id);
      stream.push(id);
    }
  }
  if (stream.length < seqLen)
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `Calibration text is too short: ${stream.length} tokens${skip ? ` after skipping ${skip} documents` : ''}, but one sequence needs seqLen = ${seqLen}`);
  const rand = seededRandom(seed);
  const tokens = new Int32Array(samples * seqLen);
  const span = stream.length - seqLen + 1;
  for (let s = 0; s < samples; s++) {
    const off = Math.floor(rand() * span);
    for (let t = 0; t < seqLen; t++) tokens[s * seqLen + t] = stream[off + t];
  }
  return { tokens, samples, seqLen, streamLength: stream.length };
}

export function calibrationFromFile(file: string, encode: (doc: string) => number[], opts: CalibrationOptions = {}): CalibrationSet {
  need.string(file, 'file');
  need.func(encode, 'encode');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read calibration file ${file}: ${(e as Error).message}`, { cause: e });
  }
  return calibrationFromText(text, encode, opts);
}

/** Deterministic batch order: epoch e visits the samples in a seeded permutation; the windows of step `step`. */
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
