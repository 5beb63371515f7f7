// Row and column surgery on canonical quantized matrices (formats.h) for the
// exporters and the GGUF loader: rows are independent (codes, scales and zeros are
// all row-major), so a row permutation moves whole rows; zero padding along K adds
// codes equal to the zero point, which dequantize to exactly 0.
import { QuantformError } from '../errors.js';
import { numGroups, pack, packedRowBytes, QuantizedTensor, unpack } from '../ops/quant.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';
import type { CanonicalParts } from './ggml.js';
import type { FloatArray } from '../native.js';

/** Parts decoded from a file (one code per byte) -> a QuantizedTensor. */
export function fromParts(p: CanonicalParts, N: number, K: number): QuantizedTensor {
  return new QuantizedTensor(pack(p.codes8, [N, K], p.bits), p.scales, p.zeros, [N, K], p.bits, p.groupSize, p.symmetric, p.paramDtype);
}

/** out row r = q row order[r]. */
export function permuteRows(q: QuantizedTensor, order: Int32Array): QuantizedTensor {
  const [N, K] = q.shape;
  if (order.length !== N) throw new QuantformError('QF_SHAPE_MISMATCH', `Expected a row order of ${N} but received ${order.length}`);
  const rb = packedRowBytes(q.bits, K), G = q.numGroups;
  const codes = new Uint8Array(q.codes.length);
  const scales = new (q.scales.constructor as { new (n: number): FloatArray })(q.scales.length);
  const zeros = q.zeros ? new (q.zeros.constructor as { new (n: number): FloatArray })(q.zeros.length) : null;
  for (let r = 0; r < N; r++) {
    const s = order[r];
    codes.set(q.codes.subarray(s * rb, (s + 1) * rb), r * rb);
    scales.set(q.scales.subarray(s * G, (s + 1) * G), r * G);
    if (zeros && q.zeros) zeros.set(q.zeros.subarray(s * G, (s + 1) * G), r * G);
  }
  return new QuantizedTensor(codes, scales, zeros, q.shape, q.bits, q.groupSize, q.symmetric, q.paramDtype);
}

/** The zero point of every group as a number (2^(bits-1) when symmetric). */
export function zeroPoints(q: QuantizedTensor): Float64Array {
  const n = q.shape[0] * q.numGroups;
  const z = new Float64Array(n);
  if (q.symmetric) z.fill(2 ** (q.bits - 1));
  else if (q.paramDtype === 'f16') for (let i = 0; i < n; i++) z[i] = f16ToF32((q.zeros as Uint16Array)[i]);
  else for (let i = 0; i < n; i++) z[i] = (q.zeros as Float32Array)[i];
  return z;
}

export function scaleValues(q: QuantizedTensor): Float64Array {
  const n = q.shape[0] * q.numGroups;
  const s = new Float64Array(n);
  if (q.paramDtype === 'f16') for (let i = 0; i < n; i++) s[i] = f16ToF32((q.scales as Uint16Array)[i]);
  else for (let i = 0; i < n; i++) s[i] = (q.scales as Float32Array)[i];
  return s;
}

/**
 * Pads an (N, K) matrix to (N2, K2) with zeros: new columns get their group's zero
 * point (new groups repeat the last group's parameters), new rows get scale 0. Dequantizes to the old matrix bordered
 * by exact zeros. Used to pad the FFN dimension of a model to a block multiple.
 */
export function padZeros(q: QuantizedTensor, N2: number, K2: number): QuantizedTensor {
  const [N, K] = q.shape;
  if (N2 < N || K2 < K) throw new QuantformError('QF_SHAPE_MISMATCH', `Cannot pad a [${N}, ${K}] matrix to [${N2}, ${K2}]`);
  if (N2 === N && K2 === K) return q;
  // groups start at multiples of groupSize in both shapes: the ragged last group just grows
  const G = q.numGroups, G2 = numGroups(K2, q.groupSize);
  const codes8 = unpack(q.codes, [N, K], q.bits);
  const z = zeroPoints(q);
  const out8 = new Uint8Array(N2 * K2);
  const scales = new (q.scales.constructor as { new (n: number): FloatArray })(N2 * G2);
  const zeros = q.symmetric ? null : new (q.zeros!.constructor as { new (n: number): FloatArray })(N2 * G2);
  for (let n = 0; n < N2; n++) {
    for (let g = 0; g < G2; g++) {
      // a new group past the old ones repeats the last group's parameters
      const src = n < N ? n * G + Math.min(g, G - 1) : -1;
      scales[n * G2 + g] = src >= 0 ? q.scales[src] : 0;
      if (zeros) zeros[n * G2 + g] = src >= 0 ? q.zeros![src] : 0;
    }
    if (n >= N) {
      if (q.symmetric) out8.fill(2 ** (q.bits - 1), n * K2, (n + 1) * K2);
      continue;
    }
    out8.set(codes8.subarray(n * K, (n + 1) * K), n * K2);
    for (let k = K; k < K2; k++) {
      const zg = z[n * G + Math.min(Math.floor(k / q.groupSize), G - 1)];
      if (!Number.isInteger(zg)) throw new QuantformError('QF_UNSUPPORTED', `Padding needs integer zero points; row ${n} has ${zg}`);
      out8[n * K2 + k] = zg;
    }
  }
  return new QuantizedTensor(pack(out8, [N2, K2], q.bits), scales, zeros, [N2, K2], q.bits, q.groupSize, q.symmetric, q.paramDtype);
}

/** f16 bits of each scale when every one is exactly an f16 value, else null. */
export function exactF16Scales(q: QuantizedTensor): Uint16Array | null {
  if (q.paramDtype === 'f16') return q.scales as Uint16Array;
  const s = q.scales as Float32Array;
  const out = new Uint16Array(s.length);
  for (let i = 0; i < s.length; i++) {
    out[i] = f32ToF16(s[i]);
    if (f16ToF32(out[i]) !== s[i]) return null;
  }
  return out;
}
