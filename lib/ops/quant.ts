// Quantization primitives: RTN quantize (packed), pack/unpack, dequantize and
// fake quantization with its straight-through / LSQ backward.
// Layout of the packed format: native/include/quantform/formats.h.
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { native, type FloatArray, type NativeDType } from '../native.js';
import { checkBuffer, Tensor, type DType } from './tensor.js';

export type Bits = 2 | 3 | 4 | 8;
export const SUPPORTED_BITS: readonly Bits[] = [2, 3, 4, 8];

export interface QuantOptions {
  /** 2, 3, 4 or 8. */
  bits: Bits;
  /** Elements per group along K, or 'channel' for one group per row. Default 128. */
  groupSize?: number | 'channel';
  /** true: scale = max|w| / (2^(b-1) - 1), no zero points. Default false (asymmetric). */
  symmetric?: boolean;
  /** dtype of stored scales and zero points. Default 'f32'. */
  paramDtype?: 'f32' | 'f16';
}

/** Bytes per packed row of K codes (formats.h). */
export function packedRowBytes(bits: Bits, K: number): number {
  if (!is.oneOf(bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', bits, 'QF_UNSUPPORTED_BITS');
  need.positiveInteger(K, 'K');
  switch (bits) {
    case 8: return K;
    case 4: return Math.ceil(K / 2);
    case 2: return Math.ceil(K / 4);
    case 3: return Math.ceil(K / 8) * 3;
  }
}

export function numGroups(K: number, groupSize: number): number {
  need.positiveInteger(K, 'K');
  need.positiveInteger(groupSize, 'groupSize');
  return Math.ceil(K / groupSize);
}

/** A quantized [N, K] matrix: packed unsigned codes + per-group scales (+ zeros). */
export class QuantizedTensor {
  constructor(
    /** (N, packedRowBytes(bits, K)) */
    readonly codes: Uint8Array,
    /** (N, G) */
    readonly scales: FloatArray,
    /** (N, G), null when symmetric (zero point 2^(bits-1)) */
    readonly zeros: FloatArray | null,
    readonly shape: readonly [number, number],
    readonly bits: Bits,
    readonly groupSize: number,
    readonly symmetric: boolean,
    readonly paramDtype: 'f32' | 'f16',
  ) {
    need.instance(codes, Uint8Array, 'codes');
    need.shape2(shape, 'shape');
    if (!is.oneOf(bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', bits, 'QF_UNSUPPORTED_BITS');
    need.positiveInteger(groupSize, 'groupSize');
    need.bool(symmetric, 'symmetric');
    if (!is.oneOf(paramDtype, ['f32', 'f16'] as const)) throw invalidParameter("'f32' or 'f16'", 'paramDtype', paramDtype);
    const kind = paramDtype === 'f32' ? Float32Array : Uint16Array;
    if (!(scales instanceof kind)) throw invalidParameter(`${kind.name} (paramDtype ${paramDtype})`, 'scales', scales, 'QF_DTYPE_MISMATCH');
    if (zeros !== null && !(zeros instanceof kind)) throw invalidParameter(`${kind.name} or null (paramDtype ${paramDtype})`, 'zeros', zeros, 'QF_DTYPE_MISMATCH');
    const [N, K] = shape;
    if (codes.length !== N * packedRowBytes(bits, K))
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * packedRowBytes(bits, K)} bytes for codes but received ${codes.length}`);
    const G = numGroups(K, groupSize);
    if (scales.length !== N * G)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * G} elements for scales but received ${scales.length}`);
    if (!symmetric && (!zeros || zeros.length !== N * G))
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * G} elements for zeros but received ${zeros ? zeros.length : 'null'}`);
  }

  get numGroups(): number {
    return numGroups(this.shape[1], this.groupSize);
  }
}

export interface ResolvedQuantOptions {
  bits: Bits;
  groupSize: number;
  symmetric: boolean;
  paramDtype: 'f32' | 'f16';
}

/** Validates options and fills defaults for a matrix with K columns. */
export function resolveQuantOptions(opts: QuantOptions, K: number): ResolvedQuantOptions {
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  if (!is.oneOf(opts.bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', opts.bits, 'QF_UNSUPPORTED_BITS');
  const gs = opts.groupSize ?? 128;
  let groupSize: number;
  if (gs === 'channel') groupSize = K;
  else if (!is.positiveInteger(gs)) throw invalidParameter("positive integer or 'channel'", 'groupSize', gs);
  else groupSize = Math.min(gs, K);
  const symmetric = opts.symmetric ?? false;
  if (!is.bool(symmetric)) throw invalidParameter('boolean', 'symmetric', symmetric);
  const paramDtype = opts.paramDtype ?? 'f32';
  if (!is.oneOf(paramDtype, ['f32', 'f16'] as const)) throw invalidParameter("'f32' or 'f16'", 'paramDtype', paramDtype);
  return { bits: opts.bits, groupSize, symmetric, paramDtype };
}

export function matrix(w: Tensor, name: string): [number, number] {
  if (!(w instanceof Tensor)) throw invalidParameter('Tensor', name, w);
  if (w.shape.length !== 2) throw invalidParameter('2-D [N, K] tensor', `${name}.shape`, `[${w.shape.join(', ')}]`, 'QF_SHAPE_MISMATCH');
  checkBuffer(w.data, name);
  return [w.shape[0], w.shape[1]];
}

export function checkQuantized(q: QuantizedTensor): void {
  if (!(q instanceof QuantizedTensor)) throw invalidParameter('QuantizedTensor', 'q', q);
  checkBuffer(q.codes, 'codes');
  checkBuffer(q.scales, 'scales');
  if (q.zeros) checkBuffer(q.zeros, 'zeros');
}

async function call<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw fromNative(e);
  }
}

function callSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

/** Round-to-nearest quantization of a row-major [N, K] matrix along K. */
export function quantize(w: Tensor, opts: QuantOptions): QuantizedTensor {
  const [N, K] = matrix(w, 'weights');
  const o = resolveQuantOptions(opts, K);
  const r = callSync(() => native().quantize(w.data, w.dtype, N, K, o.bits, o.groupSize, o.symmetric, o.paramDtype, false));
  return new QuantizedTensor(r.codes, r.scales, r.zeros, [N, K], o.bits, o.groupSize, o.symmetric, o.paramDtype);
}

export async function quantizeAsync(w: Tensor, opts: QuantOptions): Promise<QuantizedTensor> {
  const [N, K] = matrix(w, 'weights');
  const o = resolveQuantOptions(opts, K);
  const r = await call(() => native().quantize(w.data, w.dtype, N, K, o.bits, o.groupSize, o.symmetric, o.paramDtype, true));
  return new QuantizedTensor(r.codes, r.scales, r.zeros, [N, K], o.bits, o.groupSize, o.symmetric, o.paramDtype);
}

export interface DequantizeOptions {
  /** Output dtype, default 'f32'. */
  dtype?: DType;
  /** A caller-owned output of N*K elements (Float32Array for f32, Uint16Array for f16/bf16), reused across calls. */
  out?: FloatArray;
}

function dequantArgs(q: QuantizedTensor, opts: DType | DequantizeOptions | undefined) {
  checkQuantized(q);
  const o: DequantizeOptions = typeof opts === 'string' ? { dtype: opts } : (opts ?? {});
  const dtype = o.dtype ?? 'f32';
  if (!is.oneOf(dtype, ['f32', 'f16', 'bf16'] as const)) throw invalidParameter("'f32', 'f16' or 'bf16'", 'dtype', dtype);
  const [N, K] = q.shape;
  if (o.out !== undefined) {
    const kind = dtype === 'f32' ? Float32Array : Uint16Array;
    if (!(o.out instanceof kind) || o.out.length !== N * K)
      throw invalidParameter(`${kind.name} of length ${N * K}`, 'out', o.out, 'QF_SHAPE_MISMATCH');
    checkBuffer(o.out, 'out');
  }
  return { N, K, dtype, out: o.out ?? null };
}

/** packed codes -> fp32 (or f16/bf16) [N, K]. */
export function dequantize(q: QuantizedTensor, opts?: DType | DequantizeOptions): Tensor {
  const a = dequantArgs(q, opts);
  const out = callSync(() => native().dequantize(q.codes, q.scales, q.zeros, q.paramDtype, a.N, a.K, q.bits, q.groupSize, q.symmetric, a.dtype, false, a.out));
  return new Tensor(out, [a.N, a.K], a.dtype);
}

export async function dequantizeAsync(q: QuantizedTensor, opts?: DType | DequantizeOptions): Promise<Tensor> {
  const a = dequantArgs(q, opts);
  const out = await call(() => native().dequantize(q.codes, q.scales, q.zeros, q.paramDtype, a.N, a.K, q.bits, q.groupSize, q.symmetric, a.dtype, true, a.out));
  return new Tensor(out, [a.N, a.K], a.dtype);
}

function checkCodes(codes8: Uint8Array, shape: unknown, bits: Bits): void {
  if (!Array.isArray(shape) || shape.length !== 2) throw invalidParameter('[N, K]', 'shape', shape);
  const [N, K] = shape as unknown[];
  if (!(codes8 instanceof Uint8Array)) throw invalidParameter('Uint8Array', 'codes', codes8);
  if (!is.positiveInteger(N)) throw invalidParameter('positive integer', 'N', N);
  if (!is.positiveInteger(K)) throw invalidParameter('positive integer', 'K', K);
  if (!is.oneOf(bits, SUPPORTED_BITS)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', bits, 'QF_UNSUPPORTED_BITS');
  checkBuffer(codes8, 'codes');
}

/** One unsigned code per byte, (N, K) -> packed (N, packedRowBytes(bits, K)). */
export function pack(codes8: Uint8Array, shape: readonly [number, number], bits: Bits): Uint8Array {
  checkCodes(codes8, shape, bits);
  const [N, K] = shape;
  if (codes8.length !== N * K) throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * K} codes but received ${codes8.length}`);
  return callSync(() => native().pack(codes8, N, K, bits, false));
}

export async function packAsync(codes8: Uint8Array, shape: readonly [number, number], bits: Bits): Promise<Uint8Array> {
  checkCodes(codes8, shape, bits);
  const [N, K] = shape;
  if (codes8.length !== N * K) throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * K} codes but received ${codes8.length}`);
  return call(() => native().pack(codes8, N, K, bits, true));
}

/** Packed (N, packedRowBytes(bits, K)) -> one code per byte (N, K). */
export function unpack(codes: Uint8Array, shape: readonly [number, number], bits: Bits): Uint8Array {
  checkCodes(codes, shape, bits);
  const [N, K] = shape;
  if (codes.length !== N * packedRowBytes(bits, K))
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * packedRowBytes(bits, K)} bytes for codes but received ${codes.length}`);
  return callSync(() => native().unpack(codes, N, K, bits, false));
}

export async function unpackAsync(codes: Uint8Array, shape: readonly [number, number], bits: Bits): Promise<Uint8Array> {
  checkCodes(codes, shape, bits);
  const [N, K] = shape;
  if (codes.length !== N * packedRowBytes(bits, K))
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${N * packedRowBytes(bits, K)} bytes for codes but received ${codes.length}`);
  return call(() => native().unpack(codes, N, K, bits, true));
}

export interface FakeQuantParams {
  /** (N, G) f32 step sizes, trainable. */
  scales: Float32Array;
  /** (N, G) f32 zero points (rounded in the forward), asymmetric only. */
  zeros?: Float32Array | null;
}

export function fakeQuantArgs(w: Tensor, opts: QuantOptions, params?: FakeQuantParams) {
  const [N, K] = matrix(w, 'weights');
  if (w.dtype !== 'f32') throw invalidParameter('f32 tensor', 'weights', w.dtype, 'QF_DTYPE_MISMATCH');
  const o = resolveQuantOptions({ ...opts, paramDtype: 'f32' }, K);
  const G = numGroups(K, o.groupSize);
  let p = params;
  if (!p) {
    // RTN step sizes and zero points
    const q = quantize(w, o);
    p = { scales: q.scales as Float32Array, zeros: q.zeros as Float32Array | null };
  }
  if (!(p.scales instanceof Float32Array) || p.scales.length !== N * G)
    throw invalidParameter(`Float32Array of length ${N * G}`, 'scales', p.scales, 'QF_SHAPE_MISMATCH');
  const zeros = o.symmetric ? null : (p.zeros ?? null);
  if (!o.symmetric && (!(zeros instanceof Float32Array) || zeros.length !== N * G))
    throw invalidParameter(`Float32Array of length ${N * G}`, 'zeros', zeros, 'QF_SHAPE_MISMATCH');
  checkBuffer(p.scales, 'scales');
  if (zeros) checkBuffer(zeros, 'zeros');
  return { N, K, o, scales: p.scales, zeros };
}

/**
 * Fake quantization: quantize then dequantize with the given (or RTN) step sizes
 * and zero points: q = clamp(round(w/s) + round(z), lo, hi), out = (q - round(z)) * s.
 */
export function fakeQuantize(w: Tensor, opts: QuantOptions, params?: FakeQuantParams): Tensor {
  const a = fakeQuantArgs(w, opts, params);
  const out = callSync(() => native().fakeQuantForward(w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, false));
  return new Tensor(out, [a.N, a.K], 'f32');
}

export async function fakeQuantizeAsync(w: Tensor, opts: QuantOptions, params?: FakeQuantParams): Promise<Tensor> {
  const a = fakeQuantArgs(w, opts, params);
  const out = await call(() => native().fakeQuantForward(w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, true));
  return new Tensor(out, [a.N, a.K], 'f32');
}

export interface FakeQuantGrads {
  /** (N, K): straight-through inside the clipping range, 0 outside. */
  gradW: Float32Array;
  /** (N, G): LSQ step-size gradient. */
  gradScales: Float32Array;
  /** (N, G): zero-point gradient (asymmetric), else null. */
  gradZeros: Float32Array | null;
}

/** Backward of fakeQuantize with respect to weights, step sizes and zero points. */
export function fakeQuantizeBackward(gradOut: Tensor, w: Tensor, opts: QuantOptions, params: FakeQuantParams): FakeQuantGrads {
  const a = fakeQuantArgs(w, opts, params);
  if (!(gradOut instanceof Tensor) || gradOut.dtype !== 'f32' || gradOut.size !== a.N * a.K)
    throw invalidParameter(`f32 Tensor of ${a.N * a.K} elements`, 'gradOut', gradOut, 'QF_SHAPE_MISMATCH');
  return callSync(() => native().fakeQuantBackward(gradOut.data as Float32Array, w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, false));
}

export async function fakeQuantizeBackwardAsync(gradOut: Tensor, w: Tensor, opts: QuantOptions, params: FakeQuantParams): Promise<FakeQuantGrads> {
  const a = fakeQuantArgs(w, opts, params);
  if (!(gradOut instanceof Tensor) || gradOut.dtype !== 'f32' || gradOut.size !== a.N * a.K)
    throw invalidParameter(`f32 Tensor of ${a.N * a.K} elements`, 'gradOut', gradOut, 'QF_SHAPE_MISMATCH');
  return call(() => native().fakeQuantBackward(gradOut.data as Float32Array, w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, true));
}

export type { NativeDType };
