// Tensors stored in checkpoint files, described by name, shape, dtype and byte
// range, and fetched lazily by name. Float tensors are read and widened to fp32 in
// native code (native/include/quantform/convert.h): large positional reads on the
// thread pool, F16/BF16 converted in SIMD while the bytes are in cache.
import { QuantformError, fromNative, invalidParameter, is, need } from '../errors.js';
import { native, type NativeDType } from '../native.js';
import { CheckpointFile } from './file.js';

/** Every element type of the safetensors format (GGUF's float types are a subset). */
export type StoredDType =
  | 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2'
  | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<StoredDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

/** The dtypes readTensor widens to fp32. */
export const FLOAT_DTYPES: readonly StoredDType[] = ['F32', 'F16', 'BF16'];
const NATIVE: Partial<Record<StoredDType, NativeDType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

export interface StoredTensor {
  name: string;
  shape: number[];
  dtype: StoredDType;
  file: CheckpointFile;
  /** absolute byte offset in `file` */
  offset: number;
  nbytes: number;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Checks byte ranges: inside the file, sized by shape x dtype, no two tensors overlapping. */
export function validateLayout(tensors: StoredTensor[]): void {
  const byFile = new Map<CheckpointFile, StoredTensor[]>();
  for (const t of tensors) {
    const n = numel(t.shape);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(n * 8))
      throw new QuantformError('QF_CORRUPT_FILE', `${t.file.path}: tensor '${t.name}' has an invalid shape [${t.shape.join(', ')}]`);
    if (t.nbytes !== n * DTYPE_BYTES[t.dtype])
      throw new QuantformError('QF_CORRUPT_FILE', `${t.file.path}: tensor '${t.name}' (${t.dtype} [${t.shape.join(', ')}]) needs ${n * DTYPE_BYTES[t.dtype]} bytes but its byte range holds ${t.nbytes}`);
    if (t.offset < 0 || t.offset + t.nbytes > t.file.size)
      throw new QuantformError('QF_CORRUPT_FILE', `${t.file.path}: tensor '${t.name}' spans bytes [${t.offset}, ${t.offset + t.nbytes}) past the end of the file (${t.file.size} bytes)`);
    const list = byFile.get(t.file) ?? [];
    list.push(t);
    byFile.set(t.file, list);
  }
  for (const list of byFile.values()) {
    const sorted = [...list].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1], c = sorted[i];
      if (c.nbytes > 0 && p.nbytes > 0 && c.offset < p.offset + p.nbytes)
        throw new QuantformError('QF_CORRUPT_FILE', `${c.file.path}: tensors '${p.name}' [${p.offset}, ${p.offset + p.nbytes}) and '${c.name}' [${c.offset}, ${c.offset + c.nbytes}) overlap`);
    }
  }
}

/** (rows, cols) of a stored tensor as the native reader walks it: the last dimension is a row. */
export function rowsCols(t: StoredTensor): [number, number] {
  if (t.shape.length === 0) return [1, 1];
  const cols = t.shape[t.shape.length - 1];
  return [cols === 0 ? 0 : numel(t.shape) / cols, cols];
}

/** The native dtype of a float tensor; a clear error for the others. */
export function nativeFloatDtype(t: StoredTensor): NativeDType {
  const d = NATIVE[t.dtype];
  if (!d)
    throw new QuantformError('QF_UNSUPPORTED', `${t.file.path}: tensor '${t.name}' has dtype ${t.dtype}; quantform reads float tensors as F32, F16 or BF16`);
  return d;
}

export interface ReadOptions {
  /** source row s lands in row dstRow[s] (a permutation of the rows: RoPE layouts) */
  dstRow?: Int32Array | null;
  /** destination (rows * cols floats); default a new array */
  out?: Float32Array;
}

/** A StoredTensor passed in by a caller (plain JS): a byte range of an open CheckpointFile with a dtype and shape. */
function needStoredTensor(t: unknown, name: string): asserts t is StoredTensor {
  need.object(t, name);
  const o = t as Record<string, unknown>;
  need.string(o.name, `${name}.name`);
  if (!Array.isArray(o.shape) || !o.shape.every((d) => is.nonNegativeInteger(d))) throw invalidParameter('array of non-negative integers', `${name}.shape`, o.shape);
  if (!is.string(o.dtype) || !Object.hasOwn(DTYPE_BYTES, o.dtype)) throw invalidParameter('a safetensors dtype', `${name}.dtype`, o.dtype);
  need.instance(o.file, CheckpointFile, `${name}.file`);
  need.nonNegativeInteger(o.offset, `${name}.offset`);
  need.nonNegativeInteger(o.nbytes, `${name}.nbytes`);
}

/** Reads one float tensor as fp32 (F16 and BF16 widen exactly; see convert.h for NaNs). */
export function readTensor(t: StoredTensor, opts: ReadOptions = {}): Float32Array {
  needStoredTensor(t, 'tensor');
  need.object(opts, 'options');
  if (opts.dstRow !== undefined && opts.dstRow !== null) need.instance(opts.dstRow, Int32Array, 'options.dstRow');
  if (opts.out !== undefined) need.instance(opts.out, Float32Array, 'options.out');
  const dtype = nativeFloatDtype(t);
  const [rows, cols] = rowsCols(t);
  const out = opts.out ?? new Float32Array(rows * cols);
  if (out.length !== rows * cols)
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected a destination of ${rows * cols} floats for tensor '${t.name}' but received ${out.length}`);
  try {
    native().io.readTensor(t.file.fd, t.offset, dtype, rows, cols, opts.dstRow ?? null, out, `tensor '${t.name}' of ${t.file.path}`, false);
  } catch (e) {
    throw fromNative(e);
  }
  return out;
}

/** The raw little-endian bytes of a tensor (integer tensors: GPTQ codes, indices). */
export function readRaw(t: StoredTensor): Buffer {
  return t.file.read(t.offset, t.nbytes, `tensor '${t.name}'`);
}

/** An I32 tensor (GPTQ qweight, qzeros, g_idx). */
export function readInt32(t: StoredTensor): Int32Array {
  if (t.dtype !== 'I32') throw new QuantformError('QF_CORRUPT_FILE', `${t.file.path}: tensor '${t.name}' should be I32 but is ${t.dtype}`);
  const b = readRaw(t);
  const out = new Int32Array(b.length / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/** A 16-bit tensor's bits (F16/BF16 kept as stored: GPTQ scales). */
export function readUint16(t: StoredTensor): Uint16Array {
  if (DTYPE_BYTES[t.dtype] !== 2) throw new QuantformError('QF_CORRUPT_FILE', `${t.file.path}: tensor '${t.name}' should be 16-bit but is ${t.dtype}`);
  const b = readRaw(t);
  const out = new Uint16Array(b.length / 2);
  new Uint8Array(out.buffer).set(b);
  return out;
}
