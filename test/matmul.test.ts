// Dequant-matmul: every tier and path against references on awkward shapes.
// Oracle: the weight is dequantized with quant's dequantize (tested on its own)
// and multiplied in float64 here, independently of the matmul code.
import { afterEach, describe, expect, it } from 'vitest';
import {
  backendInfo, dequantize, matmul, matmulAsync, matmulF32, matmulPath, prepareMatmulWeight, quantize, setAmx, setKernelPolicy,
  Tensor, unprepareMatmulWeight, type Bits, type QuantizedTensor,
} from '../lib/index.js';
import { gaussian, nmse } from './helpers/numeric.js';

// Named tolerances (NMSE = sum (a - b)^2 / sum b^2).
/** fp32 accumulation vs the float64 oracle (K <= 600 here: relative error ~1e-7). */
const F32_NMSE = 1e-10;
/** int8 kernels vs the scalar int8 reference: same integer sums, float order differs. */
const INT8_VS_REF_NMSE = 1e-10;
/** The int8-activation error budget vs fp32: per-row step max|x|/127 on Gaussian x gives ~1e-4. */
const INT8_BUDGET_NMSE = 1e-3;

function oracle(x: Float32Array, M: number, q: QuantizedTensor): Float32Array {
  const w = dequantize(q).data as Float32Array;
  const [N, K] = q.shape;
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
      y[m * N + n] = acc;
    }
  return y;
}

function weight(N: number, K: number, bits: Bits, groupSize: number | 'channel', symmetric: boolean, seed: number,
  paramDtype: 'f32' | 'f16' = 'f32'): QuantizedTensor {
  return quantize(new Tensor(gaussian(N * K, seed, 0.05), [N, K]), { bits, groupSize, symmetric, paramDtype });
}

const info = backendInfo();
const tiers = (['ref', 'avx2', 'avx512'] as const).filter((t) =>
  t === 'ref' || (t === 'avx2' ? info.features.avx2 && info.features.fma : info.features.avx512f && info.features.avx512bw));
const skipped = (['avx2', 'avx512'] as const).filter((t) => !tiers.includes(t));
if (skipped.length) console.log(`matmul tests: tiers ${skipped.join(', ')} not supported by this CPU, not tested here`);
const vnni = info.features.avx512vnni && tiers.includes('avx512');
if (!vnni) console.log('matmul tests: no AVX-512 VNNI on this CPU: the VNNI kernel is not tested here');

// [M, N, K, groupSize]: K not a multiple of 8/16/64, ragged last groups, odd N, N < 16.
const cases: [number, number, number, number | 'channel'][] = [
  [1, 37, 172, 32], [2, 33, 200, 64], [3, 5, 72, 'channel'], [7, 50, 300, 128], [1, 64, 130, 'channel'],
  [16, 37, 172, 32], [118, 19, 96, 32], [512, 9, 44, 8], [8, 31, 528, 64],
];

afterEach(() => {
  setKernelPolicy('auto');
  setAmx(true);
});

describe('canonical reference', () => {
  it('matches the float64 oracle for every bit width and odd group sizes', () => {
    setKernelPolicy('ref');
    for (const bits of [2, 3, 4, 8] as Bits[])
      for (const [M, N, K, gs] of [[3, 13, 77, 12], [1, 17, 64, 'channel'], [5, 9, 100, 32]] as const) {
        const q = weight(N, K, bits, gs, bits === 4, 11 + bits);
        const x = gaussian(M * K, 3);
        const y = matmul(new Tensor(x, [M, K]), q).data as Float32Array;
        expect(nmse(y, oracle(x, M, q)), `bits=${bits} M=${M} N=${N} K=${K} gs=${gs}`).toBeLessThan(1e-13);
      }
  });
});

describe('prepared weight layout', () => {
  it('round-trips bit-exact (codes, scales, zeros; f32 and f16 parameters)', () => {
    for (const [N, K, gs, sym, pd] of [[37, 172, 32, false, 'f32'], [16, 8, 8, true, 'f32'], [5, 77, 'channel', false, 'f16'],
      [33, 300, 128, true, 'f16'], [1, 1, 'channel', false, 'f32']] as const) {
      const q = weight(N, K, 4, gs, sym, N + K, pd);
      const p = prepareMatmulWeight(q);
      expect(p.layout).toBe('int4-tiled');
      const r = unprepareMatmulWeight(p);
      expect(Buffer.from(r.codes).equals(Buffer.from(q.codes)), `codes N=${N} K=${K}`).toBe(true);
      expect(Buffer.from(r.scales.buffer).equals(Buffer.from(q.scales.buffer))).toBe(true);
      if (sym) expect(r.zeros).toBeNull();
      else expect(Buffer.from(r.zeros!.buffer).equals(Buffer.from(q.zeros!.buffer))).toBe(true);
    }
  });

  it('keeps the canonical layout for formats without a repacked one', () => {
    expect(prepareMatmulWeight(weight(9, 40, 3, 8, false, 1)).layout).toBe('canonical');
    expect(prepareMatmulWeight(weight(9, 40, 4, 12, false, 1)).layout).toBe('canonical');
  });
});

describe.each(tiers)('fp32 accuracy, %s tier', (tier) => {
  it.each(cases)('M=%i N=%i K=%i groupSize=%s matches the oracle (f32/f16 parameters, sym/asym)', (M, N, K, gs) => {
    for (const [sym, pd] of [[false, 'f32'], [true, 'f32'], [false, 'f16'], [true, 'f16']] as const) {
      const q = weight(N, K, 4, gs, sym, M * 7 + N, pd);
      const x = gaussian(M * K, M + K);
      const want = oracle(x, M, q);
      setKernelPolicy(tier);
      const p = prepareMatmulWeight(q);
      const y = matmul(new Tensor(x, [M, K]), p).data as Float32Array;
      // the fp32 kernels themselves (auto takes the split path at small M on VNNI)
      const yf = matmul(new Tensor(x, [M, K]), p, { path: 'fp32' }).data as Float32Array;
      const yq = matmul(new Tensor(x, [M, K]), q).data as Float32Array;
      setKernelPolicy('auto');
      expect(nmse(y, want), `prepared sym=${sym} ${pd}`).toBeLessThan(F32_NMSE);
      expect(nmse(yf, want), `prepared fp32 path sym=${sym} ${pd}`).toBeLessThan(F32_NMSE);
      expect(nmse(yq, want), `unprepared sym=${sym} ${pd}`).toBeLessThan(F32_NMSE);
    }
  });

  it('generic path: INT2/INT3/INT8 and INT4 with groupSize 12', () => {
    for (const [bits, gs] of [[2, 16], [3, 32], [8, 'channel'], [4, 12]] as const)
      for (const M of [1, 3, 20]) {
        const q = weight(21, 100, bits, gs, false, bits * 5 + M);
        const x = gaussian(M * 100, 9 + M);
        setKernelPolicy(tier);
        const y = matmul(new Tensor(x, [M, 100]), prepareMatmulWeight(q)).data as Float32Array;
        setKernelPolicy('auto');
        expect(nmse(y, oracle(x, M, q)), `bits=${bits} gs=${gs} M=${M}`).toBeLessThan(F32_NMSE);
      }
  });

  it('fp32 baseline GEMM matches the oracle', () => {
    for (const [M, N, K] of [[1, 33, 77], [5, 16, 64], [40, 37, 130]]) {
      const x = gaussian(M * K, 1), w = gaussian(N * K, 2);
      setKernelPolicy(tier);
      const y = matmulF32(new Tensor(x, [M, K]), new Tensor(w, [N, K])).data as Float32Array;
      setKernelPolicy('auto');
      const want = new Float32Array(M * N);
      for (let m = 0; m < M; m++)
        for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
          want[m * N + n] = acc;
        }
      expect(nmse(y, want), `M=${M} N=${N} K=${K}`).toBeLessThan(F32_NMSE);
    }
  });
});

describe('int8 accuracy', () => {
  function int8Ref(x: Float32Array, M: number, K: number, q: QuantizedTensor): Float32Array {
    setKernelPolicy('ref');
    const y = matmul(new Tensor(x, [M, K]), q, { accuracy: 'int8' }).data as Float32Array;
    setKernelPolicy('auto');
    return y;
  }

  it('scalar int8 reference stays within its error budget vs the oracle', () => {
    for (const [M, N, K, gs] of cases) {
      const q = weight(N, K, 4, gs, false, 5 + M);
      const x = gaussian(M * K, 6 + K);
      const e = nmse(int8Ref(x, M, K, q), oracle(x, M, q));
      expect(e, `M=${M} N=${N} K=${K}`).toBeLessThan(INT8_BUDGET_NMSE);
      expect(e).toBeGreaterThan(0);
    }
  });

  it('prepared ref tier equals the canonical int8 reference', () => {
    for (const [M, N, K, gs] of cases.slice(0, 4)) {
      const q = weight(N, K, 4, gs, true, 8 + M);
      const x = gaussian(M * K, 2 + K);
      setKernelPolicy('ref');
      const y = matmul(new Tensor(x, [M, K]), prepareMatmulWeight(q), { accuracy: 'int8' }).data as Float32Array;
      setKernelPolicy('auto');
      expect(nmse(y, int8Ref(x, M, K, q))).toBeLessThan(INT8_VS_REF_NMSE);
    }
  });

  it.skipIf(!vnni)('VNNI kernel equals the int8 reference and stays within budget (skipped without VNNI)', () => {
    setAmx(false);
    for (const [M, N, K, gs] of cases)
      for (const [sym, pd] of [[false, 'f32'], [true, 'f16'], [false, 'f16']] as const) {
        const q = weight(N, K, 4, gs, sym, 3 * M + N, pd);
        const x = gaussian(M * K, 4 + M);
        const p = prepareMatmulWeight(q);
        const y = matmul(new Tensor(x, [M, K]), p, { accuracy: 'int8' }).data as Float32Array;
        expect(nmse(y, int8Ref(x, M, K, q)), `M=${M} N=${N} K=${K} sym=${sym} ${pd}`).toBeLessThan(INT8_VS_REF_NMSE);
        expect(nmse(y, oracle(x, M, q))).toBeLessThan(INT8_BUDGET_NMSE);
      }
  });

  // AMX int8 from 16 rows: 32-row blocks with a partial last one (17, 33, 45, 118), K ragged against
  // the 64-k tile step (72, 100, 172, 300, 1000), g128 / g256 (a group ends in a tile store), groups
  // the VNNI kernel takes (g8, g32, g40, g64, g96),
  // N past the tile pairs one pass over x takes (300, 530) and a lone last tile (N = 19, 37, 50).
  const amxInt8 = vnni && info.features.amxInt8 && info.amx.active;
  if (vnni && !amxInt8) console.log(`matmul tests: AMX int8 not in use (${info.features.amxInt8 ? info.amx.reason ?? 'unknown' : 'no AMX-INT8'}): the AMX int8 kernel is not tested here`);
  const amxCases: [number, number, number, number | 'channel'][] = [
    [16, 37, 172, 32], [17, 19, 1000, 'channel'], [33, 50, 300, 64], [45, 300, 200, 128], [118, 5, 72, 'channel'],
    [32, 530, 100, 'channel'], [64, 33, 288, 96], [20, 17, 172, 8], [40, 21, 120, 40], [512, 9, 44, 'channel'],
    [48, 40, 1000, 256], [19, 64, 520, 128],
  ];
  it.skipIf(!amxInt8)('the AMX int8 kernel equals the VNNI kernel bit for bit and the int8 reference (skipped without AMX-INT8)', () => {
    for (const [M, N, K, gs] of amxCases)
      for (const [sym, pd] of [[false, 'f32'], [true, 'f16']] as const) {
        const q = weight(N, K, 4, gs, sym, 7 * M + N, pd);
        const x = gaussian(M * K, 9 + M).map((v, i) => (i % 37 === 0 ? v * 50 : v));
        const p = prepareMatmulWeight(q);
        const y = matmul(new Tensor(x, [M, K]), p, { accuracy: 'int8' }).data as Float32Array;
        setAmx(false);
        const yv = matmul(new Tensor(x, [M, K]), p, { accuracy: 'int8' }).data as Float32Array;
        setAmx(true);
        const at = `M=${M} N=${N} K=${K} gs=${gs} sym=${sym} ${pd}`;
        let diff = 0;
        for (let i = 0; i < y.length; i++) if (!Object.is(y[i], yv[i])) diff++;
        expect(diff, at).toBe(0);
        expect(nmse(y, int8Ref(x, M, K, q)), at).toBeLessThan(INT8_VS_REF_NMSE);
      }
  });
});

describe('split accuracy (fp32 activations as three int8 digits)', () => {
  // K with a ragged last block, groups of 24 / 48 (blocks of 8 / 16 k), per-channel (blocks of 32),
  // every row-block remainder up to M = 16
  const splitCases: [number, number, number, number | 'channel'][] = [
    ...cases.filter(([M]) => M <= 16), [5, 19, 96, 24], [6, 21, 144, 48], [13, 17, 200, 'channel'], [4, 70, 1000, 64], [11, 3, 8, 8],
  ];

  function splitRef(x: Float32Array, M: number, K: number, p: ReturnType<typeof prepareMatmulWeight>): Float32Array {
    setKernelPolicy('ref');
    try {
      return matmul(new Tensor(x, [M, K]), p, { path: 'split' }).data as Float32Array;
    } finally {
      setKernelPolicy('auto');
    }
  }

  it('the scalar split reference is as close to the float64 oracle as fp32 accumulation', () => {
    for (const [M, N, K, gs] of splitCases)
      for (const [sym, pd] of [[false, 'f32'], [true, 'f16']] as const) {
        const q = weight(N, K, 4, gs, sym, 11 * M + N, pd);
        const x = gaussian(M * K, 5 + M);
        expect(nmse(splitRef(x, M, K, prepareMatmulWeight(q)), oracle(x, M, q)), `M=${M} N=${N} K=${K} gs=${gs}`).toBeLessThan(F32_NMSE);
      }
  });

  it.skipIf(!vnni)('the VNNI split kernel equals its scalar reference bit for bit (skipped without VNNI)', () => {
    for (const [M, N, K, gs] of splitCases)
      for (const [sym, pd] of [[false, 'f32'], [true, 'f32'], [false, 'f16'], [true, 'f16']] as const) {
        const q = weight(N, K, 4, gs, sym, 7 * M + N, pd);
        // outlier channels: a block's step follows its own largest value
        const x = gaussian(M * K, 9 + K).map((v, i) => (i % 37 === 0 ? v * 300 : v));
        const p = prepareMatmulWeight(q);
        const y = matmul(new Tensor(x, [M, K]), p, { path: 'split' }).data as Float32Array;
        const want = splitRef(x, M, K, p);
        expect(Buffer.from(y.buffer).equals(Buffer.from(want.buffer)), `M=${M} N=${N} K=${K} gs=${gs} sym=${sym} ${pd}`).toBe(true);
      }
  });

  it.skipIf(!vnni)('decode sizes take the split path on VNNI; a non-finite activation gives NaN, zeros give zeros', () => {
    const q = weight(33, 100, 4, 32, true, 4);
    const p = prepareMatmulWeight(q);
    expect(matmulPath(1, p)).toBe('split');
    expect(matmulPath(16, p)).toBe('split');
    expect(matmulPath(17, p)).toBe('fp32');
    expect(matmulPath(1, p, { accuracy: 'int8' })).toBe('int8');
    for (const bad of [NaN, Infinity]) {
      const x = gaussian(100, 1);
      x[40] = bad;
      const y = matmul(new Tensor(x, [1, 100]), p).data as Float32Array;
      expect(y.every((v) => Number.isNaN(v))).toBe(true);
    }
    expect((matmul(new Tensor(new Float32Array(100), [1, 100]), p).data as Float32Array).every((v) => v === 0)).toBe(true);
  });

  it('a path the weight or M cannot take is an error naming why', () => {
    const q = weight(9, 100, 3, 32, false, 1);
    expect(matmulPath(1, q)).toMatch(/^(generic|reference)$/);
    expect(() => matmul(new Tensor(gaussian(100, 1), [1, 100]), q, { path: 'split' })).toThrow(/path 'split' needs INT4 with groupSize a multiple of 8.*bits=3/);
    const p = prepareMatmulWeight(weight(9, 64, 4, 32, true, 2));
    expect(() => matmul(new Tensor(gaussian(17 * 64, 1), [17, 64]), p, { path: 'split' })).toThrow(/path 'split' runs up to M=16 rows but received M=17/);
    expect(() => matmul(new Tensor(gaussian(64, 1), [1, 64]), p, { path: 'fast' as never })).toThrow(/Expected 'auto', 'fp32', 'split', 'int8', 'bf16', 'generic', 'reference' for path but received 'fast'/);
  });
});

describe('bf16 accuracy (weights and activations rounded to bf16, fp32 sums)', () => {
  /** bf16 keeps 8 significant bits: each product carries ~2^-9 relative error, NMSE ~1e-5 on Gaussian data. */
  const BF16_BUDGET_NMSE = 1e-4;
  /** the same exact bf16 products summed in fp32 (kernels) or float64 (reference). */
  const BF16_VS_REF_NMSE = 1e-11;
  const bf16 = info.features.avx512bf16 && tiers.includes('avx512');
  const amx = bf16 && info.features.amxBf16 && info.amx.active;
  if (!bf16) console.log('matmul tests: no AVX-512 BF16 on this CPU: the bf16 kernels are not tested here');
  else if (!amx) console.log(`matmul tests: AMX not in use (${info.amx.reason ?? 'unknown'}): the AMX bf16 kernel is not tested here`);
  // M = 1, 2, 3, 7 (forced), one row past a 32-row block, a 12-row register block remainder; K ragged
  // against the 32-k step and the 64-k code line; odd N and N past one pair of 16-column tiles
  const bfCases: [number, number, number, number | 'channel'][] = [
    ...cases, [17, 33, 200, 64], [33, 65, 72, 'channel'], [45, 97, 1000, 64], [64, 3, 8, 8], [25, 130, 520, 40],
  ];

  function bf16Ref(x: Float32Array, M: number, K: number, p: ReturnType<typeof prepareMatmulWeight>): Float32Array {
    setKernelPolicy('ref');
    try {
      return matmul(new Tensor(x, [M, K]), p, { accuracy: 'bf16', path: 'bf16' }).data as Float32Array;
    } finally {
      setKernelPolicy('auto');
    }
  }

  it('the scalar bf16 reference stays within the bf16 budget of the float64 oracle', () => {
    for (const [M, N, K, gs] of bfCases.slice(0, 8))
      for (const [sym, pd] of [[false, 'f32'], [true, 'f16']] as const) {
        const q = weight(N, K, 4, gs, sym, 13 * M + N, pd);
        const x = gaussian(M * K, 3 + M);
        const e = nmse(bf16Ref(x, M, K, prepareMatmulWeight(q)), oracle(x, M, q));
        expect(e, `M=${M} N=${N} K=${K} gs=${gs}`).toBeLessThan(BF16_BUDGET_NMSE);
        expect(e).toBeGreaterThan(F32_NMSE);
      }
  });

  for (const kernel of ['avx512bf16', 'amx'] as const)
    it.skipIf(kernel === 'amx' ? !amx : !bf16)(`the ${kernel} kernel equals the scalar bf16 reference (skipped without ${kernel})`, () => {
      setAmx(kernel === 'amx');
      for (const [M, N, K, gs] of bfCases)
        for (const [sym, pd] of [[false, 'f32'], [true, 'f16']] as const) {
          const q = weight(N, K, 4, gs, sym, 5 * M + N, pd);
          const x = gaussian(M * K, 7 + K).map((v, i) => (i % 41 === 0 ? v * 200 : v));
          const p = prepareMatmulWeight(q);
          const y = matmul(new Tensor(x, [M, K]), p, { accuracy: 'bf16', path: 'bf16' }).data as Float32Array;
          expect(nmse(y, bf16Ref(x, M, K, p)), `M=${M} N=${N} K=${K} gs=${gs} sym=${sym} ${pd}`).toBeLessThan(BF16_VS_REF_NMSE);
        }
    });

  it.skipIf(!bf16)('auto takes bf16 for prefill rows and split/fp32 below; setAmx and backendInfo agree', () => {
    const p = prepareMatmulWeight(weight(33, 100, 4, 32, true, 4));
    expect(matmulPath(17, p, { accuracy: 'bf16' })).toBe('bf16');
    expect(matmulPath(16, p, { accuracy: 'bf16' })).toBe(vnni ? 'split' : 'fp32');
    expect(matmulPath(17, p)).toBe('fp32');
    expect(setAmx(false)).toBe(false);
    expect(backendInfo().amx).toEqual({ active: false, reason: expect.stringMatching(/turned off/) });
    const x = new Tensor(gaussian(40 * 100, 2), [40, 100]);
    const dp = matmul(x, p, { accuracy: 'bf16' }).data as Float32Array;
    setAmx(true);
    expect(nmse(matmul(x, p, { accuracy: 'bf16' }).data as Float32Array, dp)).toBeLessThan(BF16_VS_REF_NMSE);
  });

  it('bad input: a format without the fast layout, a non-boolean setAmx, an unknown accuracy', () => {
    const q = weight(9, 100, 3, 32, false, 1);
    expect(() => matmul(new Tensor(gaussian(100 * 20, 1), [20, 100]), q, { accuracy: 'bf16', path: 'bf16' }))
      .toThrow(/path 'bf16' needs INT4 with groupSize a multiple of 8.*bits=3/);
    expect(() => setAmx(1 as never)).toThrow(/Expected boolean for enabled but received 1/);
    expect(() => matmul(new Tensor(gaussian(100, 1), [1, 100]), q, { accuracy: 'fp16' as never })).toThrow(/Expected 'fp32', 'int8' or 'bf16' for accuracy/);
  });
});

describe('API', () => {
  it('folds leading dimensions, accepts f16/bf16 activations, and async matches sync', async () => {
    const q = weight(24, 64, 4, 32, false, 1);
    const x = gaussian(2 * 3 * 64, 2);
    const t = new Tensor(x, [2, 3, 64]);
    const y = matmul(t, prepareMatmulWeight(q));
    expect(y.shape).toEqual([2, 3, 24]);
    const ya = await matmulAsync(t, prepareMatmulWeight(q));
    expect(Buffer.from(ya.data.buffer).equals(Buffer.from(y.data.buffer))).toBe(true);
    // bf16 activations: the oracle sees the same rounded values
    const bits = new Uint16Array(x.length);
    const xr = new Float32Array(x.length);
    const u = new Uint32Array(x.buffer.slice(0));
    for (let i = 0; i < x.length; i++) {
      bits[i] = u[i] >>> 16;
      xr[i] = new Float32Array(new Uint32Array([bits[i] << 16]).buffer)[0];
    }
    const yb = matmul(new Tensor(bits, [6, 64], 'bf16'), q).data as Float32Array;
    expect(nmse(yb, oracle(xr, 6, q))).toBeLessThan(F32_NMSE);
  });

  it('dispose frees the repacked weight; a matmulAsync already running keeps its own reference', async () => {
    const q = weight(40, 96, 4, 32, false, 2);
    const x = new Tensor(gaussian(3 * 96, 3), [3, 96]);
    const p = prepareMatmulWeight(q);
    const want = matmul(x, p).data;
    const pending = matmulAsync(x, p);
    p.dispose();
    expect(Buffer.from((await pending).data.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    expect(() => matmul(x, p)).toThrow(/Expected a live prepared weight but it was disposed/);
    expect(() => unprepareMatmulWeight(p)).toThrow(/disposed/);
    p.dispose();
  });

  it('rejects bad input with messages naming the parameter', () => {
    const q = weight(8, 32, 4, 32, false, 1);
    expect(() => matmul(new Tensor(new Float32Array(31), [31]), q)).toThrow(/Expected x with last dimension K=32 .* received shape \[31\]/);
    expect(() => matmul(new Tensor(new Float32Array(32), [32]), q, { accuracy: 'fp64' as never })).toThrow(
      /Expected 'fp32', 'int8' or 'bf16' for accuracy but received 'fp64' of type string/);
    expect(() => matmul(new Tensor(new Float32Array(32), [32]), {} as never)).toThrow(/Expected QuantizedTensor, PreparedMatmulWeight or CudaMatmulWeight for weight/);
    expect(() => matmulF32(new Tensor(new Float32Array(32), [32]), new Tensor(new Float32Array(30), [1, 30]))).toThrow(
      /Expected x with last dimension K=30/);
  });
});
