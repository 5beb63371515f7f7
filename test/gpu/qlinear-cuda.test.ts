// CUDA quantized-linear backward against the CPU reference on the awkward shapes of
// test/qlinear.test.ts. Runs where a GPU and quantform_cuda.node are present; skips
// with the reason everywhere else (it has not run on a GPU yet).
import { describe, expect, it } from 'vitest';
import { cudaInfo, cudaQuantLinearBackward, quantize, QuantizedTensor, quantLinearBackward, setKernelPolicy, Tensor, type Bits } from '../../lib/index.js';
import { nmse, randomWeights } from '../helpers/oracle.js';

const info = cudaInfo();
if (!info.available) console.warn(`gpu/qlinear-cuda: skipped, CUDA unavailable: ${info.reason}`);
/** f32 tile sums (and atomics for gradScales) vs the reference's double sums */
const CUDA_NMSE = 1e-10;

describe.skipIf(!info.available)(`CUDA quantized-linear backward on ${info.device ?? 'no device'}`, () => {
  for (const [M, N, K, bits, gs, sym] of [[1, 1, 8, 4, 8, false], [3, 5, 172, 4, 32, false], [17, 7, 172, 3, 32, true],
    [3, 40, 300, 2, 100, false], [17, 33, 300, 8, 48, false], [64, 300, 264, 2, 16, true]] as const)
    it(`M ${M}, N ${N}, K ${K}, INT${bits} g${gs} ${sym ? 'sym' : 'asym'}`, () => {
      const q0 = quantize(new Tensor(randomWeights(N * K, N + K), [N, K]), { bits: bits as Bits, groupSize: gs, symmetric: sym, paramDtype: 'f32' });
      const q = new QuantizedTensor(q0.codes, Float32Array.from(q0.scales as Float32Array, (v) => v + 0.01), q0.zeros, q0.shape, q0.bits, q0.groupSize, q0.symmetric, 'f32');
      const x = randomWeights(M * K, 5), R = randomWeights(M * N, 6);
      setKernelPolicy('ref');
      let ref;
      try {
        ref = quantLinearBackward(R, x, q);
      } finally {
        setKernelPolicy('auto');
      }
      const got = cudaQuantLinearBackward(R, x, q);
      expect(nmse(got.gradInput!, ref.gradInput!)).toBeLessThan(CUDA_NMSE);
      expect(nmse(got.gradScales!, ref.gradScales!)).toBeLessThan(CUDA_NMSE);
    });
});
