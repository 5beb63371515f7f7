// Minimal safetensors reader and writer (https://github.com/huggingface/safetensors:
// u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
// then the raw little-endian data). Written here rather than taken from npm: the
// packages on the registry either pull in a tensor library or do not write.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { parseJsonObject } from './json.js';

export type SafeDType = 'F32' | 'F16' | 'BF16' | 'I32';
export type SafeData = Float32Array | Uint16Array | Int32Array;

export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  data: SafeData;
}

const BYTES: Record<SafeDType, number> = { F32: 4, F16: 2, BF16: 2, I32: 4 };

function view(dtype: SafeDType, buf: Buffer, begin: number, end: number): SafeData {
  // copy: the file buffer may not be aligned for typed-array views
  const bytes = new Uint8Array(end - begin);
  bytes.set(buf.subarray(begin, end));
  switch (dtype) {
    case 'F32': return new Float32Array(bytes.buffer);
    case 'I32': return new Int32Array(bytes.buffer);
    default: return new Uint16Array(bytes.buffer);
  }
}

export function readSafetensors(file: string): Map<string, SafeTensor> {
  need.string(file, 'file');
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  const corrupt = (why: string) => new QuantformError('QF_CORRUPT_FILE', `${file} is not a valid safetensors file: ${why}`);
  if (buf.length < 8) throw corrupt('shorter than its 8-byte header length');
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) throw corrupt(`header length ${n} exceeds the file`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = parseJsonObject(buf.subarray(8, 8 + n).toString('utf8'), `${file}: header`) as typeof header;
  } catch {
    throw corrupt('header is not JSON');
  }
  const out = new Map<string, SafeTensor>();
  const base = 8 + n;
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (!t || typeof t !== 'object' || typeof t.dtype !== 'string' || !Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) ||
        !Array.isArray(t.data_offsets) || t.data_offsets.length !== 2 || !t.data_offsets.every((o) => Number.isSafeInteger(o)))
      throw corrupt(`tensor ${name} needs a dtype, a shape of non-negative integers and a data_offsets pair`);
    if (!Object.hasOwn(BYTES, t.dtype)) throw new QuantformError('QF_UNSUPPORTED', `${file}: tensor ${name} has unsupported dtype ${t.dtype}`);
    const dtype = t.dtype as SafeDType;
    const [b, e] = t.data_offsets;
    const count = t.shape.reduce((a, c) => a * c, 1);
    if (!(b >= 0 && e >= b && base + e <= buf.length) || (e - b) !== count * BYTES[dtype])
      throw corrupt(`tensor ${name} offsets [${b}, ${e}] do not fit shape [${t.shape}] ${dtype}`);
    out.set(name, { dtype, shape: t.shape, data: view(dtype, buf, base + b, base + e) });
  }
  return out;
}

/** The __metadata__ strings of a safetensors file. */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  need.string(file, 'file');
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (buf.length < 8) throw new QuantformError('QF_CORRUPT_FILE', `${file} is not a valid safetensors file`);
  const n = Number(buf.readBigUInt64LE(0));
  try {
    return ((parseJsonObject(buf.subarray(8, 8 + n).toString('utf8'), `${file}: header`).__metadata__ ?? {}) as Record<string, string>);
  } catch {
    throw new QuantformError('QF_CORRUPT_FILE', `${file} is not a valid safetensors file: header is not JSON`);
  }
}

/** Writes tensors (sorted by name) to `file` atomically: a temp file, fsync, rename. */
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
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const count = t.shape.reduce((a, c) => a * c, 1);
    if (count !== t.data.length)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Tensor ${name}: shape [${t.shape}] needs ${count} elements but has ${t.data.length}`);
    const bytes = count * BYTES[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);  // data starts 8-byte aligned
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, head);
    writeSync(fd, Buffer.from(json, 'utf8'));
    for (const name of names) {
      const d = tensors.get(name)!.data;
      writeSync(fd, new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}
