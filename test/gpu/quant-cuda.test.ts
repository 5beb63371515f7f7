// CUDA quantization kernels against the CPU reference. They run where a GPU and
// quantform_cuda.node are present and skip with the reason everywhere else.
import { describe, expect, it } from 'vitest';
import {
  cudaDequantize, cudaFakeQuantize, cudaFakeQuantizeBackward, cudaInfo, cudaQuantize, dequantize, fakeQuantize,
  fakeQuantizeBackward, quantize, Tensor, type Bits,
} from '../../lib/index.js';
import { nmse, randomWeights } from '../helpers/oracle.js';
import { withTier } from '../helpers/tiers.js';

const info = cudaInfo();
if (!info.available) console.warn(`gpu/quant-cuda: skipped, CUDA unavailable: ${info.reason}`);
// f32 group sums in a different order than the f64 reference
const GRAD_NMSE_TOL = 1e-10;
const SHAPES: [number, number][] = [[1, 1], [3, 7], [5, 172], [2, 300], [130, 4133]];

describe.skipIf(!info.available)(`CUDA quantization on ${info.device ?? 'no device'}`, () => {
  for (const [N, K] of SHAPES)
    for (const bits of [2, 3, 4, 8] as Bits[])
      it(`quantize / dequantize bit-exact: [${N}, ${K}] ${bits}-bit`, () => {
        const w = new Tensor(randomWeights(N * K, N + K + bits), [N, K]);
        for (const symmetric of [true, false])
          for (const groupSize of [1, 32, 128, 'channel'] as const) {
            const opts = { bits, groupSize, symmetric };
            const ref = withTier('ref', () => quantize(w, opts));
            const got = cudaQuantize(w, opts);
            expect(Buffer.from(got.codes).equals(Buffer.from(ref.codes))).toBe(true);
            expect(Array.from(got.scales)).toEqual(Array.from(ref.scales));
            if (!symmetric) expect(Array.from(got.zeros!)).toEqual(Array.from(ref.zeros!));
            expect(Array.from(cudaDequantize(ref).data)).toEqual(Array.from(withTier('ref', () => dequantize(ref)).data));
          }
      });

  it('fake-quant forward and backward', () => {
    const [N, K] = [33, 300];
    const w = new Tensor(randomWeights(N * K, 1), [N, K]);
    const g = new Tensor(randomWeights(N * K, 2, 1 << 30), [N, K]);
    for (const symmetric of [true, false]) {
      const opts = { bits: 3 as Bits, groupSize: 64, symmetric };
      const q = quantize(w, opts);
      const scales = (q.scales as Float32Array).map((s) => s * 0.8);
      const params = { scales, zeros: q.zeros as Float32Array | null };
      expect(Array.from(cudaFakeQuantize(w, opts, params).data)).toEqual(Array.from(withTier('ref', () => fakeQuantize(w, opts, params)).data));
      const ref = withTier('ref', () => fakeQuantizeBackward(g, w, opts, params));
      const got = cudaFakeQuantizeBackward(g, w, opts, params);
      expect(Array.from(got.gradW)).toEqual(Array.from(ref.gradW));
      expect(nmse(got.gradScales, ref.gradScales)).toBeLessThan(GRAD_NMSE_TOL);
      if (!symmetric) expect(nmse(got.gradZeros!, ref.gradZeros!)).toBeLessThan(GRAD_NMSE_TOL);
    }
  });
});

describe('without CUDA', () => {
  it.skipIf(info.available)('the CUDA entry points say why they cannot run', () => {
    expect(() => cudaQuantize(Tensor.fromArray([1, 2], [1, 2]), { bits: 4 })).toThrow(/^CUDA is not available: .+/);
    expect(info.reason).toMatch(/\w/);
  });
});
