// GPTQ layout: bit-exact against the canonical packed layout of formats.h (for
// every width, a GPTQ qweight column is the little-endian word stream of the
// quantform row), v1/v2 zero points, and dequantization equal to quantform's.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dequantizeGptq, fromGptq, packGptq, toGptq, toGptqRef } from '../lib/export/gptq.js';
import { native } from '../lib/native.js';
import { f16ToF32, f32ToF16 } from '../lib/io/half.js';
import { readSafetensors, writeSafetensors, type SafeTensor } from '../lib/io/safetensors.js';
import { Tensor, dequantize, quantize, unpack, type Bits } from '../lib/index.js';

function randW(N: number, K: number, seed: number): Tensor {
  let s = seed;
  const d = new Float32Array(N * K);
  for (let i = 0; i < d.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = (s / 4294967296 - 0.5) * (1 + (i % 7));
  }
  return new Tensor(d, [N, K]);
}

describe('GPTQ packing', () => {
  it('the native packing (a transpose of words) equals the TS bit loops on awkward shapes, every width, both formats', () => {
    let cases = 0;
    for (const bits of [2, 3, 4, 8] as Bits[])
      for (const [N, K] of [[1, 8], [3, 9], [7, 31], [65, 172], [130, 256], [33, 300]])
        for (const gs of [8, 32, 1 << 20])
          for (const sym of [false, true])
            for (const fmt of ['gptq', 'gptq_v2'] as const) {
              if (bits === 8 && fmt === 'gptq') continue;
              const q = quantize(randW(N, K, N * 31 + K + bits), { bits, groupSize: Math.min(gs, K), symmetric: sym, paramDtype: 'f16' });
              const a = toGptq(q, fmt), b = toGptqRef(q, fmt);
              const what = `${bits}-bit [${N}, ${K}] g${Math.min(gs, K)} ${sym ? 'sym' : 'asym'} ${fmt}`;
              expect([a.qweightShape, a.qzerosShape, a.scalesShape], what).toEqual([b.qweightShape, b.qzerosShape, b.scalesShape]);
              expect(Buffer.from(a.qweight.buffer).equals(Buffer.from(b.qweight.buffer)), `${what} qweight`).toBe(true);
              expect(Buffer.from(a.qzeros.buffer).equals(Buffer.from(b.qzeros.buffer)), `${what} qzeros`).toBe(true);
              expect(Buffer.from(a.scales.buffer).equals(Buffer.from(b.scales.buffer)), `${what} scales`).toBe(true);
              expect(Array.from(a.gIdx), `${what} g_idx`).toEqual(Array.from(b.gIdx));
              cases++;
            }
    expect(cases).toBe(4 * 6 * 3 * 2 * 2 - 6 * 3 * 2);
  });

  it('the native packing re-checks what it is handed: lengths, zero points, 8-bit v1', () => {
    const q = quantize(randW(4, 32, 5), { bits: 4, groupSize: 16, paramDtype: 'f16' });
    const call = (over: Partial<{ qw: Int32Array; zeros: Uint16Array; bits: number; v1: boolean }>) =>
      native().gptqPack(over.qw ?? new Int32Array(16), new Int32Array(2), new Uint16Array(8), q.codes, q.scales as Uint16Array, over.zeros ?? (q.zeros as Uint16Array),
        4, 32, over.bits ?? 4, 16, false, over.v1 ?? false, false);
    expect(() => call({})).not.toThrow();
    expect(() => call({ qw: new Int32Array(15) })).toThrow(/Expected 16 elements for qweight but received 15/);
    expect(() => call({ zeros: Uint16Array.from(q.zeros as Uint16Array, (z, i) => (i === 3 ? f32ToF16(2.5) : z)) })).toThrow(/Expected integer zero points in \[0, 15\] but zeros\[3\] is 2\.5/);
    expect(() => call({ zeros: new Uint16Array(7) })).toThrow(/Expected 8 elements for zeros but received 7/);
  });

  for (const bits of [2, 3, 4, 8] as Bits[]) {
    it(`${bits}-bit qweight columns are the little-endian words of formats.h rows`, () => {
      const N = 5, K = 64;
      const q = quantize(randW(N, K, bits), { bits, groupSize: 32, paramDtype: 'f16' });
      const g = toGptq(q, 'gptq_v2');
      const rb = q.codes.length / N;
      expect(g.qweightShape).toEqual([(K * bits) / 32, N]);
      for (let n = 0; n < N; n++) {
        const row = Buffer.from(q.codes.buffer, q.codes.byteOffset + n * rb, rb);
        for (let w = 0; w < g.qweightShape[0]; w++) expect(g.qweight[w * N + n]).toBe(row.readInt32LE(4 * w));
      }
    });
  }

  it('4-bit qzeros pack 8 columns per word, low nibble first; v1 stores z - 1', () => {
    const N = 9, K = 8, G = 1;
    const codes8 = new Uint8Array(N * K);
    const zeros = Float32Array.from({ length: N * G }, (_, n) => (n * 5) % 16);
    const scales = Uint16Array.from({ length: N * G }, () => f32ToF16(0.5));
    const v2 = packGptq(codes8, zeros, scales, N, K, 4, 8, 'gptq_v2');
    const v1 = packGptq(codes8, zeros, scales, N, K, 4, 8, 'gptq');
    expect(v2.qzerosShape).toEqual([1, 2]);
    let expect0 = 0;
    for (let n = 0; n < 8; n++) expect0 |= zeros[n] << (4 * n);
    expect(v2.qzeros[0]).toBe(expect0 | 0);
    expect(v2.qzeros[1]).toBe(zeros[8]);
    expect((v1.qzeros[0] >>> 4) & 0xf).toBe(zeros[1] - 1);
    expect(v1.qzeros[0] & 0xf).toBe(15);  // z = 0 wraps in v1: why asymmetric models use gptq_v2
  });

  for (const [bits, sym, fmt] of [[4, false, 'gptq_v2'], [4, true, 'gptq'], [3, false, 'gptq_v2'], [2, true, 'gptq']] as const) {
    it(`dequantizes exactly as quantform (${bits}-bit, ${sym ? 'sym' : 'asym'}, ${fmt}), ragged K`, () => {
      const N = 7, K = 172;
      const q = quantize(randW(N, K, 11), { bits, groupSize: 32, symmetric: sym, paramDtype: 'f16' });
      const ref = dequantize(q).data as Float32Array;
      const back = dequantizeGptq(toGptq(q, fmt), N, K, bits, fmt);
      expect(Buffer.from(back.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
    });
  }

  for (const [bits, sym, fmt, gs] of [[4, false, 'gptq_v2', 32], [4, true, 'gptq', 128], [3, false, 'gptq_v2', 16], [2, true, 'gptq', 64], [8, false, 'gptq_v2', 172]] as const)
    it(`reads back into the canonical format bit for bit (${bits}-bit g${gs}, ${sym ? 'sym' : 'asym'}, ${fmt})`, () => {
      const N = 6, K = 172;
      const q = quantize(randW(N, K, 5), { bits, groupSize: gs, symmetric: sym, paramDtype: 'f16' });
      const back = fromGptq(toGptq(q, fmt), N, K, bits, fmt)!;
      expect(back).not.toBeNull();
      expect([back.bits, back.groupSize, back.symmetric, back.paramDtype]).toEqual([bits, Math.min(gs, K), sym, 'f16']);
      expect(Buffer.from(back.codes).equals(Buffer.from(q.codes))).toBe(true);
      expect(Array.from(back.scales)).toEqual(Array.from(q.scales));
      if (!sym) expect(Array.from(back.zeros!)).toEqual(Array.from(q.zeros!));
      else expect(back.zeros).toBeNull();
    });

  it('leaves act-order checkpoints and v1-overflowed zero points to the fp32 path', () => {
    const N = 3, K = 16;
    const q = quantize(randW(N, K, 9), { bits: 4, groupSize: 8, paramDtype: 'f16' });
    const g = toGptq(q, 'gptq_v2');
    const shuffled = { ...g, gIdx: Int32Array.from([1, 0, ...Array.from(g.gIdx).slice(2)]) };
    expect(fromGptq(shuffled, N, K, 4, 'gptq_v2')).toBeNull();
    const zeroAtZero = packGptq(new Uint8Array(N * K), new Float32Array(N * 2), q.scales as Uint16Array, N, K, 4, 8, 'gptq');
    expect(fromGptq(zeroAtZero, N, K, 4, 'gptq')).toBeNull(); // stored 15 reads as z = 16
  });

  for (const bits of [2, 3, 4, 8] as Bits[])
    it(`${bits}-bit: rows of whole words pack by transpose exactly as the per-code loop does, and read back (odd N, several tiles)`, () => {
      const N = 131, K = 256;  // 131 x (K b / 32) words: more than one 64 x 64 tile, ragged
      const q = quantize(randW(N, K, 3 + bits), { bits, groupSize: 64, paramDtype: 'f16' });
      const fast = toGptq(q, 'gptq_v2');
      const zeros = Float32Array.from(q.zeros as Uint16Array, (h) => f16ToF32(h));
      const loop = packGptq(unpack(q.codes, [N, K], bits), zeros, q.scales as Uint16Array, N, K, bits, 64, 'gptq_v2');
      expect(fast.qweightShape).toEqual(loop.qweightShape);
      expect(Buffer.from(fast.qweight.buffer).equals(Buffer.from(loop.qweight.buffer))).toBe(true);
      expect(Buffer.from(fast.qzeros.buffer).equals(Buffer.from(loop.qzeros.buffer))).toBe(true);
      const back = fromGptq(fast, N, K, bits, 'gptq_v2')!;
      expect(Buffer.from(back.codes).equals(Buffer.from(q.codes))).toBe(true);
    });

  it('f16 helpers round-trip every finite half', () => {
    for (let h = 0; h < 0x7c00; h += 7) expect(f32ToF16(f16ToF32(h))).toBe(h);
  });
});

describe('safetensors', () => {
  it('writes and reads back F32, F16 and I32 tensors', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-st-'));
    try {
      const t = new Map<string, SafeTensor>([
        ['a', { dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6.5]) }],
        ['b.qweight', { dtype: 'I32', shape: [3], data: Int32Array.from([-1, 0, 0x7fffffff]) }],
        ['c', { dtype: 'F16', shape: [1], data: Uint16Array.from([0x3c00]) }],
      ]);
      const f = path.join(dir, 'x.safetensors');
      writeSafetensors(f, t, { format: 'pt' });
      const r = readSafetensors(f);
      expect([...r.keys()].sort()).toEqual(['a', 'b.qweight', 'c']);
      expect([...r.get('a')!.data]).toEqual([1, 2, 3, 4, 5, 6.5]);
      expect(r.get('b.qweight')!.dtype).toBe('I32');
      expect([...r.get('b.qweight')!.data]).toEqual([-1, 0, 0x7fffffff]);
      expect(r.get('c')!.data[0]).toBe(0x3c00);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
