// CUDA engine kernels (the TEQ scale backward, the learned fake quant backward, FPTQuant's S_n RMSNorm,
// LSQ and JSD backwards) against the CPU reference. Runs where a GPU and
// quantform_cuda.node are present; skips with the reason everywhere else. (The
// fake-quant backward's CUDA variant is tested in quant-cuda.test.ts.)
import { describe, expect, it } from 'vitest';
import { cudaModule, errorCode } from '../helpers/cuda-module.js';
import { cudaInfo, setKernelPolicy } from '../../lib/index.js';
import { engineOp, native, type EngineOpArg } from '../../lib/native.js';
import { nmse, uniform } from '../helpers/numeric.js';
import {
  cudaActFakeQuantBackward, cudaFptMergeBackward, cudaJsdForwardBackward, cudaLearnedFqBackward, cudaRmsnormScaledBackward,
  cudaTeqScaleBackward,
} from '../../lib/engine/cuda.js';
import { sameBits } from '../helpers/numeric.js';

const info = cudaInfo();
if (!info.available) console.warn(`gpu/engine-cuda: skipped, CUDA unavailable: ${info.reason}`);
/** f32 column sums on the GPU vs the reference's double sums */
const TEQ_NMSE_TOL = 1e-11;

describe.skipIf(!info.available)(`CUDA TEQ scale backward on ${info.device ?? 'no device'}`, () => {
  for (const [T, N, K] of [[1, 1, 1], [7, 3, 17], [0, 5, 300], [33, 0, 64], [256, 172, 4133]])
    it(`T ${T}, N ${N}, K ${K}`, () => {
      const x = uniform(T * K, 1), dxs = uniform(T * K, 2), W = uniform(N * K, 3), dws = uniform(N * K, 4), alpha = uniform(K, 5, 0.5, 1);
      const ref = uniform(K, 6), got = ref.slice();
      const dxRef = new Float32Array(T * K), dxGot = new Float32Array(T * K);
      setKernelPolicy('ref');
      try {
        engineOp('teqScaleBackward')(ref, dxRef, dxs, x, T, dws, W, N, alpha, K);
      } finally {
        setKernelPolicy('auto');
      }
      cudaTeqScaleBackward(got, dxGot, dxs, x, T, dws, W, N, alpha, K);
      expect(nmse(got, ref)).toBeLessThan(TEQ_NMSE_TOL);
      expect(nmse(dxGot, dxRef)).toBeLessThan(TEQ_NMSE_TOL);
    });
});

/** f32 group sums on the GPU (another order) vs the reference's double sums */
const FQ_NMSE_TOL = 1e-11;

describe.skipIf(!info.available)(`CUDA learned fake quant backward (EfficientQAT Block-AP) on ${info.device ?? 'no device'}`, () => {
  for (const [N, K, gs, bits, sym] of [[1, 1, 1, 2, false], [3, 17, 16, 3, false], [7, 100, 32, 2, false], [5, 300, 300, 4, true],
    [2, 4133, 128, 4, false], [3, 11008, 11008, 2, false]] as const)
    it(`N ${N}, K ${K}, group ${gs}, ${bits}-bit ${sym ? 'sym' : 'asym'}: dw bit-exact, ds and dz within f32 sums, accumulated`, () => {
      const G = Math.ceil(K / gs);
      const w = uniform(N * K, 11, 0.3), g = uniform(N * K, 12), s = uniform(N * G, 13, 0.02, 0.04), z = sym ? null : uniform(N * G, 14, 2 ** (bits - 1), 2 ** (bits - 1));
      const run = (fn: (dw: Float32Array, ds: Float32Array, dz: Float32Array | null) => void) => {
        const dw = uniform(N * K, 15), ds = uniform(N * G, 16), dz = sym ? null : uniform(N * G, 17);
        fn(dw, ds, dz);
        return { dw, ds, dz };
      };
      setKernelPolicy('ref');
      let ref;
      try {
        ref = run((dw, ds, dz) => engineOp('learnedFqBackward')(dw, ds, dz, g, w, s, z, N, K, bits, gs, sym));
      } finally {
        setKernelPolicy('auto');
      }
      const got = run((dw, ds, dz) => cudaLearnedFqBackward(dw, ds, dz, g, w, s, z, N, K, bits, gs, sym));
      expect(sameBits(got.dw, ref.dw)).toBe(true);
      expect(nmse(got.ds, ref.ds)).toBeLessThan(FQ_NMSE_TOL);
      if (ref.dz) expect(nmse(got.dz!, ref.dz)).toBeLessThan(FQ_NMSE_TOL);
    });
});

/** double row sums on both sides, another order on the GPU */
const FPT_NMSE_TOL = 1e-12;

function refOp(name: string, ...args: EngineOpArg[]): void {
  setKernelPolicy('ref');
  try {
    engineOp(name)(...args);
  } finally {
    setKernelPolicy('auto');
  }
}

describe.skipIf(!info.available)(`CUDA FPTQuant S_n RMSNorm backward on ${info.device ?? 'no device'}`, () => {
  for (const [BT, D, withC] of [[1, 1, false], [3, 17, true], [33, 64, true], [7, 2048, false], [130, 4133, true]] as const)
    it(`BT ${BT}, D ${D}${withC ? ', with the carry c' : ''}: dx and dc equal the reference`, () => {
      const x = uniform(BT * D, 21), w = uniform(D, 22, 0.5, 1.5), dout = uniform(BT * D, 23), rstd = uniform(BT, 24, 0.5, 2);
      const c = withC ? uniform(BT, 25, 0.5, 3) : null, drstd = withC ? uniform(BT, 26) : null;
      const dxRef = new Float32Array(BT * D), dxGot = new Float32Array(BT * D);
      const dcRef = withC ? uniform(BT, 27) : null, dcGot = dcRef ? dcRef.slice() : null;
      refOp('rmsnormScaledBackward', dxRef, dcRef, dout, x, w, rstd, c, drstd, BT, D, 1e-5);
      cudaRmsnormScaledBackward(dxGot, dcGot, dout, x, w, rstd, c, drstd, BT, D, 1e-5);
      expect(nmse(dxGot, dxRef)).toBeLessThan(FPT_NMSE_TOL);
      if (dcRef) expect(nmse(dcGot!, dcRef)).toBeLessThan(FPT_NMSE_TOL);
    });
});

describe.skipIf(!info.available)(`CUDA FPTQuant activation quantizer (LSQ) backward on ${info.device ?? 'no device'}`, () => {
  // one per-tensor scale; per-head KV scales (inner hd, nscale Hkv) with runs shorter and longer than a warp
  for (const [n, nscale, inner, bits] of [[1, 1, 1, 8], [1000, 1, 1, 4], [3 * 4 * 8, 4, 8, 4], [33 * 8 * 64, 8, 64, 8], [70000, 3, 7, 4]] as const)
    it(`n ${n}, ${nscale} scale(s) of runs of ${inner}, ${bits}-bit: dx bit-exact, dscale within double sums`, () => {
      const x = uniform(n, 31, 3), g = uniform(n, 32), scale = uniform(nscale, 33, 0.05, 0.4);
      const dxRef = new Float32Array(n), dxGot = new Float32Array(n);
      const dsRef = uniform(nscale, 34), dsGot = dsRef.slice();
      refOp('actFakeQuantBackward', dxRef, dsRef, g, x, scale, n, nscale, inner, bits);
      cudaActFakeQuantBackward(dxGot, dsGot, g, x, scale, n, nscale, inner, bits);
      expect(sameBits(dxGot, dxRef)).toBe(true);
      expect(nmse(dsGot, dsRef)).toBeLessThan(FPT_NMSE_TOL);
    });
});

describe.skipIf(!info.available)(`CUDA FPTQuant JSD loss and gradient on ${info.device ?? 'no device'}`, () => {
  for (const [BT, V] of [[1, 1], [3, 7], [17, 512], [5, 32000]] as const)
    it(`BT ${BT}, V ${V}: loss and dlogits equal the reference`, () => {
      const z = uniform(BT * V, 41, 4), t = uniform(BT * V, 42, 0.5, 0.5);
      for (let r = 0; r < BT; r++) {
        let s = 0;
        for (let v = 0; v < V; v++) s += t[r * V + v];
        for (let v = 0; v < V; v++) t[r * V + v] /= s;
      }
      const lossRef = new Float32Array(BT), lossGot = new Float32Array(BT), zRef = z.slice(), zGot = z.slice();
      refOp('jsdForwardBackward', lossRef, zRef, t, BT, V, 0.5);
      cudaJsdForwardBackward(lossGot, zGot, t, BT, V, 0.5);
      expect(nmse(lossGot, lossRef)).toBeLessThan(FPT_NMSE_TOL);
      expect(nmse(zGot, zRef)).toBeLessThan(FPT_NMSE_TOL);
    });
});

// The module's own checks run before any CUDA call: tested wherever quantform_cuda.node is built.
const moduleFile = info.module;
if (!moduleFile) console.log(`gpu/engine-cuda: input checks of quantform_cuda.node skipped, ${info.reason}`);
describe.skipIf(!moduleFile)('quantform_cuda.node FPTQuant training entry points: input checks (no GPU needed)', () => {
  const mod = () => cudaModule(moduleFile!);
  const code = errorCode;
  const a = (n: number) => new Float32Array(n);
  const valid = (c: string) => c === 'no error' || c.startsWith('QF_');

  it('the S_n, LSQ and JSD backwards: the CPU ops\' checks, then a coded error or a result', () => {
    const b = mod();
    expect(code(() => b.rmsnormScaledBackward(a(7), null, a(8), a(8), a(4), a(2), null, null, 2, 4, 1e-5))).toBe('QF_SHAPE_MISMATCH');
    expect(code(() => b.rmsnormScaledBackward(a(8), null, a(8), a(8), a(4), a(2), a(2), null, 2, 4, 1e-5))).toBe('QF_INVALID_ARGUMENT');
    expect(valid(code(() => b.rmsnormScaledBackward(a(8), null, a(8), a(8), a(4), a(2).fill(1), null, null, 2, 4, 1e-5)))).toBe(true);
    expect(code(() => b.actFakeQuantBackward(a(8), a(1), a(8), a(8), a(1).fill(1), 8, 1, 1, 3))).toBe('QF_UNSUPPORTED_BITS');
    expect(code(() => b.actFakeQuantBackward(a(8), a(1), a(8), a(8), a(1), 8, 1, 1, 8))).toBe('QF_INVALID_ARGUMENT');
    expect(code(() => b.actFakeQuantBackward(a(8), a(1), a(8), a(8), a(1).fill(1), 8, 1, 3, 8))).toBe('QF_INVALID_ARGUMENT');
    expect(valid(code(() => b.actFakeQuantBackward(a(8), a(1), a(8), a(8), a(1).fill(1), 8, 1, 1, 8)))).toBe(true);
    expect(code(() => b.jsdForwardBackward(a(2), a(10), a(9), 2, 5, 1))).toBe('QF_SHAPE_MISMATCH');
    expect(code(() => b.jsdForwardBackward(a(2), a(10), a(10), 2, 0, 1))).toBe('QF_INVALID_ARGUMENT');
    expect(valid(code(() => b.jsdForwardBackward(a(2), a(10), a(10).fill(0.2), 2, 5, 1)))).toBe(true);
  });

  it('the merge backward: dims bounded before any product, the parameters and buffers checked', () => {
    const b = mod(), eng = native().engine;
    const D = 16, F = 24, Hq = 2, Hkv = 1, hd = 8;
    const cfg = { B: 1, T: 1, D, F, Hq, Hkv, hd, eps: 1e-5, invFreq: a(hd / 2), bits: 0, groupSize: 128, symmetric: true, teq: false,
      fpt: { qk: true, v: true, mlp: true } };
    const P = eng.fptLayout(cfg).total, W = eng.blockSizes(cfg).params;
    const call = (over: Record<number, unknown>) => () =>
      b.fptMergeBackward(...[a(P), a(W), a(W), a(P), D, F, Hq, Hkv, hd, true, true, false, true, 0].map((v, i) => (i in over ? over[i] : v)));
    expect(code(call({ 8: 0 }))).toBe('QF_INVALID_ARGUMENT');
    expect(code(call({ 8: 1 << 30 }))).toBe('QF_INVALID_ARGUMENT');
    expect(code(call({ 7: 3 }))).toBe('QF_INVALID_ARGUMENT');       // Hkv does not divide Hq
    expect(code(call({ 3: a(P - 1) }))).toBe('QF_SHAPE_MISMATCH');  // fptParams
    expect(code(call({ 1: a(W - 1) }))).toBe('QF_SHAPE_MISMATCH');  // deff
    expect(code(call({ 13: 5 }))).toMatch(/^QF_/);                  // no power-of-two Hadamard block of 5
    expect(valid(code(call({})))).toBe(true);
  });
});

describe.skipIf(!info.available)(`CUDA FPTQuant merge backward (T_k, T_v, T_u) on ${info.device ?? 'no device'}`, () => {
  // GQA groups of 2 and 4, hd 8 and 64, T_v from a Hadamard start, the online Hadamard on down_proj
  for (const [D, F, Hq, Hkv, hd, vHadamard, hadamardBlock] of [[32, 48, 4, 2, 8, false, 16], [256, 344, 8, 2, 32, true, 8],
    [512, 1376, 8, 2, 64, false, 32]] as const)
    it(`D ${D}, F ${F}, ${Hq}/${Hkv} heads of ${hd}${vHadamard ? ', T_v from a Hadamard start' : ''}: equals the CPU's`, () => {
      const fpt = { qk: true, v: true, vHadamard, mlp: true, hadamardBlock };
      const cfg = { B: 1, T: 1, D, F, Hq, Hkv, hd, eps: 1e-5, invFreq: uniform(hd / 2, 50, 0.5, 0.5), bits: 0, groupSize: 128,
        symmetric: true, teq: false, fpt };
      const eng = native().engine;
      const params = uniform(eng.blockSizes(cfg).params, 51, 0.3), fp = uniform(eng.fptLayout(cfg).total, 52, 0.3);
      const deff = uniform(params.length, 53);
      const ref = uniform(fp.length, 54), got = ref.slice();
      setKernelPolicy('ref');
      try {
        eng.fptMergeBackward(cfg, ref, deff, params, fp);
      } finally {
        setKernelPolicy('auto');
      }
      cudaFptMergeBackward(got, deff, params, fp, { D, F, Hq, Hkv, hd, ...fpt });
      // T_k and T_u: the same double sums in the same order; T_v: double grams against the CPU's f32 GEMM
      expect(nmse(got, ref)).toBeLessThan(1e-10);
    });
});
