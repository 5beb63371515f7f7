// CUDA engine kernels (the TEQ scale backward, the learned fake quant backward) against the CPU reference. Runs where a GPU and
// quantform_cuda.node are present; skips with the reason everywhere else. (The
// fake-quant backward's CUDA variant is tested in quant-cuda.test.ts.)
import { describe, expect, it } from 'vitest';
import { cudaInfo, setKernelPolicy } from '../../lib/index.js';
import { engineOp } from '../../lib/native.js';
import { nmse, uniform } from '../helpers/numeric.js';
import { cudaLearnedFqBackward, cudaTeqScaleBackward } from '../../lib/engine/cuda.js';
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
