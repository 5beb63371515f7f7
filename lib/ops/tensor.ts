// Tensors crossing into native code: a typed array, a shape and a dtype.
// f16 and bf16 data live in Uint16Array (raw bits).
import { invalidParameter, QuantformError } from '../errors.js';
import type { FloatArray, NativeDType } from '../native.js';

export type DType = NativeDType;

export class Tensor {
  readonly data: FloatArray;
  readonly shape: readonly number[];
  readonly dtype: DType;

  constructor(data: FloatArray, shape: readonly number[], dtype?: DType) {
    const dt = dtype ?? (data instanceof Float32Array ? 'f32' : undefined);
    if (dt === undefined) throw invalidParameter("dtype 'f16' or 'bf16' for a Uint16Array", 'dtype', dtype);
    if (dt === 'f32' && !(data instanceof Float32Array))
      throw invalidParameter('Float32Array for dtype f32', 'data', data, 'QF_DTYPE_MISMATCH');
    if ((dt === 'f16' || dt === 'bf16') && !(data instanceof Uint16Array))
      throw invalidParameter(`Uint16Array for dtype ${dt}`, 'data', data, 'QF_DTYPE_MISMATCH');
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d <= 0))
      throw invalidParameter('array of positive integers', 'shape', shape);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== data.length)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${n} elements for shape [${shape.join(', ')}] but received ${data.length}`);
    checkBuffer(data, 'data');
    this.data = data;
    this.shape = Object.freeze([...shape]);
    this.dtype = dt;
  }

  static fromArray(values: ArrayLike<number>, shape: readonly number[]): Tensor {
    if (!(Array.isArray(values) || ArrayBuffer.isView(values)) || !Array.from(values as ArrayLike<unknown>).every((v) => typeof v === 'number'))
      throw invalidParameter('array of numbers', 'values', values);
    return new Tensor(Float32Array.from(values), shape, 'f32');
  }

  get size(): number {
    return this.data.length;
  }

  /** Rows and columns of a matrix view: leading dimensions fold into rows. */
  get rowsCols(): [number, number] {
    const K = this.shape[this.shape.length - 1];
    return [this.size / K, K];
  }
}

/** Rejects views native code must not touch: detached or shared memory. */
export function checkBuffer(data: ArrayBufferView, name: string): void {
  const buf = data.buffer as ArrayBuffer | SharedArrayBuffer;
  if (typeof SharedArrayBuffer !== 'undefined' && buf instanceof SharedArrayBuffer)
    throw new QuantformError('QF_INVALID_ARGUMENT', `Expected a non-shared buffer for ${name} but received a SharedArrayBuffer view`);
  if ((buf as ArrayBuffer & { detached?: boolean }).detached)
    throw new QuantformError('QF_INVALID_ARGUMENT', `Expected an attached buffer for ${name} but it is detached`);
}
