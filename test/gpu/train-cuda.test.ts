// CUDA TEQ scale backward against the CPU reference. Runs where a GPU and
// quantform_cuda.node are present; skips with the reason everywhere else. (The
// fake-quant backward's CUDA variant is tested in quant-cuda.test.ts.)
import { describe, expect, it } from 'vitest';
import { cudaInfo, setKernelPolicy } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { cudaTeqScaleBackward } from '../../lib/engine/cuda.js';

const info = cudaInfo();
if (!info.available) console.warn(`gpu/train-cuda: skipped, CUDA unavailable: ${info.reason}`);
/** f32 column sums on the GPU vs the reference's double sums */
const TEQ_NMSE_TOL = 1e-11;

function randn(n: number, seed: number, scale = 1, offset = 0): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => offset + scale * (((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296) - 0.5));
}
function nmse(a: Float32Array, b: Float32Array): number {
  let e = 0, d = 0;
  for (let i = 0; i < a.length; i++) { e += (a[i] - b[i]) ** 2; d += b[i] ** 2; }
  return e / Math.max(d, 1e-30);
}

describe.skipIf(!info.available)(`CUDA TEQ scale backward on ${info.device ?? 'no device'}`, () => {
  for (const [T, N, K] of [[1, 1, 1], [7, 3, 17], [0, 5, 300], [33, 0, 64], [256, 172, 4133]])
    it(`T ${T}, N ${N}, K ${K}`, () => {
      const x = randn(T * K, 1), dxs = randn(T * K, 2), W = randn(N * K, 3), dws = randn(N * K, 4), alpha = randn(K, 5, 0.5, 1);
      const ref = randn(K, 6), got = ref.slice();
      const dxRef = new Float32Array(T * K), dxGot = new Float32Array(T * K);
      setKernelPolicy('ref');
      try {
        native().train.teqScaleBackward(ref, dxRef, dxs, x, T, dws, W, N, alpha, K);
      } finally {
        setKernelPolicy('auto');
      }
      cudaTeqScaleBackward(got, dxGot, dxs, x, T, dws, W, N, alpha, K);
      expect(nmse(got, ref)).toBeLessThan(TEQ_NMSE_TOL);
      expect(nmse(dxGot, dxRef)).toBeLessThan(TEQ_NMSE_TOL);
    });
});
