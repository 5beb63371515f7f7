// CUDA engine kernels (the TEQ scale backward) against the CPU reference. Runs where a GPU and
// quantform_cuda.node are present; skips with the reason everywhere else. (The
// fake-quant backward's CUDA variant is tested in quant-cuda.test.ts.)
import { describe, expect, it } from 'vitest';
import { cudaInfo, setKernelPolicy } from '../../lib/index.js';
import { engineOp } from '../../lib/native.js';
import { nmse, uniform } from '../helpers/numeric.js';
import { cudaTeqScaleBackward } from '../../lib/engine/cuda.js';

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
