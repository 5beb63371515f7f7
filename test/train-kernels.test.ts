// Training kernels: every backward _ref against central finite differences (f32
// kernels, so differences use a step and tolerance sized for f32), then every
// AVX-512 kernel against _ref on awkward shapes with named NMSE tolerances.
import { afterEach, describe, expect, it } from 'vitest';
import { native, type NativeBlockConfig } from '../lib/native.js';
import { backendInfo, setKernelPolicy } from '../lib/backend.js';

const nb = native().train;
/** central-difference gradient vs analytic: max |fd - g| / max(|g|) */
const FD_REL_TOL = 2e-2;
/** AVX-512 vs reference, f32 accumulation vs double */
const NMSE_GEMM = 1e-11;
const NMSE_ELEMENTWISE = 1e-11;
const NMSE_EXP = 1e-10;
const NMSE_BLOCK = 1e-9;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}
function randn(n: number, seed: number, scale = 1, offset = 0): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = offset + scale * 2 * r();
  return a;
}
function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
function nmse(a: Float32Array, ref: Float32Array): number {
  let e = 0, d = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i] - ref[i]) ** 2;
    d += ref[i] ** 2;
  }
  return d === 0 ? e : e / d;
}

/** checks analytic gradient `g` of f at x on `count` coordinates */
function fdCheck(f: () => number, x: Float32Array, g: Float32Array, count: number, h = 1e-2): void {
  const r = rng(99);
  let maxErr = 0, maxG = 0;
  for (let c = 0; c < count; c++) {
    const i = Math.floor((r() + 0.5) * x.length);
    const x0 = x[i];
    x[i] = x0 + h;
    const fp = f();
    x[i] = x0 - h;
    const fm = f();
    x[i] = x0;
    const fd = (fp - fm) / (2 * h);
    maxErr = Math.max(maxErr, Math.abs(fd - g[i]));
    maxG = Math.max(maxG, Math.abs(g[i]), Math.abs(fd));
  }
  expect(maxG).toBeGreaterThan(0);
  expect(maxErr / maxG).toBeLessThan(FD_REL_TOL);
}

const hasAvx512 = backendInfo().bestTier === 'avx512';
if (!hasAvx512) console.log('train-kernels: no AVX-512 on this CPU, AVX-512 vs ref comparisons skipped');

afterEach(() => {
  setKernelPolicy('auto');
});

describe('training backward _ref vs finite differences', () => {
  it('rmsnorm', () => {
    setKernelPolicy('ref');
    const T = 3, D = 37;
    const x = randn(T * D, 1), w = randn(D, 2, 1, 1), R = randn(T * D, 3);
    const out = new Float32Array(T * D), rstd = new Float32Array(T);
    const f = () => { nb.rmsnormForward(out, rstd, x, w, T, D, 1e-5); return dot(out, R); };
    f();
    const dx = new Float32Array(T * D), dw = new Float32Array(D);
    nb.rmsnormBackward(dx, dw, R, x, w, rstd, T, D);
    fdCheck(f, x, dx, 20);
    fdCheck(f, w, dw, 10);
  });

  it('swiglu', () => {
    setKernelPolicy('ref');
    const T = 2, F = 19;
    const g = randn(T * F, 4, 3), u = randn(T * F, 5), R = randn(T * F, 6);
    const h = new Float32Array(T * F);
    const f = () => { nb.swigluForward(h, g, u, T, F); return dot(h, R); };
    const dg = new Float32Array(T * F), du = new Float32Array(T * F);
    nb.swigluBackward(dg, du, R, g, u, T, F);
    fdCheck(f, g, dg, 20);
    fdCheck(f, u, du, 20);
  });

  it('rope: the backward is the transpose of the forward', () => {
    setKernelPolicy('ref');
    const T = 6, seq = 3, H = 2, hd = 10;
    const x = randn(T * H * hd, 7), R = randn(T * H * hd, 8);
    const y = x.slice();
    nb.rope(y, T, seq, H, hd, 10000, false);
    const g = R.slice();
    nb.rope(g, T, seq, H, hd, 10000, true);
    // <R, rope(x)> == <rope^T(R), x>
    expect(Math.abs(dot(y, R) - dot(g, x))).toBeLessThan(1e-4);
    // position 0 is the identity, position 1 rotates the first pair by 1 radian
    for (let i = 0; i < H * hd; i++) expect(y[i]).toBeCloseTo(x[i], 6);
    const a = x[H * hd], b = x[H * hd + hd / 2];
    expect(y[H * hd]).toBeCloseTo(a * Math.cos(1) - b * Math.sin(1), 5);
  });

  it('causal GQA attention', () => {
    setKernelPolicy('ref');
    const B = 2, S = 5, Hq = 4, Hkv = 2, hd = 6;
    const q = randn(B * S * Hq * hd, 9), k = randn(B * S * Hkv * hd, 10), v = randn(B * S * Hkv * hd, 11);
    const R = randn(B * S * Hq * hd, 12);
    const out = new Float32Array(q.length), P = new Float32Array(B * Hq * S * S);
    const f = () => { nb.attentionForward(out, P, q, k, v, B, S, Hq, Hkv, hd); return dot(out, R); };
    f();
    // causality: row 0 of every head attends to itself only
    expect(P[0]).toBeCloseTo(1, 6);
    const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length);
    nb.attentionBackward(dq, dk, dv, R, P, q, k, v, B, S, Hq, Hkv, hd);
    fdCheck(f, q, dq, 20);
    fdCheck(f, k, dk, 20);
    fdCheck(f, v, dv, 20);
  });

  it('causal attention across several 64-row blocks (the upper triangle is skipped)', () => {
    setKernelPolicy('ref');
    const B = 1, S = 150, Hq = 2, Hkv = 1, hd = 4;
    const q = randn(S * Hq * hd, 31), k = randn(S * Hkv * hd, 32), v = randn(S * Hkv * hd, 33), R = randn(S * Hq * hd, 34);
    const out = new Float32Array(q.length), P = new Float32Array(B * Hq * S * S);
    const f = () => { nb.attentionForward(out, P, q, k, v, B, S, Hq, Hkv, hd); return dot(out, R); };
    f();
    // an independent row of the output: query 140 of head 1 against keys 0..140
    const t = 140, h = 1;
    const sc = Array.from({ length: t + 1 }, (_, j) => { let s = 0; for (let d = 0; d < hd; d++) s += q[t * Hq * hd + h * hd + d] * k[j * hd + d]; return s / Math.sqrt(hd); });
    const mx = Math.max(...sc), e = sc.map((x) => Math.exp(x - mx)), z = e.reduce((a, b) => a + b, 0);
    for (let d = 0; d < hd; d++) {
      let o = 0;
      for (let j = 0; j <= t; j++) o += (e[j] / z) * v[j * hd + d];
      expect(out[t * Hq * hd + h * hd + d]).toBeCloseTo(o, 5);
    }
    const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length);
    nb.attentionBackward(dq, dk, dv, R, P, q, k, v, B, S, Hq, Hkv, hd);
    fdCheck(f, q, dq, 15);
    fdCheck(f, k, dk, 15);
    fdCheck(f, v, dv, 15);
  });

  it('cross-entropy over the vocabulary', () => {
    setKernelPolicy('ref');
    const T = 3, V = 29;
    const logits = randn(T * V, 13, 3), targets = Int32Array.from([4, -1, 28]);
    const loss = new Float32Array(T);
    const f = () => { nb.crossEntropyForward(loss, logits.slice(), targets, T, V); return loss[0] + loss[1] + loss[2]; };
    f();
    expect(loss[1]).toBe(0);
    const probs = logits.slice();
    nb.crossEntropyForward(loss, probs, targets, T, V);
    nb.crossEntropyBackward(probs, targets, T, V, 1);
    fdCheck(f, logits, probs, 30);
  });

  it('embedding', () => {
    setKernelPolicy('ref');
    const T = 5, V = 7, D = 9;
    const table = randn(V * D, 14), ids = Int32Array.from([3, 1, 3, 6, 0]), R = randn(T * D, 15);
    const out = new Float32Array(T * D);
    const f = () => { nb.embeddingForward(out, ids, table, T, V, D); return dot(out, R); };
    const dt = new Float32Array(V * D);
    nb.embeddingBackward(dt, R, ids, T, V, D);
    fdCheck(f, table, dt, 30, 0.5);
    expect(() => nb.embeddingForward(out, Int32Array.from([0, 1, 7, 0, 0]), table, T, V, D)).toThrow(/ids\[2\] is 7/);
  });

  it('gemm in every transpose form', () => {
    setKernelPolicy('ref');
    const M = 3, N = 5, K = 4;
    const A = randn(M * K, 16), B = randn(K * N, 17);
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      const C = new Float32Array(M * N);
      nb.trainGemm(C, A, B, M, N, K, ta, tb, false);
      for (let m = 0; m < M; m++)
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += A[ta ? k * M + m : m * K + k] * B[tb ? n * K + k : k * N + n];
          expect(C[m * N + n]).toBeCloseTo(s, 5);
        }
    }
  });

  it('TEQ scale: activation side and weight side', () => {
    setKernelPolicy('ref');
    const T = 4, N = 6, K = 11;
    const x = randn(T * K, 18), W = randn(N * K, 19), alpha = randn(K, 20, 0.5, 1);
    const G1 = randn(T * K, 21), G2 = randn(N * K, 22);
    // f(alpha) = <G1, x / alpha> + <G2, W diag(alpha)>
    const f = () => {
      let s = 0;
      for (let t = 0; t < T; t++) for (let k = 0; k < K; k++) s += G1[t * K + k] * x[t * K + k] / alpha[k];
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) s += G2[n * K + k] * W[n * K + k] * alpha[k];
      return s;
    };
    const da = new Float32Array(K), dx = new Float32Array(T * K);
    nb.teqScaleBackward(da, dx, G1, x, T, G2, W, N, alpha, K);
    fdCheck(f, alpha, da, 11, 1e-3);
    for (let i = 0; i < T * K; i++) expect(dx[i]).toBeCloseTo(G1[i] / alpha[i % K], 5);
    expect(() => nb.teqScaleBackward(da, null, G1, x, T, G2, W, N, new Float32Array(K), K)).toThrow(/positive alpha/);
  });
});

const cfg = (over: Partial<NativeBlockConfig> = {}): NativeBlockConfig => ({
  batch: 2, seq: 5, hidden: 24, intermediate: 40, heads: 4, kvHeads: 2, headDim: 6, rmsEps: 1e-5, ropeTheta: 10000,
  bits: 0, groupSize: 8, symmetric: false, teq: false, ...over,
});

function blockSetup(c: NativeBlockConfig, seed: number) {
  const sz = nb.blockSizes(c);
  const T = c.batch * c.seq;
  const params = randn(sz.params, seed, 0.3);
  // norm weights near 1
  params.fill(1, 0, c.hidden);
  const g2 = c.hidden + 2 * c.heads * c.headDim * c.hidden + 2 * c.kvHeads * c.headDim * c.hidden;
  params.fill(1, g2, g2 + c.hidden);
  const alpha = randn(Math.max(1, sz.alpha), seed + 1, 0.5, 1.1);
  return { sz, T, params, alpha, x: randn(T * c.hidden, seed + 2), R: randn(T * c.hidden, seed + 3) };
}

describe('Llama block step', () => {
  it('block backward vs finite differences (input, every parameter kind)', () => {
    setKernelPolicy('ref');
    const c = cfg();
    const { sz, T, params, x, R } = blockSetup(c, 30);
    const out = new Float32Array(T * c.hidden), acts = new Float32Array(sz.activations);
    const f = () => { nb.blockForward(c, out, acts, x, params, null, false); return dot(out, R); };
    f();
    const dx = new Float32Array(T * c.hidden), grads = new Float32Array(sz.params);
    nb.blockBackward(c, dx, grads, null, R, acts, params, null, false);
    fdCheck(f, x, dx, 25);
    fdCheck(f, params, grads, 60);
  });

  for (const teqExtra of [false, true])
    it(`TEQ${teqExtra ? ' with v->o and up->down scales' : ''} without quantization preserves the function and has zero alpha gradient`, () => {
      setKernelPolicy('ref');
      const c = cfg({ teq: true, teqExtra }), c0 = cfg();
      const { sz, T, params, alpha, x, R } = blockSetup(c, 40);
      expect(sz.alpha).toBe(teqExtra ? 2 * 24 + 2 * 6 + 40 : 2 * 24);
      const out = new Float32Array(T * c.hidden), out0 = new Float32Array(T * c.hidden);
      nb.blockForward(c0, out0, new Float32Array(nb.blockSizes(c0).activations), x, params, null, false);
      const acts = new Float32Array(sz.activations);
      nb.blockForward(c, out, acts, x, params, alpha, false);
      expect(nmse(out, out0)).toBeLessThan(1e-12);
      const dx = new Float32Array(T * c.hidden), da = new Float32Array(sz.alpha);
      nb.blockBackward(c, dx, null, da, R, acts, params, alpha, false);
      const maxDa = Math.max(...da.map(Math.abs));
      const maxDx = Math.max(...dx.map(Math.abs));
      expect(maxDa).toBeLessThan(1e-4 * maxDx);
    });

  it('TEQ with v->o and up->down scales: block backward vs finite differences (input, parameters)', () => {
    setKernelPolicy('ref');
    const c = cfg({ teq: true, teqExtra: true });
    const { sz, T, params, alpha, x, R } = blockSetup(c, 45);
    const out = new Float32Array(T * c.hidden), acts = new Float32Array(sz.activations);
    const f = () => { nb.blockForward(c, out, acts, x, params, alpha, false); return dot(out, R); };
    f();
    const dx = new Float32Array(T * c.hidden), grads = new Float32Array(sz.params), da = new Float32Array(sz.alpha);
    nb.blockBackward(c, dx, grads, da, R, acts, params, alpha, false);
    fdCheck(f, x, dx, 20);
    fdCheck(f, params, grads, 60);
  });

  it('TEQ with quantization: alpha gradient is finite and non-zero (quantization error drives it)', () => {
    setKernelPolicy('ref');
    const c = cfg({ teq: true, bits: 3 });
    const { sz, T, params, alpha, x, R } = blockSetup(c, 50);
    const acts = new Float32Array(sz.activations), out = new Float32Array(T * c.hidden);
    nb.blockForward(c, out, acts, x, params, alpha, false);
    const dx = new Float32Array(T * c.hidden), da = new Float32Array(sz.alpha);
    nb.blockBackward(c, dx, null, da, R, acts, params, alpha, false);
    expect(da.some((v) => Math.abs(v) > 1e-6)).toBe(true);
    expect(da.every(Number.isFinite)).toBe(true);
  });

  it('lm head loss backward vs finite differences', () => {
    setKernelPolicy('ref');
    const T = 4, D = 12, V = 21;
    const x = randn(T * D, 60), nw = randn(D, 61, 0.2, 1), head = randn(V * D, 62), targets = Int32Array.from([1, 5, 20, -1]);
    const nll = new Float32Array(T);
    const f = () => { nb.lmHeadLoss(nll, null, null, null, x, nw, head, targets, T, D, V, 1e-5, 1, false); return nll.reduce((a, b) => a + b, 0); };
    const dx = new Float32Array(T * D), dn = new Float32Array(D), dh = new Float32Array(V * D);
    nb.lmHeadLoss(nll, dx, dn, dh, x, nw, head, targets, T, D, V, 1e-5, 1, false);
    fdCheck(f, x, dx, 20);
    fdCheck(f, nw, dn, 10);
    fdCheck(f, head, dh, 20);
  });
});

describe.skipIf(!hasAvx512)('AVX-512 training kernels vs _ref', () => {
  function both<T>(run: () => T): [T, T] {
    setKernelPolicy('ref');
    const a = run();
    setKernelPolicy('avx512');
    const b = run();
    return [a, b];
  }

  it('gemm on awkward shapes and every transpose form', () => {
    for (const [M, N, K] of [[1, 1, 1], [2, 33, 17], [3, 31, 300], [7, 65, 5], [9, 600, 257], [130, 47, 19]]) {
      const A = randn(M * K, M + N), B = randn(K * N, K + 1), C0 = randn(M * N, 3);
      for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const)
        for (const acc of [false, true]) {
          const [r, v] = both(() => { const C = C0.slice(); nb.trainGemm(C, A, B, M, N, K, ta, tb, acc); return C; });
          expect(nmse(v, r)).toBeLessThan(NMSE_GEMM);
        }
    }
  });

  it('rmsnorm, swiglu, rope, softmax attention, cross-entropy, embedding, TEQ scale', () => {
    for (const [T, D] of [[1, 3], [3, 17], [5, 64], [2, 100]]) {
      const x = randn(T * D, 70), w = randn(D, 71, 0.5, 1), R = randn(T * D, 72);
      const [r, v] = both(() => {
        const out = new Float32Array(T * D), rstd = new Float32Array(T), dx = new Float32Array(T * D), dw = new Float32Array(D);
        nb.rmsnormForward(out, rstd, x, w, T, D, 1e-5);
        nb.rmsnormBackward(dx, dw, R, x, w, rstd, T, D);
        return [out, dx, dw];
      });
      for (let i = 0; i < 3; i++) expect(nmse(v[i], r[i])).toBeLessThan(NMSE_ELEMENTWISE);
      const [rs, vs] = both(() => {
        const h = new Float32Array(T * D), dg = new Float32Array(T * D), du = new Float32Array(T * D);
        nb.swigluForward(h, x, R, T, D);
        nb.swigluBackward(dg, du, R.map((v) => v * 0.7 + 0.1), x, R, T, D);
        return [h, dg, du];
      });
      for (let i = 0; i < 3; i++) expect(nmse(vs[i], rs[i])).toBeLessThan(NMSE_EXP);
      const V = D, ids = Int32Array.from({ length: T }, (_, i) => (i * 7) % V), table = randn(V * D, 5);
      const [re, ve] = both(() => {
        const out = new Float32Array(T * D), dt = new Float32Array(V * D);
        nb.embeddingForward(out, ids, table, T, V, D);
        nb.embeddingBackward(dt, R, ids, T, V, D);
        return [out, dt];
      });
      for (let i = 0; i < 2; i++) expect(nmse(ve[i], re[i])).toBeLessThan(NMSE_ELEMENTWISE);
      const targets = Int32Array.from({ length: T }, (_, i) => (i % 3 === 1 ? -1 : (i * 5) % V));
      const [rc, vc] = both(() => {
        const loss = new Float32Array(T), p = randn(T * V, 73, 4);
        nb.crossEntropyForward(loss, p, targets, T, V);
        const probs = p.slice();
        nb.crossEntropyBackward(p, targets, T, V, 0.5);
        return [loss, probs, p];
      });
      for (let i = 0; i < 3; i++) expect(nmse(vc[i], rc[i])).toBeLessThan(NMSE_EXP);
      const N = 5, alpha = randn(D, 74, 0.4, 1), Wm = randn(N * D, 75), G2 = randn(N * D, 76);
      const [rt, vt] = both(() => {
        const da = randn(D, 77), dx = new Float32Array(T * D);
        nb.teqScaleBackward(da, dx, R, x, T, G2, Wm, N, alpha, D);
        return [da, dx];
      });
      for (let i = 0; i < 2; i++) expect(nmse(vt[i], rt[i])).toBeLessThan(NMSE_ELEMENTWISE);
    }
    for (const [T, seq, H, hd] of [[3, 3, 1, 2], [7, 4, 3, 10], [4, 4, 2, 64], [2, 2, 1, 46]]) {
      const [r, v] = both(() => { const x = randn(T * H * hd, 78); nb.rope(x, T, seq, H, hd, 10000, false); nb.rope(x, T, seq, H, hd, 500000, true); return x; });
      expect(nmse(v, r)).toBeLessThan(NMSE_ELEMENTWISE);
    }
    for (const [B, S, Hq, Hkv, hd] of [[1, 1, 1, 1, 2], [2, 17, 4, 2, 6], [1, 33, 6, 3, 20]]) {
      const q = randn(B * S * Hq * hd, 80), k = randn(B * S * Hkv * hd, 81), vv = randn(B * S * Hkv * hd, 82), R = randn(q.length, 83);
      const [r, v] = both(() => {
        const out = new Float32Array(q.length), P = new Float32Array(B * Hq * S * S);
        const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(vv.length);
        nb.attentionForward(out, P, q, k, vv, B, S, Hq, Hkv, hd);
        nb.attentionBackward(dq, dk, dv, R, P, q, k, vv, B, S, Hq, Hkv, hd);
        return [out, P, dq, dk, dv];
      });
      for (let i = 0; i < 5; i++) expect(nmse(v[i], r[i])).toBeLessThan(NMSE_EXP);
    }
  });

  it('AdamW is bit-exact with the reference', () => {
    const P = 1037;
    const arena0 = randn(4 * P, 90);
    for (let i = 3 * P; i < 4 * P; i++) arena0[i] = Math.abs(arena0[i]);
    const [r, v] = both(() => {
      const a = arena0.slice();
      for (let s = 1; s <= 3; s++) nb.adamwStep(a, P, s, 1e-2, 0.9, 0.95, 1e-8, 0.1, -0.3, false);
      return a;
    });
    expect(Buffer.from(v.buffer).equals(Buffer.from(r.buffer))).toBe(true);
  });

  it('whole block forward and backward, with TEQ and 4-bit fake quantization', () => {
    for (const c of [cfg({ batch: 1, seq: 7 }), cfg({ teq: true, bits: 4, symmetric: true }), cfg({ teq: true, teqExtra: true, bits: 3 })]) {
      const { sz, T, params, alpha, x, R } = blockSetup(c, 95);
      const [r, v] = both(() => {
        const out = new Float32Array(T * c.hidden), acts = new Float32Array(sz.activations);
        nb.blockForward(c, out, acts, x, params, c.teq ? alpha : null, false);
        const dx = new Float32Array(T * c.hidden), g = new Float32Array(sz.params), da = new Float32Array(Math.max(1, sz.alpha));
        nb.blockBackward(c, dx, g, c.teq ? da : null, R, acts, params, c.teq ? alpha : null, false);
        return [out, dx, g, da];
      });
      for (let i = 0; i < 4; i++) expect(nmse(v[i], r[i])).toBeLessThan(NMSE_BLOCK);
    }
  });
});

describe('bad input', () => {
  it('rejects wrong lengths and shapes with named parameters', () => {
    expect(() => nb.trainGemm(new Float32Array(5), new Float32Array(6), new Float32Array(6), 2, 3, 3, false, false, false)).toThrow(/Expected 6 elements for C but received 5/);
    expect(() => nb.blockSizes(cfg({ heads: 3, kvHeads: 2 }))).toThrow(/multiple of kvHeads/);
    expect(() => nb.adamwStep(new Float32Array(7), 2, 1, 1e-3, 0.9, 0.9, 1e-8, 0, 0, false)).toThrow(/Expected 8 elements for arena/);
  });
});

describe('TEQ weight side through RTN (rtnFakeQuantBackward) vs finite differences of its straight-through surrogate', () => {
  // Surrogate with the same derivative as the reference's round_ste fake quant at alpha0:
  //   in range:  Q = s(v) R + v - s(v) v0 / s0      (R = round(v0 / s0) frozen, z frozen)
  //   clamped:   Q = s(v) (B - z)
  // s(v) is the RTN step size of v's group (range including 0), scaled so s(v0) = s0,
  // the f16-rounded step size the kernel uses.
  for (const [bits, sym] of [[3, false], [4, true]] as const) {
    it(`${bits}-bit ${sym ? 'symmetric' : 'asymmetric'}, ragged last group`, async () => {
      const { f16ToF32, f32ToF16 } = await import('../lib/io/half.js');
      setKernelPolicy('ref');
      const N = 6, K = 40, G = 16;
      const W = randn(N * K, 200 + bits), alpha = randn(K, 210 + bits, 0.5, 1), Gd = randn(N * K, 220 + bits);
      const qmax = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
      const lo = sym ? -(2 ** (bits - 1)) : 0, hi = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
      const rint = (x: number) => { const r = Math.round(x); return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r; };
      const groupS = (v: Float64Array | Float32Array, n: number, k0: number, k1: number) => {
        let mn = 0, mx = 0;
        for (let k = k0; k < k1; k++) { mn = Math.min(mn, v[n * K + k]); mx = Math.max(mx, v[n * K + k]); }
        return { s: sym ? Math.max(-mn, mx) / qmax : (mx - mn) / qmax, mn };
      };
      // frozen state at alpha0, computed as the f32 kernel does
      const v0 = new Float32Array(N * K);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) v0[n * K + k] = Math.fround(W[n * K + k] * alpha[k]);
      const nG = Math.ceil(K / G);
      const s0 = new Float64Array(N * nG), ratio = new Float64Array(N * nG), z0 = new Float64Array(N * nG);
      for (let n = 0; n < N; n++)
        for (let g = 0; g < nG; g++) {
          const { s, mn } = groupS(v0, n, g * G, Math.min(K, (g + 1) * G));
          const sf = f16ToF32(f32ToF16(Math.fround(s)));
          s0[n * nG + g] = sf;
          ratio[n * nG + g] = sf / s;
          z0[n * nG + g] = sym ? 0 : Math.min(qmax, Math.max(0, rint(Math.fround(-mn / sf))));
        }
      const f = (a: Float32Array) => {
        const v = new Float64Array(N * K);
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) v[n * K + k] = W[n * K + k] * a[k];
        let total = 0;
        for (let n = 0; n < N; n++)
          for (let g = 0; g < nG; g++) {
            const k0 = g * G, k1 = Math.min(K, k0 + G);
            const s = groupS(v, n, k0, k1).s * ratio[n * nG + g];
            const S0 = s0[n * nG + g], z = z0[n * nG + g];
            for (let k = k0; k < k1; k++) {
              const R = rint(Math.fround(v0[n * K + k] / S0));
              const q = R + z;
              const Q = q < lo || q > hi ? s * ((q < lo ? lo : hi) - z) : s * R + v[n * K + k] - (s * v0[n * K + k]) / S0;
              total += Gd[n * K + k] * Q;
            }
          }
        return total;
      };
      const dv = Gd.slice();
      nb.rtnFakeQuantBackward(dv, W, alpha, N, K, bits, G, sym);
      const da = new Float32Array(K);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) da[k] += dv[n * K + k] * W[n * K + k];
      fdCheck(() => f(alpha), alpha, da, K, 1e-4);
    });
  }
});
