// Bad input gets a clear error naming the parameter, the expectation and what was
// received, with a code; the native layer re-checks what TS already validated.
import { describe, expect, it } from 'vitest';
import {
  dequantize, fakeQuantize, pack, quantize, quantizeAsync, QuantformError, QuantizedTensor, setKernelPolicy, setThreads,
  Tensor, unpack, type Bits,
} from '../lib/index.js';
import { native } from '../lib/native.js';

function err(fn: () => unknown): QuantformError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(QuantformError);
    return e as QuantformError;
  }
  throw new Error('expected an error');
}

function nativeErr(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    return e as { code: string; message: string };
  }
  throw new Error('expected a native error');
}

const w = Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);

describe('TS validation', () => {
  it('group size must be a positive integer', () => {
    const e = err(() => quantize(w, { bits: 4, groupSize: 1.5 }));
    expect(e.code).toBe('QF_INVALID_ARGUMENT');
    expect(e.message).toMatch(/^Expected positive integer or 'channel' for groupSize but received 1\.5 of type number$/);
    expect(err(() => quantize(w, { bits: 4, groupSize: 0 })).message).toMatch(/groupSize but received 0 of type number/);
    expect(err(() => quantize(w, { bits: 4, groupSize: -32 })).message).toMatch(/groupSize but received -32/);
  });
  it('bits outside {2, 3, 4, 8}', () => {
    for (const bits of [1, 5, 16, 4.5]) {
      const e = err(() => quantize(w, { bits: bits as Bits }));
      expect(e.code).toBe('QF_UNSUPPORTED_BITS');
      expect(e.message).toMatch(new RegExp(`^Expected one of 2, 3, 4, 8 for bits but received ${bits} of type number$`));
    }
  });
  it('tensors: wrong dtype, wrong shape, wrong length', () => {
    expect(err(() => new Tensor(new Float32Array(5), [2, 3])).message).toMatch(/^Expected 6 elements for shape \[2, 3\] but received 5$/);
    expect(err(() => new Tensor(new Float32Array(6), [2, 3], 'bf16')).message).toMatch(/Expected Uint16Array for dtype bf16 for data but received Float32Array/);
    expect(err(() => new Tensor(new Float32Array(6), [2, 0])).message).toMatch(/Expected array of positive integers for shape/);
    expect(err(() => quantize(Tensor.fromArray([1, 2, 3, 4, 5, 6], [1, 2, 3]), { bits: 4 })).message).toMatch(/Expected 2-D \[N, K\] tensor for weights.shape/);
    expect(err(() => quantize({} as Tensor, { bits: 4 })).message).toMatch(/^Expected Tensor for weights but received value of type object$/);
  });
  it('shared and detached buffers', () => {
    const shared = new Float32Array(new SharedArrayBuffer(24));
    expect(err(() => quantize(new Tensor(shared, [2, 3]), { bits: 4 })).message).toMatch(/non-shared buffer for data/);
    const data = new Float32Array(6);
    const t = new Tensor(data, [2, 3]);
    structuredClone(data.buffer, { transfer: [data.buffer] });
    expect(err(() => quantize(t, { bits: 4 })).message).toMatch(/attached buffer for weights but it is detached/);
    // the engine's int8 buffers (FPTQuant's codes) go through the same checks: a shared view is refused, not dereferenced
    const x = new Float32Array(8), xs = new Float32Array(1);
    const aqr = (native().engine as unknown as Record<string, (...a: unknown[]) => void>).actQuantRows;
    expect(nativeErr(() => aqr(new Int8Array(new SharedArrayBuffer(8)), xs, x, null, 0.1, 1, 8, 8, 8, 8)))
      .toMatchObject({ code: 'QF_INVALID_ARGUMENT', message: expect.stringMatching(/non-shared buffer for xq but received a SharedArrayBuffer view/) });
    const gone = new Int8Array(8);
    structuredClone(gone.buffer, { transfer: [gone.buffer] });
    expect(nativeErr(() => aqr(gone, xs, x, null, 0.1, 1, 8, 8, 8, 8)).message).toMatch(/attached buffer for xq but it is detached/);
    expect(nativeErr(() => aqr(new Uint8Array(8), xs, x, null, 0.1, 1, 8, 8, 8, 8))).toMatchObject({ code: 'QF_DTYPE_MISMATCH', message: 'Expected Int8Array for xq' });
  });
  it('NaN and Inf name the row', async () => {
    const bad = Tensor.fromArray([0, 1, 2, 3, 4, 5, 6, NaN, 8], [3, 3]);
    const e = err(() => quantize(bad, { bits: 4, groupSize: 3 }));
    expect(e.code).toBe('QF_NON_FINITE');
    expect(e.message).toMatch(/^Expected finite weights but row 2 holds NaN or Inf$/);
    await expect(quantizeAsync(Tensor.fromArray([0, Infinity], [1, 2]), { bits: 8 })).rejects.toMatchObject({
      code: 'QF_NON_FINITE', message: 'Expected finite weights but row 0 holds NaN or Inf',
    });
  });
  it('inconsistent quantized tensors', () => {
    const q = quantize(w, { bits: 4, groupSize: 2 });
    expect(err(() => new QuantizedTensor(q.codes.subarray(1), q.scales, q.zeros, [2, 3], 4, 2, false, 'f32')).message)
      .toMatch(/^Expected 4 bytes for codes but received 3$/);
    expect(err(() => new QuantizedTensor(q.codes, q.scales, null, [2, 3], 4, 2, false, 'f32')).message)
      .toMatch(/^Expected 4 elements for zeros but received null$/);
  });
  it('pack: code lengths and code ranges', () => {
    expect(err(() => pack(new Uint8Array(5), [2, 3], 4)).message).toMatch(/^Expected 6 codes but received 5$/);
    const e = err(() => pack(Uint8Array.from([0, 1, 4]), [1, 3], 2));
    expect(e.message).toMatch(/^Expected codes in \[0, 3\] but code 2 is 4$/);
    expect(err(() => unpack(new Uint8Array(3), [2, 3], 4)).message).toMatch(/^Expected 4 bytes for codes but received 3$/);
  });
  it('fake-quant parameters must fit the groups', () => {
    expect(err(() => fakeQuantize(w, { bits: 4, groupSize: 2 }, { scales: new Float32Array(3), zeros: new Float32Array(4) })).message)
      .toMatch(/Expected Float32Array of length 4 for scales but received Float32Array of length 3/);
  });
  it('backend controls', () => {
    expect(err(() => setThreads(-1)).message).toMatch(/Expected integer in \[0, 1024\] for threads but received -1/);
    expect(err(() => setKernelPolicy('sse' as 'ref')).message).toMatch(/for policy but received 'sse' of type string/);
  });
});

describe('native re-checks (TS validation bypassed)', () => {
  const n = native();
  it('a length that lies is refused, not trusted', () => {
    // codes buffer too short for N=4: an out-of-bounds read if trusted
    const e = nativeErr(() => n.dequantize(new Uint8Array(2), new Float32Array(8), null, 'f32', 4, 4, 4, 2, true, 'f32', false));
    expect(e.code).toBe('QF_SHAPE_MISMATCH');
    expect(e.message).toMatch(/^Expected 8 bytes for codes but received 2$/);
    const e2 = nativeErr(() => n.quantize(new Float32Array(7), 'f32', 2, 4, 4, 2, true, 'f32', false));
    expect(e2.message).toMatch(/^Expected 8 elements for w but received 7$/);
  });
  it('wrong typed-array kinds and argument types', () => {
    expect(nativeErr(() => n.quantize(new Uint16Array(8) as unknown as Float32Array, 'f32', 2, 4, 4, 2, true, 'f32', false)).message)
      .toMatch(/Expected Float32Array for weights/);
    expect(nativeErr(() => n.quantize(new Float32Array(8), 'f64' as 'f32', 2, 4, 4, 2, true, 'f32', false)).message)
      .toMatch(/Expected 'f32', 'f16' or 'bf16' for dtype but received 'f64'/);
    expect(nativeErr(() => n.pack('abc' as unknown as Uint8Array, 1, 3, 4, false)).message).toMatch(/Expected typed array for codes but received string/);
    expect(nativeErr(() => n.unpack(new Uint8Array(2), 1.5, 3, 4, false)).message).toMatch(/Expected integer for N but received 1\.5/);
  });
  it('bits, group size and shapes', () => {
    expect(nativeErr(() => n.quantize(new Float32Array(8), 'f32', 2, 4, 5, 2, true, 'f32', false))).toMatchObject({
      code: 'QF_UNSUPPORTED_BITS', message: 'Expected bits in {2, 3, 4, 8} but received 5' });
    expect(nativeErr(() => n.quantize(new Float32Array(8), 'f32', 2, 4, 4, 0, true, 'f32', false)).message)
      .toMatch(/^Expected groupSize in \[1, 4\] but received 0$/);
    expect(nativeErr(() => n.quantize(new Float32Array(8), 'f32', -2, -4, 4, 2, true, 'f32', false)).message)
      .toMatch(/non-empty \[N, K\] matrix but received \[-2, -4\]/);
    expect(nativeErr(() => n.unpack(new Uint8Array(1), 2 ** 40, 2 ** 20, 4, false)).message).toMatch(/too large/);
  });
  it('asymmetric without zeros', () => {
    expect(nativeErr(() => n.dequantize(new Uint8Array(4), new Float32Array(4), null, 'f32', 2, 4, 4, 2, false, 'f32', false)).message)
      .toMatch(/Expected zeros for asymmetric quantization but received null/);
  });
  it('errors from async calls reject the promise with the code', async () => {
    await expect(n.dequantize(new Uint8Array(1), new Float32Array(8), null, 'f32', 4, 4, 4, 2, true, 'f32', true)).rejects
      .toMatchObject({ code: 'QF_SHAPE_MISMATCH' });
  });
  it('dequantize still works after all of that', () => {
    const q = quantize(w, { bits: 4, groupSize: 3, symmetric: true });
    expect(dequantize(q).data.length).toBe(6);
  });
});
