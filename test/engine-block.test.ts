// The engine's block step (block_forward / block_backward on one BlockDesc): the
// backward against finite differences, TEQ's scales and fake quantization, the
// layout TS reads, bf16 weight sources, every tier against the reference, and the
// claim of one engine: the trainer's forward and the runtime model (KV cache)
// give the same logits, Llama 3 rope_scaling included.
import { describe, expect, it } from 'vitest';
import { native, type NativeBlockConfig } from '../lib/native.js';
import { setKernelPolicy } from '../lib/backend.js';
import { Model } from '../lib/model/model.js';
import { ByteTokenizer, SyntheticCheckpoint } from '../lib/model/synthetic.js';
import type { Checkpoint } from '../lib/model/checkpoint.js';
import { blockLayout, TrainableLlama, type LlamaShape } from '../lib/engine/llama.js';
import { availableTiers, withTier } from './helpers/tiers.js';
import { dot, fdCheck, maxRel, nmse, sameBits, uniform } from './helpers/numeric.js';
import { dequantize, quantize, QuantizedTensor } from '../lib/ops/quant.js';
import { Tensor } from '../lib/ops/tensor.js';

const eng = native().engine;
const tiers = availableTiers();
const simd = tiers.filter((t) => t !== 'ref');

/** whole block forward + backward, a SIMD tier vs the reference (f32 vs f64 sums, exp polynomial) */
const NMSE_BLOCK = 1e-9;

const hd = 6;
const cfg = (over: Partial<NativeBlockConfig> = {}): NativeBlockConfig => ({
  B: 2, T: 5, D: 24, F: 40, Hq: 4, Hkv: 2, hd, eps: 1e-5,
  invFreq: Float32Array.from({ length: hd / 2 }, (_, i) => 1 / Math.pow(10000, (2 * i) / hd)),
  bits: 0, groupSize: 8, symmetric: false, teq: false, ...over,
});

function setup(c: NativeBlockConfig, seed: number) {
  const sz = eng.blockSizes(c), lay = eng.blockLayout(c);
  const BT = c.B * c.T;
  const params = uniform(sz.params, seed, 0.3);
  params.fill(1, lay.attn_norm.offset, lay.attn_norm.offset + c.D);  // norm weights near 1
  params.fill(1, lay.ffn_norm.offset, lay.ffn_norm.offset + c.D);
  const alpha = uniform(Math.max(1, sz.alpha), seed + 1, 0.5, 1.1);
  return { sz, BT, params, alpha, x: uniform(BT * c.D, seed + 2), R: uniform(BT * c.D, seed + 3) };
}

describe('layout and sizes come from the engine', () => {
  it('the arena is attn_norm | wq | wk | wv | wo | ffn_norm | w_gate | w_up | w_down, and TS blockLayout reads it', () => {
    const c = cfg(), D = c.D, F = c.F, Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
    const lay = eng.blockLayout(c);
    let o = 0;
    for (const [name, rows, cols] of [['attn_norm', 1, D], ['wq', Dq, D], ['wk', Dkv, D], ['wv', Dkv, D], ['wo', D, Dq],
      ['ffn_norm', 1, D], ['w_gate', F, D], ['w_up', F, D], ['w_down', D, F]] as const) {
      expect(lay[name], name).toEqual({ offset: o, rows, cols });
      o += rows * cols;
    }
    expect(lay.total).toBe(o);
    expect(eng.blockSizes(c).params).toBe(o);
    const shape: LlamaShape = { hidden: D, intermediate: F, layers: 1, heads: c.Hq, kvHeads: c.Hkv, headDim: c.hd, vocab: 9, maxSeq: 8, rmsEps: 1e-5, ropeTheta: 1e4, tied: true };
    const ts = blockLayout(shape);
    expect(ts.g2).toEqual(lay.ffn_norm);
    expect(ts.linears.down_proj).toEqual(lay.w_down);
    expect(ts.total).toBe(o);
    expect(eng.blockSizes(cfg({ teq: true })).alpha).toBe(2 * D);
    expect(eng.blockSizes(cfg({ teq: true, teqExtra: true })).alpha).toBe(2 * D + Dkv + F);
  });
});

describe('block backward', () => {
  it('vs finite differences: the input and every parameter kind', () => {
    const c = cfg();
    const { sz, BT, params, x, R } = setup(c, 30);
    const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved);
    const f = () => { withTier('ref', () => eng.blockForward(c, out, saved, x, params, null, false)); return dot(out, R); };
    f();
    const dx = new Float32Array(BT * c.D), grads = new Float32Array(sz.params);
    withTier('ref', () => eng.blockBackward(c, dx, grads, null, R, saved, params, null, false));
    fdCheck(f, x, dx, 25);
    fdCheck(f, params, grads, 60);
  });

  for (const teqExtra of [false, true])
    it(`TEQ${teqExtra ? ' with v->o and up->down scales' : ''} without quantization preserves the function; the scales get no gradient`, () => {
      const c = cfg({ teq: true, teqExtra }), c0 = cfg();
      const { sz, BT, params, alpha, x, R } = setup(c, 40);
      const out = new Float32Array(BT * c.D), out0 = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved);
      withTier('ref', () => {
        eng.blockForward(c0, out0, null, x, params, null, false);
        eng.blockForward(c, out, saved, x, params, alpha, false);
      });
      expect(nmse(out, out0)).toBeLessThan(1e-12);
      const dx = new Float32Array(BT * c.D), da = new Float32Array(sz.alpha);
      withTier('ref', () => eng.blockBackward(c, dx, null, da, R, saved, params, alpha, false));
      const maxDa = Math.max(...da.map(Math.abs)), maxDx = Math.max(...dx.map(Math.abs));
      expect(maxDx).toBeGreaterThan(0);
      expect(maxDa).toBeLessThan(1e-4 * maxDx);
    });

  it('TEQ with the extra scales vs finite differences (input, parameters)', () => {
    const c = cfg({ teq: true, teqExtra: true });
    const { sz, BT, params, alpha, x, R } = setup(c, 45);
    const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved);
    const f = () => { withTier('ref', () => eng.blockForward(c, out, saved, x, params, alpha, false)); return dot(out, R); };
    f();
    const dx = new Float32Array(BT * c.D), grads = new Float32Array(sz.params), da = new Float32Array(sz.alpha);
    withTier('ref', () => eng.blockBackward(c, dx, grads, da, R, saved, params, alpha, false));
    fdCheck(f, x, dx, 20);
    fdCheck(f, params, grads, 60);
  });

  it('TEQ with RTN fake quantization: the scale gradient is finite and non-zero (quantization error drives it)', () => {
    const c = cfg({ teq: true, bits: 3 });
    const { sz, BT, params, alpha, x, R } = setup(c, 50);
    const saved = new Float32Array(sz.saved), out = new Float32Array(BT * c.D);
    const dx = new Float32Array(BT * c.D), da = new Float32Array(sz.alpha);
    withTier('ref', () => {
      eng.blockForward(c, out, saved, x, params, alpha, false);
      eng.blockBackward(c, dx, null, da, R, saved, params, alpha, false);
    });
    expect(da.some((v) => Math.abs(v) > 1e-6)).toBe(true);
    expect(da.every(Number.isFinite)).toBe(true);
  });

  it('lm head loss vs finite differences (input, final norm, head)', () => {
    const BT = 4, D = 12, V = 21;
    const x = uniform(BT * D, 60), nw = uniform(D, 61, 0.2, 1), head = uniform(V * D, 62), targets = Int32Array.from([1, 5, 20, -1]);
    const nll = new Float32Array(BT);
    const f = () => { withTier('ref', () => eng.lmHeadLoss(nll, null, null, null, x, nw, head, targets, BT, D, V, 1e-5, 1, false)); return nll.reduce((a, b) => a + b, 0); };
    const dx = new Float32Array(BT * D), dn = new Float32Array(D), dh = new Float32Array(V * D);
    withTier('ref', () => eng.lmHeadLoss(nll, dx, dn, dh, x, nw, head, targets, BT, D, V, 1e-5, 1, false));
    fdCheck(f, x, dx, 20);
    fdCheck(f, nw, dn, 10);
    fdCheck(f, head, dh, 20);
  });
});

describe('EfficientQAT in the block step', () => {
  const LIN = ['wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down'] as const;
  type Fq = { bits: number; groupSize: number; symmetric: boolean };
  /** Per linear: rows, cols and groups of the learned quantizer (group size capped at K). */
  const dims = (c: NativeBlockConfig, fq: Fq) => {
    const lay = eng.blockLayout(c);
    return LIN.map((n) => { const { rows, cols, offset } = lay[n]; const gs = Math.min(fq.groupSize, cols); return { rows, cols, offset, gs, G: Math.ceil(cols / gs) }; });
  };
  /** Min-max state of every linear, zero points nudged off integers (they round in the forward). */
  const state = (c: NativeBlockConfig, fq: Fq, params: Float32Array, skip = -1) => {
    const scales: (Float32Array | null)[] = [], zeros: (Float32Array | null)[] = [];
    for (const [j, d] of dims(c, fq).entries()) {
      if (j === skip) { scales.push(null); zeros.push(null); continue; }
      const s = new Float32Array(d.rows * d.G), z = fq.symmetric ? null : new Float32Array(d.rows * d.G);
      eng.learnedFqInit(s, z, params.subarray(d.offset, d.offset + d.rows * d.cols), d.rows, d.cols, fq.bits, d.gs, fq.symmetric);
      for (let i = 0; i < s.length; i++) s[i] *= 0.9 + 0.002 * (i % 50);  // some weights clip
      if (z) for (let i = 0; i < z.length; i++) z[i] += 0.3 * Math.sin(i);
      scales.push(s);
      zeros.push(z);
    }
    return { scales, zeros };
  };
  const fqGrads = (c: NativeBlockConfig, fq: Fq) => {
    const d = dims(c, fq);
    return { scales: d.map((x) => new Float32Array(x.rows * x.G)), zeros: d.map((x) => (fq.symmetric ? null : new Float32Array(x.rows * x.G))) };
  };
  /** The arena with every linear replaced by its fake-quantized weight (the quant family's forward at clamped s, z). */
  const quantizedArena = (c: NativeBlockConfig, fq: Fq, params: Float32Array, st: ReturnType<typeof state>) => {
    const out = params.slice();
    const hi = fq.symmetric ? 0 : 2 ** fq.bits - 1;
    for (const [j, d] of dims(c, fq).entries()) {
      const s = st.scales[j], z = st.zeros[j];
      if (!s) continue;
      const sc = s.map((v) => Math.min(Math.max(v, Math.fround(1e-4)), 1e4)), zc = z ? z.map((v) => Math.min(Math.max(Math.round(v), 0), hi)) : null;
      out.set(native().fakeQuantForward(params.slice(d.offset, d.offset + d.rows * d.cols), sc, zc, d.rows, d.cols, fq.bits, d.gs, fq.symmetric, false), d.offset);
    }
    return out;
  };

  for (const fq of [{ bits: 2, groupSize: 8, symmetric: false }, { bits: 4, groupSize: 16, symmetric: true }, { bits: 3, groupSize: 1000, symmetric: false }])
    it(`Block-AP W${fq.bits} g${fq.groupSize} ${fq.symmetric ? 'sym' : 'asym'}: the forward is the block at fake-quantized weights; the backward is the fp32 block's, through learned_fq_backward`, () => {
      const c = cfg({ fq }), c0 = cfg();
      const { sz, BT, params, x, R } = setup(c0, 80 + fq.bits);
      const st = state(c, fq, params, fq.bits === 3 ? 5 : -1);  // W3: w_up left unquantized
      const wq = quantizedArena(c, fq, params, st);
      const szq = eng.blockSizes(c);
      expect(szq.saved).toBe(sz.saved + sz.params);  // the saved activations hold the fake-quantized weights
      const out = new Float32Array(BT * c.D), out0 = new Float32Array(BT * c.D), saved = new Float32Array(szq.saved), saved0 = new Float32Array(sz.saved);
      withTier('ref', () => {
        eng.blockForward(c, out, saved, x, params, st, false);
        eng.blockForward(c0, out0, saved0, x, wq, null, false);
      });
      expect(sameBits(out, out0)).toBe(true);
      const dx = new Float32Array(BT * c.D), g = new Float32Array(sz.params), fg = fqGrads(c, fq);
      const dx0 = new Float32Array(BT * c.D), g0 = new Float32Array(sz.params);
      withTier('ref', () => {
        eng.blockBackward(c, dx, g, fg, R, saved, params, st, false);
        eng.blockBackward(c0, dx0, g0, null, R, saved0, wq, null, false);
      });
      expect(sameBits(dx, dx0)).toBe(true);
      const lay = eng.blockLayout(c0);
      for (const n of ['attn_norm', 'ffn_norm'] as const)
        expect(sameBits(g.subarray(lay[n].offset, lay[n].offset + c.D), g0.subarray(lay[n].offset, lay[n].offset + c.D)), n).toBe(true);
      for (const [j, d] of dims(c, fq).entries()) {
        const gq = g0.subarray(d.offset, d.offset + d.rows * d.cols), w = params.subarray(d.offset, d.offset + d.rows * d.cols);
        const gw = g.subarray(d.offset, d.offset + d.rows * d.cols);
        if (!st.scales[j]) {
          expect(sameBits(gw, gq), `${LIN[j]} unquantized: straight through`).toBe(true);
          expect(fg.scales[j].every((v) => v === 0)).toBe(true);
          continue;
        }
        const dw = new Float32Array(gw.length), ds = new Float32Array(fg.scales[j].length), dz = fq.symmetric ? null : new Float32Array(ds.length);
        withTier('ref', () => eng.learnedFqBackward(dw, ds, dz, gq.slice(), w.slice(), st.scales[j]!, st.zeros[j], d.rows, d.cols, fq.bits, d.gs, fq.symmetric));
        expect(sameBits(gw, dw), `${LIN[j]} dW`).toBe(true);
        expect(nmse(fg.scales[j], ds), `${LIN[j]} ds`).toBeLessThan(1e-12);
        if (dz) expect(nmse(fg.zeros[j]!, dz), `${LIN[j]} dz`).toBeLessThan(1e-12);
        expect(ds.some((v) => v !== 0)).toBe(true);
      }
    });

  it('Block-AP vs finite differences of the input and the norm weights (smooth once the codes are fixed)', () => {
    const fq = { bits: 4, groupSize: 8, symmetric: false }, c = cfg({ fq });
    const { BT, params, x, R } = setup(cfg(), 88);
    const st = state(c, fq, params);
    const sz = eng.blockSizes(c), lay = eng.blockLayout(c);
    const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved);
    const f = () => { withTier('ref', () => eng.blockForward(c, out, saved, x, params, st, false)); return dot(out, R); };
    f();
    const dx = new Float32Array(BT * c.D), g = new Float32Array(sz.params);
    withTier('ref', () => eng.blockBackward(c, dx, g, fqGrads(c, fq), R, saved, params, st, false));
    fdCheck(f, x, dx, 20);
    for (const n of ['attn_norm', 'ffn_norm'] as const)
      fdCheck(f, params.subarray(lay[n].offset, lay[n].offset + c.D), g.subarray(lay[n].offset, lay[n].offset + c.D), 12);
  });

  /** Every linear quantized with f32 parameters, as a packed block and the f32 arena of its dequantized weights. */
  const packedSetup = (c0: NativeBlockConfig, fq: Fq, seed: number) => {
    const { sz, BT, params, x, R } = setup(c0, seed);
    const lay = eng.blockLayout(c0);
    const qs = dims(c0, fq).map((d) => quantize(new Tensor(params.slice(d.offset, d.offset + d.rows * d.cols), [d.rows, d.cols]),
      { bits: fq.bits as 2 | 3 | 4 | 8, groupSize: d.gs, symmetric: fq.symmetric, paramDtype: 'f32' }));
    const deq = params.slice();
    for (const [j, d] of dims(c0, fq).entries()) deq.set(dequantize(qs[j]).data as Float32Array, d.offset);
    const block = { attnNorm: params.slice(lay.attn_norm.offset, lay.attn_norm.offset + c0.D), ffnNorm: params.slice(lay.ffn_norm.offset, lay.ffn_norm.offset + c0.D), codes: qs.map((q) => q.codes) };
    const st = { scales: qs.map((q) => (q.scales as Float32Array).slice()), zeros: qs.map((q) => (q.zeros ? (q.zeros as Float32Array).slice() : null)) };
    return { sz, BT, x, R, qs, deq, block, st };
  };

  for (const fq of [{ bits: 4, groupSize: 8, symmetric: false }, { bits: 2, groupSize: 16, symmetric: false }, { bits: 3, groupSize: 8, symmetric: true }])
    it(`E2E-QP W${fq.bits} g${fq.groupSize} ${fq.symmetric ? 'sym' : 'asym'} from packed codes: the block of the dequantized weights; ds vs finite differences`, () => {
      const c = cfg({ fq: { ...fq, packed: true } }), c0 = cfg();
      const { sz, BT, x, R, qs, deq, block, st } = packedSetup(c0, fq, 90 + fq.bits);
      expect(eng.blockSizes(c).saved).toBe(sz.saved);  // no fp32 copy of the weights
      const out = new Float32Array(BT * c.D), out0 = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved), saved0 = new Float32Array(sz.saved);
      withTier('ref', () => {
        eng.blockForward(c, out, saved, x, block, st, false);
        eng.blockForward(c0, out0, saved0, x, deq, null, false);
      });
      expect(nmse(out, out0)).toBeLessThan(1e-12);
      const dx = new Float32Array(BT * c.D), fg = fqGrads(c, fq), dx0 = new Float32Array(BT * c.D), g0 = new Float32Array(sz.params);
      withTier('ref', () => {
        eng.blockBackward(c, dx, null, fg, R, saved, block, st, false);
        eng.blockBackward(c0, dx0, g0, null, R, saved0, deq, null, false);
      });
      expect(nmse(dx, dx0)).toBeLessThan(1e-11);
      // ds[n, g] = sum_{k in g} (q - z) dW_hat[n, k]: from the fp32 block's weight gradient
      for (const [j, d] of dims(c0, fq).entries()) {
        const codes = dequantize(new QuantizedTensor(qs[j].codes, new Float32Array(d.rows * d.G).fill(1), qs[j].zeros ? new Float32Array(d.rows * d.G) : null,
          [d.rows, d.cols], qs[j].bits, d.gs, fq.symmetric, 'f32')).data as Float32Array;  // q - z at unit scale, zero point 0
        const want = new Float64Array(d.rows * d.G);
        for (let n = 0; n < d.rows; n++)
          for (let k = 0; k < d.cols; k++) {
            const z = st.zeros[j] ? st.zeros[j]![n * d.G + Math.floor(k / d.gs)] : 0;
            want[n * d.G + Math.floor(k / d.gs)] += (codes[n * d.cols + k] - z) * g0[d.offset + n * d.cols + k];
          }
        expect(nmse(fg.scales[j], want), LIN[j]).toBeLessThan(1e-10);
      }
      // the packed block is linear in each step size: finite differences are exact up to rounding
      const f = () => { withTier('ref', () => eng.blockForward(c, out, saved, x, block, st, false)); return dot(out, R); };
      for (const j of [0, 3, 6]) fdCheck(f, st.scales[j]!, fg.scales[j], 8, 1e-3);
    });

  it('every tier matches the reference: Block-AP (with dW, ds, dz) and E2E-QP (dx, ds)', () => {
    for (const fq of [{ bits: 2, groupSize: 8, symmetric: false }, { bits: 4, groupSize: 16, symmetric: true }]) {
      const c = cfg({ B: 1, T: 70, fq }), c0 = cfg({ B: 1, T: 70 });
      const { sz, BT, params, x, R } = setup(c0, 97);
      const st = state(c, fq, params), szq = eng.blockSizes(c);
      const res = Object.fromEntries(tiers.map((t) => [t, withTier(t, () => {
        const out = new Float32Array(BT * c.D), saved = new Float32Array(szq.saved), dx = new Float32Array(BT * c.D), g = new Float32Array(sz.params), fg = fqGrads(c, fq);
        eng.blockForward(c, out, saved, x, params, st, false);
        eng.blockBackward(c, dx, g, fg, R, saved, params, st, false);
        return [out, dx, g, ...fg.scales, ...fg.zeros.flatMap((v) => (v ? [v] : []))];
      })]));
      for (const t of simd) res[t].forEach((v, i) => expect(nmse(v, res.ref[i]), `Block-AP ${t} output ${i}`).toBeLessThan(NMSE_BLOCK));
      const cp = cfg({ B: 1, T: 70, fq: { ...fq, packed: true } });
      const p = packedSetup(c0, fq, 98);
      const resp = Object.fromEntries(tiers.map((t) => [t, withTier(t, () => {
        const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved), dx = new Float32Array(BT * c.D), fg = fqGrads(cp, fq);
        eng.blockForward(cp, out, saved, p.x, p.block, p.st, false);
        eng.blockBackward(cp, dx, null, fg, p.R, saved, p.block, p.st, false);
        return [out, dx, ...fg.scales];
      })]));
      for (const t of simd) resp[t].forEach((v, i) => expect(nmse(v, resp.ref[i]), `E2E-QP ${t} output ${i}`).toBeLessThan(NMSE_BLOCK));
    }
  });

  it('bad input names the parameter', () => {
    const fq = { bits: 4, groupSize: 8, symmetric: false }, c = cfg({ fq });
    const { BT, params, x } = setup(cfg(), 99);
    const st = state(c, fq, params), out = new Float32Array(BT * c.D);
    expect(() => eng.blockSizes(cfg({ fq: { ...fq, bits: 5 } }))).toThrow(/Expected bits in \{2, 3, 4, 8\} for config.fq.bits but received 5/);
    expect(() => eng.blockSizes(cfg({ fq, teq: true }))).toThrow(/config.fq without config.teq/);
    // one block takes EfficientQAT's quantizer or FPTQuant's transforms; only a merged FPTQuant step runs on
    // packed symmetric codes (its range stage after GPTQ)
    const both = /Expected config.fq with config.fpt only as packed symmetric codes under a merged FPTQuant step/;
    expect(() => eng.blockSizes(cfg({ fq, fpt: {} }))).toThrow(both);
    expect(() => eng.blockSizes(cfg({ fq: { ...fq, packed: true }, fpt: { merged: true } }))).toThrow(both);
    expect(() => eng.blockSizes(cfg({ fq: { ...fq, symmetric: true, packed: true }, fpt: { qk: true } }))).toThrow(both);
    expect(eng.blockSizes(cfg({ fq: { ...fq, symmetric: true, packed: true }, fpt: { merged: true } })).saved).toBeGreaterThan(0);
    expect(() => eng.blockForward(c, out, null, x, params, null, false)).toThrow(/Expected a \{ scales, zeros \} method state with config.fq/);
    expect(() => eng.blockForward(cfg(), out, null, x, params, st, false)).toThrow(/Expected config.fq with a \{ scales, zeros \} method state/);
    expect(() => eng.blockForward(c, out, null, x, params, { scales: st.scales.slice(1), zeros: st.zeros }, false)).toThrow(/array of 7 entries .* method.scales/);
    expect(() => eng.blockForward(c, out, null, x, params, { scales: st.scales, zeros: [null, ...st.zeros.slice(1)] }, false)).toThrow(/Expected a Float32Array for method.zeros\[0\] \(asymmetric/);
    const bad = st.scales.slice();
    bad[2] = new Float32Array(3);
    expect(() => eng.blockForward(c, out, null, x, params, { scales: bad, zeros: st.zeros }, false)).toThrow(/Expected \d+ elements \(N, G\) for method.scales\[2\] but received 3/);
    expect(() => eng.blockForward(cfg({ fq: { ...fq, packed: true } }), out, null, x, params, st, false)).toThrow(/Expected a packed block/);
    expect(() => eng.blockBackward(c, out, null, null, x, new Float32Array(eng.blockSizes(c).saved), params, st, false)).toThrow(/Expected \{ scales, zeros \} gradients for methodGrads/);
  });
});

describe('one block step for every use', () => {
  it('a forward without saved activations (evaluation) equals the training forward, bit for bit', () => {
    for (const c of [cfg(), cfg({ teq: true, teqExtra: true, bits: 4 })]) {
      const { sz, BT, params, alpha, x } = setup(c, 70);
      const a = new Float32Array(BT * c.D), b = new Float32Array(BT * c.D);
      eng.blockForward(c, a, new Float32Array(sz.saved), x, params, c.teq ? alpha : null, false);
      eng.blockForward(c, b, null, x, params, c.teq ? alpha : null, false);
      expect(sameBits(b, a)).toBe(true);
    }
  });

  it('a bf16 arena equals the f32 arena of its widened values (forward and every gradient), bit for bit', () => {
    const c = cfg({ teq: true, bits: 4, symmetric: true });
    const { sz, BT, params, alpha, x, R } = setup(c, 75);
    const bf = new Uint16Array(params.length), wide = new Float32Array(params.length);
    const u32 = new Uint32Array(wide.buffer), p32 = new Uint32Array(params.buffer);
    for (let i = 0; i < params.length; i++) {
      bf[i] = p32[i] >>> 16;  // truncation: any bf16 value will do
      u32[i] = bf[i] << 16;
    }
    const run = (arena: Float32Array | Uint16Array) => {
      const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved), dx = new Float32Array(BT * c.D),
        g = new Float32Array(sz.params), da = new Float32Array(sz.alpha);
      eng.blockForward(c, out, saved, x, arena, alpha, false);
      eng.blockBackward(c, dx, g, da, R, saved, arena, alpha, false);
      return [out, dx, g, da];
    };
    const a = run(bf), b = run(wide);
    a.forEach((v, i) => expect(sameBits(v, b[i]), `output ${i}`).toBe(true));
  });

  it('every tier matches the reference on the whole block, with TEQ and fake quantization', () => {
    for (const c of [cfg({ B: 1, T: 7 }), cfg({ teq: true, bits: 4, symmetric: true }), cfg({ teq: true, teqExtra: true, bits: 3 }),
      cfg({ B: 1, T: 70, teq: true, bits: 4 })]) {
      const { sz, BT, params, alpha, x, R } = setup(c, 95);
      const res = Object.fromEntries(tiers.map((t) => [t, withTier(t, () => {
        const out = new Float32Array(BT * c.D), saved = new Float32Array(sz.saved);
        eng.blockForward(c, out, saved, x, params, c.teq ? alpha : null, false);
        const dx = new Float32Array(BT * c.D), g = new Float32Array(sz.params), da = new Float32Array(Math.max(1, sz.alpha));
        eng.blockBackward(c, dx, g, c.teq ? da : null, R, saved, params, c.teq ? alpha : null, false);
        return [out, dx, g, da];
      })]));
      for (const t of simd) res[t].forEach((v, i) => expect(nmse(v, res.ref[i]), `${t} output ${i} T=${c.T}`).toBeLessThan(NMSE_BLOCK));
    }
  });

  // The runtime model (KV cache, S = maxSeq) and the trainer (its own k, v, S = T) run the
  // same block_forward: same kernels, same order, so the logits are identical.
  const synthetic = { dim: 48, hiddenDim: 100, nLayers: 2, nHeads: 6, nKvHeads: 2, vocabSize: 37, maxSeq: 64, seed: 7, outlierChannels: 2 };
  async function bothEngines(ck: Checkpoint, tokens: number[]): Promise<{ runtime: Float32Array; trainer: Float32Array }> {
    const m = new Model(ck, new ByteTokenizer(ck.config.vocabSize));
    try {
      const runtime = m.forward(tokens).logits;
      const trainer = await TrainableLlama.fromCheckpoint(ck).logits(Int32Array.from(tokens), 1, tokens.length);
      return { runtime, trainer };
    } finally {
      m.dispose();
    }
  }
  const tokens = Array.from({ length: 30 }, (_, i) => (i * 11) % 37);

  it('the trainer and the runtime model give the same logits', async () => {
    for (const t of tiers) {
      setKernelPolicy(t);
      try {
        const { runtime, trainer } = await bothEngines(new SyntheticCheckpoint(synthetic), tokens);
        expect(sameBits(trainer, runtime), t).toBe(true);
      } finally {
        setKernelPolicy('auto');
      }
    }
  });

  it('Llama 3 rope_scaling trains as it runs (RoPE tables from inv_freq in both)', async () => {
    const base = new SyntheticCheckpoint(synthetic);
    const scaled: Checkpoint = {
      format: base.format, path: base.path, weight: (n) => base.weight(n), tokenizer: () => base.tokenizer(), close: () => base.close(),
      config: { ...base.config, ropeTheta: 500000, ropeScaling: { ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16 } },
    };
    const s = await bothEngines(scaled, tokens), u = await bothEngines({ ...scaled, config: { ...scaled.config, ropeScaling: null } }, tokens);
    expect(sameBits(s.trainer, s.runtime)).toBe(true);
    expect(maxRel(s.trainer, u.trainer)).toBeGreaterThan(1e-4);  // the scaling is not a no-op here
  });
});

describe('bad input', () => {
  it('names the parameter and the numbers', () => {
    expect(() => eng.blockSizes(cfg({ Hq: 3, Hkv: 2 }))).toThrow(/Expected Hkv dividing Hq but received Hq=3, Hkv=2/);
    expect(() => eng.blockSizes(cfg({ hd: 5, invFreq: new Float32Array(2) }))).toThrow(/Expected even hd but received 5/);
    expect(() => eng.blockSizes(cfg({ invFreq: new Float32Array(2) }))).toThrow(/Expected hd\/2 = 3 elements for config.invFreq but received 2/);
    expect(() => eng.blockSizes(cfg({ teqExtra: true }))).toThrow(/teq together with teqExtra/);
    expect(() => eng.blockSizes(cfg({ bits: 5 }))).toThrow(/Expected bits in \{2, 3, 4, 8\} but received 5/);
    expect(() => eng.blockSizes(cfg({ B: 64, T: 4096, Hq: 64, Hkv: 64 }))).toThrow(/above the 4e9 limit/);
    const c = cfg(), { sz, BT, params, alpha, x } = setup(c, 1);
    const out = new Float32Array(BT * c.D);
    expect(() => eng.blockForward(c, out, null, x, params.subarray(1), null, false)).toThrow(new RegExp(`Expected ${sz.params} elements for the block parameter arena but received ${sz.params - 1}`));
    expect(() => eng.blockForward(c, out, null, x, params, alpha, false)).toThrow(/Expected alpha null when config.teq is false/);
    expect(() => eng.blockForward(c, out, new Float32Array(3), x, params, null, false)).toThrow(new RegExp(`Expected ${sz.saved} elements \\(block_saved_count\\) for saved but received 3`));
    const ct = cfg({ teq: true });
    expect(() => eng.blockForward(ct, out, null, x, params, new Float32Array(2 * c.D), false)).toThrow(/positive alpha but alpha\[0\] is 0/);
    expect(() => eng.blockBackward(c, out, null, null, x, new Float32Array(sz.saved), new Uint8Array(3) as unknown as Float32Array, null, false))
      .toThrow(/Expected Float32Array for params/);
  });
});
