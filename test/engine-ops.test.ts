// Every op of the engine's list (native/include/quantform/engine.h, QF_ENGINE_OPS):
// the reference against an independent float64 oracle or finite differences, then
// every SIMD tier against the reference on awkward shapes (K not a multiple of the
// SIMD width, M = 1, 2, 3, 7, odd N, GQA, KV cache offsets, several attention
// blocks), bit-exact where the tier promises it, named NMSE tolerances otherwise.
// The last describe fails when an op of the list has no case here.
import { describe, expect, it } from 'vitest';
import { f16ToF32, f32ToF16 } from '../lib/io/half.js';
import { engineOp, native, type EngineOpArg } from '../lib/native.js';
import { ORACLE_NMSE, TIER_NMSE, TIER_NMSE_EXP, expectTiersExact, expectTiersNear, perTier, simd, withTier } from './helpers/tiers.js';
import { FPT_CASES } from './engine-ops-fpt.js';
import { dot, fdCheck, nmse, sameBits, uniform } from './helpers/numeric.js';

const eng = native().engine;
const op = (name: string) => (...args: EngineOpArg[]) => engineOp(name)(...args) as void;
if (simd.length === 0) console.log('engine-ops: no SIMD tier on this CPU, tier comparisons skipped');

const f = Math.fround;
/** round half to even, as nearbyint and torch.round */
const rintEven = (x: number) => { const r = Math.round(x); return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r; };

// RoPE tables from theta as the engine builds them: angle in f32, cos/sin in double.
function tables(S: number, hd: number, theta = 10000): { cos: Float32Array; sin: Float32Array; inv: Float32Array } {
  const half = hd / 2;
  const inv = Float32Array.from({ length: half }, (_, i) => 1 / Math.pow(theta, (2 * i) / hd));
  const cos = new Float32Array(S * half), sin = new Float32Array(S * half);
  for (let p = 0; p < S; p++)
    for (let i = 0; i < half; i++) {
      const a = f(p * inv[i]);
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  return { cos, sin, inv };
}

function attentionOracle(q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, Hq: number, Hkv: number,
  hd: number, S: number, pos0: number): { out: Float64Array; probs: Float64Array } {
  const L = pos0 + T, out = new Float64Array(B * T * Hq * hd), probs = new Float64Array(B * Hq * T * L);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / (Hq / Hkv));
      for (let t = 0; t < T; t++) {
        const sc: number[] = [];
        for (let j = 0; j <= pos0 + t; j++) {
          let s = 0;
          for (let i = 0; i < hd; i++) s += q[((b * T + t) * Hq + h) * hd + i] * k[((b * S + j) * Hkv + g) * hd + i];
          sc.push(s / Math.sqrt(hd));
        }
        const mx = Math.max(...sc), e = sc.map((s) => Math.exp(s - mx)), z = e.reduce((a, c) => a + c, 0);
        e.forEach((x, j) => { probs[((b * Hq + h) * T + t) * L + j] = x / z; });
        for (let i = 0; i < hd; i++) {
          let o = 0;
          e.forEach((x, j) => { o += (x / z) * v[((b * S + j) * Hkv + g) * hd + i]; });
          out[((b * T + t) * Hq + h) * hd + i] = o;
        }
      }
    }
  return { out, probs };
}

const CASES: Record<string, () => void> = {
  gemm() {
    const forms = [[false, false], [true, false], [false, true], [true, true]] as const;
    const stored = (A: Float32Array, B: Float32Array, M: number, N: number, K: number, ta: boolean, tb: boolean) =>
      (m: number, n: number, k: number) => A[ta ? k * M + m : m * K + k] * B[tb ? n * K + k : k * N + n];
    it('ref equals a float64 oracle in every transpose form, accumulating or not', () => {
      for (const [M, N, K] of [[3, 5, 4], [7, 65, 33], [2, 1, 300]]) {
        const A = uniform(M * K, 1), B = uniform(K * N, 2), C0 = uniform(M * N, 3);
        for (const [ta, tb] of forms)
          for (const acc of [false, true]) {
            const C = C0.slice();
            withTier('ref', () => eng.gemm(C, A, B, M, N, K, ta, tb, acc));
            const at = stored(A, B, M, N, K, ta, tb), want = new Float64Array(M * N);
            for (let m = 0; m < M; m++)
              for (let n = 0; n < N; n++) {
                let s = acc ? C0[m * N + n] : 0;
                for (let k = 0; k < K; k++) s += at(m, n, k);
                want[m * N + n] = s;
              }
            expect(nmse(C, want), `${M}x${N}x${K} ta=${ta} tb=${tb} acc=${acc}`).toBeLessThan(ORACLE_NMSE);
          }
      }
    });
    it('every tier matches ref on awkward shapes (M = 1, 2, 3, 7, odd N, K not a multiple of 16)', () => {
      for (const [M, N, K] of [[1, 1, 1], [1, 5, 17], [2, 33, 17], [3, 31, 300], [4, 64, 16], [7, 65, 5], [9, 600, 257],
        [13, 257, 64], [130, 47, 19], [50, 40, 70], [61, 64, 33],
        // narrow outputs (N = hd in attention) take the 24 x 16 and 12 x 32 tiles
        [30, 8, 70], [25, 16, 300], [50, 17, 40], [97, 30, 258]]) {
        const A = uniform(M * K, M + N), B = uniform(K * N, K + 1), C0 = uniform(M * N, 3);
        for (const [ta, tb] of forms)
          for (const acc of [false, true])
            expectTiersNear(perTier(() => { const C = C0.slice(); eng.gemm(C, A, B, M, N, K, ta, tb, acc); return C; }), TIER_NMSE,
              `${M}x${N}x${K} ta=${ta} tb=${tb} acc=${acc}`);
      }
    });
    it('every blocking edge of the tiers (N past one packed block, K past one k block, M past one row block)', () => {
      const [M, N, K] = [97, 1030, 258];
      const A = uniform(M * K, 5), B = uniform(K * N, 6);
      for (const [ta, tb] of [[false, true], [false, false], [true, false]] as const)
        expectTiersNear(perTier(() => { const C = new Float32Array(M * N); eng.gemm(C, A, B, M, N, K, ta, tb, false); return C; }), TIER_NMSE,
          `ta=${ta} tb=${tb}`);
    });
    it('async form equals the sync form; lengths that contradict the dims are rejected', async () => {
      const [M, N, K] = [9, 40, 70];
      const A = uniform(M * K, 1), B = uniform(N * K, 2), C1 = new Float32Array(M * N), C2 = new Float32Array(M * N);
      eng.gemm(C1, A, B, M, N, K, false, true, false);
      await op('gemm')(C2, A, B, M, N, K, false, true, false, true);
      expect(sameBits(C1, C2)).toBe(true);
      expect(() => eng.gemm(new Float32Array(5), new Float32Array(6), new Float32Array(6), 2, 3, 3, false, false, false))
        .toThrow(/Expected 6 elements \(M, N\) for C but received 5/);
      expect(() => eng.gemm(C1, A, B, 0, N, K, false, false, false)).toThrow(/Expected positive integer below 2\^31 for M but received 0/);
    });
  },

  embeddingForward() {
    it('copies table rows on every tier, bit-exact', () => {
      for (const D of [1, 17, 64]) {
        const V = 11, table = uniform(V * D, D), ids = Int32Array.from([3, 0, 10, 3]);
        const want = Float32Array.from(Array.from(ids).flatMap((t) => Array.from(table.subarray(t * D, (t + 1) * D))));
        const res = perTier(() => { const out = new Float32Array(4 * D); eng.embeddingForward(out, ids, table, 4, V, D); return out; });
        expect(sameBits(res.ref, want)).toBe(true);
        expectTiersExact(res, `D=${D}`);
      }
    });
    it('rejects ids outside the vocabulary', () => {
      expect(() => eng.embeddingForward(new Float32Array(4), Int32Array.from([0, 5]), new Float32Array(10), 2, 5, 2)).toThrow(/ids\[1\] is 5/);
    });
  },

  embeddingBackward() {
    it('ref accumulates rows in order (an f32 oracle, bit-exact) and every tier equals it', () => {
      const BT = 9, V = 7, D = 19, ids = Int32Array.from([3, 1, 3, 6, 0, 3, 1, 2, 6]), dout = uniform(BT * D, 15), init = uniform(V * D, 16);
      const want = init.slice();
      for (let r = 0; r < BT; r++) for (let i = 0; i < D; i++) want[ids[r] * D + i] = f(want[ids[r] * D + i] + dout[r * D + i]);
      const res = perTier(() => { const dt = init.slice(); op('embeddingBackward')(dt, dout, ids, BT, V, D); return dt; });
      expect(sameBits(res.ref, want)).toBe(true);
      expectTiersExact(res);
    });
  },

  rmsnormForward() {
    it('ref equals a float64 oracle; rstd optional; every tier matches', () => {
      for (const D of [1, 7, 16, 64, 100, 4096]) {
        const BT = 3, eps = 1e-5, x = uniform(BT * D, D), w = uniform(D, D + 1);
        const want = new Float64Array(BT * D), wantR = new Float64Array(BT);
        for (let r = 0; r < BT; r++) {
          let ss = 0;
          for (let i = 0; i < D; i++) ss += x[r * D + i] ** 2;
          wantR[r] = 1 / Math.sqrt(ss / D + eps);
          for (let i = 0; i < D; i++) want[r * D + i] = x[r * D + i] * wantR[r] * w[i];
        }
        const res = perTier(() => {
          const out = new Float32Array(BT * D), rstd = new Float32Array(BT), out2 = new Float32Array(BT * D);
          eng.rmsnormForward(out, rstd, x, w, BT, D, eps);
          eng.rmsnormForward(out2, null, x, w, BT, D, eps);  // inference: no saved statistic
          expect(sameBits(out2, out)).toBe(true);
          return [out, rstd];
        });
        expect(nmse(res.ref[0], want)).toBeLessThan(ORACLE_NMSE);
        expect(nmse(res.ref[1], wantR)).toBeLessThan(ORACLE_NMSE);
        expectTiersNear(res, TIER_NMSE, `D=${D}`);
      }
    });
    it('rejects a negative eps and a short rstd', () => {
      const x = new Float32Array(6), w = new Float32Array(3);
      expect(() => eng.rmsnormForward(new Float32Array(6), null, x, w, 2, 3, -1)).toThrow(/non-negative finite eps/);
      expect(() => eng.rmsnormForward(new Float32Array(6), new Float32Array(1), x, w, 2, 3, 1e-5)).toThrow(/Expected 2 elements \(BT\) for rstd/);
    });
  },

  rmsnormBackward() {
    it('ref vs finite differences (dx and dw); every tier matches ref; dw optional', () => {
      const BT = 3, D = 37;
      const x = uniform(BT * D, 1), w = uniform(D, 2, 1, 1), R = uniform(BT * D, 3);
      const out = new Float32Array(BT * D), rstd = new Float32Array(BT);
      const fwd = () => { withTier('ref', () => eng.rmsnormForward(out, rstd, x, w, BT, D, 1e-5)); return dot(out, R); };
      fwd();
      const dx = new Float32Array(BT * D), dw = new Float32Array(D);
      withTier('ref', () => op('rmsnormBackward')(dx, dw, R, x, w, rstd, BT, D));
      fdCheck(fwd, x, dx, 20);
      fdCheck(fwd, w, dw, 10);
      for (const [T2, D2] of [[1, 3], [3, 17], [5, 64], [2, 100]]) {
        const x2 = uniform(T2 * D2, 70), w2 = uniform(D2, 71, 0.5, 1), R2 = uniform(T2 * D2, 72);
        expectTiersNear(perTier(() => {
          const o = new Float32Array(T2 * D2), rs = new Float32Array(T2), d = new Float32Array(T2 * D2), g = new Float32Array(D2), d2 = new Float32Array(T2 * D2);
          eng.rmsnormForward(o, rs, x2, w2, T2, D2, 1e-5);
          op('rmsnormBackward')(d, g, R2, x2, w2, rs, T2, D2);
          op('rmsnormBackward')(d2, null, R2, x2, w2, rs, T2, D2);
          expect(sameBits(d2, d)).toBe(true);
          return [d, g];
        }), TIER_NMSE, `${T2}x${D2}`);
      }
    });
  },

  ropeTables() {
    it('angle rounded to f32, cos and sin in double (run.c and transformers)', () => {
      const S = 70, hd = 20, t = tables(S, hd, 500000);
      const cos = new Float32Array(t.cos.length), sin = new Float32Array(t.sin.length);
      op('ropeTables')(cos, sin, t.inv, S, hd);
      expect(nmse(cos, t.cos)).toBeLessThan(1e-14);
      expect(nmse(sin, t.sin)).toBeLessThan(1e-13);
      expect(() => op('ropeTables')(cos, sin, t.inv, S, 21)).toThrow(/even hd/);
      expect(() => op('ropeTables')(cos, sin, new Float32Array([NaN, ...t.inv.subarray(1)]), S, hd)).toThrow(/finite invFreq/);
    });
  },

  ropeForward() {
    it('rotate_half pairs (i, i + hd/2) by the table angle of each row position; tiers bit-exact', () => {
      for (const hd of [2, 8, 34, 128]) {
        const BT = 5, H = 3, S = 64, half = hd / 2, { cos, sin } = tables(S, hd);
        const pos = Int32Array.from([0, 1, 17, 63, 5]), x = uniform(BT * H * hd, hd);
        const want = new Float64Array(x.length);
        for (let r = 0; r < BT; r++)
          for (let h = 0; h < H; h++)
            for (let i = 0; i < half; i++) {
              const o = (r * H + h) * hd, c = cos[pos[r] * half + i], s = sin[pos[r] * half + i];
              want[o + i] = x[o + i] * c - x[o + i + half] * s;
              want[o + i + half] = x[o + i] * s + x[o + i + half] * c;
            }
        const res = perTier(() => { const y = x.slice(); op('ropeForward')(y, pos, cos, sin, BT, H, hd); return y; });
        expect(nmse(res.ref, want)).toBeLessThan(ORACLE_NMSE);
        expectTiersExact(res, `hd=${hd}`);
      }
    });
    it('rejects positions outside the table and tables of different shapes', () => {
      const t = new Float32Array(4 * 2);
      expect(() => op('ropeForward')(new Float32Array(4), Int32Array.from([4]), t, t, 1, 1, 4)).toThrow(/pos in \[0, 4\) but pos\[0\] is 4/);
      expect(() => op('ropeForward')(new Float32Array(4), Int32Array.from([0]), t, new Float32Array(6), 1, 1, 4)).toThrow(/equal shape/);
    });
  },

  ropeBackward() {
    it('is the transpose of the forward (<R, rope(x)> = <rope^T(R), x>) and undoes it; tiers bit-exact', () => {
      const BT = 6, H = 2, hd = 10, { cos, sin } = tables(8, hd), pos = Int32Array.from([0, 1, 2, 7, 3, 5]);
      const x = uniform(BT * H * hd, 7), R = uniform(BT * H * hd, 8);
      const res = perTier(() => {
        const y = x.slice(), g = R.slice(), back = x.slice();
        op('ropeForward')(y, pos, cos, sin, BT, H, hd);
        op('ropeBackward')(g, pos, cos, sin, BT, H, hd);
        op('ropeForward')(back, pos, cos, sin, BT, H, hd);
        op('ropeBackward')(back, pos, cos, sin, BT, H, hd);
        expect(Math.abs(dot(y, R) - dot(g, x))).toBeLessThan(1e-4);
        expect(nmse(back, x)).toBeLessThan(1e-13);
        return g;
      });
      // position 0 is the identity
      for (let i = 0; i < H * hd; i++) expect(res.ref[i]).toBe(R[i]);
      expectTiersExact(res);
    });
  },

  attentionForward() {
    const cases: [number, number, number, number, number, number, number][] = [
      // B, T, Hq, Hkv, hd, S, pos0
      [1, 1, 1, 1, 8, 4, 0], [2, 7, 4, 2, 8, 16, 0], [2, 3, 8, 8, 17, 20, 5], [1, 5, 6, 1, 64, 40, 30], [3, 1, 4, 4, 128, 33, 32],
      [1, 19, 2, 1, 33, 19, 0], [1, 150, 2, 1, 6, 160, 4],  // several query blocks, keys past the block
      // decode steps: the q heads of a kv head run as one block (TinyLlama's 32 / 4 at a ragged cache length,
      // more heads per kv head than a block holds, several sequences)
      [2, 1, 32, 4, 64, 300, 257], [1, 1, 70, 1, 8, 9, 5], [3, 1, 12, 3, 20, 7, 0], [1, 1, 6, 2, 17, 40, 39],
    ];
    for (const [B, T, Hq, Hkv, hd, S, pos0] of cases)
      it(`B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd} S=${S} pos0=${pos0}: ref vs float64 oracle, probabilities optional, tiers vs ref`, () => {
        const q = uniform(B * T * Hq * hd, hd + T, 2), k = uniform(B * S * Hkv * hd, S, 2), v = uniform(B * S * Hkv * hd, S + 1);
        const want = attentionOracle(q, k, v, B, T, Hq, Hkv, hd, S, pos0);
        const res = perTier(() => {
          const out = new Float32Array(q.length), probs = new Float32Array(B * Hq * T * (pos0 + T)), out2 = new Float32Array(q.length);
          op('attentionForward')(out, probs, q, k, v, B, T, Hq, Hkv, hd, S, pos0);
          op('attentionForward')(out2, null, q, k, v, B, T, Hq, Hkv, hd, S, pos0);  // inference: no probabilities kept
          expect(sameBits(out2, out)).toBe(true);
          return [out, probs];
        });
        expect(nmse(res.ref[0], want.out)).toBeLessThan(ORACLE_NMSE);
        expect(nmse(res.ref[1], want.probs)).toBeLessThan(ORACLE_NMSE);
        expectTiersNear(res, TIER_NMSE_EXP);
      });
    it('rejects a cache too short for pos0 + T and Hkv not dividing Hq', () => {
      const q = new Float32Array(8), c = new Float32Array(8);
      expect(() => op('attentionForward')(new Float32Array(8), null, q, c, c, 1, 1, 1, 1, 8, 1, 1)).toThrow(/pos0 \+ T <= S/);
      expect(() => op('attentionForward')(new Float32Array(24), null, new Float32Array(24), new Float32Array(16), new Float32Array(16), 1, 1, 3, 2, 8, 1, 0))
        .toThrow(/Hkv dividing Hq/);
    });
  },

  attentionBackward() {
    for (const [B, T, Hq, Hkv, hd] of [[2, 5, 4, 2, 6], [1, 150, 2, 1, 4]])
      it(`B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd}: ref vs finite differences of q, k, v${T > 64 ? ' across several query blocks' : ''}`, () => {
        const q = uniform(B * T * Hq * hd, 9), k = uniform(B * T * Hkv * hd, 10), v = uniform(B * T * Hkv * hd, 11), R = uniform(q.length, 12);
        const out = new Float32Array(q.length), P = new Float32Array(B * Hq * T * T);
        const fwd = () => { withTier('ref', () => op('attentionForward')(out, P, q, k, v, B, T, Hq, Hkv, hd, T, 0)); return dot(out, R); };
        fwd();
        expect(P[0]).toBeCloseTo(1, 6);  // causality: query 0 attends to itself only
        const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length);
        withTier('ref', () => op('attentionBackward')(dq, dk, dv, R, P, q, k, v, B, T, Hq, Hkv, hd));
        fdCheck(fwd, q, dq, 15);
        fdCheck(fwd, k, dk, 15);
        fdCheck(fwd, v, dv, 15);
      });
    it('every tier matches ref (GQA, odd head sizes, several query blocks)', () => {
      for (const [B, T, Hq, Hkv, hd] of [[1, 1, 1, 1, 2], [2, 17, 4, 2, 6], [1, 33, 6, 3, 20], [1, 130, 4, 1, 17]]) {
        const q = uniform(B * T * Hq * hd, 80), k = uniform(B * T * Hkv * hd, 81), v = uniform(B * T * Hkv * hd, 82), R = uniform(q.length, 83);
        expectTiersNear(perTier(() => {
          const out = new Float32Array(q.length), P = new Float32Array(B * Hq * T * T);
          const dq = new Float32Array(q.length), dk = uniform(k.length, 1), dv = uniform(v.length, 2);  // overwritten, not accumulated
          op('attentionForward')(out, P, q, k, v, B, T, Hq, Hkv, hd, T, 0);
          op('attentionBackward')(dq, dk, dv, R, P, q, k, v, B, T, Hq, Hkv, hd);
          return [out, P, dq, dk, dv];
        }), TIER_NMSE_EXP, `B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd}`);
      }
    });
  },

  swigluForward() {
    it('ref equals silu(g) * u (no NaN where exp overflows); tiers match', () => {
      for (const n of [1, 15, 16, 17, 1000, 40000]) {
        const g = uniform(n, n, 12), u = uniform(n, n + 1);
        if (n > 2) { g[0] = -100; g[1] = 90; }
        const want = Float64Array.from(g, (x, i) => (x / (1 + Math.exp(-x))) * u[i]);
        const res = perTier(() => { const out = new Float32Array(n); op('swigluForward')(out, g, u, 1, n); return out; });
        expect(nmse(res.ref, want)).toBeLessThan(ORACLE_NMSE);
        expect(res.ref.every(Number.isFinite)).toBe(true);
        expectTiersNear(res, TIER_NMSE_EXP, `n=${n}`);
      }
    });
  },

  swigluBackward() {
    it('ref vs finite differences; tiers match', () => {
      const BT = 2, F = 19, g = uniform(BT * F, 4, 3), u = uniform(BT * F, 5), R = uniform(BT * F, 6);
      const h = new Float32Array(BT * F);
      const fwd = () => { withTier('ref', () => op('swigluForward')(h, g, u, BT, F)); return dot(h, R); };
      const dg = new Float32Array(BT * F), du = new Float32Array(BT * F);
      withTier('ref', () => op('swigluBackward')(dg, du, R, g, u, BT, F));
      fdCheck(fwd, g, dg, 20);
      fdCheck(fwd, u, du, 20);
      const g2 = uniform(1037, 7, 8), u2 = uniform(1037, 8), R2 = uniform(1037, 9);
      expectTiersNear(perTier(() => {
        const a = new Float32Array(1037), b = new Float32Array(1037);
        op('swigluBackward')(a, b, R2, g2, u2, 1, 1037);
        return [a, b];
      }), TIER_NMSE_EXP);
    });
  },

  residualForward() {
    it('a + b in f32 on every tier, bit-exact, in place too', () => {
      for (const n of [1, 15, 16, 17, 40000]) {
        const a = uniform(n, n), b = uniform(n, n + 1);
        const want = Float32Array.from(a, (x, i) => f(x + b[i]));
        const res = perTier(() => {
          const out = new Float32Array(n), inplace = a.slice();
          op('residualForward')(out, a, b, n);
          op('residualForward')(inplace, inplace, b, n);
          expect(sameBits(inplace, out)).toBe(true);
          return out;
        });
        expect(sameBits(res.ref, want)).toBe(true);
        expectTiersExact(res);
      }
    });
  },

  crossEntropyForward() {
    it('loss = logsumexp - logit[target] (ignored targets give 0), logits become probabilities; tiers match', () => {
      const BT = 5, V = 29, logits = uniform(BT * V, 13, 3), targets = Int32Array.from([4, -1, 28, 0, 7]);
      const res = perTier(() => {
        const loss = new Float32Array(BT), p = logits.slice();
        op('crossEntropyForward')(loss, p, targets, BT, V);
        return [loss, p];
      });
      for (let r = 0; r < BT; r++) {
        const row = Array.from(logits.subarray(r * V, (r + 1) * V)), mx = Math.max(...row);
        const lse = mx + Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0));
        expect(res.ref[0][r]).toBeCloseTo(targets[r] < 0 ? 0 : lse - row[targets[r]], 5);
        expect(res.ref[1].subarray(r * V, (r + 1) * V).reduce((a, x) => a + x, 0)).toBeCloseTo(1, 5);
      }
      expectTiersNear(res, TIER_NMSE_EXP);
      expect(() => op('crossEntropyForward')(new Float32Array(1), new Float32Array(3), Int32Array.from([3]), 1, 3)).toThrow(/targets\[0\] is 3/);
    });
  },

  crossEntropyBackward() {
    it('ref vs finite differences of the summed loss; tiers match', () => {
      const BT = 3, V = 29, logits = uniform(BT * V, 13, 3), targets = Int32Array.from([4, -1, 28]);
      const loss = new Float32Array(BT);
      const fwd = () => { withTier('ref', () => op('crossEntropyForward')(loss, logits.slice(), targets, BT, V)); return loss[0] + loss[1] + loss[2]; };
      const probs = logits.slice();
      withTier('ref', () => {
        op('crossEntropyForward')(loss, probs, targets, BT, V);
        op('crossEntropyBackward')(probs, targets, BT, V, 1);
      });
      fdCheck(fwd, logits, probs, 30);
      expectTiersNear(perTier(() => {
        const p = logits.slice();
        op('crossEntropyForward')(loss, p, targets, BT, V);
        op('crossEntropyBackward')(p, targets, BT, V, 0.5);
        return p;
      }), TIER_NMSE_EXP);
    });
  },

  teqScaleBackward() {
    it('activation side and weight side vs finite differences; tiers match; alpha must be positive', () => {
      const BT = 4, N = 6, K = 11;
      const x = uniform(BT * K, 18), W = uniform(N * K, 19), alpha = uniform(K, 20, 0.5, 1), G1 = uniform(BT * K, 21), G2 = uniform(N * K, 22);
      // f(alpha) = <G1, x / alpha> + <G2, W diag(alpha)>
      const fn = () => {
        let s = 0;
        for (let r = 0; r < BT; r++) for (let k = 0; k < K; k++) s += (G1[r * K + k] * x[r * K + k]) / alpha[k];
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) s += G2[n * K + k] * W[n * K + k] * alpha[k];
        return s;
      };
      const da = new Float32Array(K), dx = new Float32Array(BT * K);
      withTier('ref', () => op('teqScaleBackward')(da, dx, G1, x, BT, G2, W, N, alpha, K));
      fdCheck(fn, alpha, da, 11, 1e-3);
      for (let i = 0; i < BT * K; i++) expect(dx[i]).toBeCloseTo(G1[i] / alpha[i % K], 5);
      expect(() => op('teqScaleBackward')(da, null, G1, x, BT, G2, W, N, new Float32Array(K), K)).toThrow(/positive alpha/);
      for (const [T2, D2] of [[1, 3], [3, 17], [5, 64]]) {
        const x2 = uniform(T2 * D2, 70), R2 = uniform(T2 * D2, 72), a2 = uniform(D2, 74, 0.4, 1), W2 = uniform(5 * D2, 75), G3 = uniform(5 * D2, 76);
        expectTiersNear(perTier(() => {
          const d = uniform(D2, 77), dxx = new Float32Array(T2 * D2);
          op('teqScaleBackward')(d, dxx, R2, x2, T2, G3, W2, 5, a2, D2);
          return [d, dxx];
        }), TIER_NMSE, `${T2}x${D2}`);
      }
    });
  },

  teqExpandVScales() {
    it('repeats each kv head\'s scales for the q heads that read it', () => {
      const av = Float32Array.from([1, 2, 3, 4, 5, 6]), out = new Float32Array(4 * 3);
      op('teqExpandVScales')(out, av, 4, 2, 3);
      expect(Array.from(out)).toEqual([1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
      expect(() => op('teqExpandVScales')(out, av, 3, 2, 3)).toThrow(/Hkv dividing Hq/);
    });
  },

  rtnFakeQuantBackward() {
    // Surrogate with the same derivative as the reference's round_ste fake quant at alpha0:
    //   in range:  Q = s(v) R + v - s(v) v0 / s0      (R = round(v0 / s0) frozen, z frozen)
    //   clamped:   Q = s(v) (B - z)
    // s(v) is the RTN step size of v's group (range including 0), scaled so s(v0) = s0,
    // the f16-rounded step size the kernel uses.
    for (const [bits, sym] of [[3, false], [4, true]] as const)
      it(`${bits}-bit ${sym ? 'symmetric' : 'asymmetric'}, ragged last group: vs finite differences of its straight-through surrogate`, () => {
        const N = 6, K = 40, G = 16;
        const W = uniform(N * K, 200 + bits), alpha = uniform(K, 210 + bits, 0.5, 1), Gd = uniform(N * K, 220 + bits);
        const qmax = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
        const lo = sym ? -(2 ** (bits - 1)) : 0, hi = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
        const rint = (x: number) => { const r = Math.round(x); return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r; };
        const groupS = (v: Float64Array | Float32Array, n: number, k0: number, k1: number) => {
          let mn = 0, mx = 0;
          for (let k = k0; k < k1; k++) { mn = Math.min(mn, v[n * K + k]); mx = Math.max(mx, v[n * K + k]); }
          return { s: sym ? Math.max(-mn, mx) / qmax : (mx - mn) / qmax, mn };
        };
        const v0 = new Float32Array(N * K);
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) v0[n * K + k] = f(W[n * K + k] * alpha[k]);
        const nG = Math.ceil(K / G);
        const s0 = new Float64Array(N * nG), ratio = new Float64Array(N * nG), z0 = new Float64Array(N * nG);
        for (let n = 0; n < N; n++)
          for (let g = 0; g < nG; g++) {
            const { s, mn } = groupS(v0, n, g * G, Math.min(K, (g + 1) * G));
            const sf = f16ToF32(f32ToF16(f(s)));
            s0[n * nG + g] = sf;
            ratio[n * nG + g] = sf / s;
            z0[n * nG + g] = sym ? 0 : Math.min(qmax, Math.max(0, rint(f(-mn / sf))));
          }
        const fn = (a: Float32Array) => {
          const v = new Float64Array(N * K);
          for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) v[n * K + k] = W[n * K + k] * a[k];
          let total = 0;
          for (let n = 0; n < N; n++)
            for (let g = 0; g < nG; g++) {
              const k0 = g * G, k1 = Math.min(K, k0 + G);
              const s = groupS(v, n, k0, k1).s * ratio[n * nG + g];
              const S0 = s0[n * nG + g], z = z0[n * nG + g];
              for (let k = k0; k < k1; k++) {
                const R = rint(f(v0[n * K + k] / S0));
                const q = R + z;
                const Q = q < lo || q > hi ? s * ((q < lo ? lo : hi) - z) : s * R + v[n * K + k] - (s * v0[n * K + k]) / S0;
                total += Gd[n * K + k] * Q;
              }
            }
          return total;
        };
        const dv = Gd.slice();
        withTier('ref', () => op('rtnFakeQuantBackward')(dv, W, alpha, N, K, bits, G, sym));
        const da = new Float32Array(K);
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) da[k] += dv[n * K + k] * W[n * K + k];
        fdCheck(() => fn(alpha), alpha, da, K, 1e-4);
      });
  },

  learnedFqInit() {
    for (const [bits, sym] of [[2, false], [3, false], [4, true], [8, false]] as const)
      it(`${bits}-bit ${sym ? 'symmetric' : 'asymmetric'}: the reference's min-max init (an f32 oracle, bit-exact), ragged last group, clamps`, () => {
        const N = 5, K = 37, gs = 16, G = Math.ceil(K / gs), qmax = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
        const w = uniform(N * K, 300 + bits, 0.2);
        for (let k = 0; k < gs; k++) w[k] = 1e-6 * (k % 3);  // a near-constant group: s clamps to 1e-4
        for (let k = gs; k < 2 * gs; k++) w[k] = 0.01 + 0.001 * k;  // all positive: z = round(-min / s) < 0
        const sc = new Float32Array(N * G), z = sym ? null : new Float32Array(N * G);
        op('learnedFqInit')(sc, z, w, N, K, bits, gs, sym);
        for (let n = 0; n < N; n++)
          for (let g = 0; g < G; g++) {
            let lo = Infinity, hi = -Infinity, amax = 0;
            for (let k = g * gs; k < Math.min(K, (g + 1) * gs); k++) {
              lo = Math.min(lo, w[n * K + k]); hi = Math.max(hi, w[n * K + k]); amax = Math.max(amax, Math.abs(w[n * K + k]));
            }
            const s = Math.min(Math.max(f(f(sym ? amax : hi - lo) / qmax), f(1e-4)), 1e4);
            expect(sc[n * G + g], `s[${n}, ${g}]`).toBe(f(s));
            if (z) expect(z[n * G + g], `z[${n}, ${g}]`).toBe(rintEven(-f(lo / f(s))));
          }
        expect(sc[0]).toBe(f(1e-4));
        if (z) expect(z[1]).toBeLessThan(0);
      });
    it('rejects group sizes above K and zeros missing for asymmetric', () => {
      expect(() => op('learnedFqInit')(new Float32Array(2), new Float32Array(2), new Float32Array(8), 2, 4, 4, 5, false)).toThrow(/Expected groupSize in \[1, 4\] but received 5/);
      expect(() => op('learnedFqInit')(new Float32Array(2), null, new Float32Array(8), 2, 4, 4, 4, false)).toThrow(/zeros/);
      expect(() => op('learnedFqInit')(new Float32Array(2), null, new Float32Array(8), 2, 4, 5, 4, true)).toThrow(/Expected bits in \{2, 3, 4, 8\} but received 5/);
    });
  },

  learnedFqBackward() {
    // The straight-through surrogate of the reference's quantizer at (w0, s0, z0): every
    // rounding offset and which codes clip are frozen there, and both parameter clamps
    // pass gradients straight (clamp_ste), so its exact derivative is the backward's.
    //   code inside:  w_q = w + R s'          R = round(w0 / s0') - w0 / s0'
    //   clipped to b: w_q = (b - z'') s'      s' = s + (clamp(s0) - s0), z'' = z + (z0' - z0)
    const surrogate = (N: number, K: number, gs: number, bits: number, sym: boolean, w0: Float32Array, s0: Float32Array,
      z0: Float32Array | null, Gd: Float32Array) => {
      const G = Math.ceil(K / gs);
      const lo = sym ? -(2 ** (bits - 1)) : 0, hi = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
      const sc0 = Float64Array.from(s0, (v) => Math.min(Math.max(v, f(1e-4)), 1e4));
      const zc0 = z0 ? Float64Array.from(z0, (v) => Math.min(Math.max(rintEven(v), lo), hi)) : null;
      const R = new Float64Array(N * K), clip = new Float64Array(N * K);  // clip: 0 inside, else the bound
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) {
          const i = n * G + Math.floor(k / gs), u = f(w0[n * K + k] / f(sc0[i])), q = rintEven(u) + (zc0 ? zc0[i] : 0);
          R[n * K + k] = rintEven(u) - u;
          clip[n * K + k] = q < lo ? lo - 1e9 : q > hi ? hi + 1e9 : 0;
        }
      return (w: Float32Array, s: Float32Array, z: Float32Array | null) => {
        let total = 0;
        for (let n = 0; n < N; n++)
          for (let k = 0; k < K; k++) {
            const i = n * G + Math.floor(k / gs), sp = s[i] + (sc0[i] - s0[i]), zp = z && zc0 && z0 ? z[i] + (zc0[i] - z0[i]) : 0;
            const c = clip[n * K + k], b = c < 0 ? lo : hi;
            total += Gd[n * K + k] * (c === 0 ? w[n * K + k] + R[n * K + k] * sp : (b - zp) * sp);
          }
        return total;
      };
    };
    for (const [bits, sym] of [[2, false], [3, false], [4, true], [4, false]] as const)
      it(`${bits}-bit ${sym ? 'symmetric' : 'asymmetric'}: dw, ds, dz vs finite differences of the straight-through surrogate (clamped s and z included), accumulated`, () => {
        const N = 4, K = 45, gs = 16, G = Math.ceil(K / gs);
        const w = uniform(N * K, 400 + bits, 0.3), Gd = uniform(N * K, 410 + bits);
        const sc = uniform(N * G, 420 + bits, 0.02, 0.06), z = sym ? null : uniform(N * G, 430 + bits, 2 ** (bits - 1), 2 ** (bits - 1));
        sc[1] = 5e-5;  // below the clamp
        if (z) { z[2] = -1.6; z[3] = 2 ** bits + 0.7; }  // rounded zero points outside the code range
        const init = (n: number, seed: number) => uniform(n, seed, 0.1);
        const dw = init(N * K, 1), ds = init(N * G, 2), dz = z ? init(N * G, 3) : null;
        const dw0 = dw.slice(), ds0 = ds.slice(), dz0 = dz?.slice() ?? null;
        withTier('ref', () => op('learnedFqBackward')(dw, ds, dz, Gd, w, sc, z, N, K, bits, gs, sym));
        const sub = (a: Float32Array, b: Float32Array) => a.map((v, i) => v - b[i]);
        const fn = surrogate(N, K, gs, bits, sym, w, sc, z, Gd);
        const ws = w.slice(), ss = sc.slice(), zs = z?.slice() ?? null;
        fdCheck(() => fn(ws, ss, zs), ws, sub(dw, dw0), 40, 1e-5);
        fdCheck(() => fn(ws, ss, zs), ss, sub(ds, ds0), N * G, 1e-6);
        if (zs && dz && dz0) fdCheck(() => fn(ws, ss, zs), zs, sub(dz, dz0), N * G, 1e-3);
      });
    it('at zero-initialised outputs and clamped parameters it equals the quant family\'s fake_quant_backward (quant.h), bit for bit on dw', () => {
      const N = 7, K = 70, gs = 32, G = Math.ceil(K / gs), bits = 3;
      const w = uniform(N * K, 440, 0.3), Gd = uniform(N * K, 441), sc = uniform(N * G, 442, 0.02, 0.05), z = uniform(N * G, 443, 2, 3);
      const dw = new Float32Array(N * K), ds = new Float32Array(N * G), dz = new Float32Array(N * G);
      withTier('ref', () => op('learnedFqBackward')(dw, ds, dz, Gd, w, sc, z, N, K, bits, gs, false));
      const zr = z.map((v) => Math.min(Math.max(rintEven(v), 0), 7));
      const fq = withTier('ref', () => native().fakeQuantBackward(Gd, w, sc, zr, N, K, bits, gs, false, false));
      expect(sameBits(dw, fq.gradW)).toBe(true);
      expect(nmse(ds, fq.gradScales)).toBeLessThan(ORACLE_NMSE);
      expect(nmse(dz, fq.gradZeros!)).toBeLessThan(ORACLE_NMSE);
    });
    it('every tier matches ref on awkward shapes (M = 1, 2, 3, 7 rows, K not a multiple of 16, per-channel, optional outputs)', () => {
      for (const [N, K, gs, bits, sym] of [[1, 1, 1, 2, false], [2, 17, 16, 3, false], [3, 40, 32, 4, true], [7, 100, 32, 2, false],
        [5, 300, 300, 4, false], [3, 129, 64, 8, true], [2, 16, 8, 4, false]] as const) {
        const G = Math.ceil(K / gs);
        const w = uniform(N * K, N + K, 0.3), Gd = uniform(N * K, K + 7), sc = uniform(N * G, 11, 0.02, 0.04);
        const z = sym ? null : uniform(N * G, 12, 2 ** (bits - 1), 2 ** (bits - 1));
        const run = (withDw: boolean) => perTier(() => {
          const dw = uniform(N * K, 13), ds = uniform(N * G, 14), dz = sym ? null : uniform(N * G, 15);
          op('learnedFqBackward')(withDw ? dw : null, ds, dz, Gd, w, sc, z, N, K, bits, gs, sym);
          return [dw, ds, ...(dz ? [dz] : [])];
        });
        const res = run(true);
        for (const t of simd) expect(sameBits(res[t][0], res.ref[0]), `${t} dw ${N}x${K} g${gs}`).toBe(true);
        expectTiersNear(res, TIER_NMSE, `${N}x${K} g${gs} ${bits}-bit`);
        const none = run(false);
        expect(sameBits(none.ref[0], uniform(N * K, 13))).toBe(true);  // dw null: untouched
      }
    });
    it('rejects dz for symmetric quantization and short gradients', () => {
      const a = (n: number) => new Float32Array(n);
      expect(() => op('learnedFqBackward')(null, a(2), a(2), a(8), a(8), a(2), null, 2, 4, 4, 4, true)).toThrow(/Expected dz null for symmetric/);
      expect(() => op('learnedFqBackward')(a(7), a(2), null, a(8), a(8), a(2), a(2), 2, 4, 4, 4, false)).toThrow(/Expected 8 elements \(N, K\) for dw but received 7/);
    });
  },

  learnedFqCodes() {
    it('the unsigned codes of the trained quantizer (an f32 oracle, bit-exact); dequantized they are its forward', () => {
      for (const [bits, sym] of [[2, false], [3, false], [4, true], [8, false]] as const) {
        const N = 3, K = 50, gs = 16, G = Math.ceil(K / gs);
        const lo = sym ? -(2 ** (bits - 1)) : 0, hi = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1, shift = sym ? 2 ** (bits - 1) : 0;
        const w = uniform(N * K, 500 + bits, 0.3), sc = uniform(N * G, 510 + bits, 0.03, 0.05);
        const z = sym ? null : uniform(N * G, 520 + bits, 2 ** (bits - 1), 2 ** (bits - 1));
        sc[0] = 1e-6;
        const codes = new Float32Array(N * K);
        op('learnedFqCodes')(codes, w, sc, z, N, K, bits, gs, sym);
        const s2 = sc.map((v) => Math.min(Math.max(v, f(1e-4)), 1e4)), z2 = z?.map((v) => Math.min(Math.max(rintEven(v), lo), hi)) ?? null;
        const deq = new Float32Array(N * K);
        for (let n = 0; n < N; n++)
          for (let k = 0; k < K; k++) {
            const i = n * G + Math.floor(k / gs), zz = z2 ? z2[i] : 0;
            const q = Math.min(Math.max(rintEven(f(w[n * K + k] / s2[i])) + zz, lo), hi);
            expect(codes[n * K + k], `${bits}-bit code [${n}, ${k}]`).toBe(q + shift);
            deq[n * K + k] = f((codes[n * K + k] - shift - zz) * s2[i]);
          }
        const fwd = native().fakeQuantForward(w, s2, z2, N, K, bits, gs, sym, false);
        expect(sameBits(deq, fwd)).toBe(true);
      }
    });
  },

  adamw() {
    it('ref equals the f32 formula (bit-exact), every tier equals ref; NaN is not hidden by the clamp', () => {
      const P = 1037, arena0 = uniform(4 * P, 90);
      for (let i = 3 * P; i < 4 * P; i++) arena0[i] = Math.abs(arena0[i]);
      arena0[5] = NaN;
      const [lr, b1, b2, eps, wd, pmin] = [1e-2, 0.9, 0.95, 1e-8, 0.1, -0.3];
      const want = arena0.slice();
      for (let s = 1; s <= 3; s++) {
        const bc1 = f(1 - Math.pow(f(b1), s)), bc2 = f(1 - Math.pow(f(b2), s));
        for (let i = 0; i < P; i++) {
          const g = want[P + i];
          const m = f(f(f(b1) * want[2 * P + i]) + f(f(1 - f(b1)) * g));
          const v = f(f(f(b2) * want[3 * P + i]) + f(f(1 - f(b2)) * f(g * g)));
          want[2 * P + i] = m;
          want[3 * P + i] = v;
          const upd = f(f(f(m / bc1) / f(f(Math.sqrt(f(v / bc2))) + f(eps))) + f(f(wd) * want[i]));
          const np = f(want[i] - f(f(lr) * upd));
          want[i] = np < f(pmin) ? f(pmin) : np;
        }
      }
      const res = perTier(() => {
        const a = arena0.slice();
        for (let s = 1; s <= 3; s++) op('adamw')(a, P, 0, P, s, lr, b1, b2, eps, wd, pmin);
        return a;
      });
      expect(sameBits(res.ref, want)).toBe(true);
      expect(Number.isNaN(res.ref[5])).toBe(true);
      expectTiersExact(res);
      expect(() => op('adamw')(new Float32Array(7), 2, 0, 2, 1, 1e-3, 0.9, 0.9, 1e-8, 0, 0)).toThrow(/Expected 8 elements \(4 P\) for arena/);
    });
    it('a parameter group [begin, end) steps only its own elements (two groups at two rates equal two whole runs)', () => {
      const P = 301, cut = 117, arena0 = uniform(4 * P, 91);
      for (let i = 3 * P; i < 4 * P; i++) arena0[i] = Math.abs(arena0[i]);
      const split = arena0.slice(), a = arena0.slice(), b = arena0.slice();
      op('adamw')(split, P, 0, cut, 1, 1e-2, 0.9, 0.99, 1e-8, 0, -Infinity);
      op('adamw')(split, P, cut, P, 1, 1e-3, 0.9, 0.99, 1e-8, 0, -Infinity);
      op('adamw')(a, P, 0, P, 1, 1e-2, 0.9, 0.99, 1e-8, 0, -Infinity);
      op('adamw')(b, P, 0, P, 1, 1e-3, 0.9, 0.99, 1e-8, 0, -Infinity);
      for (const q of [0, 1, 2, 3]) {
        expect(sameBits(split.subarray(q * P, q * P + cut), a.subarray(q * P, q * P + cut)), `slice ${q} of group 0`).toBe(true);
        expect(sameBits(split.subarray(q * P + cut, (q + 1) * P), b.subarray(q * P + cut, (q + 1) * P)), `slice ${q} of group 1`).toBe(true);
      }
      expect(() => op('adamw')(split, P, cut, cut, 1, 1e-3, 0.9, 0.9, 1e-8, 0, 0)).toThrow(/Expected 0 <= begin < end <= P = 301 but received begin=117, end=117/);
      expect(() => op('adamw')(split, P, 0, P + 1, 1, 1e-3, 0.9, 0.9, 1e-8, 0, 0)).toThrow(/end=302/);
    });
  },
};

const ALL_CASES: Record<string, () => void> = { ...CASES, ...FPT_CASES };
for (const [name, body] of Object.entries(ALL_CASES)) describe(`engine op ${name}`, body);

describe('the op list (QF_ENGINE_OPS) and the kernel table', () => {
  it('every op of the native list has a case in this file, and every case an op', () => {
    expect(Object.keys(ALL_CASES).sort()).toEqual([...eng.ops()].sort());
  });

  it('reports which tier implements each kernel; the reference implements all', () => {
    const k = eng.kernels();
    expect(k.length).toBeGreaterThan(10);
    for (const e of k) {
      expect(e.ref).toBe('ref');
      expect(['ref', 'avx2']).toContain(e.avx2);
      expect(['ref', 'avx512']).toContain(e.avx512);
    }
    // the GEMM is the whole cost of a step: every SIMD tier has its own
    expect(k.find((e) => e.name === 'gemm')).toMatchObject({ avx2: 'avx2', avx512: 'avx512' });
  });

  it('a wrong number of arguments names the op and its parameters', () => {
    expect(() => op('residualForward')(new Float32Array(1))).toThrow(/Expected 4 arguments \(out, a, b, n\) \[, async\] for residualForward but received 1/);
    expect(() => op('residualForward')(new Float32Array(1), new Int32Array(1), new Float32Array(1), 1)).toThrow(/Expected Float32Array for a/);
  });
});
