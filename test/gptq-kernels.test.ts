// GPTQ kernels: the Hessian against a double oracle, the inverse factor against its
// defining identity Uᵀ U (H + λI) = I, the column loop's AVX-512 tier against _ref
// on awkward shapes, properties that hold in exact arithmetic (results independent
// of the lazy batch size; 'batch-start' equals 'updated' when batches start at group
// starts; never worse than RTN on its own objective), and bad input.
import { afterEach, describe, expect, it } from 'vitest';
import {
  dequantize, GptqHessian, gptqObjective, gptqQuantize, quantize, setKernelPolicy, Tensor, unpack, type Bits,
  type GptqOptions,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { gptqInputs, gptqWeights, hessianOracle } from './helpers/gptq-data.js';
import { nmse } from './helpers/oracle.js';
import { availableTiers, withTier } from './helpers/tiers.js';

/** f32 GEMM sums vs the double oracle */
const HESSIAN_NMSE = 1e-11;
/** Uᵀ U (H + λI) vs I, f32 blocked factorization of a matrix with cond ~1e4 */
const FACTOR_IDENTITY_NMSE = 1e-7;
/** AVX-512 vs _ref factor (same blocked algorithm; f32 vs double GEMM sums) */
const FACTOR_TIER_NMSE = 1e-10;
/**
 * AVX-512 vs _ref column loop: f32 vs double error propagation may flip a rounding
 * tie; with one-column groups (g1) the errors are only the f16 rounding of the scales,
 * and their f32 differences w - ŵ lose most of their digits
 */
const OBJECTIVE_TIER_REL = 1e-3;
const LOSS_TIER_REL = 1e-3;
const CODES_TIER_AGREE = 0.99;
/** the same exact-arithmetic result computed with other batch sizes */
const OBJECTIVE_BATCH_REL = 2e-3;
const CODES_BATCH_AGREE = 0.97;

const tiers = availableTiers();
const hasAvx512 = tiers.includes('avx512');
if (!hasAvx512) console.log('gptq-kernels: no AVX-512 on this CPU, AVX-512 vs ref comparisons skipped');

afterEach(() => setKernelPolicy('auto'));

function layer(N: number, K: number, T: number, seed: number, dead = -1) {
  const X = gptqInputs(T, K, seed, dead);
  const H = new GptqHessian(K);
  H.add(X);
  return { w: new Tensor(gptqWeights(N, K, seed + 1), [N, K]), X, H };
}

function agreement(a: Uint8Array, b: Uint8Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

function codes8(q: ReturnType<typeof gptqQuantize>['q']): Uint8Array {
  return unpack(q.codes, q.shape, q.bits);
}

describe('Hessian accumulation', () => {
  for (const tier of tiers)
    for (const [T, K] of [[1, 1], [5, 37], [300, 172], [130, 300]] as const)
      it(`${tier}: streamed in three batches = 2/n XᵀX (T ${T}, K ${K})`, () => {
        const X = gptqInputs(T, K, 7, K > 20 ? 17 : -1);
        const want = hessianOracle(X, T, K);
        withTier(tier, () => {
          const H = new GptqHessian(K);
          const cut1 = Math.floor(T / 3), cut2 = Math.floor((2 * T) / 3);
          for (const [a, b] of [[0, cut1], [cut1, cut2], [cut2, T]]) H.add(X.subarray(a * K, b * K));
          expect(H.rows).toBe(T);
          expect(nmse(H.H, want)).toBeLessThan(HESSIAN_NMSE);
          for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) expect(H.H[i * K + j]).toBe(H.H[j * K + i]);
        });
      });

  it('rowsBefore 0 overwrites, an empty batch changes nothing', () => {
    const K = 9, X = gptqInputs(4, K, 3);
    const H = new Float32Array(K * K).fill(123);
    native().gptqHessianAccumulate(H, X, 4, K, 0, false);
    expect(nmse(H, hessianOracle(X, 4, K))).toBeLessThan(HESSIAN_NMSE);
    const before = H.slice();
    native().gptqHessianAccumulate(H, new Float32Array(0), 0, K, 4, false);
    expect(Array.from(H)).toEqual(Array.from(before));
  });
});

describe('inverse factor U: upper, Uᵀ U (H + λI) = I', () => {
  for (const K of [1, 7, 128, 129, 300]) {
    const X = gptqInputs(2 * K + 50, K, 11, K > 20 ? 20 : -1);
    const H = hessianOracle(X, 2 * K + 50, K);
    const Us = new Map<string, Float32Array>();
    for (const tier of tiers)
      it(`${tier}: K ${K}${K > 20 ? ' with a dead column' : ''}`, () => {
        const U = new Float32Array(K * K);
        withTier(tier, () => native().gptqInverseFactor(U, H, K, 0.01));
        Us.set(tier, U);
        for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) expect(U[i * K + j]).toBe(0);
        // the damped, dead-fixed H the factor is of
        let mean = 0;
        for (let i = 0; i < K; i++) mean += H[i * K + i] === 0 ? 1 : H[i * K + i];
        const lam = Math.fround(0.01 * (mean / K));
        const A = Float64Array.from(H);
        for (let i = 0; i < K; i++) A[i * K + i] = (H[i * K + i] === 0 ? 1 : H[i * K + i]) + lam;
        const prod = new Float64Array(K * K), eye = new Float64Array(K * K);
        const UtU = new Float64Array(K * K);
        for (let i = 0; i < K; i++)
          for (let j = 0; j < K; j++) {
            let s = 0;
            for (let p = 0; p <= Math.min(i, j); p++) s += U[p * K + i] * U[p * K + j];
            UtU[i * K + j] = s;
          }
        for (let i = 0; i < K; i++) {
          eye[i * K + i] = 1;
          for (let j = 0; j < K; j++) {
            let s = 0;
            for (let p = 0; p < K; p++) s += UtU[i * K + p] * A[p * K + j];
            prod[i * K + j] = s;
          }
        }
        expect(nmse(prod, eye)).toBeLessThan(FACTOR_IDENTITY_NMSE);
      });
    it.skipIf(!hasAvx512)(`avx512 = ref within ${FACTOR_TIER_NMSE} NMSE (K ${K})`, () => {
      expect(nmse(Us.get('avx512')!, Us.get('ref')!)).toBeLessThan(FACTOR_TIER_NMSE);
    });
  }
});

interface Case { N: number; K: number; bits: Bits; gs: number | 'channel'; sym: boolean; from: 'updated' | 'batch-start'; dead?: number; clip?: number }
const CASES: Case[] = [
  { N: 1, K: 37, bits: 4, gs: 8, sym: false, from: 'updated' },
  { N: 2, K: 5, bits: 2, gs: 1, sym: false, from: 'batch-start' },
  { N: 3, K: 172, bits: 4, gs: 32, sym: false, from: 'updated', dead: 17 },
  { N: 17, K: 172, bits: 3, gs: 32, sym: true, from: 'batch-start' },
  { N: 7, K: 300, bits: 2, gs: 'channel', sym: false, from: 'updated' },
  { N: 5, K: 300, bits: 8, gs: 100, sym: true, from: 'updated' },
  { N: 9, K: 300, bits: 3, gs: 100, sym: false, from: 'batch-start', dead: 0 },
  { N: 7, K: 172, bits: 4, gs: 'channel', sym: true, from: 'updated', clip: 2.4 },
  { N: 3, K: 300, bits: 3, gs: 32, sym: false, from: 'updated', clip: 2 },
];
const label = (c: Case) => `N ${c.N}, K ${c.K}, INT${c.bits} g${c.gs} ${c.sym ? 'sym' : 'asym'}, ${c.from}${c.dead !== undefined ? `, dead input ${c.dead}` : ''}${c.clip ? `, clipping search p ${c.clip}` : ''}`;

describe('column loop: AVX-512 vs _ref', () => {
  for (const c of CASES)
    it.skipIf(!hasAvx512)(label(c), () => {
      const { w, H } = layer(c.N, c.K, 3 * c.K, c.N + c.K, c.dead);
      const opts: GptqOptions = { bits: c.bits, groupSize: c.gs, symmetric: c.sym, paramsFrom: c.from, clipNorm: c.clip };
      const ref = withTier('ref', () => gptqQuantize(w, H, opts));
      const avx = withTier('avx512', () => gptqQuantize(w, H, opts));
      const oRef = gptqObjective(w, ref.q, H), oAvx = gptqObjective(w, avx.q, H);
      expect(Math.abs(oAvx - oRef) / oRef).toBeLessThan(OBJECTIVE_TIER_REL);
      expect(Math.abs(avx.loss - ref.loss) / ref.loss).toBeLessThan(LOSS_TIER_REL);
      expect(agreement(codes8(avx.q), codes8(ref.q))).toBeGreaterThanOrEqual(CODES_TIER_AGREE);
      if (c.dead !== undefined) {
        // dead inputs are zeroed before quantization: their dequantized weights are exactly 0
        const dq = dequantize(avx.q).data as Float32Array;
        for (let n = 0; n < c.N; n++) expect(dq[n * c.K + c.dead]).toBe(0);
      }
    });
});

/**
 * The clipping search's oracle (IST-DASLab/gptq quant.py find_params with mse, in f32 as the
 * packed format computes): per group, the range [lo, hi] (0 included) shrunk by 1 - i/100,
 * i < 80, to the first with the smallest sum |dequant(quant(w)) - w|^p. (N, G) scales.
 */
function clipOracle(w: Float32Array, N: number, K: number, gs: number, bits: number, sym: boolean, p: number): Float32Array {
  const f = Math.fround, G = Math.ceil(K / gs), qmax = (1 << bits) - 1, out = new Float32Array(N * G);
  for (let r = 0; r < N; r++)
    for (let g = 0; g < G; g++) {
      const v = w.subarray(r * K + g * gs, r * K + Math.min(K, (g + 1) * gs));
      let lo = 0, hi = 0;
      for (const x of v) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
      let best = Infinity, bestScale = 0;
      for (let i = 0; i < 80; i++) {
        const k = f(1 - f(i / 100)), l = f(k * lo), h = f(k * hi);
        let scale: number, zero: number;
        if (sym) {
          scale = f(Math.max(-l, h) / ((1 << (bits - 1)) - 1));
          zero = 1 << (bits - 1);
        } else {
          scale = f(f(h - l) / qmax);
          zero = scale === 0 ? 0 : Math.min(qmax, Math.max(0, Math.round(f(-l / scale))));
        }
        let err = 0;
        for (const x of v) {
          const q = scale === 0 ? zero : Math.min(qmax, Math.max(0, Math.round(f(x / scale)) + zero));
          const e = Math.abs(f(f(q - zero) * scale) - x);
          err += p === 2 ? e * e : Math.pow(e, p);
        }
        if (err < best) { best = err; bestScale = scale; }
      }
      out[r * G + g] = bestScale;
    }
  return out;
}

describe('clipping search (clipNorm)', () => {
  // with H = I the inverse factor is diagonal: no error reaches another column, so GPTQ quantizes
  // every group with the parameters it chose from the original weights
  for (const tier of tiers)
    for (const [gs, sym, bits] of [[32, false, 3], [172, true, 4]] as const)
      it(`${tier}: with H = I the scales are the oracle's argmin over the shrink grid (g${gs} ${sym ? 'sym' : 'asym'} INT${bits})`, () => {
        const N = 6, K = 172, wd = gptqWeights(N, K, 21), w = new Tensor(wd, [N, K]);
        const H = new Float32Array(K * K);
        for (let i = 0; i < K; i++) H[i * K + i] = 1;
        const res = withTier(tier, () => gptqQuantize(w, H, { bits, groupSize: gs, symmetric: sym, paramDtype: 'f32', damp: 0, clipNorm: 2 }));
        expect(Array.from(res.q.scales as Float32Array)).toEqual(Array.from(clipOracle(wd, N, K, gs, bits, sym, 2)));
        // it clipped somewhere (else the test would not tell the search from min/max)
        const plain = withTier(tier, () => gptqQuantize(w, H, { bits, groupSize: gs, symmetric: sym, paramDtype: 'f32', damp: 0 }));
        expect(Array.from(res.q.scales as Float32Array)).not.toEqual(Array.from(plain.q.scales as Float32Array));
      });

  for (const tier of tiers)
    it(`${tier}: never a higher GPTQ objective than min/max ranges on a real Hessian, per channel (p 2.4)`, () => {
      const { w, H } = layer(16, 172, 500, 9);
      const base = { bits: 4 as Bits, groupSize: 'channel' as const, symmetric: true };
      const clip = withTier(tier, () => gptqQuantize(w, H, { ...base, clipNorm: 2.4 }));
      const plain = withTier(tier, () => gptqQuantize(w, H, base));
      expect(gptqObjective(w, clip.q, H)).toBeLessThan(gptqObjective(w, plain.q, H));
    });

  it('clipNorm outside [0, 16] is refused, naming it', () => {
    const { w, H } = layer(2, 8, 20, 1);
    expect(() => gptqQuantize(w, H, { bits: 4, groupSize: 8, symmetric: true, clipNorm: -1 })).toThrow(/clipNorm/);
    expect(() => gptqQuantize(w, H, { bits: 4, groupSize: 8, symmetric: true, clipNorm: Number.NaN })).toThrow(/clipNorm/);
  });
});

describe('properties', () => {
  for (const tier of tiers)
    it(`${tier}: 'updated' does not depend on the lazy batch size (1, 7, 128, 512)`, () => {
      const { w, H } = layer(6, 300, 700, 5);
      withTier(tier, () => {
        const runs = [1, 7, 128, 512].map((blockSize) => gptqQuantize(w, H, { bits: 3, groupSize: 48, blockSize }));
        const o = runs.map((r) => gptqObjective(w, r.q, H));
        for (let i = 1; i < runs.length; i++) {
          expect(Math.abs(o[i] - o[0]) / o[0]).toBeLessThan(OBJECTIVE_BATCH_REL);
          expect(agreement(codes8(runs[i].q), codes8(runs[0].q))).toBeGreaterThanOrEqual(CODES_BATCH_AGREE);
        }
      });
    });

  it("'batch-start' equals 'updated' bit for bit when every batch starts at a group start", () => {
    const { w, H } = layer(5, 172, 400, 9);
    const a = gptqQuantize(w, H, { bits: 4, groupSize: 32, blockSize: 32, paramsFrom: 'batch-start' });
    const b = gptqQuantize(w, H, { bits: 4, groupSize: 32, blockSize: 32, paramsFrom: 'updated' });
    expect(Buffer.from(a.q.codes).equals(Buffer.from(b.q.codes))).toBe(true);
    expect(Array.from(a.q.scales)).toEqual(Array.from(b.q.scales));
    const c = gptqQuantize(w, H, { bits: 4, groupSize: 32, blockSize: 128, paramsFrom: 'batch-start' });
    expect(Buffer.from(c.q.codes).equals(Buffer.from(a.q.codes))).toBe(false);  // the two readings do differ
  });

  for (const c of CASES)
    it(`objective <= RTN's on the same H: ${label(c)}`, () => {
      const { w, H } = layer(c.N, c.K, 3 * c.K, c.N + c.K, c.dead);
      const g = gptqQuantize(w, H, { bits: c.bits, groupSize: c.gs, symmetric: c.sym, paramsFrom: c.from });
      const rtn = quantize(w, { bits: c.bits, groupSize: c.gs, symmetric: c.sym, paramDtype: 'f16' });
      expect(gptqObjective(w, g.q, H)).toBeLessThanOrEqual(gptqObjective(w, rtn, H));
    });

  it('f16 parameters are exact halves and zero points integers in [0, 2^b - 1]; f32 parameters also work', () => {
    const { w, H } = layer(4, 64, 200, 2);
    const g = gptqQuantize(w, H, { bits: 4, groupSize: 16 });
    expect(g.q.paramDtype).toBe('f16');
    expect(g.q.scales).toBeInstanceOf(Uint16Array);
    const f32 = gptqQuantize(w, H, { bits: 4, groupSize: 16, paramDtype: 'f32' });
    expect(f32.q.scales).toBeInstanceOf(Float32Array);
    for (const z of f32.q.zeros as Float32Array) expect(Number.isInteger(z) && z >= 0 && z <= 15).toBe(true);
  });
});

describe('bad input', () => {
  const K = 8;
  const w = new Tensor(gptqWeights(2, K, 1), [2, K]);
  it('a Hessian that is not positive definite after damping is an error naming the column, not NaN codes', () => {
    const H = new Float32Array(K * K);
    for (let i = 0; i < K; i++) H[i * K + i] = 1;
    H[3 * K + 4] = H[4 * K + 3] = 2;  // indefinite 2x2 block [[1, 2], [2, 1]]
    expect(() => gptqQuantize(w, H, { bits: 4, groupSize: 8 })).toThrow(
      expect.objectContaining({ code: 'QF_INVALID_ARGUMENT', message: expect.stringMatching(/positive definite.*input column [34].*increase damp/) }));
    const neg = new Float32Array(K * K);
    for (let i = 0; i < K; i++) neg[i * K + i] = -1;
    expect(() => gptqQuantize(w, neg, { bits: 4, groupSize: 8 })).toThrow(/positive definite/);
  });
  it('non-finite Hessian or weights', () => {
    const H = new Float32Array(K * K);
    for (let i = 0; i < K; i++) H[i * K + i] = 1;
    H[5] = NaN;
    expect(() => gptqQuantize(w, H, { bits: 4, groupSize: 8 })).toThrow(expect.objectContaining({ code: 'QF_NON_FINITE', message: expect.stringMatching(/H\[0, 5\]/) }));
    const ok = new Float32Array(K * K);
    for (let i = 0; i < K; i++) ok[i * K + i] = 1;
    const bad = new Tensor(Float32Array.from({ length: 2 * K }, (_, i) => (i === 11 ? Infinity : 0.1)), [2, K]);
    expect(() => gptqQuantize(bad, ok, { bits: 4, groupSize: 8 })).toThrow(/row 1 holds NaN or Inf/);
    const hx = new GptqHessian(K);
    expect(() => hx.add(Float32Array.from({ length: K }, () => NaN))).toThrow(expect.objectContaining({ code: 'QF_NON_FINITE' }));
  });
  it('shapes and options', () => {
    const H = new Float32Array(K * K);
    expect(() => gptqQuantize(w, new Float32Array(K * K - 1), { bits: 4 })).toThrow(/Expected Float32Array of 64 elements \(K x K\) for H/);
    expect(() => gptqQuantize(w, H, { bits: 5 as Bits })).toThrow(expect.objectContaining({ code: 'QF_UNSUPPORTED_BITS' }));
    expect(() => gptqQuantize(w, H, { bits: 4, damp: -0.1 })).toThrow(/Expected number >= 0 for damp but received -0.1 of type number/);
    expect(() => gptqQuantize(w, H, { bits: 4, blockSize: 513 })).toThrow(/Expected integer in \[1, 512\] for blockSize but received 513/);
    expect(() => gptqQuantize(w, new GptqHessian(K), { bits: 4 })).toThrow(/no calibration rows/);
    expect(() => new GptqHessian(K).add(new Float32Array(K + 1))).toThrow(/multiple of 8 elements/);
    // the native layer re-checks what the TS layer validated
    expect(() => native().gptqQuantize(w.data as Float32Array, H, { rows: 3, cols: K, bits: 4, groupSize: 8, symmetric: false, paramDtype: 'f16', damp: 0.01, blockSize: 128, paramsFrom: 'updated' }, false))
      .toThrow(/Expected 24 elements for w but received 16/);
    expect(() => native().gptqHessianAccumulate(H, new Float32Array(7), 1, K, 0, false)).toThrow(/Expected 8 elements for x but received 7/);
  });
});
