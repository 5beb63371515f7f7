// Quantized-linear backward (E2E-QP): _ref against central finite differences of
// the forward y = x · Ŵᵀ computed by lib/ops/matmul.ts's dequant-matmul, then the
// AVX-512 tier against _ref on awkward shapes (M = 1, 3, 17; K ragged against the
// group size and the kernels' tiles; INT2/3/4/8; sym and asym), then the contract
// (skipping either output, accumulation into gradScales, thread-count independence)
// and bad input.
import { afterEach, describe, expect, it } from 'vitest';
import {
  matmul, quantize, QuantizedTensor, quantLinearBackward, quantLinearBackwardAsync, setKernelPolicy, setThreads, Tensor,
  type Bits,
} from '../lib/index.js';
import { f16ToF32 } from '../lib/io/half.js';
import { nmse, randomWeights } from './helpers/oracle.js';
import { availableTiers, withTier } from './helpers/tiers.js';

/** central differences of an f32 forward that is linear in x and in s: only rounding separates them */
const FD_REL_TOL = 1e-3;
/** AVX-512 (f32 lanes) vs _ref (double sums) */
const TIER_NMSE = 1e-11;

const hasAvx512 = availableTiers().includes('avx512');
if (!hasAvx512) console.log('qlinear: no AVX-512 on this CPU, AVX-512 vs ref comparisons skipped');

afterEach(() => {
  setKernelPolicy('auto');
  setThreads(0);
});

/** A quantized weight with f32 parameters whose step sizes are perturbed away from RTN's (trained ones). */
function weight(N: number, K: number, bits: Bits, gs: number | 'channel', sym: boolean, seed: number): QuantizedTensor {
  const q = quantize(new Tensor(randomWeights(N * K, seed), [N, K]), { bits, groupSize: gs, symmetric: sym, paramDtype: 'f32' });
  const s = Float32Array.from(q.scales as Float32Array, (v, i) => (v === 0 ? 0.01 : v) * (0.8 + 0.4 * ((i * 7919) % 13) / 13));
  return new QuantizedTensor(q.codes, s, q.zeros, q.shape, q.bits, q.groupSize, q.symmetric, 'f32');
}

function withScales(q: QuantizedTensor, s: Float32Array): QuantizedTensor {
  return new QuantizedTensor(q.codes, s, q.zeros, q.shape, q.bits, q.groupSize, q.symmetric, 'f32');
}

/** L = Σ R ⊙ (x · Ŵᵀ) through the dequant-matmul */
function loss(x: Float32Array, M: number, q: QuantizedTensor, R: Float32Array): number {
  const y = matmul(new Tensor(x, [M, q.shape[1]]), q).data as Float32Array;
  let s = 0;
  for (let i = 0; i < y.length; i++) s += R[i] * y[i];
  return s;
}

function fdCheck(f: (v: Float32Array) => number, v: Float32Array, g: Float32Array, h: number, count: number, seed: number): void {
  let maxErr = 0, maxG = 0, r = seed;
  for (let c = 0; c < count; c++) {
    r = (Math.imul(r, 1664525) + 1013904223) >>> 0;
    const i = r % v.length;
    const v0 = v[i];
    v[i] = v0 + h;
    const fp = f(v);
    v[i] = v0 - h;
    const fm = f(v);
    v[i] = v0;
    const fd = (fp - fm) / (2 * h);
    maxErr = Math.max(maxErr, Math.abs(fd - g[i]));
    maxG = Math.max(maxG, Math.abs(g[i]), Math.abs(fd));
  }
  expect(maxG).toBeGreaterThan(0);
  expect(maxErr / maxG).toBeLessThan(FD_REL_TOL);
}

interface Case { M: number; N: number; K: number; bits: Bits; gs: number | 'channel'; sym: boolean }
const CASES: Case[] = [
  { M: 1, N: 1, K: 8, bits: 4, gs: 8, sym: false },
  { M: 3, N: 5, K: 172, bits: 4, gs: 32, sym: false },
  { M: 17, N: 7, K: 172, bits: 3, gs: 32, sym: true },
  { M: 3, N: 40, K: 300, bits: 2, gs: 100, sym: false },
  { M: 1, N: 300, K: 136, bits: 4, gs: 'channel', sym: true },
  { M: 17, N: 33, K: 300, bits: 8, gs: 48, sym: false },
  { M: 3, N: 9, K: 43, bits: 3, gs: 5, sym: false },
  { M: 17, N: 270, K: 264, bits: 2, gs: 16, sym: true },
];
const label = (c: Case) => `M ${c.M}, N ${c.N}, K ${c.K}, INT${c.bits} g${c.gs} ${c.sym ? 'sym' : 'asym'}`;

describe('_ref vs central finite differences of the dequant-matmul forward', () => {
  for (const c of CASES.slice(0, 6))
    it(label(c), () => {
      const q = weight(c.N, c.K, c.bits, c.gs, c.sym, c.N + c.K);
      const x = randomWeights(c.M * c.K, 3, 31).map((v) => v * 5);
      const R = randomWeights(c.M * c.N, 4, 29).map((v) => v * 5);
      const g = withTier('ref', () => quantLinearBackward(R, x, q));
      fdCheck((v) => loss(v, c.M, q, R), x, g.gradInput!, 0.25, 24, 1);
      const s = (q.scales as Float32Array).slice();
      fdCheck((v) => loss(x, c.M, withScales(q, v), R), s, g.gradScales!, 0.01, 24, 2);
    });
});

describe('AVX-512 vs _ref', () => {
  for (const c of CASES)
    it.skipIf(!hasAvx512)(label(c), () => {
      const q = weight(c.N, c.K, c.bits, c.gs, c.sym, c.N * 3 + c.K);
      const x = randomWeights(c.M * c.K, 5), R = randomWeights(c.M * c.N, 6);
      const ref = withTier('ref', () => quantLinearBackward(R, x, q));
      const avx = withTier('avx512', () => quantLinearBackward(R, x, q));
      expect(nmse(avx.gradInput!, ref.gradInput!)).toBeLessThan(TIER_NMSE);
      expect(nmse(avx.gradScales!, ref.gradScales!)).toBeLessThan(TIER_NMSE);
    });
});

describe('contract', () => {
  const q = weight(37, 300, 4, 32, false, 9);
  const M = 5, x = randomWeights(M * 300, 7), R = randomWeights(M * 37, 8);
  it('gradInput is overwritten, gradScales accumulated; either can be skipped', async () => {
    const full = quantLinearBackward(R, x, q);
    const gi = new Float32Array(M * 300).fill(42);
    const only = quantLinearBackward(R, null, q, { gradScales: false, gradInput: gi });
    expect(only.gradScales).toBeNull();
    expect(only.gradInput).toBe(gi);
    expect(Array.from(gi)).toEqual(Array.from(full.gradInput!));
    const gs = full.gradScales!.slice();
    const twice = await quantLinearBackwardAsync(R, x, q, { gradInput: false, gradScales: gs });
    expect(twice.gradInput).toBeNull();
    for (let i = 0; i < gs.length; i++) expect(gs[i]).toBeCloseTo(2 * full.gradScales![i], 5);
  });
  it.skipIf(!hasAvx512)('results do not depend on the thread count (bit for bit)', () => {
    setThreads(1);
    const one = quantLinearBackward(R, x, q);
    setThreads(2);
    const two = quantLinearBackward(R, x, q);
    expect(Buffer.from(one.gradInput!.buffer).equals(Buffer.from(two.gradInput!.buffer))).toBe(true);
    expect(Buffer.from(one.gradScales!.buffer).equals(Buffer.from(two.gradScales!.buffer))).toBe(true);
  });
  it('f16 parameters are widened; trained f32 step sizes can be passed instead', () => {
    const h = quantize(new Tensor(randomWeights(6 * 64, 3), [6, 64]), { bits: 4, groupSize: 16, paramDtype: 'f16' });
    const x6 = randomWeights(2 * 64, 1), R6 = randomWeights(2 * 6, 2);
    const a = quantLinearBackward(R6, x6, h);
    const y = (s: Float32Array) => quantLinearBackward(R6, x6, h, { scales: s }).gradInput!;
    const widened = Float32Array.from(h.scales as Uint16Array, (v) => f16ToF32(v));
    expect(Array.from(y(widened))).toEqual(Array.from(a.gradInput!));
  });
  it('bad input', () => {
    expect(() => quantLinearBackward(new Float32Array(36), x, q)).toThrow(/Expected Float32Array with a positive multiple of 37 elements \(M, N\) for gradOutput/);
    expect(() => quantLinearBackward(R, x.subarray(1), q)).toThrow(/Expected Float32Array of 1500 elements \(M, K\) for x/);
    expect(() => quantLinearBackward(R, x, q, { scales: new Float32Array(3) })).toThrow(/Expected Float32Array of 370 elements \(N, G\) for scales/);
    expect(() => quantLinearBackward(R, x, q, { gradScales: new Float32Array(1) })).toThrow(/for gradScales/);
  });
});
