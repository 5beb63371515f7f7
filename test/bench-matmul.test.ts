// The matmul benchmark's pieces: the hand-written ONNX encoder (checked by running
// the model in onnxruntime against quantform's reference), the machine probes, and
// one tiny end-to-end benchmark run. Timings are not asserted.
import { describe, expect, it } from 'vitest';
import { matMulNBitsModel } from '../lib/bench/onnx.js';
import { benchMatmul, loadOrt, type OrtModule } from '../lib/bench/matmul.js';
import { backendInfo, matmul, measureMachine, measureMachineSync, QuantizedTensor, setAmx, setKernelPolicy, Tensor } from '../lib/index.js';

/** onnxruntime (fp32 accumulation, its own order) vs the float64-accumulating reference. */
const ORT_NMSE = 1e-10;

const loaded = await loadOrt();
const ort: OrtModule | null = typeof loaded === 'string' ? null : loaded;
if (typeof loaded === 'string') console.log(`onnxruntime cross-check skipped: ${loaded}`);

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
}

describe.skipIf(!ort)('ONNX MatMulNBits model (skipped without onnxruntime-node)', () => {
  it.each([[32, false], [16, true], [64, false]] as const)('blockSize=%i symmetric=%s matches quantform', async (bs, sym) => {
    const [N, K, M] = [21, 128, 3];
    const r = lcg(bs);
    const G = K / bs;
    const codes = Uint8Array.from({ length: N * K / 2 }, () => Math.floor(r() * 256));
    const scales = Float32Array.from({ length: N * G }, () => 0.01 + 0.01 * r());
    const zi = Uint8Array.from({ length: N * G }, () => Math.floor(r() * 16));
    const q = new QuantizedTensor(codes, scales, sym ? null : Float32Array.from(zi), [N, K], 4, bs, sym, 'f32');
    let zp: Uint8Array | null = null;
    if (!sym) {
      const rb = Math.ceil(G / 2);
      zp = new Uint8Array(N * rb);
      for (let n = 0; n < N; n++) for (let g = 0; g < G; g++) zp[n * rb + (g >> 1)] |= zi[n * G + g] << ((g & 1) * 4);
    }
    const model = matMulNBitsModel({ N, K, blockSize: bs, accuracyLevel: 0, codes, scales, zeroPoints: zp });
    const session = await ort!.InferenceSession.create(model, {});
    const x = Float32Array.from({ length: M * K }, () => r() * 2 - 1);
    const y = (await session.run({ A: new ort!.Tensor('float32', x, [M, K]) })).Y.data;
    await session.release();
    setKernelPolicy('ref');
    const want = matmul(new Tensor(x, [M, K]), q).data as Float32Array;
    setKernelPolicy('auto');
    let num = 0, den = 0;
    for (let i = 0; i < want.length; i++) {
      num += (y[i] - want[i]) ** 2;
      den += want[i] ** 2;
    }
    expect(num / den).toBeLessThan(ORT_NMSE);
  });
});

describe('machine probes and a tiny benchmark run', () => {
  it('measureMachine measures only the parts asked for; a copy moves at least as many bytes per second as it reads', async () => {
    const only = await measureMachine({ parts: ['copy'], bytes: 8 * 2 ** 20, reps: 2 });
    expect(only.copyGBps).toBeGreaterThan(0);
    expect([only.readGBps, only.fmaGflops, only.vnniGops ?? 0, only.amxInt8Gops ?? 0]).toEqual([0, 0, 0, 0]);
    const fma = measureMachineSync({ parts: ['fma'], seconds: 0.05 });
    expect(fma.fmaGflops).toBeGreaterThan(0);
    expect(fma.copyGBps).toBe(0);
    expect(() => measureMachineSync({ parts: [] })).toThrow(/Expected non-empty array of 'read', 'copy', 'fma', 'vnni', 'amx' for parts/);
    expect(() => measureMachineSync({ parts: ['disk' as 'read'] })).toThrow(/for parts/);
  });

  const feats = backendInfo().features;
  const amxInt8 = feats.amxInt8 && backendInfo().amx.active && feats.avx512vnni;
  if (!amxInt8) console.log('bench-matmul tests: no AMX-INT8 in use here: the AMX probe is only checked to report null');
  it('the AMX int8 probe: a TDPBSUD peak above the VNNI one where the tiles run, null elsewhere or with setAmx(false)', () => {
    const m = measureMachineSync({ parts: ['vnni', 'amx'], seconds: 0.05 });
    if (amxInt8) expect(m.amxInt8Gops!).toBeGreaterThan(2 * m.vnniGops!);
    else expect(m.amxInt8Gops).toBeNull();
    setAmx(false);
    try {
      expect(measureMachineSync({ parts: ['amx'], seconds: 0.05 }).amxInt8Gops).toBeNull();
    } finally {
      setAmx(true);
    }
  });

  it('measureMachine returns positive limits and rejects bad options', async () => {
    const m = await measureMachine({ bytes: 8 * 2 ** 20, reps: 2, seconds: 0.05 });
    expect(m.readGBps).toBeGreaterThan(0);
    expect(m.fmaGflops).toBeGreaterThan(0);
    expect(m.readBytes).toBe(8 * 2 ** 20);
    await expect(measureMachine({ bytes: 1000 })).rejects.toThrow(/Expected integer >= 1048576 for bytes but received 1000 of type number/);
  });

  it('benchMatmul produces every row kind with finite numbers', async () => {
    const r = await benchMatmul({
      shapes: [[48, 256]], ms: [1, 20], groupSizes: [32], iterations: 1, threads: 2, peer: !!ort, baseline: true,
      probeBytes: 4 * 2 ** 20, maxFlopsPerRun: Infinity,
    });
    const impls = new Set(r.rows.map((row) => row.impl));
    expect(impls.has('quantform int4 fp32')).toBe(true);
    expect(impls.has('fp32 GEMM baseline (quantform sgemm, fp32 weights)')).toBe(true);
    if (ort) expect(impls.has('onnxruntime MatMulNBits acc=0')).toBe(true);
    for (const row of r.rows) {
      expect(Number.isFinite(row.medianMs) && row.medianMs > 0).toBe(true);
      expect(Number.isFinite(row.gflops)).toBe(true);
      if (row.impl === 'onnxruntime MatMulNBits acc=0') expect(row.nmseVsFp32!).toBeLessThan(1e-10);
      if (row.accuracy === 'int8') expect(row.nmseVsFp32!).toBeLessThan(1e-3);
    }
  });
});
