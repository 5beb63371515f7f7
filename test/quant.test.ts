// Quantization family: native reference vs an independent oracle, every SIMD
// tier vs the reference (bit-exact codes), packing both ways between tiers,
// dtypes, async forms.
import { describe, expect, it } from 'vitest';
import {
  dequantize, dequantizeAsync, pack, packAsync, packedRowBytes, quantize, quantizeAsync, Tensor, unpack, unpackAsync,
  type Bits,
} from '../lib/index.js';
import { nmse, oracleDequantize, oraclePack, oracleQuantize, randomWeights } from './helpers/oracle.js';
import { availableTiers, withTier } from './helpers/tiers.js';

// Awkward shapes: K not a multiple of any SIMD width, ragged last groups,
// K smaller than one group, one row, K spanning several 2048-code chunks.
const SHAPES: [number, number][] = [[1, 1], [3, 7], [5, 172], [2, 33], [4, 300], [2, 4133], [7, 64]];
const BITS: Bits[] = [2, 3, 4, 8];
const GROUPS = [1, 5, 32, 64, 128, 'channel'] as const;
const tiers = availableTiers();

function codesOf(q: ReturnType<typeof quantize>): Uint8Array {
  return unpack(q.codes, q.shape, q.bits);
}

describe('quantize: native reference matches the independent oracle', () => {
  for (const [N, K] of SHAPES)
    for (const bits of BITS)
      for (const symmetric of [true, false])
        it(`[${N}, ${K}] ${bits}-bit ${symmetric ? 'sym' : 'asym'}`, () => {
          const w = randomWeights(N * K, N * 1000 + K + bits);
          for (const gs of GROUPS) {
            const groupSize = gs === 'channel' ? K : Math.min(gs, K);
            const o = oracleQuantize(w, N, K, { bits, groupSize, symmetric });
            const q = withTier('ref', () => quantize(new Tensor(w, [N, K]), { bits, groupSize: gs, symmetric }));
            expect(Array.from(q.scales)).toEqual(Array.from(o.scales));
            if (!symmetric) expect(Array.from(q.zeros!)).toEqual(Array.from(o.zeros!));
            expect(Buffer.from(q.codes).equals(Buffer.from(oraclePack(o.codes8, N, K, bits)))).toBe(true);
            const d = withTier('ref', () => dequantize(q));
            expect(Array.from(d.data)).toEqual(Array.from(oracleDequantize(o, N, K, { bits, groupSize, symmetric })));
          }
        });
});

describe.each(tiers.filter((t) => t !== 'ref'))('tier %s matches the reference bit for bit', (tier) => {
  for (const [N, K] of SHAPES)
    for (const bits of BITS)
      it(`[${N}, ${K}] ${bits}-bit`, () => {
        const w = new Tensor(randomWeights(N * K, 7 * N + K), [N, K]);
        for (const symmetric of [true, false])
          for (const gs of GROUPS) {
            const opts = { bits, groupSize: gs, symmetric } as const;
            const ref = withTier('ref', () => quantize(w, opts));
            const got = withTier(tier, () => quantize(w, opts));
            expect(Buffer.from(got.codes).equals(Buffer.from(ref.codes))).toBe(true);
            expect(Array.from(got.scales)).toEqual(Array.from(ref.scales));
            if (!symmetric) expect(Array.from(got.zeros!)).toEqual(Array.from(ref.zeros!));
            const dRef = withTier('ref', () => dequantize(ref));
            const dGot = withTier(tier, () => dequantize(ref));
            expect(Buffer.from(dGot.data.buffer).equals(Buffer.from(dRef.data.buffer))).toBe(true);
          }
      });
});

describe('pack / unpack: bit-exact both ways between every pair of tiers', () => {
  for (const bits of BITS)
    for (const [N, K] of [[1, 1], [3, 9], [2, 67], [4, 2049], [2, 4133]] as [number, number][])
      it(`${bits}-bit [${N}, ${K}]`, () => {
        const codes8 = new Uint8Array(N * K);
        let x = 12345 + K;
        for (let i = 0; i < codes8.length; i++) {
          x = (x * 1103515245 + 12345) >>> 0;
          codes8[i] = (x >>> 16) & ((1 << bits) - 1);
        }
        const expected = oraclePack(codes8, N, K, bits);
        expect(expected.length).toBe(N * packedRowBytes(bits, K));
        for (const packer of tiers) {
          const packed = withTier(packer, () => pack(codes8, [N, K], bits));
          expect(Buffer.from(packed).equals(Buffer.from(expected))).toBe(true);
          for (const unpacker of tiers) {
            const back = withTier(unpacker, () => unpack(packed, [N, K], bits));
            expect(Buffer.from(back).equals(Buffer.from(codes8))).toBe(true);
          }
        }
      });
});

describe('layout details from formats.h', () => {
  it('INT4 puts the even code in the low nibble', () => {
    expect(Array.from(pack(Uint8Array.from([0x1, 0xa, 0x3]), [1, 3], 4))).toEqual([0xa1, 0x03]);
  });
  it('INT2 fills a byte from its lowest bits', () => {
    expect(Array.from(pack(Uint8Array.from([1, 2, 3, 0, 3]), [1, 5], 2))).toEqual([0b00111001, 0b11]);
  });
  it('INT3 stores 8 codes in 3 little-endian bytes', () => {
    const codes = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 0, 5]);
    // word = sum code_j << 3j
    let word = 0;
    for (let j = 0; j < 8; j++) word += codes[j] * 2 ** (3 * j);
    expect(Array.from(pack(codes, [1, 9], 3))).toEqual([word & 0xff, (word >> 8) & 0xff, (word >> 16) & 0xff, 5, 0, 0]);
  });
  it('symmetric codes are offset by 2^(bits-1) and reach the negative end', () => {
    const q = quantize(Tensor.fromArray([-1, 1, 0.3, 0], [1, 4]), { bits: 4, groupSize: 4, symmetric: true });
    // scale = 1/7: -1 -> -7 -> 1, 1 -> 7 -> 15, 0.3 -> round(2.1) = 2 -> 10, 0 -> 8
    expect(Array.from(unpack(q.codes, [1, 4], 4))).toEqual([1, 15, 10, 8]);
    expect(q.scales[0]).toBe(Math.fround(1 / 7));
    expect(q.zeros).toBeNull();
  });
  it('an all-zero group dequantizes to zeros', () => {
    const q = quantize(new Tensor(new Float32Array(8), [2, 4]), { bits: 3, groupSize: 2 });
    expect(Array.from(dequantize(q).data)).toEqual(new Array(8).fill(0));
  });
});

describe('dtypes', () => {
  it('f16 scales are rounded before codes are chosen, so dequantize matches', () => {
    const [N, K] = [3, 100];
    const w = new Tensor(randomWeights(N * K, 99), [N, K]);
    const q32 = quantize(w, { bits: 4, groupSize: 32, paramDtype: 'f32' });
    const q16 = quantize(w, { bits: 4, groupSize: 32, paramDtype: 'f16' });
    expect(q16.scales).toBeInstanceOf(Uint16Array);
    const d16 = dequantize(q16).data as Float32Array;
    expect(nmse(d16, w.data as Float32Array)).toBeLessThan(1e-2);
    expect(nmse(d16, dequantize(q32).data as Float32Array)).toBeLessThan(1e-5);
  });

  it('bf16 and f16 weights quantize like their f32 values', () => {
    const vals = [0.5, -0.25, 1.5, 2, -3, 0.125, 0, 1];
    const bf16 = Uint16Array.from(vals.map((v) => new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16));
    // these values are exact in binary16: sign | exponent | mantissa written out
    const f16 = Uint16Array.from([0x3800, 0xb400, 0x3e00, 0x4000, 0xc200, 0x3000, 0x0000, 0x3c00]);
    const ref = quantize(Tensor.fromArray(vals, [2, 4]), { bits: 4, groupSize: 4 });
    for (const [data, dtype] of [[bf16, 'bf16'], [f16, 'f16']] as const) {
      const q = quantize(new Tensor(data, [2, 4], dtype), { bits: 4, groupSize: 4 });
      expect(Buffer.from(q.codes).equals(Buffer.from(ref.codes))).toBe(true);
      expect(Array.from(q.scales)).toEqual(Array.from(ref.scales));
    }
  });

  it('half weights widen a few rows at a time inside the parallel chunks: the same codes as their f32 values, the NaN row named', () => {
    // K = 4097: three rows per widened chunk, chunks and pool splits that do not line up
    const N = 37, K = 4097;
    let s = 7;
    const f = Float32Array.from({ length: N * K }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5) * 3);
    const bf = Uint16Array.from(f, (v) => new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16);
    const wide = Float32Array.from(bf, (h) => new Float32Array(new Uint32Array([h << 16]).buffer)[0]);
    for (const symmetric of [false, true]) {
      const opts = { bits: 4 as const, groupSize: 128, symmetric, paramDtype: 'f16' as const };
      const a = quantize(new Tensor(bf, [N, K], 'bf16'), opts), b = quantize(new Tensor(wide, [N, K]), opts);
      expect(Buffer.from(a.codes).equals(Buffer.from(b.codes))).toBe(true);
      expect(Buffer.from(a.scales.buffer).equals(Buffer.from(b.scales.buffer))).toBe(true);
      if (!symmetric) expect(Buffer.from(a.zeros!.buffer).equals(Buffer.from(b.zeros!.buffer))).toBe(true);
    }
    const bad = bf.slice();
    bad[29 * K + 4000] = 0x7fc0;  // bf16 NaN
    expect(() => quantize(new Tensor(bad, [N, K], 'bf16'), { bits: 4, groupSize: 128 })).toThrow(/row 29 holds NaN or Inf/);
  });

  it('dequantizes to bf16 and f16 with round-to-nearest-even', () => {
    const q = quantize(Tensor.fromArray([1, -1, 0.5, 0.3], [1, 4]), { bits: 8, groupSize: 4, symmetric: true });
    const f32 = dequantize(q).data as Float32Array;
    const bf = dequantize(q, 'bf16').data as Uint16Array;
    const h = dequantize(q, 'f16').data as Uint16Array;
    for (let i = 0; i < 4; i++) {
      const back = new Float32Array(new Uint32Array([bf[i] << 16]).buffer)[0];
      expect(Math.abs(back - f32[i])).toBeLessThanOrEqual(Math.abs(f32[i]) * 2 ** -8);
      // f16 -> f32 by the spec: 1.mantissa * 2^(e-15)
      const e = (h[i] >> 10) & 0x1f;
      const m = h[i] & 0x3ff;
      const val = (h[i] & 0x8000 ? -1 : 1) * (1 + m / 1024) * 2 ** (e - 15);
      expect(Math.abs(val - f32[i])).toBeLessThanOrEqual(Math.abs(f32[i]) * 2 ** -11);
    }
  });
});

describe('dequantize into a caller-owned buffer', () => {
  it('fills `out` and returns a tensor over it', () => {
    const w = new Tensor(randomWeights(6 * 40, 4), [6, 40]);
    const q = quantize(w, { bits: 4, groupSize: 16 });
    const out = new Float32Array(240).fill(NaN);
    const d = dequantize(q, { out });
    expect(d.data).toBe(out);
    expect(Array.from(out)).toEqual(Array.from(dequantize(q).data));
    const h = new Uint16Array(240);
    expect(dequantize(q, { dtype: 'bf16', out: h }).data).toBe(h);
  });
  it('rejects a wrong-sized or wrong-kind buffer', () => {
    const q = quantize(new Tensor(randomWeights(12, 4), [3, 4]), { bits: 8, groupSize: 4 });
    expect(() => dequantize(q, { out: new Float32Array(11) })).toThrow(/^Expected Float32Array of length 12 for out but received Float32Array of length 11$/);
    expect(() => dequantize(q, { dtype: 'f16', out: new Float32Array(12) })).toThrow(/Expected Uint16Array of length 12 for out/);
  });
});

describe('async forms give the same bytes as the sync ones', () => {
  it('quantize, dequantize, pack, unpack', async () => {
    const w = new Tensor(randomWeights(64 * 300, 5), [64, 300]);
    const opts = { bits: 3, groupSize: 64, symmetric: false } as const;
    const a = quantize(w, opts);
    const b = await quantizeAsync(w, opts);
    expect(Buffer.from(b.codes).equals(Buffer.from(a.codes))).toBe(true);
    const da = dequantize(a);
    const db = await dequantizeAsync(b);
    expect(Array.from(db.data)).toEqual(Array.from(da.data));
    const c8 = await unpackAsync(a.codes, a.shape, 3);
    expect(Buffer.from(c8).equals(Buffer.from(unpack(a.codes, a.shape, 3)))).toBe(true);
    expect(Buffer.from(await packAsync(c8, a.shape, 3)).equals(Buffer.from(a.codes))).toBe(true);
  });
  it('many concurrent calls resolve independently', async () => {
    const ws = Array.from({ length: 8 }, (_, i) => new Tensor(randomWeights(16 * 256, i + 1), [16, 256]));
    const qs = await Promise.all(ws.map((w) => quantizeAsync(w, { bits: 4, groupSize: 32 })));
    qs.forEach((q, i) => expect(Buffer.from(q.codes).equals(Buffer.from(quantize(ws[i], { bits: 4, groupSize: 32 }).codes))).toBe(true));
  });
});

describe('quantization error is what the bit width allows', () => {
  it('NMSE falls by about 4x per extra bit (RTN, g32)', () => {
    const w = new Tensor(randomWeights(32 * 512, 3, 1 << 30), [32, 512]);
    const err = BITS.map((bits) => nmse(dequantize(quantize(w, { bits, groupSize: 32 })).data as Float32Array, w.data as Float32Array));
    // uniform weights: step^2/12 relative to variance ~ 1/(2^b - 1)^2
    for (let i = 0; i < BITS.length; i++) {
      const b = BITS[i];
      expect(err[i]).toBeLessThan(1.5 / (2 ** b - 1) ** 2);
      expect(err[i]).toBeGreaterThan(0.1 / (2 ** b - 1) ** 2);
    }
  });
});
