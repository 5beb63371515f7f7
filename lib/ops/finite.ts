// The one NaN/Inf check of weights, wherever they come from: loaders (the
// Checkpoint -> model paths) and quantization call it once per tensor, so a
// non-finite value is reported with the tensor's name and its first index instead
// of turning into a NaN perplexity later. The scan is native (quantform/finite.h).
import { QuantformError, fromNative } from '../errors.js';
import { native, type FloatArray, type NativeDType } from '../native.js';

/** Index of the first NaN or Inf in `data`, or -1. */
export function firstNonFinite(data: FloatArray, dtype: NativeDType = data instanceof Float32Array ? 'f32' : 'f16'): number {
  try {
    return native().firstNonFinite(data, dtype);
  } catch (e) {
    throw fromNative(e);
  }
}

/** Throws QF_NON_FINITE naming `what` and the first bad element (with its row and column when `shape` is 2-D). */
export function checkFinite(data: FloatArray, what: string, shape?: readonly number[], dtype?: NativeDType): void {
  const i = firstNonFinite(data, dtype);
  if (i < 0) return;
  const v = data instanceof Float32Array ? String(data[i]) : `0x${data[i].toString(16)}`;
  const at = shape && shape.length === 2 ? `[${Math.floor(i / shape[1])}, ${i % shape[1]}] (flat index ${i})` : `index ${i}`;
  throw new QuantformError('QF_NON_FINITE', `${what} holds ${v} at ${at}: NaN and Inf weights cannot be run or quantized`);
}

/** The scales and zero points of a quantized weight (codes are integers: always finite). */
export function checkQuantizedFinite(q: { scales: FloatArray; zeros: FloatArray | null; paramDtype: 'f32' | 'f16' }, what: string): void {
  checkFinite(q.scales, `${what} scales`, undefined, q.paramDtype);
  if (q.zeros) checkFinite(q.zeros, `${what} zero points`, undefined, q.paramDtype);
}
