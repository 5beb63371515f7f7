// CUDA dequant-matmul against the CPU canonical reference. Skips, saying why,
// where there is no CUDA module, driver or GPU.
import { afterEach, describe, expect, it } from 'vitest';
import {
  cudaInfo, matmul, matmulAsync, prepareMatmulWeightCuda, quantize, setKernelPolicy, Tensor, type QuantizedTensor,
} from '../../lib/index.js';
import { gaussian, nmse } from '../helpers/numeric.js';

/** GEMV (M <= 8): fp32 math in a different summation order than the reference. */
const CUDA_GEMV_NMSE = 1e-10;
/** Tensor-core GEMM with x and W rounded to f16 (11-bit significands): ~1e-7 expected. */
const CUDA_F16_NMSE = 1e-5;
/** ... rounded to bf16 (8-bit significands): ~1e-5 expected. */
const CUDA_BF16_NMSE = 1e-4;

const info = cudaInfo();
const reason = info.available ? '' : `no usable CUDA: ${info.reason}`;
if (!info.available) console.log(`CUDA matmul tests skipped: ${reason}`);

function reference(x: Tensor, q: QuantizedTensor): Float32Array {
  setKernelPolicy('ref');
  const y = matmul(x, q).data as Float32Array;
  setKernelPolicy('auto');
  return y;
}

function toHalfBits(x: Float32Array, bf16: boolean): [Uint16Array, Float32Array] {
  // round to nearest even; the reference sees the same rounded values
  const bits = new Uint16Array(x.length), back = new Float32Array(x.length);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < x.length; i++) {
    f[0] = x[i];
    if (bf16) {
      bits[i] = (u[0] + 0x7fff + ((u[0] >> 16) & 1)) >>> 16;
      u[0] = bits[i] << 16;
      back[i] = f[0];
    } else {
      [bits[i], back[i]] = f32ToF16(x[i]);
    }
  }
  return [bits, back];
}

// f32 -> binary16 bits and value, round to nearest even, for the moderate values
// used here (values below the normal range flush to 0, no overflow).
function f32ToF16(v: number): [number, number] {
  const u = new Uint32Array(new Float32Array([v]).buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const e = ((u >>> 23) & 0xff) - 127 + 15;
  if (e <= 0) return [sign, 0];
  const m = (u & 0x7fffff) >>> 13, rest = u & 0x1fff;
  let out = sign | (e << 10) | m;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1))) out++;
  const exp = (out >> 10) & 0x1f, man = out & 0x3ff;
  return [out, (sign ? -1 : 1) * Math.pow(2, exp - 15) * (1 + man / 1024)];
}

afterEach(() => {
  setKernelPolicy('auto');
});

describe.skipIf(!info.available)(`CUDA dequant-matmul ${reason}`, () => {
  const shapes: [number, number, number, number | 'channel', boolean][] = [
    [1, 37, 172, 32, false], [2, 33, 200, 64, true], [3, 5, 77, 'channel', false], [7, 50, 300, 128, true],
    [8, 64, 128, 32, false], [16, 37, 172, 32, false], [118, 19, 96, 32, true], [512, 9, 44, 8, false], [200, 130, 520, 64, false],
  ];

  it.each(shapes)('M=%i N=%i K=%i groupSize=%s symmetric=%s: f32 x matches the reference', (M, N, K, gs, sym) => {
    const q = quantize(new Tensor(gaussian(N * K, N + K, 0.05), [N, K]), { bits: 4, groupSize: gs, symmetric: sym });
    const x = new Tensor(gaussian(M * K, M), [M, K]);
    const y = matmul(x, prepareMatmulWeightCuda(q)).data as Float32Array;
    expect(nmse(y, reference(x, q))).toBeLessThan(M <= 8 ? CUDA_GEMV_NMSE : CUDA_F16_NMSE);
  });

  it.each([[4, false], [4, true], [64, false], [64, true]] as const)('M=%i bf16=%s half-precision x', (M, bf16) => {
    const [N, K] = [45, 136];
    const q = quantize(new Tensor(gaussian(N * K, 5, 0.05), [N, K]), { bits: 4, groupSize: 32 });
    const [bits, back] = toHalfBits(gaussian(M * K, 6), bf16);
    const y = matmul(new Tensor(bits, [M, K], bf16 ? 'bf16' : 'f16'), prepareMatmulWeightCuda(q)).data as Float32Array;
    const want = reference(new Tensor(back, [M, K]), q);
    expect(nmse(y, want)).toBeLessThan(M <= 8 ? CUDA_GEMV_NMSE : bf16 ? CUDA_BF16_NMSE : CUDA_F16_NMSE);
  });

  it('async matches sync, and int8 accuracy is rejected with a clear message', async () => {
    const q = quantize(new Tensor(gaussian(32 * 64, 1, 0.05), [32, 64]), { bits: 4, groupSize: 32 });
    const w = prepareMatmulWeightCuda(q);
    const x = new Tensor(gaussian(3 * 64, 2), [3, 64]);
    const a = await matmulAsync(x, w);
    expect(Buffer.from(a.data.buffer).equals(Buffer.from(matmul(x, w).data.buffer))).toBe(true);
    expect(() => matmul(x, w, { accuracy: 'int8' })).toThrow(/Expected 'fp32' \(the CUDA kernels have no int8 path\) for accuracy/);
    w.dispose();
    expect(() => matmul(x, w)).toThrow(/Expected a live CUDA weight but it was disposed/);
  });
});

describe('CUDA availability', () => {
  it('reports a reason whenever CUDA is unavailable, and prepare fails with it', () => {
    if (info.available) {
      expect(info.device).toBeTruthy();
      return;
    }
    expect(info.reason).toBeTruthy();
    const q = quantize(new Tensor(new Float32Array(64), [2, 32]), { bits: 4, groupSize: 32 });
    expect(() => prepareMatmulWeightCuda(q)).toThrow(/CUDA is not available/);
  });
});
