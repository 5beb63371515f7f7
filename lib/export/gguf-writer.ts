// A GGUF v3 writer (the format of llama.cpp's gguf.cpp): header, typed metadata,
// tensor infos, then the tensor data, every tensor aligned to general.alignment
// (the last one padded too: gguf.cpp reads the padded size).
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { QuantformError } from '../errors.js';
import { ggmlBytes, type GgmlType } from './ggml.js';

export const GGUF_ALIGNMENT = 32;

/** GGUF metadata value types (gguf.h GGUF_TYPE_*). */
const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'u64'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'f32[]'; value: ArrayLike<number> }
  | { type: 'i32[]'; value: ArrayLike<number> };

export const gv = {
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  u64: (value: number): GgufValue => ({ type: 'u64', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  str: (value: string): GgufValue => ({ type: 'string', value }),
  strs: (value: readonly string[]): GgufValue => ({ type: 'string[]', value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({ type: 'f32[]', value }),
  i32s: (value: ArrayLike<number>): GgufValue => ({ type: 'i32[]', value }),
};

/** One tensor, produced when the writer reaches it (its type may be decided then). */
export interface GgufTensorData {
  name: string;
  /** ggml ne: fastest dimension first (a row-major [N, K] matrix is [K, N]) */
  ne: number[];
  type: GgmlType;
  data: Uint8Array;
}

/** Growable little-endian byte buffer for the header. */
class Bytes {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u32(v: number): void { this.room(4); this.buf.writeUInt32LE(v >>> 0, this.length); this.length += 4; }
  i32(v: number): void { this.room(4); this.buf.writeInt32LE(v | 0, this.length); this.length += 4; }
  u64(v: number): void { this.room(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  f32(v: number): void { this.room(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  u8(v: number): void { this.room(1); this.buf[this.length++] = v; }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.room(b.length);
    b.copy(this.buf, this.length);
    this.length += b.length;
  }
  pad(align: number): void {
    const n = (align - (this.length % align)) % align;
    this.room(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeValue(b: Bytes, key: string, v: GgufValue): void {
  b.str(key);
  switch (v.type) {
    case 'u32': b.u32(T.U32); b.u32(v.value); break;
    case 'i32': b.u32(T.I32); b.i32(v.value); break;
    case 'u64': b.u32(T.U64); b.u64(v.value); break;
    case 'f32': b.u32(T.F32); b.f32(v.value); break;
    case 'bool': b.u32(T.BOOL); b.u8(v.value ? 1 : 0); break;
    case 'string': b.u32(T.STRING); b.str(v.value); break;
    case 'string[]': b.u32(T.ARRAY); b.u32(T.STRING); b.u64(v.value.length); for (const s of v.value) b.str(s); break;
    case 'f32[]': b.u32(T.ARRAY); b.u32(T.F32); b.u64(v.value.length); for (let i = 0; i < v.value.length; i++) b.f32(v.value[i]); break;
    case 'i32[]': b.u32(T.ARRAY); b.u32(T.I32); b.u64(v.value.length); for (let i = 0; i < v.value.length; i++) b.i32(v.value[i]); break;
  }
}

/** Writes all of b to fd (writeSync may write less than asked). */
export function writeAll(fd: number, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += writeSync(fd, b, o, b.length - o);
}

/**
 * Writes a GGUF v3 file atomically and returns its size in bytes. Tensors are
 * produced one at a time (a model larger than memory streams through) into a data
 * file next to the output; the metadata is asked for after the last tensor (it may
 * describe what the tensors turned out to be); then header and data are joined into
 * a temp file that is fsynced and renamed onto `file`.
 */
export function writeGguf(file: string, tensors: Iterable<() => GgufTensorData>, metadata: () => ReadonlyMap<string, GgufValue>): number {
  const dest = path.resolve(file);
  const base = path.join(path.dirname(dest), `.${path.basename(dest)}.${process.pid}`);
  const dataTmp = `${base}.data.tmp`, tmp = `${base}.tmp`;
  const infos: { name: string; ne: number[]; type: GgmlType; offset: number }[] = [];
  let dfd: number | null = openSync(dataTmp, 'w');
  let fd: number | null = null;
  try {
    let offset = 0;
    const seen = new Set<string>();
    const zeros = new Uint8Array(GGUF_ALIGNMENT);
    for (const produce of tensors) {
      const t = produce();
      if (seen.has(t.name)) throw new QuantformError('QF_INVALID_ARGUMENT', `GGUF tensor '${t.name}' is written twice`);
      seen.add(t.name);
      if (t.ne[0] % t.type.blockSize !== 0)
        throw new QuantformError('QF_SHAPE_MISMATCH', `GGUF tensor '${t.name}': rows of ${t.ne[0]} values are not a multiple of ${t.type.name}'s block size ${t.type.blockSize}`);
      const size = ggmlBytes(t.type, t.ne.reduce((a, b) => a * b, 1));
      if (t.data.length !== size)
        throw new QuantformError('QF_SHAPE_MISMATCH', `GGUF tensor '${t.name}' (${t.type.name} [${t.ne.join(', ')}]) needs ${size} bytes but ${t.data.length} were produced`);
      writeAll(dfd, t.data);
      const pad = (GGUF_ALIGNMENT - (size % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      writeAll(dfd, zeros.subarray(0, pad));
      infos.push({ name: t.name, ne: t.ne, type: t.type, offset });
      offset += size + pad;
    }
    closeSync(dfd);
    dfd = null;
    const md = new Map(metadata());
    md.set('general.alignment', gv.u32(GGUF_ALIGNMENT));
    const h = new Bytes();
    h.u32(0x46554747);  // "GGUF"
    h.u32(3);
    h.u64(infos.length);
    h.u64(md.size);
    for (const [k, v] of md) writeValue(h, k, v);
    for (const t of infos) {
      h.str(t.name);
      h.u32(t.ne.length);
      for (const d of t.ne) h.u64(d);
      h.u32(t.type.id);
      h.u64(t.offset);
    }
    h.pad(GGUF_ALIGNMENT);
    fd = openSync(tmp, 'w');
    writeAll(fd, h.bytes());
    const rfd = openSync(dataTmp, 'r');
    try {
      const chunk = Buffer.allocUnsafe(16 << 20);
      for (let n; (n = readSync(rfd, chunk, 0, chunk.length, null)) > 0;) writeAll(fd, chunk.subarray(0, n));
    } finally {
      closeSync(rfd);
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, dest);
    return h.length + offset;
  } catch (e) {
    if (dfd !== null) closeSync(dfd);
    if (fd !== null) closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  } finally {
    rmSync(dataTmp, { force: true });
  }
}
