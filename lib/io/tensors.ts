// Tensors stored in checkpoint files, described by name, shape, dtype and byte
// range, and fetched lazily by name (one positional read per tensor).
import { QuantformError } from '../errors.js';
import { CheckpointFile } from './file.js';

export type StoredDType = 'F32' | 'F16' | 'BF16';

export const DTYPE_BYTES: Record<StoredDType, number> = { F32: 4, F16: 2, BF16: 2 };

export interface StoredTensor {
  name: string;
  shape: number[];
  dtype: StoredDType;
  file: CheckpointFile;
  /** absolute byte offset in `file` */
  offset: number;
  nbytes: number;
}

/** Checks byte ranges: inside the file, sized by shape x dtype, no two tensors overlapping. */
export function validateLayout(tensors: StoredTensor[]): void {
  const byFile = new Map<CheckpointFile, StoredTensor[]>();
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(n))
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

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Reads one tensor as fp32 (F16 and BF16 widen exactly). */
export function readTensor(t: StoredTensor): Float32Array {
  const buf = t.file.read(t.offset, t.nbytes, `tensor '${t.name}'`);
  const n = t.nbytes / DTYPE_BYTES[t.dtype];
  const out = new Float32Array(n);
  if (t.dtype === 'F32') {
    new Uint8Array(out.buffer).set(buf);
  } else if (t.dtype === 'BF16') {
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u32[i] = buf.readUInt16LE(2 * i) << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16ToF32(buf.readUInt16LE(2 * i));
  }
  return out;
}
