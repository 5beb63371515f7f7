// The one safetensors reader and writer (https://github.com/huggingface/safetensors:
// u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets}}
// plus optional "__metadata__" strings, then the raw little-endian data).
//
// Reading is lazy: a header is parsed and every byte range validated before any
// tensor is read, and tensors are then fetched one at a time by positional reads
// (lib/io/tensors.ts), so a sharded 70B checkpoint opens in milliseconds and is
// never held whole. Writing plans every byte offset up front, so tensors can be
// written one by one as they are produced (and dropped), into one file or into
// shards of at most maxShardBytes with a model.safetensors.index.json, as
// Hugging Face lays them out. Written here rather than taken from npm: the
// packages on the registry either pull in a tensor library or do not write.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { AtomicFile } from './atomic.js';
import { CheckpointFile } from './file.js';
import { parseJsonObject } from './json.js';
import { DTYPE_BYTES, numel, readRaw, validateLayout, type StoredDType, type StoredTensor } from './tensors.js';

/** Headers beyond this are refused before allocation (real ones are a few MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Hugging Face's default shard size (save_pretrained max_shard_size "5GB"). */
export const DEFAULT_MAX_SHARD_BYTES = 5e9;

export interface SafetensorsHeader {
  tensors: StoredTensor[];
  /** the __metadata__ strings (empty when absent) */
  metadata: Record<string, string>;
}

/** Parses one .safetensors file's header (no tensor bytes read); every range validated. */
export function parseSafetensorsHeader(file: CheckpointFile): SafetensorsHeader {
  need.instance(file, CheckpointFile, 'file');
  if (file.size < 8) throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: ${file.size} bytes is too short for a safetensors header length`);
  const len64 = file.read(0, 8, 'header length').readBigUInt64LE(0);
  if (len64 > BigInt(file.size - 8))
    throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header length ${len64} runs past the end of the file (${file.size} bytes)`);
  const len = Number(len64);
  if (len > MAX_HEADER_BYTES) throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header length ${len} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const header = parseJsonObject(file.read(8, len, 'header').toString('utf8'), `${file.path}: header`);
  const dataStart = 8 + len;
  const tensors: StoredTensor[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Object.values(v).some((x) => typeof x !== 'string'))
        throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: __metadata__ must map names to strings`);
      metadata = v as Record<string, string>;
      continue;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' is described by ${JSON.stringify(v)}, not an object`);
    const info = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = String(info.dtype);
    // own keys only: 'constructor' or 'toString' is not a dtype
    if (!Object.hasOwn(DTYPE_BYTES, dtype))
      throw new QuantformError('QF_UNSUPPORTED', `${file.path}: tensor '${name}' has dtype ${JSON.stringify(info?.dtype)}, which is not a safetensors dtype (${Object.keys(DTYPE_BYTES).join(', ')})`);
    if (!Array.isArray(info.shape) || !Array.isArray(info.data_offsets) || info.data_offsets.length !== 2)
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' lacks a shape or data_offsets pair`);
    if (!info.shape.every((d) => typeof d === 'number'))
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' has a shape of non-numbers ${JSON.stringify(info.shape).slice(0, 80)}`);
    const [b, e] = info.data_offsets as number[];
    if (!Number.isSafeInteger(b) || !Number.isSafeInteger(e) || b < 0 || e < b)
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' has invalid data_offsets [${String(b)}, ${String(e)}]`);
    tensors.push({ name, shape: info.shape as number[], dtype: dtype as StoredDType, file, offset: dataStart + b, nbytes: e - b });
  }
  validateLayout(tensors);
  return { tensors, metadata };
}

/** The tensors of one .safetensors file's header (no tensor bytes read). */
export function readSafetensorsHeader(file: CheckpointFile): StoredTensor[] {
  need.instance(file, CheckpointFile, 'file');
  return parseSafetensorsHeader(file).tensors;
}

/**
 * A safetensors checkpoint opened lazily: one file, or the shards a
 * model.safetensors.index.json lists. Tensors are looked up by name and read on
 * demand; close() releases the files.
 */
export class SafetensorsCheckpointFiles {
  readonly tensors = new Map<string, StoredTensor>();
  /** __metadata__ of the first file */
  readonly metadata: Record<string, string>;
  readonly files: CheckpointFile[] = [];

  private constructor(files: string[], what: string, expected?: Map<string, string>) {
    if (!Array.isArray(files) || files.length === 0 || !files.every((f) => is.string(f) && f.length > 0))
      throw invalidParameter('non-empty array of file paths (use SafetensorsCheckpointFiles.file or .dir)', 'files', files);
    let metadata: Record<string, string> | null = null;
    try {
      for (const f of files) {
        const file = new CheckpointFile(f);
        this.files.push(file);
        const h = parseSafetensorsHeader(file);
        metadata ??= h.metadata;
        for (const t of h.tensors) {
          const prev = this.tensors.get(t.name);
          if (prev) throw new QuantformError('QF_CORRUPT_FILE', `${f}: tensor '${t.name}' also appears in ${prev.file.path}`);
          this.tensors.set(t.name, t);
        }
      }
      if (expected)
        for (const [name, shard] of expected) {
          const t = this.tensors.get(name);
          if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${what}: maps tensor '${name}' to ${shard}, which does not hold it`);
          if (path.basename(t.file.path) !== shard)
            throw new QuantformError('QF_CORRUPT_FILE', `${what}: maps tensor '${name}' to ${shard} but it is in ${path.basename(t.file.path)}`);
        }
    } catch (e) {
      this.close();
      throw e;
    }
    this.metadata = metadata ?? {};
  }

  /** One .safetensors file. */
  static file(file: string): SafetensorsCheckpointFiles {
    need.string(file, 'file');
    return new SafetensorsCheckpointFiles([file], file);
  }

  /**
   * A directory holding `${base}.safetensors`, or shards listed in
   * `${base}.safetensors.index.json` (every shard must exist and hold what the index says).
   */
  static dir(dir: string, base = 'model'): SafetensorsCheckpointFiles {
    need.string(dir, 'dir');
    need.string(base, 'base');
    const single = path.join(dir, `${base}.safetensors`), index = path.join(dir, `${base}.safetensors.index.json`);
    if (existsSync(single)) return new SafetensorsCheckpointFiles([single], single);
    if (!existsSync(index)) throw new QuantformError('QF_IO', `${dir}: neither ${base}.safetensors nor ${base}.safetensors.index.json exists`);
    let text: string;
    try {
      text = readFileSync(index, 'utf8');
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot read ${index}: ${(e as Error).message}`, { cause: e });
    }
    const map = parseJsonObject(text, index).weight_map;
    if (!map || typeof map !== 'object' || Array.isArray(map)) throw new QuantformError('QF_CORRUPT_FILE', `${index}: missing weight_map`);
    const entries = Object.entries(map as Record<string, unknown>);
    const shards: string[] = [];
    for (const [name, s] of entries) {
      if (typeof s !== 'string' || s.length === 0 || s.includes('/') || s.includes('\\') || s === '.' || s === '..')
        throw new QuantformError('QF_CORRUPT_FILE', `${index}: tensor '${name}' maps to ${JSON.stringify(s)}; shard names must be plain file names in ${dir}`);
      if (!shards.includes(s)) {
        if (!existsSync(path.join(dir, s)))
          throw new QuantformError('QF_IO', `${index}: names shard ${s} (for tensor '${name}'), which does not exist in ${dir}`);
        shards.push(s);
      }
    }
    return new SafetensorsCheckpointFiles(shards.map((s) => path.join(dir, s)), index, new Map(entries as [string, string][]));
  }

  get(name: string): StoredTensor | undefined {
    return this.tensors.get(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

export type SafeDType = 'F32' | 'F16' | 'BF16' | 'I32';
export type SafeData = Float32Array | Uint16Array | Int32Array;

export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  data: SafeData;
}

/** A whole (small) file in memory: training checkpoints, tests. Large checkpoints go through SafetensorsCheckpointFiles. */
export function readSafetensors(file: string): Map<string, SafeTensor> {
  need.string(file, 'file');
  const st = SafetensorsCheckpointFiles.file(file);
  try {
    const out = new Map<string, SafeTensor>();
    for (const t of st.tensors.values()) {
      if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16' && t.dtype !== 'I32')
        throw new QuantformError('QF_UNSUPPORTED', `${file}: tensor '${t.name}' has dtype ${t.dtype}; readSafetensors returns F32, F16, BF16 and I32`);
      const b = readRaw(t);
      const bytes = new Uint8Array(b.length);
      bytes.set(b);  // a copy: the read buffer may not be aligned for typed-array views
      const data = t.dtype === 'F32' ? new Float32Array(bytes.buffer) : t.dtype === 'I32' ? new Int32Array(bytes.buffer) : new Uint16Array(bytes.buffer);
      out.set(t.name, { dtype: t.dtype, shape: t.shape, data });
    }
    return out;
  } finally {
    st.close();
  }
}

/** The __metadata__ strings of a safetensors file (only its header is read). */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  need.string(file, 'file');
  const st = SafetensorsCheckpointFiles.file(file);
  st.close();
  return st.metadata;
}

/** A tensor the writer will receive: its name, dtype and shape (the bytes come later). */
export interface TensorSpec {
  name: string;
  dtype: StoredDType;
  shape: number[];
}

interface Planned {
  spec: TensorSpec;
  shard: number;
  /** absolute byte offset in the shard file */
  offset: number;
  nbytes: number;
  written: boolean;
}

function headerBytes(specs: { spec: TensorSpec; begin: number; nbytes: number }[], metadata?: Record<string, string>): Buffer {
  const h: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) h.__metadata__ = metadata;
  for (const p of specs) h[p.spec.name] = { dtype: p.spec.dtype, shape: p.spec.shape, data_offsets: [p.begin, p.begin + p.nbytes] };
  let json = JSON.stringify(h);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);  // data starts 8-byte aligned
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([head, Buffer.from(json, 'utf8')]);
}

export interface SafetensorsWriterOptions {
  /** A shard holds at most this many tensor bytes (a larger tensor gets a shard of its own). Default 5e9. */
  maxShardBytes?: number;
  /** __metadata__ of every file */
  metadata?: Record<string, string>;
  /** `${base}.safetensors`, or `${base}-0000N-of-0000M.safetensors` + `${base}.safetensors.index.json`. Default 'model'. */
  base?: string;
  /** the file name when everything fits in one file (default `${base}.safetensors`) */
  singleFile?: string;
}

/**
 * Writes the tensors of `specs`, in any order, one call per tensor, into `dir`
 * (normally an AtomicDir's temp directory): one file when they fit in
 * maxShardBytes, else Hugging Face shards and an index. Each file is written
 * under a temp name and renamed by finish(); abort() removes them.
 */
export class SafetensorsWriter {
  readonly files: string[];
  private readonly plan = new Map<string, Planned>();
  private readonly outs: AtomicFile[] = [];
  private readonly index: Record<string, string> = {};
  private readonly totalBytes: number;
  private readonly base: string;

  constructor(readonly dir: string, specs: TensorSpec[], opts: SafetensorsWriterOptions = {}) {
    need.string(dir, 'dir');
    if (!Array.isArray(specs)) throw invalidParameter('array of { name, dtype, shape }', 'specs', specs);
    specs.forEach((sp, i) => { need.object(sp, `specs[${i}]`); need.string(sp.name, `specs[${i}].name`); });
    need.object(opts, 'options');
    if (opts.metadata !== undefined && !(is.object(opts.metadata) && Object.values(opts.metadata).every((v) => typeof v === 'string')))
      throw invalidParameter('object of strings', 'options.metadata', opts.metadata);
    if (opts.base !== undefined) need.string(opts.base, 'options.base');
    if (opts.singleFile !== undefined) need.string(opts.singleFile, 'options.singleFile');
    const max = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
    if (!is.finiteNumber(max) || max <= 0) throw invalidParameter('positive number', 'maxShardBytes', max);
    const base = opts.base ?? 'model';
    // shards in spec order: a new one when the next tensor would overflow the current one
    const shards: { spec: TensorSpec; nbytes: number }[][] = [[]];
    let used = 0, total = 0;
    for (const spec of specs) {
      if (!Object.hasOwn(DTYPE_BYTES, spec.dtype)) throw invalidParameter('a safetensors dtype', `dtype of ${spec.name}`, spec.dtype);
      if (!Array.isArray(spec.shape) || !spec.shape.every((d) => is.nonNegativeInteger(d))) throw invalidParameter('non-negative integer dimensions', `shape of ${spec.name}`, spec.shape);
      if (this.plan.has(spec.name)) throw invalidParameter('unique tensor names', 'specs', spec.name);
      const nbytes = numel(spec.shape) * DTYPE_BYTES[spec.dtype];
      if (used > 0 && used + nbytes > max) {
        shards.push([]);
        used = 0;
      }
      shards[shards.length - 1].push({ spec, nbytes });
      used += nbytes;
      total += nbytes;
      this.plan.set(spec.name, { spec, shard: -1, offset: 0, nbytes, written: false });
    }
    this.totalBytes = total;
    const M = shards.length;
    const width = Math.max(5, String(M).length);
    this.base = base;
    this.files = shards.map((_, i) => M === 1 ? opts.singleFile ?? `${base}.safetensors`
      : `${base}-${String(i + 1).padStart(width, '0')}-of-${String(M).padStart(width, '0')}.safetensors`);
    try {
      shards.forEach((list, i) => {
        let begin = 0;
        const placed = list.map((e) => { const p = { ...e, begin }; begin += e.nbytes; return p; });
        const head = headerBytes(placed, opts.metadata);
        const out = new AtomicFile(path.join(dir, this.files[i]));
        this.outs.push(out);
        out.write(head, 0);
        for (const p of placed) {
          const pl = this.plan.get(p.spec.name)!;
          pl.shard = i;
          pl.offset = head.length + p.begin;
          this.index[p.spec.name] = this.files[i];
        }
      });
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  /** The bytes of tensor `name` (typed array of its dtype's width, or raw bytes). */
  write(name: string, data: ArrayBufferView): void {
    const p = this.plan.get(name);
    if (!p) throw invalidParameter('a tensor name given to the writer', 'name', name);
    if (p.written) throw new QuantformError('QF_INVALID_ARGUMENT', `Tensor ${name} was already written`);
    if (data.byteLength !== p.nbytes)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Tensor ${name}: ${p.spec.dtype} [${p.spec.shape}] needs ${p.nbytes} bytes but received ${data.byteLength}`);
    this.outs[p.shard].write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), p.offset);
    p.written = true;
  }

  /** Checks every tensor arrived, then fsyncs and renames each file (and writes the index). */
  finish(): void {
    const missing = [...this.plan.values()].filter((p) => !p.written).map((p) => p.spec.name);
    if (missing.length) {
      this.abort();
      throw new QuantformError('QF_INTERNAL', `Safetensors writer: ${missing.length} tensor(s) never written (first: ${missing[0]})`);
    }
    for (const o of this.outs) o.commit();
    if (this.files.length > 1) {
      const idx = new AtomicFile(path.join(this.dir, `${this.base}.safetensors.index.json`));
      idx.write(Buffer.from(JSON.stringify({ metadata: { total_size: this.totalBytes }, weight_map: this.index }, null, 2) + '\n'));
      idx.commit();
    }
  }

  abort(): void {
    for (const o of this.outs) o.abort();
  }
}

/** Writes tensors (sorted by name) to one file atomically. */
export function writeSafetensors(file: string, tensors: Map<string, SafeTensor>, metadata?: Record<string, string>): void {
  need.string(file, 'file');
  need.instance(tensors, Map, 'tensors');
  if (metadata !== undefined && !(is.object(metadata) && Object.values(metadata).every((v) => typeof v === 'string')))
    throw invalidParameter('object of strings', 'metadata', metadata);
  const kinds = { F32: Float32Array, F16: Uint16Array, BF16: Uint16Array, I32: Int32Array } as const;
  for (const [name, t] of tensors) {
    need.object(t, `tensors '${name}'`);
    if (!is.oneOf(t.dtype, Object.keys(kinds) as SafeDType[])) throw invalidParameter("'F32', 'F16', 'BF16' or 'I32'", `tensors '${name}'.dtype`, t.dtype);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => is.nonNegativeInteger(d))) throw invalidParameter('array of non-negative integers', `tensors '${name}'.shape`, t.shape);
    if (!(t.data instanceof kinds[t.dtype])) throw invalidParameter(`${kinds[t.dtype].name} for ${t.dtype}`, `tensors '${name}'.data`, t.data, 'QF_DTYPE_MISMATCH');
  }
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const t = tensors.get(name)!;
    const count = numel(t.shape);
    if (count !== t.data.length)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Tensor ${name}: shape [${t.shape}] needs ${count} elements but has ${t.data.length}`);
  }
  const w = new SafetensorsWriter(path.dirname(file), names.map((name) => ({ name, dtype: tensors.get(name)!.dtype, shape: tensors.get(name)!.shape })),
    { maxShardBytes: Number.MAX_SAFE_INTEGER, metadata, singleFile: path.basename(file) });
  try {
    for (const name of names) w.write(name, tensors.get(name)!.data);
  } catch (e) {
    w.abort();
    throw e;
  }
  w.finish();
}
