// CUDA W4A8 / W4A4 with static activation scales (native/cuda/w4a8.cu) against the CPU:
// the quantizer's codes against the CPU actQuantRows bit for bit, the matmul against an
// integer oracle written here (exact group sums, float64 epilogue) bit for bit on data whose
// every product and sum is exactly representable, within float rounding on random data, and
// bit for bit against the CPU VNNI/AMX int8 kernels (same sums, same epilogue order) where the
// CPU has them. Shapes: M = 1, 2, 3, 7, 8, 9, 33, 64, 130, 200; K ragged against 8, 32 and 64;
// odd N; ragged last groups; per-channel. Also the int8-KV attention against the CPU reference.
// The GPU part runs where a GPU and quantform_cuda.node are present (it has not run on one
// yet); the module's input checks run wherever it is built (CI builds it when nvcc exists).
import { afterEach, describe, expect, it } from 'vitest';
import { cudaModule, errorCode } from '../helpers/cuda-module.js';
import {
  backendInfo, cudaInfo, cudaInt8Kernel, cudaMatmulInt8, cudaMatmulStatic, cudaMatmulStaticAsync, cudaQuantizeActivations, matmul,
  prepareMatmulWeightCuda, QuantizedTensor, quantize, setKernelPolicy, Tensor, type CudaMatmulWeight,
} from '../../lib/index.js';
import { cudaAttentionForwardQ8 } from '../../lib/engine/cuda.js';
import { engineOp } from '../../lib/native.js';
import { gaussian, nmse, rng, sameBits, uniform } from '../helpers/numeric.js';
import { withTier } from '../helpers/tiers.js';

const info = cudaInfo();
const reason = info.available ? '' : `CUDA unavailable: ${info.reason}`;
if (!info.available) console.log(`gpu/w4a8-cuda: GPU cases skipped, ${reason}`);
/** f32 fma epilogue over groups vs the oracle's float64 sum (~G * 2^-24 relative at worst) */
const RANDOM_NMSE = 1e-10;

afterEach(() => setKernelPolicy('auto'));

/** position of k in the int8 layout's permuted rows (x0 x2 x4 x6 x1 x3 x5 x7 per chunk of 8) */
const permK = (k: number) => k - (k % 8) + ((k % 8) % 2) * 4 + Math.floor((k % 8) / 2);

/** Unpermuted codes (M, K) into the layout (M, KP), padding 0. */
function layout(q: Int8Array, M: number, K: number): Int8Array {
  const KP = Math.ceil(K / 8) * 8, out = new Int8Array(M * KP);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) out[m * KP + permK(k)] = q[m * K + k];
  return out;
}

/**
 * The definition (matmul.h): y = xs * sum_g (s (sum q x) - s z (sum x)), integer sums exact,
 * the rest in float64. xq (M, K) unpermuted; w canonical, f32 params.
 */
function oracle(xq: Int8Array, xs: number[], M: number, w: QuantizedTensor): Float32Array {
  const [N, K] = w.shape, gs = Math.min(w.groupSize, K), G = Math.ceil(K / gs), rb = Math.ceil(K / 2);
  const s = w.scales as Float32Array, z = w.zeros as Float32Array | null;
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let g = 0; g < G; g++) {
        let d = 0, xsum = 0;
        for (let k = g * gs; k < Math.min(K, (g + 1) * gs); k++) {
          const code = (w.codes[n * rb + (k >> 1)] >> ((k & 1) * 4)) & 15;
          d += xq[m * K + k] * code;
          xsum += xq[m * K + k];
        }
        const sc = s[n * G + g], zp = z ? z[n * G + g] : 8;
        acc += sc * d - sc * zp * xsum;
      }
      y[m * N + n] = Math.fround(acc * xs[xs.length === 1 ? 0 : m]);
    }
  return y;
}

/** Random activation codes (M, K) in [-qmax, qmax]. */
function codes(M: number, K: number, qmax: number, seed: number): Int8Array {
  const r = rng(seed);
  return Int8Array.from({ length: M * K }, () => Math.floor(r() * (2 * qmax + 1)) - qmax);
}

/**
 * An INT4 weight whose scales are powers of two (2^-8 .. 2^-6) and zero points integers, so
 * every term of the oracle, and every partial sum in any order, is exact in f32.
 */
function exactWeight(N: number, K: number, gs: number, sym: boolean, seed: number): QuantizedTensor {
  const q0 = quantize(new Tensor(gaussian(N * K, seed, 0.05), [N, K]), { bits: 4, groupSize: gs, symmetric: sym, paramDtype: 'f32' });
  const r = rng(seed + 1);
  const scales = Float32Array.from(q0.scales as Float32Array, () => 2 ** -(6 + Math.floor(r() * 3)));
  const zeros = sym ? null : Float32Array.from(q0.zeros as Float32Array, () => Math.floor(r() * 16));
  return new QuantizedTensor(q0.codes, scales, zeros, q0.shape, 4, q0.groupSize, sym, 'f32');
}

function randomWeight(N: number, K: number, gs: number, sym: boolean, seed: number): QuantizedTensor {
  return quantize(new Tensor(gaussian(N * K, seed, 0.05), [N, K]), { bits: 4, groupSize: gs, symmetric: sym, paramDtype: 'f32' });
}

// [M, N, K, groupSize (K: per channel), symmetric]
const SHAPES: [number, number, number, number, boolean][] = [
  [1, 37, 172, 172, false], [2, 33, 200, 32, true], [3, 5, 77, 77, false], [7, 50, 300, 96, true], [8, 64, 128, 32, false],
  [9, 7, 44, 44, true], [33, 19, 96, 32, false], [64, 65, 256, 64, false], [130, 130, 520, 64, true], [200, 9, 1000, 128, false],
];

describe.skipIf(!info.available)(`CUDA W4A8 / W4A4 with static scales on ${info.device ?? 'no device'} (cc ${info.computeCapability ?? '-'})`, () => {
  const sm8x = (info.computeCapability ?? '').startsWith('8.');
  const weights: CudaMatmulWeight[] = [];
  const upload = (q: QuantizedTensor) => { const w = prepareMatmulWeightCuda(q); weights.push(w); return w; };
  afterEach(() => { for (const w of weights.splice(0)) w.dispose(); });

  it('the quantizer equals the CPU actQuantRows bit for bit (codes, padding, group sums), with and without row multipliers', () => {
    for (const [rows, K, gs, bits] of [[1, 8, 8, 8], [3, 20, 8, 4], [2, 172, 172, 8], [7, 64, 32, 8], [33, 300, 96, 4], [5, 77, 1 << 20, 8]]) {
      const KP = Math.ceil(K / 8) * 8, G = Math.ceil(K / Math.min(gs, K));
      const x = uniform(rows * K, K + rows, 2), m = uniform(rows, 3, 0.5, 1), scale = bits === 8 ? 0.015 : 0.25;
      for (const rowScale of [null, m]) {
        const want = new Int8Array(rows * KP), wantS = new Float32Array(rows * G);
        engineOp('actQuantRows')(want, wantS, x, rowScale, scale, rows, K, KP, gs, bits);
        const got = cudaQuantizeActivations(x, rows, K, gs, { scale, bits: bits as 4 | 8, rowScale });
        expect(Array.from(got.codes), `${rows}x${K} g${gs} A${bits}`).toEqual(Array.from(want));
        expect(sameBits(got.groupSums, wantS)).toBe(true);
      }
    }
  });

  for (const bits of [8, 4] as const)
    it.each(SHAPES)(`A${bits}: M=%i N=%i K=%i groupSize=%i symmetric=%s: bit-exact on exact data, near on random data`, (M, N, K, gs, sym) => {
      const qmax = bits === 8 ? 127 : 7;
      const want = M <= 8 ? 'dp4a-gemv' : bits === 4 && sm8x && (gs >= K || gs % 64 === 0) ? 'mma-s4' : 'mma-s8';
      const xq = codes(M, K, qmax, 7 * M + K), xs = 2 ** -5;
      // exact data: the oracle's float64 sums are exact, so any correct order gives the same bits
      const we = exactWeight(N, K, gs, sym, N + K), de = upload(we);
      expect(cudaInt8Kernel(de, M, bits)).toBe(want);
      const wantE = oracle(xq, [xs], M, we);
      const gotE = cudaMatmulInt8({ codes: layout(xq, M, K), rows: M, bits }, de, xs).data as Float32Array;
      expect(sameBits(gotE, wantE), 'prequantized codes, exact data').toBe(true);
      // the fused op quantizes x = xq * xs back to xq with the static scale
      const x = Float32Array.from(xq, (v) => v * xs);
      const gotS = cudaMatmulStatic(new Tensor(x, [M, K]), de, { scale: xs, bits }).data as Float32Array;
      expect(sameBits(gotS, wantE), 'fused quantize + matmul, exact data').toBe(true);
      // random weights and per-row scales: float rounding only
      const wr = randomWeight(N, K, gs, sym, 3 * N + K), dr = upload(wr);
      const rows = Array.from(uniform(M, M + 1, 0.5, 1), (v) => Math.fround(v * 1e-2));
      const gotR = cudaMatmulInt8({ codes: layout(xq, M, K), rows: M, bits }, dr, Float32Array.from(rows)).data as Float32Array;
      expect(nmse(gotR, oracle(xq, rows, M, wr))).toBeLessThan(RANDOM_NMSE);
    });

  // the CPU int8 kernels (VNNI, AMX) share this epilogue order: bit-identical where they run
  const cpuInt8 = backendInfo().features.avx512vnni;
  it(`A8 random data: the CPU int8 matmul on the same codes: the reference within float rounding, the ${cpuInt8 ? 'VNNI/AMX kernel bit for bit' : 'scalar int8 path within float rounding (no VNNI here)'}`, () => {
    for (const [M, N, K, gs, sym] of SHAPES) {
      const xq = codes(M, K, 127, M + 2 * K);
      // rows holding +-127 so the CPU's per-row dynamic scale max|x| / 127 is exactly 2^-5 and gives the same codes
      for (let m = 0; m < M; m++) xq[m * K + (m % K)] = m % 2 ? 127 : -127;
      const x = new Tensor(Float32Array.from(xq, (v) => v * 2 ** -5), [M, K]);
      const w = randomWeight(N, K, gs, sym, N + 5 * K), d = upload(w);
      const got = cudaMatmulStatic(x, d, { scale: 2 ** -5 }).data as Float32Array;
      setKernelPolicy('ref');
      const ref = matmul(x, w, { accuracy: 'int8', path: 'reference' }).data as Float32Array;
      setKernelPolicy('auto');
      const tier = matmul(x, w, { accuracy: 'int8', path: 'int8' }).data as Float32Array;
      expect(nmse(got, ref), `M=${M} N=${N} K=${K} g${gs}`).toBeLessThan(RANDOM_NMSE);
      if (cpuInt8) expect(sameBits(got, tier), `M=${M} N=${N} K=${K} g${gs} vs the CPU int8 kernel`).toBe(true);
      else expect(nmse(got, tier)).toBeLessThan(RANDOM_NMSE);
    }
  });

  it('row multipliers (S_n) and the async op give the prequantized result bit for bit', async () => {
    const [M, N, K, gs] = [33, 19, 200, 32];
    const x = gaussian(M * K, 9), m = uniform(M, 4, 0.5, 1), scale = 0.02;
    const d = upload(randomWeight(N, K, gs, false, 11));
    const a = cudaQuantizeActivations(x, M, K, gs, { scale, rowScale: m });
    const want = cudaMatmulInt8(a, d, scale).data as Float32Array;
    expect(sameBits(cudaMatmulStatic(new Tensor(x, [M, K]), d, { scale, rowScale: m }).data as Float32Array, want)).toBe(true);
    const y = await cudaMatmulStaticAsync(new Tensor(x, [M, K]), d, { scale, rowScale: m });
    expect(sameBits(y.data as Float32Array, want)).toBe(true);
  });

  it('bad input: clear coded errors', async () => {
    const d16 = upload(randomWeight(5, 64, 16, false, 1)), d = upload(randomWeight(5, 64, 32, false, 1));
    const x = new Tensor(gaussian(2 * 64, 1), [2, 64]);
    expect(() => cudaMatmulStatic(x, d16, { scale: 0.1 })).toThrow(/groupSize a multiple of 32 or one group per row; received groupSize=16/);
    expect(() => cudaMatmulStatic(x, d, { scale: 0.1, bits: 5 as 8 })).toThrow(/Expected 4 or 8 for bits/);
    expect(() => cudaMatmulStatic(x, d, { scale: -1 })).toThrow(/positive finite number for scale/);
    expect(() => cudaMatmulInt8({ codes: new Int8Array(2 * 64 - 1), rows: 2, bits: 8 }, d, 0.1)).toThrow(/Expected 128 elements for xq/);
    expect(() => cudaMatmulInt8({ codes: new Int8Array(128).fill(9), rows: 2, bits: 4 }, d, 0.1)).toThrow(/codes in \[-8, 7\]/);
    expect(() => cudaMatmulInt8({ codes: new Int8Array(128), rows: 2, bits: 8 }, d, new Float32Array(3))).toThrow(/1 \(per tensor\) or M = 2/);
    const bad = new Float32Array(128); bad[70] = NaN;
    await expect(cudaMatmulStaticAsync(new Tensor(bad, [2, 64]), d, { scale: 0.1 })).rejects.toThrow(/finite x but row 1/);
  });
});

/** f32 sums and expf vs the reference's double sums and exp */
const ATTN_NMSE = 1e-10;

describe.skipIf(!info.available)(`CUDA attention over the int8 KV cache on ${info.device ?? 'no device'}`, () => {
  it('equals the CPU reference (GQA, cache offsets, decode and short prefill, odd hd)', () => {
    for (const [B, T, Hq, Hkv, hd, S, pos0] of [[1, 1, 1, 1, 8, 4, 3], [2, 7, 4, 2, 8, 16, 3], [1, 70, 4, 1, 17, 90, 10],
      [1, 5, 6, 3, 64, 40, 30], [3, 1, 8, 2, 128, 300, 299], [1, 2, 32, 4, 64, 1030, 1000]]) {
      const q = uniform(B * T * Hq * hd, T + hd, 2);
      const kq = Int8Array.from(uniform(B * S * Hkv * hd, S), (v) => Math.round(v * 127));
      const vq = Int8Array.from(uniform(B * S * Hkv * hd, S + 1), (v) => Math.round(v * 127));
      const ks = Float32Array.from({ length: Hkv }, (_, g) => 0.01 + 0.004 * g), vs = Float32Array.from({ length: Hkv }, (_, g) => 0.02 + 0.003 * g);
      const want = new Float32Array(q.length), got = new Float32Array(q.length).fill(NaN);
      withTier('ref', () => engineOp('attentionForwardQ8')(want, q, kq, vq, ks, vs, B, T, Hq, Hkv, hd, S, pos0));
      cudaAttentionForwardQ8(got, q, kq, vq, ks, vs, B, T, Hq, Hkv, hd, S, pos0);
      expect(nmse(got, want), `B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd} S=${S} pos0=${pos0}`).toBeLessThan(ATTN_NMSE);
    }
  });
});

// The module's own checks run before any CUDA call: they are tested wherever it is built.
const moduleFile = info.module;
if (!moduleFile) console.log(`gpu/w4a8-cuda: input checks of quantform_cuda.node skipped, ${info.reason}`);
describe.skipIf(!moduleFile)('quantform_cuda.node W4A8 entry points: input checks (no GPU needed)', () => {
  const mod = () => cudaModule(moduleFile!);
  const code = errorCode;

  it('cudaActQuantRows: the CPU op\'s checks (KP, groupSize, lengths, types, shared buffers)', () => {
    const b = mod();
    const q = (...a: unknown[]) => () => b.cudaActQuantRows(...a);
    expect(code(q(new Int8Array(8), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 16, 8, 8))).toBe('QF_INVALID_ARGUMENT');
    expect(code(q(new Int8Array(24), new Float32Array(2), new Float32Array(20), null, 0.1, 1, 20, 24, 12, 8))).toBe('QF_INVALID_ARGUMENT');
    expect(code(q(new Int8Array(8), new Float32Array(1), new Float32Array(7), null, 0.1, 1, 8, 8, 8, 8))).toBe('QF_SHAPE_MISMATCH');
    expect(code(q(new Uint8Array(8), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 8, 8, 8))).toBe('QF_DTYPE_MISMATCH');
    expect(code(q(new Int8Array(new SharedArrayBuffer(8)), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 8, 8, 8))).toBe('QF_INVALID_ARGUMENT');
    expect(code(q(new Int8Array(8), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 8, 8, 5))).toBe('QF_UNSUPPORTED_BITS');
    expect(code(q(new Int8Array(8), new Float32Array(1), new Float32Array(8), null, 0, 1, 8, 8, 8, 8))).toBe('QF_INVALID_ARGUMENT');
    const nan = new Float32Array(8); nan[3] = NaN;
    expect(code(q(new Int8Array(8), new Float32Array(1), nan, null, 0.1, 1, 8, 8, 8, 8))).toBe('QF_NON_FINITE');
    // a valid call: codes on a GPU, a coded error (no device) elsewhere, never a crash
    const c = code(q(new Int8Array(8), new Float32Array(1), new Float32Array(8), null, 0.1, 1, 8, 8, 8, 8));
    expect(c === 'no error' || c.startsWith('QF_')).toBe(true);
  });

  it('attentionForwardQ8: the CPU op\'s checks', () => {
    const b = mod();
    const f = (n: number) => new Float32Array(n), i8 = (n: number) => new Int8Array(n);
    // B=1, T=1, Hq=2, Hkv=1, hd=4, S=3, pos0=2
    const args = (over: Record<number, unknown>) => [f(8), f(8), i8(12), i8(12), f(1).fill(1), f(1).fill(1), 1, 1, 2, 1, 4, 3, 2].map((v, i) => (i in over ? over[i] : v));
    expect(code(() => b.attentionForwardQ8(...args({ 2: i8(11) })))).toBe('QF_SHAPE_MISMATCH');
    expect(code(() => b.attentionForwardQ8(...args({ 3: new Uint8Array(12) })))).toBe('QF_DTYPE_MISMATCH');
    expect(code(() => b.attentionForwardQ8(...args({ 12: 3 })))).toBe('QF_INVALID_ARGUMENT');
    expect(code(() => b.attentionForwardQ8(...args({ 9: 3 })))).toBe('QF_INVALID_ARGUMENT');
    expect(code(() => b.attentionForwardQ8(...args({ 4: f(1) })))).toMatch(/^QF_/);
    const c = code(() => b.attentionForwardQ8(...args({})));
    expect(c === 'no error' || c.startsWith('QF_')).toBe(true);
  });

  it('the matmul entry points refuse anything but a live CUDA weight handle, and bad bits', () => {
    const b = mod();
    for (const [name, args] of [['cudaMatmulInt8', [new Int8Array(8), new Float32Array(1), 1, 8, false]],
      ['cudaMatmulStatic', [new Float32Array(8), null, 0.1, 1, 8, false]], ['cudaMatmulInt8Kernel', [1, 8]]] as const)
      for (const h of [{}, null, 3, new Float32Array(4)]) expect(code(() => b[name](h, ...args)), name).toBe('QF_INVALID_ARGUMENT');
  });
});

describe('W4A8 TypeScript checks (no module needed)', () => {
  it('refuse a weight that is not a CudaMatmulWeight and bad options before reaching native code', () => {
    const q = quantize(new Tensor(gaussian(64, 1), [2, 32]), { bits: 4, groupSize: 32 });
    const x = new Tensor(gaussian(32, 2), [1, 32]);
    expect(() => cudaMatmulStatic(x, q as unknown as CudaMatmulWeight, { scale: 1 })).toThrow(/CudaMatmulWeight/);
    expect(() => cudaInt8Kernel(q as unknown as CudaMatmulWeight, 1)).toThrow(/CudaMatmulWeight/);
    expect(() => cudaQuantizeActivations(new Float32Array(8), 1, 8, 8, { scale: 1, bits: 3 as 4 })).toThrow(/4 or 8 for bits/);
    expect(() => cudaQuantizeActivations(new Float32Array(8), 1.5, 8, 8, { scale: 1 })).toThrow(/positive integer for rows/);
  });
});
