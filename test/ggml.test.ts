// ggml block types (lib/export/ggml.ts) against llama.cpp itself: the fixture
// test/fixtures/ggml/blocks.gguf holds, per type, blocks made by ggml's own
// ggml_quantize_chunk and the values ggml's dequantize_row_* returns for them
// (written with the gguf python package; make_fixtures.py). Every type in the trait
// table must decode them bit for bit, map them onto quantform's canonical format,
// and encode the same input at most as badly as ggml's reference quantizer. The
// exact exporters (encodeDirect) are tested bit-exact both ways.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  dequantize, encodeDirect, GGML_TYPES, ggmlType, quantize, readGgufHeader, Tensor, unpack, type GgmlTypeName,
} from '../lib/index.js';
import { fromParts } from '../lib/export/canonical.js';
import { CheckpointFile } from '../lib/io/file.js';
import { f16ToF32 } from '../lib/io/half.js';
import { ROOT } from './helpers/peers.js';

const FIXTURE = path.join(ROOT, 'test/fixtures/ggml/blocks.gguf');
const ROWS = 3, COLS = 512;
const BLOCK_TYPES: GgmlTypeName[] = ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'];
// canonical asymmetric form s * (q - z), z = min / s in f32: one f32 rounding away from ggml's d*q - m
const CANONICAL_ABS_TOL = 1e-7;
// our encoders may not be worse than ggml's reference quantizers (NMSE ratio on the same input)
const ENCODER_NMSE_RATIO = 1.02;

function fixture() {
  const f = new CheckpointFile(FIXTURE);
  const h = readGgufHeader(f);
  const bytes = (name: string) => {
    const t = h.tensors.find((x) => x.name === name);
    if (!t) throw new Error(`fixture lacks ${name}`);
    return { t, b: f.read(t.offset, t.nbytes, name) };
  };
  const f32 = (name: string) => ggmlType('F32').dequantize(bytes(name).b, ROWS * COLS);
  return { f, h, bytes, f32, input: f32('input') };
}

const nmse = (a: Float32Array, b: Float32Array) => {
  let e = 0, d = 0;
  for (let i = 0; i < a.length; i++) { e += (a[i] - b[i]) ** 2; d += b[i] ** 2; }
  return e / d;
};

describe('ggml block types against llama.cpp (fixture from ggml_quantize_chunk / dequantize_row_*)', () => {
  const fx = fixture();

  it('the fixture is read by the GGUF header reader with every type and shape', () => {
    for (const name of BLOCK_TYPES) {
      const { t } = fx.bytes(name);
      expect(t.type.name).toBe(name);
      expect(t.shape).toEqual([ROWS, COLS]);
    }
    expect(fx.h.metadata.get('quantform.fixture')).toMatch(/ggml_quantize_chunk/);
  });

  it.each(BLOCK_TYPES)('%s: dequantize is bit-identical to ggml', (name) => {
    const got = ggmlType(name).dequantize(fx.bytes(name).b, ROWS * COLS);
    const want = fx.f32(`${name}.expect`);
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
  });

  it.each(BLOCK_TYPES)('%s: canonical form (packed, native dequantize) gives ggml\'s values', (name) => {
    const t = ggmlType(name);
    const parts = t.toCanonical!(fx.bytes(name).b, ROWS, COLS)!;
    const q = fromParts(parts, ROWS, COLS);
    const got = dequantize(q).data as Float32Array, want = fx.f32(`${name}.expect`);
    let maxd = 0;
    for (let i = 0; i < want.length; i++) maxd = Math.max(maxd, Math.abs(got[i] - want[i]));
    // symmetric forms multiply the same two floats as ggml: bit-exact
    if (parts.symmetric) expect(maxd).toBe(0);
    else expect(maxd).toBeLessThan(CANONICAL_ABS_TOL);
    expect([2, 4, 8]).toContain(parts.bits);
  });

  it.each(BLOCK_TYPES)('%s: our encoder is at least as accurate as ggml\'s reference quantizer', (name) => {
    const t = ggmlType(name);
    const ours = t.dequantize(t.quantize(fx.input), ROWS * COLS);
    const theirs = fx.f32(`${name}.expect`);
    const a = nmse(ours, fx.input), b = nmse(theirs, fx.input);
    console.log(`${name}: NMSE ours ${a.toExponential(3)}, ggml ${b.toExponential(3)}`);
    expect(a).toBeLessThanOrEqual(b * ENCODER_NMSE_RATIO);
  });

  it('F32, F16, BF16 round trip; every trait has consistent sizes', () => {
    const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * 3);
    expect(Array.from(ggmlType('F32').dequantize(ggmlType('F32').quantize(x), 64))).toEqual(Array.from(x));
    const h = ggmlType('F16').dequantize(ggmlType('F16').quantize(x), 64);
    const b = ggmlType('BF16').dequantize(ggmlType('BF16').quantize(x), 64);
    for (let i = 0; i < 64; i++) {
      expect(Math.abs(h[i] - x[i])).toBeLessThanOrEqual(Math.abs(x[i]) * 2 ** -11);
      expect(Math.abs(b[i] - x[i])).toBeLessThanOrEqual(Math.abs(x[i]) * 2 ** -8);
    }
    for (const t of GGML_TYPES) expect(t.quantize(new Float32Array(t.blockSize * 2)).length).toBe(2 * t.typeSize);
    expect(() => ggmlType('Q4_K').quantize(new Float32Array(100))).toThrow(/100 values are not a multiple of the block size 256/);
    expect(() => ggmlType('Q4_0').dequantize(new Uint8Array(10), 32)).toThrow(/32 values need 18 bytes but 10 were given/);
  });
});

describe('exact encoders (canonical -> Q4_0 / Q4_1 / Q5_0 / Q8_0) both ways', () => {
  const fx = fixture();
  const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + seed * 78.233) * 0.05 + (i % 97 === 0 ? 0.3 : 0));

  it.each(['Q4_0', 'Q8_0'] as const)('%s from ggml -> canonical -> the same type gives the same bytes', (name) => {
    const { b } = fx.bytes(name);
    const q = fromParts(ggmlType(name).toCanonical!(b, ROWS, COLS)!, ROWS, COLS);
    expect(Buffer.from(encodeDirect(q, name)).equals(b)).toBe(true);
  });

  it('Q4_1 from ggml -> canonical (z = -m/d in f32) -> Q4_1 gives back every d, every code and every m', () => {
    const { b } = fx.bytes('Q4_1');
    const q = fromParts(ggmlType('Q4_1').toCanonical!(b, ROWS, COLS)!, ROWS, COLS);
    const back = encodeDirect(q, 'Q4_1');
    let differ = 0;
    for (let i = 0; i < b.length; i++) if (back[i] !== b[i]) differ++;
    expect(differ).toBe(0);
  });

  // awkward shapes: one row, odd row counts, K = 32 (one block), groups spanning several blocks
  const shapes: [number, number][] = [[1, 32], [3, 96], [7, 256], [2, 128]];
  it.each([
    { bits: 4, sym: true, type: 'Q4_0' }, { bits: 3, sym: true, type: 'Q4_0' }, { bits: 2, sym: true, type: 'Q4_0' },
    { bits: 3, sym: false, type: 'Q4_0' }, { bits: 2, sym: false, type: 'Q4_0' }, { bits: 4, sym: false, type: 'Q5_0' },
    { bits: 8, sym: true, type: 'Q8_0' },
  ] as const)('INT$bits sym=$sym -> $type is bit-exact, and decodes back to the same codes', ({ bits, sym, type }) => {
    for (const [N, K] of shapes)
      for (const gs of [32, 64, 128].filter((g) => g <= K && K % 32 === 0)) {
        const q = quantize(new Tensor(rand(N * K, N + K + gs), [N, K]), { bits, groupSize: gs, symmetric: sym, paramDtype: 'f16' });
        const blocks = encodeDirect(q, type);
        const got = ggmlType(type).dequantize(blocks, N * K), want = dequantize(q).data as Float32Array;
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
        if (type === 'Q4_0' && bits === 4) {
          // and the loader's canonical form of those blocks is the original, code for code (group 32)
          const back = fromParts(ggmlType('Q4_0').toCanonical!(blocks, N, K)!, N, K);
          const scales = q.scales as Uint16Array;
          expect(Array.from(unpack(back.codes, [N, K], 4))).toEqual(Array.from(unpack(q.codes, [N, K], 4)));
          const G = Math.ceil(K / gs);
          for (let n = 0; n < N; n++)
            for (let b = 0; b < K / 32; b++) expect((back.scales as Uint16Array)[n * (K / 32) + b]).toBe(scales[n * G + Math.floor((32 * b) / gs)]);
        }
      }
  });

  it('INT4 asym -> Q4_1 keeps codes and d; m is -d*z rounded once to f16', () => {
    const [N, K] = [5, 128];
    const q = quantize(new Tensor(rand(N * K, 9), [N, K]), { bits: 4, groupSize: 32, symmetric: false, paramDtype: 'f16' });
    const blocks = encodeDirect(q, 'Q4_1');
    const codes = unpack(q.codes, [N, K], 4);
    for (let n = 0; n < N; n++)
      for (let b = 0; b < K / 32; b++) {
        const o = (n * (K / 32) + b) * 20;
        const d = blocks[o] | (blocks[o + 1] << 8), m = f16ToF32(blocks[o + 2] | (blocks[o + 3] << 8));
        expect(d).toBe((q.scales as Uint16Array)[n * 4 + b]);
        const z = f16ToF32((q.zeros as Uint16Array)[n * 4 + b]);
        expect(Math.abs(m + f16ToF32(d) * z)).toBeLessThanOrEqual(Math.abs(m) * 2 ** -11);
        for (let j = 0; j < 16; j++) {
          expect(blocks[o + 4 + j] & 15).toBe(codes[n * K + b * 32 + j]);
          expect(blocks[o + 4 + j] >> 4).toBe(codes[n * K + b * 32 + 16 + j]);
        }
      }
  });
});
