// Fake quantization: forward against the oracle, backward against finite
// differences, SIMD tiers against the reference.
import { describe, expect, it } from 'vitest';
import { fakeQuantize, fakeQuantizeBackward, fakeQuantizeAsync, fakeQuantizeBackwardAsync, Tensor, type Bits } from '../lib/index.js';
import { nmse, randomWeights, rint } from './helpers/oracle.js';
import { availableTiers, withTier } from './helpers/tiers.js';

const f = Math.fround;
// Group sums are accumulated in f32 SIMD lanes vs f64 in the reference.
const GRAD_NMSE_TOL = 1e-10;

interface Case { N: number; K: number; bits: Bits; groupSize: number; symmetric: boolean }
const CASES: Case[] = [
  { N: 3, K: 7, bits: 4, groupSize: 3, symmetric: false },
  { N: 5, K: 172, bits: 4, groupSize: 32, symmetric: true },
  { N: 2, K: 300, bits: 3, groupSize: 64, symmetric: false },
  { N: 4, K: 65, bits: 2, groupSize: 65, symmetric: true },
  { N: 2, K: 129, bits: 8, groupSize: 17, symmetric: false },
];

/** Trainable-looking parameters: RTN-like scales shrunk so some weights clip, fractional zeros. */
function params(c: Case, seed: number) {
  const G = Math.ceil(c.K / c.groupSize);
  const w = randomWeights(c.N * c.K, seed);
  const scales = new Float32Array(c.N * G);
  const zeros = c.symmetric ? null : new Float32Array(c.N * G);
  for (let r = 0; r < c.N; r++)
    for (let g = 0; g < G; g++) {
      let amax = 0;
      for (let k = g * c.groupSize; k < Math.min(c.K, (g + 1) * c.groupSize); k++) amax = Math.max(amax, Math.abs(w[r * c.K + k]));
      scales[r * G + g] = (0.7 * 2 * amax) / (2 ** c.bits - 1);
      if (zeros) zeros[r * G + g] = 2 ** (c.bits - 1) - 0.3 + 0.1 * (g % 3);
    }
  const grad = randomWeights(c.N * c.K, seed + 1, 1 << 30);
  return { w, scales, zeros, grad, G };
}

function range(c: Case): [number, number] {
  return c.symmetric ? [-(2 ** (c.bits - 1)), 2 ** (c.bits - 1) - 1] : [0, 2 ** c.bits - 1];
}

describe('fake-quant forward matches the spec', () => {
  for (const c of CASES)
    it(`[${c.N}, ${c.K}] ${c.bits}-bit g${c.groupSize} ${c.symmetric ? 'sym' : 'asym'}`, () => {
      const { w, scales, zeros, G } = params(c, c.K);
      const [lo, hi] = range(c);
      const want = new Float32Array(c.N * c.K);
      for (let i = 0; i < want.length; i++) {
        const r = Math.floor(i / c.K);
        const g = Math.floor((i % c.K) / c.groupSize);
        const s = scales[r * G + g];
        const z = zeros ? rint(zeros[r * G + g]) : 0;
        const q = Math.min(hi, Math.max(lo, rint(f(w[i] / s)) + z));
        want[i] = f((q - z) * s);
      }
      for (const tier of availableTiers()) {
        const got = withTier(tier, () => fakeQuantize(new Tensor(w, [c.N, c.K]), c, { scales, zeros }));
        expect(Array.from(got.data)).toEqual(Array.from(want));
      }
    });

  it('without parameters it equals RTN quantize -> dequantize', async () => {
    const w = new Tensor(randomWeights(4 * 100, 8), [4, 100]);
    const { quantize, dequantize } = await import('../lib/index.js');
    const opts = { bits: 4 as Bits, groupSize: 32, symmetric: false };
    expect(Array.from(fakeQuantize(w, opts).data)).toEqual(Array.from(dequantize(quantize(w, opts)).data));
  });
});

describe('fake-quant backward', () => {
  // Surrogate of the forward in f64 with the straight-through estimator made
  // explicit: rounding offsets round(u) - u and round(z) - z, and the clipping
  // decisions, are frozen at the base point. Its exact derivatives are what the
  // STE/LSQ backward defines; central differences recover them.
  function surrogateLoss(c: Case, base: ReturnType<typeof params>, w: Float64Array, s: Float64Array, z: Float64Array | null): number {
    const [lo, hi] = range(c);
    let loss = 0;
    for (let i = 0; i < w.length; i++) {
      const r = Math.floor(i / c.K);
      const g = Math.floor((i % c.K) / c.groupSize);
      const gi = r * base.G + g;
      const s0 = base.scales[gi];
      const u0 = f(base.w[i] / s0);
      const z0 = base.zeros ? rint(base.zeros[gi]) : 0;
      const zOff = base.zeros ? z0 - base.zeros[gi] : 0;
      const q0 = rint(u0) + z0;
      const zr = z ? z[gi] + zOff : 0; // round(z) with STE
      let wq: number;
      if (q0 < lo) wq = (lo - zr) * s[gi];
      else if (q0 > hi) wq = (hi - zr) * s[gi];
      else wq = (w[i] / s[gi] + (rint(u0) - u0)) * s[gi]; // round(u) with STE
      loss += base.grad[i] * wq;
    }
    return loss;
  }

  for (const c of CASES)
    it(`reference matches finite differences: [${c.N}, ${c.K}] ${c.bits}-bit g${c.groupSize} ${c.symmetric ? 'sym' : 'asym'}`, () => {
      const base = params(c, 3 * c.K);
      const g = withTier('ref', () =>
        fakeQuantizeBackward(new Tensor(base.grad, [c.N, c.K]), new Tensor(base.w, [c.N, c.K]), c, { scales: base.scales, zeros: base.zeros }));
      const w = Float64Array.from(base.w);
      const s = Float64Array.from(base.scales);
      const z = base.zeros ? Float64Array.from(base.zeros) : null;
      const h = 1e-4;
      const fd = (arr: Float64Array, i: number) => {
        const keep = arr[i];
        arr[i] = keep + h;
        const up = surrogateLoss(c, base, w, s, z);
        arr[i] = keep - h;
        const down = surrogateLoss(c, base, w, s, z);
        arr[i] = keep;
        return (up - down) / (2 * h);
      };
      let clipped = 0;
      for (let i = 0; i < w.length; i += Math.max(1, Math.floor(w.length / 97))) {
        const d = fd(w, i);
        if (d === 0) clipped++;
        expect(g.gradW[i]).toBeCloseTo(d, 4);
      }
      for (let i = 0; i < s.length; i++) expect(g.gradScales[i]).toBeCloseTo(fd(s, i), 3);
      if (z) for (let i = 0; i < z.length; i++) expect(g.gradZeros![i]).toBeCloseTo(fd(z, i), 3);
      else expect(g.gradZeros).toBeNull();
      expect(clipped).toBeGreaterThan(0); // the case exercises the clipped branch
    });

  it('in saturation the step-size and zero-point gradients are the true derivatives', () => {
    // tiny scales: every weight clips, the forward is (bound - round(z)) * s, linear in s
    const c: Case = { N: 2, K: 40, bits: 4, groupSize: 8, symmetric: false };
    const G = 5;
    const w = randomWeights(c.N * c.K, 77).map((x) => (x >= 0 ? x + 1 : x - 1));
    const scales = new Float32Array(c.N * G).fill(1e-3);
    const zeros = new Float32Array(c.N * G).fill(7.2);
    const grad = randomWeights(c.N * c.K, 78, 1 << 30);
    const loss = (sc: Float32Array) =>
      (fakeQuantize(new Tensor(w, [c.N, c.K]), c, { scales: sc, zeros }).data as Float32Array).reduce((a: number, v: number, i: number) => a + v * grad[i], 0);
    const g = fakeQuantizeBackward(new Tensor(grad, [c.N, c.K]), new Tensor(w, [c.N, c.K]), c, { scales, zeros });
    for (let i = 0; i < scales.length; i++) {
      const h = 1e-4;
      const up = Float32Array.from(scales); up[i] += h;
      const dn = Float32Array.from(scales); dn[i] -= h;
      expect(g.gradScales[i]).toBeCloseTo((loss(up) - loss(dn)) / (2 * h), 2);
    }
    expect(Array.from(g.gradW).every((v) => v === 0)).toBe(true);
  });

  describe.each(availableTiers().filter((t) => t !== 'ref'))('tier %s matches the reference', (tier) => {
    for (const c of CASES)
      it(`[${c.N}, ${c.K}] ${c.bits}-bit g${c.groupSize}`, () => {
        const b = params(c, 5 * c.K);
        const args = [new Tensor(b.grad, [c.N, c.K]), new Tensor(b.w, [c.N, c.K]), c, { scales: b.scales, zeros: b.zeros }] as const;
        const ref = withTier('ref', () => fakeQuantizeBackward(...args));
        const got = withTier(tier, () => fakeQuantizeBackward(...args));
        expect(Array.from(got.gradW)).toEqual(Array.from(ref.gradW));
        expect(nmse(got.gradScales, ref.gradScales)).toBeLessThan(GRAD_NMSE_TOL);
        if (ref.gradZeros) expect(nmse(got.gradZeros!, ref.gradZeros)).toBeLessThan(GRAD_NMSE_TOL);
      });
  });

  it('async forms agree with sync ones', async () => {
    const c = CASES[2];
    const b = params(c, 11);
    const w = new Tensor(b.w, [c.N, c.K]);
    const p = { scales: b.scales, zeros: b.zeros };
    expect(Array.from((await fakeQuantizeAsync(w, c, p)).data)).toEqual(Array.from(fakeQuantize(w, c, p).data));
    const ga = await fakeQuantizeBackwardAsync(new Tensor(b.grad, [c.N, c.K]), w, c, p);
    const gs = fakeQuantizeBackward(new Tensor(b.grad, [c.N, c.K]), w, c, p);
    expect(Array.from(ga.gradScales)).toEqual(Array.from(gs.gradScales));
  });
});
