// FPTQuant's ops of the engine list (engine.h QF_FPT_KERNELS and the ops after them), one case
// each, merged into engine-ops.test.ts's enumerator: the reference against float64 oracles
// written here or finite differences, every SIMD tier against the reference on awkward shapes
// (lengths not a multiple of 16, K not a multiple of 8, ragged groups, M = 1..7, GQA, cache offsets).
import { expect, it } from 'vitest';
import { engineOp, type EngineOpArg } from '../lib/native.js';
import { dot, fdCheck, gaussian, nmse, sameBits, uniform } from './helpers/numeric.js';
import { ORACLE_NMSE, TIER_NMSE, TIER_NMSE_EXP, expectTiersExact, expectTiersNear, perTier, simd, withTier } from './helpers/tiers.js';

const op = (name: string) => (...args: EngineOpArg[]) => engineOp(name)(...args) as void;
const f = Math.fround;
/** round half to even, as every tier rounds */
export function rint(x: number): number {
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x);
}
const qmaxOf = (bits: number) => 2 ** (bits - 1) - 1;
/** the f32 fake quant of one value: clamp(rint(x / s)) s */
const fq = (x: number, s: number, qmax: number) => f(Math.min(qmax, Math.max(-qmax, rint(f(x / s)))) * s);
/** position of k in the int8 matmul's permuted rows (x0 x2 x4 x6 x1 x3 x5 x7 per chunk of 8) */
const permK = (k: number) => k - (k % 8) + ((k % 8) % 2) * 4 + Math.floor((k % 8) / 2);

/** Int8 codes of every tier equal to ref's, or (where the tier's f32 statistics differ) off by one in at most `share`. */
function expectCodesNear(res: Record<string, Int8Array>, share = 0, what = ''): void {
  for (const t of simd) {
    let off = 0;
    for (let i = 0; i < res.ref.length; i++) {
      const d = Math.abs(res[t][i] - res.ref[i]);
      expect(d, `${what} ${t} code ${i}`).toBeLessThanOrEqual(share > 0 ? 1 : 0);
      off += d > 0 ? 1 : 0;
    }
    expect(off / res.ref.length, `${what} ${t} share of codes off by one`).toBeLessThanOrEqual(share);
  }
}

/** Normalised Sylvester Hadamard of size n applied to v (float64). */
function hadamard(v: ArrayLike<number>, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < n; j++) {
      let b = i & j, par = 0;
      while (b) { par ^= b & 1; b >>= 1; }
      s += (par ? -1 : 1) * v[j];
    }
    out[i] = s / Math.sqrt(n);
  }
  return out;
}

function softmax(z: ArrayLike<number>): Float64Array {
  const mx = Math.max(...Array.from(z));
  const e = Float64Array.from(z, (x) => Math.exp(x - mx));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

function jsdOracle(z: ArrayLike<number>, p: ArrayLike<number>): number {
  const q = softmax(z);
  let js = 0;
  for (let i = 0; i < q.length; i++) {
    const m = (p[i] + q[i]) / 2;
    if (p[i] > 0) js += 0.5 * p[i] * Math.log(p[i] / m);
    if (q[i] > 0) js += 0.5 * q[i] * Math.log(q[i] / m);
  }
  return js;
}

export const FPT_CASES: Record<string, () => void> = {
  rmsnormScaledForward() {
    it('eps / c^2 per row: RMSNorm of x / c equals RMSNorm of x (exact identity), c null is rmsnorm; tiers match', () => {
      for (const D of [1, 7, 16, 100]) {
        const BT = 4, eps = 1e-2, x = uniform(BT * D, D, 0.1), w = uniform(D, D + 1, 0.5, 1), c = Float32Array.from([0.5, 1, 3, 20]);
        const want = new Float64Array(BT * D);
        for (let r = 0; r < BT; r++) {
          let ss = 0;
          for (let i = 0; i < D; i++) ss += (c[r] * x[r * D + i]) ** 2;  // the unscaled residual c x
          const rs = 1 / Math.sqrt(ss / D + eps);
          for (let i = 0; i < D; i++) want[r * D + i] = c[r] * x[r * D + i] * rs * w[i];
        }
        const res = perTier(() => {
          const out = new Float32Array(BT * D), rstd = new Float32Array(BT), plain = new Float32Array(BT * D), viaPlain = new Float32Array(BT * D);
          op('rmsnormScaledForward')(out, rstd, x, w, c, BT, D, eps);
          op('rmsnormScaledForward')(plain, null, x, w, null, BT, D, eps);
          op('rmsnormForward')(viaPlain, null, x, w, BT, D, eps);
          expect(nmse(plain, viaPlain)).toBeLessThan(TIER_NMSE);
          return [out, rstd];
        });
        expect(nmse(res.ref[0], want)).toBeLessThan(ORACLE_NMSE);
        expectTiersNear(res, TIER_NMSE, `D=${D}`);
      }
      expect(() => op('rmsnormScaledForward')(new Float32Array(2), null, new Float32Array(2), new Float32Array(2), new Float32Array([0]), 1, 2, 1e-5))
        .toThrow(/positive finite c but c\[0\] is 0/);
    });
  },

  rmsnormScaledBackward() {
    it('dx, dc vs finite differences of <R, out> + <Rr, rstd> (the extra rstd gradient); tiers match', () => {
      const BT = 3, D = 21, eps = 0.05;
      const x = uniform(BT * D, 1, 0.3), w = uniform(D, 2, 0.5, 1), c = Float32Array.from([0.7, 1.5, 4]), R = uniform(BT * D, 3), Rr = uniform(BT, 4);
      const fwd = () => {
        const out = new Float32Array(BT * D), rstd = new Float32Array(BT);
        withTier('ref', () => op('rmsnormScaledForward')(out, rstd, x, w, c, BT, D, eps));
        return dot(out, R) + dot(rstd, Rr);
      };
      const out = new Float32Array(BT * D), rstd = new Float32Array(BT);
      withTier('ref', () => op('rmsnormScaledForward')(out, rstd, x, w, c, BT, D, eps));
      const dx = new Float32Array(BT * D), dc = new Float32Array(BT);
      withTier('ref', () => op('rmsnormScaledBackward')(dx, dc, R, x, w, rstd, c, Rr, BT, D, eps));
      fdCheck(fwd, x, dx, 20, 1e-3);
      fdCheck(fwd, c, dc, 3, 1e-3);
      for (const [T2, D2] of [[1, 3], [3, 17], [5, 64]]) {
        const x2 = uniform(T2 * D2, 70), w2 = uniform(D2, 71, 0.5, 1), R2 = uniform(T2 * D2, 72), c2 = uniform(T2, 73, 0.4, 1), rr = uniform(T2, 74);
        expectTiersNear(perTier(() => {
          const o = new Float32Array(T2 * D2), rs = new Float32Array(T2), d = new Float32Array(T2 * D2), g = uniform(T2, 5);
          op('rmsnormScaledForward')(o, rs, x2, w2, c2, T2, D2, 1e-3);
          op('rmsnormScaledBackward')(d, g, R2, x2, w2, rs, c2, rr, T2, D2, 1e-3);
          return [d, g];
        }), TIER_NMSE, `${T2}x${D2}`);
      }
    });
  },

  residualScaledForward() {
    it('a * m[r] + b rounded as a product then a sum: every tier bit-exact, in place too', () => {
      for (const D of [1, 15, 17, 64]) {
        const BT = 3, a = uniform(BT * D, D), m = uniform(BT, D + 1, 1, 2), b = uniform(BT * D, D + 2);
        const want = Float32Array.from(a, (v, i) => f(f(v * m[Math.floor(i / D)]) + b[i]));
        const res = perTier(() => {
          const out = new Float32Array(BT * D), inplace = a.slice();
          op('residualScaledForward')(out, a, m, b, BT, D);
          op('residualScaledForward')(inplace, inplace, m, b, BT, D);
          expect(sameBits(inplace, out)).toBe(true);
          return out;
        });
        expect(sameBits(res.ref, want)).toBe(true);
        expectTiersExact(res);
      }
    });
  },

  actFakeQuantForward() {
    it('clamp(rint(x / s)) s per tensor and per KV head (inner hd, nscale heads), INT8 and INT4; tiers bit-exact', () => {
      for (const [n, nscale, inner, bits] of [[1, 1, 1, 8], [37, 1, 1, 4], [40, 2, 4, 8], [3 * 4 * 17, 4, 17, 4], [5000, 1, 1, 8]]) {
        const x = uniform(n, n + bits, 3), scale = Float32Array.from({ length: nscale }, (_, i) => 0.02 + 0.1 * i);
        const qmax = qmaxOf(bits);
        const want = Float32Array.from(x, (v, i) => fq(v, scale[Math.floor(i / inner) % nscale], qmax));
        const res = perTier(() => { const out = new Float32Array(n); op('actFakeQuantForward')(out, x, scale, n, nscale, inner, bits); return out; });
        expect(sameBits(res.ref, want)).toBe(true);
        expectTiersExact(res, `n=${n}`);
      }
      expect(() => op('actFakeQuantForward')(new Float32Array(4), new Float32Array(4), Float32Array.from([1]), 4, 1, 1, 3)).toThrow(/4 or 8 for the activation bits but received 3/);
      expect(() => op('actFakeQuantForward')(new Float32Array(4), new Float32Array(4), Float32Array.from([0]), 4, 1, 1, 8)).toThrow(/positive finite scale but scale\[0\] is 0/);
    });
  },

  actFakeQuantBackward() {
    it('LSQ: straight-through inside, 0 where clamped; ds = sum g (rint(x/s) - x/s) inside, +-qmax g clamped (oracle); tiers match', () => {
      for (const [n, nscale, inner, bits] of [[50, 1, 1, 4], [3 * 2 * 9, 2, 9, 8], [4099, 1, 1, 8]]) {
        const x = uniform(n, n, 2), g = uniform(n, n + 1), scale = Float32Array.from({ length: nscale }, (_, i) => (bits === 4 ? 0.2 : 0.01) + 0.05 * i);
        const qmax = qmaxOf(bits);
        const wantDx = new Float32Array(n), wantDs = new Float64Array(nscale);
        for (let i = 0; i < n; i++) {
          const j = Math.floor(i / inner) % nscale, v = f(x[i] / scale[j]), q = rint(v);
          if (q > qmax || q < -qmax) wantDs[j] += g[i] * (q > qmax ? qmax : -qmax);
          else { wantDs[j] += g[i] * (q - v); wantDx[i] = g[i]; }
        }
        const res = perTier(() => {
          const dx = new Float32Array(n), ds = Float32Array.from({ length: nscale }, () => 0.5);  // accumulated
          op('actFakeQuantBackward')(dx, ds, g, x, scale, n, nscale, inner, bits);
          return [dx, ds];
        });
        expect(sameBits(res.ref[0], wantDx)).toBe(true);
        expect(nmse(res.ref[1], wantDs.map((v) => v + 0.5))).toBeLessThan(1e-12);
        expectTiersExact({ ref: res.ref[0], ...Object.fromEntries(simd.map((t) => [t, res[t][0]])) });
        expectTiersNear({ ref: res.ref[1], ...Object.fromEntries(simd.map((t) => [t, res[t][1]])) }, 1e-10);
      }
    });
  },

  actQuantError() {
    it('sum |fake_quant(x, s) - x|^p per candidate (p = 2 and 2.4) vs a float64 oracle; tiers match', () => {
      const n = 1031, x = gaussian(n, 5, 1.5), cands = Float32Array.from([0.01, 0.03, 0.1, 0.4]);
      for (const [bits, p] of [[8, 2], [4, 2.4]]) {
        const want = Float64Array.from(cands, (s) => {
          let e = 0;
          for (let i = 0; i < n; i++) e += Math.abs(fq(x[i], s, qmaxOf(bits)) - x[i]) ** p;
          return e;
        });
        const res = perTier(() => { const err = new Float32Array(cands.length); op('actQuantError')(err, x, cands, n, bits, p); return err; });
        expect(nmse(res.ref, want)).toBeLessThan(1e-12);
        expectTiersNear(res, p === 2 ? TIER_NMSE : 1e-9, `p=${p}`);
      }
    });
  },

  fwht() {
    it('blocks of the normalised Hadamard matrix (vs a float64 oracle), its own inverse; tiers bit-exact; blocks must be powers of two dividing F', () => {
      for (const [rows, F, block] of [[1, 2, 2], [3, 12, 4], [2, 172, 4], [2, 48, 16], [3, 96, 32], [1, 256, 256], [2, 40, 8]]) {
        const x = uniform(rows * F, F + block);
        const want = new Float64Array(rows * F);
        for (let r = 0; r < rows; r++)
          for (let k = 0; k < F; k += block) want.set(hadamard(x.subarray(r * F + k, r * F + k + block), block), r * F + k);
        const res = perTier(() => {
          const y = x.slice(), back = x.slice();
          op('fwht')(y, rows, F, block);
          op('fwht')(back, rows, F, block);
          op('fwht')(back, rows, F, block);
          expect(nmse(back, x)).toBeLessThan(1e-13);
          return y;
        });
        expect(nmse(res.ref, want)).toBeLessThan(ORACLE_NMSE);
        expectTiersExact(res, `${rows}x${F} block ${block}`);
      }
      expect(() => op('fwht')(new Float32Array(12), 1, 12, 8)).toThrow(/power of two dividing F = 12 but received 8/);
      expect(() => op('fwht')(new Float32Array(12), 1, 12, 3)).toThrow(/power of two dividing F = 12 but received 3/);
    });
  },

  actQuantRows() {
    it('codes in the int8 matmul layout (permuted chunks, zero padding) and group sums, with a row multiplier; tiers bit-exact', () => {
      for (const [rows, K, gs, bits] of [[1, 8, 8, 8], [3, 20, 8, 4], [2, 172, 172, 8], [7, 64, 32, 8], [2, 100, 1 << 20, 4], [3, 33, 16, 8]]) {
        const KP = Math.ceil(K / 8) * 8, G = Math.ceil(K / gs);
        const x = uniform(rows * K, K + rows, 2), m = uniform(rows, 3, 0.5, 1), scale = bits === 8 ? 0.015 : 0.25;
        const wantQ = new Int8Array(rows * KP), wantS = new Float32Array(rows * G);
        for (let r = 0; r < rows; r++)
          for (let k = 0; k < K; k++) {
            const q = Math.min(qmaxOf(bits), Math.max(-qmaxOf(bits), rint(f(f(x[r * K + k] * m[r]) / scale))));
            wantQ[r * KP + permK(k)] = q;
            wantS[r * G + Math.floor(k / gs)] += q;
          }
        const res = perTier(() => {
          const xq = new Int8Array(rows * KP).fill(99), xs = new Float32Array(rows * G).fill(5);  // overwritten
          op('actQuantRows')(xq, xs, x, m, scale, rows, K, KP, gs, bits);
          return { xq, xs };
        });
        expect(Array.from(res.ref.xq)).toEqual(Array.from(wantQ));
        expect(sameBits(res.ref.xs, wantS)).toBe(true);
        expectCodesNear(Object.fromEntries(Object.entries(res).map(([t, v]) => [t, v.xq])), 0, `${rows}x${K} g${gs}`);
        expectTiersExact(Object.fromEntries(Object.entries(res).map(([t, v]) => [t, v.xs])));
      }
      expect(() => op('actQuantRows')(new Int8Array(8), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 16, 8, 8)).toThrow(/KP = K rounded up/);
      expect(() => op('actQuantRows')(new Int8Array(24), new Float32Array(2), new Float32Array(20), null, 0.1, 1, 20, 24, 12, 8)).toThrow(/groupSize a multiple of 8/);
    });
  },

  rmsnormQuant() {
    it('RMSNorm (with the S_n carry) fused with the activation quantizer: codes of the fp32 norm; tiers within one code on rare ties', () => {
      for (const [BT, D, gs] of [[1, 64, 64], [5, 100, 1 << 20], [3, 48, 16]]) {
        const KP = Math.ceil(D / 8) * 8, G = Math.ceil(D / gs), eps = 1e-5;
        const x = uniform(BT * D, D, 3), w = uniform(D, D + 1, 0.5, 1), c = uniform(BT, 9, 0.5, 1.5), scale = 0.02;
        const norm = new Float32Array(BT * D), rstd = new Float32Array(BT);
        withTier('ref', () => op('rmsnormScaledForward')(norm, rstd, x, w, c, BT, D, eps));
        const wantQ = new Int8Array(BT * KP);
        for (let r = 0; r < BT; r++) for (let k = 0; k < D; k++) wantQ[r * KP + permK(k)] = Math.min(127, Math.max(-127, rint(f(norm[r * D + k] / scale))));
        const res = perTier(() => {
          const xq = new Int8Array(BT * KP), xs = new Float32Array(BT * G), rs = new Float32Array(BT);
          op('rmsnormQuant')(xq, xs, rs, x, w, c, scale, BT, D, KP, gs, 8, eps);
          return { xq, xs, rs };
        });
        expect(Array.from(res.ref.xq)).toEqual(Array.from(wantQ));
        expect(sameBits(res.ref.rs, rstd)).toBe(true);
        expectCodesNear(Object.fromEntries(Object.entries(res).map(([t, v]) => [t, v.xq])), 0.01, `${BT}x${D}`);
        expectTiersNear(Object.fromEntries(Object.entries(res).map(([t, v]) => [t, v.rs])), TIER_NMSE);
      }
    });
  },

  swigluQuant() {
    it('silu(g) u, the online Hadamard, the row multiplier and the quantizer fused: codes of the unfused ops; tiers within one code', () => {
      for (const [rows, F, block, gs] of [[1, 16, 0, 16], [3, 172, 4, 172], [2, 96, 32, 32], [4, 40, 8, 8]]) {
        const KP = Math.ceil(F / 8) * 8, G = Math.ceil(F / gs);
        const g = uniform(rows * F, F, 3), u = uniform(rows * F, F + 1, 2), m = uniform(rows, 5, 0.5, 1), scale = 0.03;
        const a = new Float32Array(rows * F);
        withTier('ref', () => {
          op('swigluForward')(a, g, u, rows, F);
          if (block > 0) op('fwht')(a, rows, F, block);
        });
        const wantQ = new Int8Array(rows * KP), wantS = new Float32Array(rows * G);
        for (let r = 0; r < rows; r++)
          for (let k = 0; k < F; k++) {
            const q = Math.min(127, Math.max(-127, rint(f(f(a[r * F + k] * m[r]) / scale))));
            wantQ[r * KP + permK(k)] = q;
            wantS[r * G + Math.floor(k / gs)] += q;
          }
        const res = perTier(() => {
          const xq = new Int8Array(rows * KP), xs = new Float32Array(rows * G);
          op('swigluQuant')(xq, xs, g, u, m, scale, rows, F, KP, gs, 8, block);
          return { xq, xs };
        });
        expect(Array.from(res.ref.xq)).toEqual(Array.from(wantQ));
        expect(sameBits(res.ref.xs, wantS)).toBe(true);
        expectCodesNear(Object.fromEntries(Object.entries(res).map(([t, v]) => [t, v.xq])), 0.01, `${rows}x${F}`);
      }
      expect(() => op('swigluQuant')(new Int8Array(16), new Float32Array(1), new Float32Array(12), new Float32Array(12), null, 0.1, 1, 12, 16, 12, 8, 8))
        .toThrow(/power of two dividing F = 12 but received 8/);
    });
  },

  quantHeads() {
    it('KV codes with one static scale per head, INT8 and INT4; tiers bit-exact', () => {
      for (const [rows, H, hd, bits] of [[1, 1, 8, 8], [5, 3, 17, 4], [2, 4, 64, 8]]) {
        const x = uniform(rows * H * hd, hd, 2), scale = Float32Array.from({ length: H }, (_, h) => 0.01 + 0.05 * h);
        const want = Int8Array.from(x, (v, i) => Math.min(qmaxOf(bits), Math.max(-qmaxOf(bits), rint(f(v / scale[Math.floor(i / hd) % H])))));
        const res = perTier(() => { const q = new Int8Array(x.length); op('quantHeads')(q, x, scale, rows, H, hd, bits); return q; });
        expect(Array.from(res.ref)).toEqual(Array.from(want));
        expectCodesNear(res, 0);
      }
    });
  },

  attentionForwardQ8() {
    it('over an int8 cache equals attention_forward over its dequantized values (GQA, cache offsets, several blocks); tiers match', () => {
      for (const [B, T, Hq, Hkv, hd, S, pos0] of [[1, 1, 1, 1, 8, 4, 3], [2, 7, 4, 2, 8, 16, 3], [1, 70, 4, 1, 17, 90, 10], [1, 5, 6, 3, 64, 40, 30]]) {
        const q = uniform(B * T * Hq * hd, T + hd, 2);
        const kq = Int8Array.from(uniform(B * S * Hkv * hd, S), (v) => Math.round(v * 127));
        const vq = Int8Array.from(uniform(B * S * Hkv * hd, S + 1), (v) => Math.round(v * 127));
        const ks = Float32Array.from({ length: Hkv }, (_, g) => 0.01 + 0.004 * g), vs = Float32Array.from({ length: Hkv }, (_, g) => 0.02 + 0.003 * g);
        const kf = Float32Array.from(kq, (v, i) => v * ks[Math.floor(i / hd) % Hkv]), vf = Float32Array.from(vq, (v, i) => v * vs[Math.floor(i / hd) % Hkv]);
        const want = new Float32Array(q.length);
        withTier('ref', () => op('attentionForward')(want, null, q, kf, vf, B, T, Hq, Hkv, hd, S, pos0));
        const res = perTier(() => { const out = new Float32Array(q.length); op('attentionForwardQ8')(out, q, kq, vq, ks, vs, B, T, Hq, Hkv, hd, S, pos0); return out; });
        expect(nmse(res.ref, want)).toBeLessThan(1e-12);
        expectTiersNear(res, TIER_NMSE_EXP);
      }
    });
  },

  jsdForwardBackward() {
    it('JSD(p || softmax(z)) vs a float64 oracle, dz vs finite differences, 0 where p = q; tiers match', () => {
      const BT = 3, V = 37, z = uniform(BT * V, 1, 3), pz = uniform(BT * V, 2, 3);
      const p = new Float32Array(BT * V);
      for (let r = 0; r < BT; r++) p.set(softmax(pz.subarray(r * V, (r + 1) * V)), r * V);
      p[5] = 0;  // a teacher probability of 0 contributes nothing
      const loss = new Float32Array(BT);
      const fwd = () => { withTier('ref', () => op('jsdForwardBackward')(loss, z.slice(), p, BT, V, 1)); return loss[0] + loss[1] + loss[2]; };
      fwd();
      for (let r = 0; r < BT; r++) expect(loss[r]).toBeCloseTo(jsdOracle(z.subarray(r * V, (r + 1) * V), p.subarray(r * V, (r + 1) * V)), 6);
      const g = z.slice();
      withTier('ref', () => op('jsdForwardBackward')(loss, g, p, BT, V, 1));
      fdCheck(fwd, z, g, 30, 1e-2);
      // identical distributions: JSD 0 and no gradient
      const same = new Float32Array(V), zz = pz.subarray(0, V).slice();
      same.set(softmax(zz));
      const l1 = new Float32Array(1);
      withTier('ref', () => op('jsdForwardBackward')(l1, zz, same, 1, V, 1));
      expect(Math.abs(l1[0])).toBeLessThan(1e-7);
      expect(Math.max(...Array.from(zz, Math.abs))).toBeLessThan(1e-6);
      expectTiersNear(perTier(() => { const zc = z.slice(), l = new Float32Array(BT); op('jsdForwardBackward')(l, zc, p, BT, V, 0.5); return [l, zc]; }), 1e-9);
    });
  },

  lpRatio() {
    it('mean over groups of mean |x|^p / mean(x^2)^(p/2): scale-free, value and gradient vs finite differences', () => {
      const n = 24, x = gaussian(n, 3);
      for (const [group, p] of [[24, 4], [8, 4], [6, 3]]) {
        const loss = new Float32Array(1);
        const fwd = () => { loss[0] = 0; op('lpRatio')(loss, null, x, n, group, p, 2); return loss[0]; };
        let want = 0;
        for (let g = 0; g < n / group; g++) {
          let a = 0, b = 0;
          for (let i = g * group; i < (g + 1) * group; i++) { a += Math.abs(x[i]) ** p; b += x[i] ** 2; }
          want += (a / group) / (b / group) ** (p / 2);
        }
        expect(fwd()).toBeCloseTo((2 * want) / (n / group), 5);
        const x10 = Float32Array.from(x, (v) => v * 10), l10 = new Float32Array(1);
        op('lpRatio')(l10, null, x10, n, group, p, 2);
        expect(l10[0]).toBeCloseTo(fwd(), 4);
        const dx = new Float32Array(n);
        op('lpRatio')(new Float32Array(1), dx, x, n, group, p, 2);
        fdCheck(fwd, x, dx, 12, 1e-3);
      }
      expect(() => op('lpRatio')(new Float32Array(1), null, new Float32Array(10), 10, 4, 4, 1)).toThrow(/group dividing n/);
    });
  },

  fptRotateRows() {
    it('table diag(norm) Q (a float64 oracle); an orthogonal Q keeps every row norm when norm is null', () => {
      const rows = 5, D = 6;
      const t = uniform(rows * D, 1), norm = uniform(D, 2, 0.5, 1), A = gaussian(D * D, 3);
      // Q from Gram-Schmidt of A
      const Q = new Float32Array(D * D);
      for (let j = 0; j < D; j++) {
        const v = Float64Array.from({ length: D }, (_, i) => A[i * D + j]);
        for (let k = 0; k < j; k++) { let d = 0; for (let i = 0; i < D; i++) d += Q[i * D + k] * v[i]; for (let i = 0; i < D; i++) v[i] -= d * Q[i * D + k]; }
        const nv = Math.sqrt(v.reduce((a, b) => a + b * b, 0));
        for (let i = 0; i < D; i++) Q[i * D + j] = v[i] / nv;
      }
      const want = new Float64Array(rows * D);
      for (let r = 0; r < rows; r++) for (let j = 0; j < D; j++) for (let i = 0; i < D; i++) want[r * D + j] += t[r * D + i] * norm[i] * Q[i * D + j];
      const y = t.slice();
      op('fptRotateRows')(y, norm, Q, rows, D);
      expect(nmse(y, want)).toBeLessThan(1e-12);
      const z = t.slice();
      op('fptRotateRows')(z, null, Q, rows, D);
      for (let r = 0; r < rows; r++) expect(dot(z.subarray(r * D, (r + 1) * D), z.subarray(r * D, (r + 1) * D))).toBeCloseTo(dot(t.subarray(r * D, (r + 1) * D), t.subarray(r * D, (r + 1) * D)), 4);
    });
  },

  lmHeadJsd() {
    it('final RMSNorm with the S_n carry + head + JSD: the loss does not depend on how x is split into x / c and c; dx, dc vs finite differences', () => {
      const BT = 3, D = 8, V = 11, eps = 1e-2;
      const x = uniform(BT * D, 1), c = Float32Array.from([0.5, 2, 7]), w = uniform(D, 2, 0.5, 1), head = uniform(V * D, 3);
      const p = new Float32Array(BT * V);
      for (let r = 0; r < BT; r++) p.set(softmax(uniform(V, 10 + r, 2)), r * V);
      const loss = new Float32Array(BT);
      const fwd = () => { op('lmHeadJsd')(loss, null, null, x, c, w, head, p, BT, D, V, eps, 1); return loss[0] + loss[1] + loss[2]; };
      const base = fwd();
      // the same residual stored unscaled (c = 1)
      const xs = Float32Array.from(x, (v, i) => v * c[Math.floor(i / D)]);
      op('lmHeadJsd')(loss, null, null, xs, null, w, head, p, BT, D, V, eps, 1);
      expect(loss[0] + loss[1] + loss[2]).toBeCloseTo(base, 5);
      const dx = new Float32Array(BT * D), dc = new Float32Array(BT);
      op('lmHeadJsd')(loss, dx, dc, x, c, w, head, p, BT, D, V, eps, 1);
      fdCheck(fwd, x, dx, 16, 1e-3);
      fdCheck(fwd, c, dc, 3, 1e-3);
      expect(() => op('lmHeadJsd')(loss, dx, dc, x, null, w, head, p, BT, D, V, eps, 1)).toThrow(/carry c together with its gradient/);
    });
  },
};
