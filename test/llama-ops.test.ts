// Llama forward ops: the native _ref against an independent float64 oracle written
// from llama_ops.h, and every SIMD tier against _ref on awkward shapes (K not a
// multiple of the SIMD width, M = 1, 2, 3, 7 ..., odd head sizes, GQA, KV cache).
import { describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { availableTiers, withTier } from './helpers/tiers.js';

const nat = native();

// Named tolerances: normalized MSE between results. ORACLE_* compare float32 kernels
// with float64 math (rounding of long sums); TIER_* compare SIMD with _ref (summation
// order, FMA contraction, polynomial exp).
const ORACLE_NMSE = 1e-11;
const TIER_NMSE = 1e-11;
const TIER_NMSE_EXP = 1e-12;  // ops whose only difference is the exp polynomial

function rand(n: number, seed: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

function nmse(got: ArrayLike<number>, want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return den === 0 ? num : num / den;
}

const tiers = availableTiers();
const simd = tiers.filter((t) => t !== 'ref');

function matmulOracle(x: Float32Array, w: Float32Array, b: Float32Array | null, M: number, N: number, K: number): Float64Array {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      out[m * N + n] = s + (b ? b[n] : 0);
    }
  return out;
}

describe('matmul_forward: out (M, N) = inp (M, K) @ weight (N, K)^T + bias', () => {
  const shapes: [number, number, number][] = [
    [1, 1, 1], [1, 5, 17], [2, 33, 19], [3, 70, 300], [4, 32, 16], [7, 100, 513], [13, 257, 64], [37, 65, 1000], [12, 300, 257],
    // one output panel, many rows: threads split rows
    [50, 40, 70], [61, 64, 33],
  ];
  for (const [M, N, K] of shapes)
    for (const bias of [false, true])
      it(`M=${M} N=${N} K=${K} bias=${bias}`, () => {
        const x = rand(M * K, M * 31 + K), w = rand(N * K, N * 17 + K), b = bias ? rand(N, N) : null;
        const ref = withTier('ref', () => nat.matmulForward(x, w, b, M, N, K, false));
        expect(nmse(ref, matmulOracle(x, w, b, M, N, K))).toBeLessThan(ORACLE_NMSE);
        for (const t of simd) {
          const got = withTier(t, () => nat.matmulForward(x, w, b, M, N, K, false));
          expect(nmse(got, ref), t).toBeLessThan(TIER_NMSE);
        }
      });

  it('async form gives the same result', async () => {
    const [M, N, K] = [9, 40, 70];
    const x = rand(M * K, 1), w = rand(N * K, 2);
    const a = await nat.matmulForward(x, w, null, M, N, K, true);
    expect(Array.from(a)).toEqual(Array.from(nat.matmulForward(x, w, null, M, N, K, false)));
  });

  it('rejects lengths that contradict the dims', () => {
    expect(() => nat.matmulForward(new Float32Array(10), new Float32Array(6), null, 2, 3, 4, false)).toThrow(/Expected 8 elements \(M, K\) for inp but received 10/);
    expect(() => nat.matmulForward(new Float32Array(8), new Float32Array(12), new Float32Array(2), 2, 3, 4, false)).toThrow(/bias/);
  });
});

describe('rmsnorm_forward: out = inp / sqrt(mean(inp^2) + eps) * weight', () => {
  for (const C of [1, 7, 16, 64, 100, 4096])
    it(`C=${C}`, () => {
      const N = 3, eps = 1e-5;
      const x = rand(N * C, C), w = rand(C, C + 1);
      const want = new Float64Array(N * C), wantR = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let ss = 0;
        for (let c = 0; c < C; c++) ss += x[n * C + c] ** 2;
        wantR[n] = 1 / Math.sqrt(ss / C + eps);
        for (let c = 0; c < C; c++) want[n * C + c] = x[n * C + c] * wantR[n] * w[c];
      }
      const ref = withTier('ref', () => nat.rmsnormForward(x, w, C, eps));
      expect(nmse(ref.out, want)).toBeLessThan(ORACLE_NMSE);
      expect(nmse(ref.rstd, wantR)).toBeLessThan(ORACLE_NMSE);
      for (const t of simd) {
        const got = withTier(t, () => nat.rmsnormForward(x, w, C, eps));
        expect(nmse(got.out, ref.out), t).toBeLessThan(TIER_NMSE);
        expect(nmse(got.rstd, ref.rstd), t).toBeLessThan(TIER_NMSE);
      }
    });
});

describe('rope_forward: rotate_half pairs (i, i + HS/2) by pos * inv_freq[i]', () => {
  for (const HS of [2, 8, 34, 128])
    it(`HS=${HS}`, () => {
      const N = 5, H = 3, S = 64, half = HS / 2;
      const cos = new Float32Array(S * half), sin = new Float32Array(S * half);
      for (let p = 0; p < S; p++)
        for (let i = 0; i < half; i++) {
          const a = p * Math.pow(10000, (-2 * i) / HS);
          cos[p * half + i] = Math.cos(a);
          sin[p * half + i] = Math.sin(a);
        }
      const pos = Int32Array.from([0, 1, 17, 63, 5]);
      const x = rand(N * H * HS, HS);
      const want = new Float64Array(x.length);
      for (let n = 0; n < N; n++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < half; i++) {
            const o = (n * H + h) * HS, c = cos[pos[n] * half + i], s = sin[pos[n] * half + i];
            want[o + i] = x[o + i] * c - x[o + i + half] * s;
            want[o + i + half] = x[o + i] * s + x[o + i + half] * c;
          }
      const ref = withTier('ref', () => nat.ropeForward(x, pos, cos, sin, H, HS));
      expect(nmse(ref, want)).toBeLessThan(ORACLE_NMSE);
      for (const t of simd) expect(nmse(withTier(t, () => nat.ropeForward(x, pos, cos, sin, H, HS)), ref), t).toBeLessThan(TIER_NMSE);
    });

  it('rejects positions outside the table', () => {
    const t = new Float32Array(4 * 2);
    expect(() => nat.ropeForward(new Float32Array(4), Int32Array.from([4]), t, t, 1, 4)).toThrow(/positions in \[0, 4\)/);
  });
});

function attentionOracle(q: Float32Array, kc: Float32Array, vc: Float32Array, B: number, T: number, NH: number, NKV: number, HS: number, S: number, pos0: number) {
  const L = pos0 + T, out = new Float64Array(B * T * NH * HS), att = new Float64Array(B * NH * T * L);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < NH; h++) {
      const kvh = Math.floor(h / (NH / NKV));
      for (let t = 0; t < T; t++) {
        const sc: number[] = [];
        for (let j = 0; j <= pos0 + t; j++) {
          let s = 0;
          for (let i = 0; i < HS; i++) s += q[((b * T + t) * NH + h) * HS + i] * kc[((b * S + j) * NKV + kvh) * HS + i];
          sc.push(s / Math.sqrt(HS));
        }
        const mx = Math.max(...sc), e = sc.map((s) => Math.exp(s - mx)), z = e.reduce((a, c) => a + c, 0);
        e.forEach((v, j) => { att[((b * NH + h) * T + t) * L + j] = v / z; });
        for (let i = 0; i < HS; i++) {
          let o = 0;
          e.forEach((v, j) => { o += (v / z) * vc[((b * S + j) * NKV + kvh) * HS + i]; });
          out[((b * T + t) * NH + h) * HS + i] = o;
        }
      }
    }
  return { out, att };
}

describe('attention_forward: causal softmax attention with GQA over a KV cache', () => {
  const cases: [number, number, number, number, number, number, number][] = [
    // B, T, NH, NKV, HS, S, pos0
    [1, 1, 1, 1, 8, 4, 0], [2, 7, 4, 2, 8, 16, 0], [2, 3, 8, 8, 17, 20, 5], [1, 5, 6, 1, 64, 40, 30], [3, 1, 4, 4, 128, 33, 32], [1, 19, 2, 1, 33, 19, 0],
  ];
  for (const [B, T, NH, NKV, HS, S, pos0] of cases)
    it(`B=${B} T=${T} NH=${NH} NKV=${NKV} HS=${HS} S=${S} pos0=${pos0}`, () => {
      const q = rand(B * T * NH * HS, HS + T, 2), kc = rand(B * S * NKV * HS, S, 2), vc = rand(B * S * NKV * HS, S + 1);
      const want = attentionOracle(q, kc, vc, B, T, NH, NKV, HS, S, pos0);
      const ref = withTier('ref', () => nat.attentionForward(q, kc, vc, B, T, NH, NKV, HS, S, pos0));
      expect(nmse(ref.out, want.out)).toBeLessThan(ORACLE_NMSE);
      expect(nmse(ref.att, want.att)).toBeLessThan(ORACLE_NMSE);
      for (const t of simd) {
        const got = withTier(t, () => nat.attentionForward(q, kc, vc, B, T, NH, NKV, HS, S, pos0));
        expect(nmse(got.out, ref.out), t).toBeLessThan(TIER_NMSE);
        expect(nmse(got.att, ref.att), t).toBeLessThan(TIER_NMSE);
      }
    });

  it('rejects a cache too short for pos0 + T and NKV not dividing NH', () => {
    const q = new Float32Array(8), c = new Float32Array(8);
    expect(() => nat.attentionForward(q, c, c, 1, 1, 1, 1, 8, 1, 1)).toThrow(/pos0 \+ T <= S/);
    expect(() => nat.attentionForward(new Float32Array(24), new Float32Array(16), new Float32Array(16), 1, 1, 3, 2, 8, 1, 0)).toThrow(/NKV dividing NH/);
  });
});

describe('swiglu_forward and residual_forward', () => {
  for (const n of [1, 15, 16, 17, 1000, 40000])
    it(`n=${n}`, () => {
      const g = rand(n, n, 12), u = rand(n, n + 1);
      if (n > 2) {
        g[0] = -100;  // exp(-x) overflows float: silu must give 0, not NaN
        g[1] = 90;
      }
      const want = Array.from(g, (x, i) => (x / (1 + Math.exp(-x))) * u[i]);
      const ref = withTier('ref', () => nat.swigluForward(g, u));
      expect(nmse(ref, want)).toBeLessThan(ORACLE_NMSE);
      for (const t of simd) expect(nmse(withTier(t, () => nat.swigluForward(g, u)), ref), t).toBeLessThan(TIER_NMSE_EXP);
      const r = withTier('ref', () => nat.residualForward(g, u));
      expect(Array.from(r)).toEqual(Array.from(g, (x, i) => Math.fround(x + u[i])));
      for (const t of simd) expect(Array.from(withTier(t, () => nat.residualForward(g, u))), t).toEqual(Array.from(r));
    });
});

describe('embedding_forward: out (N, C) = wte[tokens]', () => {
  for (const C of [1, 17, 64])
    it(`C=${C}`, () => {
      const V = 11, wte = rand(V * C, C), tok = Int32Array.from([3, 0, 10, 3]);
      const want = Array.from(tok).flatMap((t) => Array.from(wte.subarray(t * C, (t + 1) * C)));
      for (const t of tiers) expect(Array.from(withTier(t, () => nat.embeddingForward(tok, wte, C))), t).toEqual(want);
    });

  it('rejects token ids outside the vocabulary', () => {
    expect(() => nat.embeddingForward(Int32Array.from([0, 5]), new Float32Array(10), 2)).toThrow(/tokens\[1\] is 5/);
  });
});
