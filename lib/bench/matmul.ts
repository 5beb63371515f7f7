// The INT4 dequant-matmul benchmark: quantform's kernels side by side with an fp32
// GEMM baseline and onnxruntime's MatMulNBits, on Llama layer shapes, each row
// against the machine's limits measured in the same run (lib/bench/machine.ts).
import { randomFillSync } from 'node:crypto';
import { invalidParameter } from '../errors.js';
import { backendInfo, setThreads } from '../backend.js';
import { matmul, matmulF32, prepareMatmulWeight } from '../ops/matmul.js';
import { dequantize, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { measureMachine, type MachineLimits } from './machine.js';
import { matMulNBitsModel } from './onnx.js';

/** [N, K]: output features x input features (a weight of shape [N, K]). */
export type Shape = readonly [number, number];

export const LLAMA_SHAPES: readonly Shape[] = [
  [4096, 4096], // q/k/v/o projection, Llama-2-7B (8 MB as INT4: stays in a 32 MB L3)
  [11008, 4096], // gate/up, Llama-2-7B
  [4096, 11008], // down, Llama-2-7B
  [14336, 4096], // gate/up, Llama-3-8B
  [32768, 4096], // 64 MB as INT4 (+ params): far beyond cache, for bandwidth figures
];

export interface MatmulBenchOptions {
  shapes: readonly Shape[];
  ms: readonly number[];
  groupSizes: readonly number[];
  /** Timed runs per row at least (median reported; short rows get more, up to 100); one more run warms up. */
  iterations: number;
  threads: number;
  /** Run onnxruntime-node's MatMulNBits when installed. */
  peer: boolean;
  /** Include the fp32 GEMM baseline rows. */
  baseline: boolean;
  /** Bytes streamed by the bandwidth probe. */
  probeBytes: number;
  /** Rows whose one run exceeds this many flops (2 M N K) are skipped, with a note. */
  maxFlopsPerRun: number;
}

export const QUICK: Omit<MatmulBenchOptions, 'threads'> = {
  shapes: [[4096, 4096], [32768, 4096]],
  ms: [1, 8, 32, 512],
  groupSizes: [128],
  iterations: 3,
  peer: true,
  baseline: true,
  probeBytes: 512 * 2 ** 20, // 256 MiB gave occasional 50 GB/s readings here, 512 MiB a steady 36-40
  maxFlopsPerRun: 2 * 512 * 4096 * 4096, // 32768x4096 runs M = 1, 8, 32 only
};

export const FULL: Omit<MatmulBenchOptions, 'threads'> = {
  shapes: LLAMA_SHAPES,
  ms: [1, 8, 32, 512],
  groupSizes: [32, 128],
  iterations: 5,
  peer: true,
  baseline: true,
  probeBytes: 512 * 2 ** 20,
  maxFlopsPerRun: Infinity,
};

export interface MatmulBenchRow {
  N: number;
  K: number;
  M: number;
  groupSize: number | null;
  impl: string;
  /** 'fp32' or 'int8' compute; the limit its % is taken against. */
  accuracy: 'fp32' | 'int8';
  medianMs: number;
  gflops: number;
  /** Bytes of the weight as stored (INT4 codes + f16 scales + f16 zeros, or fp32) / median time. */
  weightGBps: number;
  /** weightGBps / measured read bandwidth. */
  pctReadBW: number;
  /** gflops / measured fp32 FMA peak (fp32) or int8 VNNI peak (int8). */
  pctPeak: number | null;
  /** onnxruntime's median / ours at the same accuracy level (> 1: we are faster). */
  speedupVsOrt: number | null;
  /** Normalized MSE of this row's output vs quantform's fp32 output (int8 rows). */
  nmseVsFp32: number | null;
}

export interface MatmulBenchResult {
  machine: MachineLimits & { cpu: string; tier: string };
  rows: MatmulBenchRow[];
  notes: string[];
}

/** The slice of onnxruntime-node's API the benchmark uses (it is an optional dependency). */
export interface OrtTensorCtor {
  new (type: 'float32', data: Float32Array, dims: number[]): unknown;
}
export interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, { data: Float32Array }>>;
  release(): Promise<void>;
}
export interface OrtModule {
  Tensor: OrtTensorCtor;
  InferenceSession: {
    create(model: Uint8Array, opts: Record<string, unknown>): Promise<OrtSession>;
  };
}

/** onnxruntime-node, or why it cannot be loaded. */
export async function loadOrt(): Promise<OrtModule | string> {
  const name = 'onnxruntime-node';
  try {
    return (await import(name)) as OrtModule;
  } catch (e) {
    return `onnxruntime-node is not installed (${(e as Error).message.split('\n')[0]}); ` +
      'install it with `npm install --save-optional onnxruntime-node --ignore-scripts` ' +
      '(its install script downloads CUDA binaries and fails offline; the CPU binaries ship inside the package)';
  }
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Median ms of each candidate, timed round-robin after one warm-up run each, so
 * that all of them see the same drift in the machine's load (on a shared machine
 * it changes within seconds).
 */
async function timeRoundRobin(iterations: number, fns: (() => unknown)[]): Promise<number[]> {
  const t0 = performance.now();
  for (const f of fns) await f();
  // short candidates get more rounds (up to 100, about 0.3 s in all): a median of
  // a few sub-millisecond runs is at the mercy of one preemption
  const rounds = Math.min(100, Math.max(iterations, Math.ceil(300 / (performance.now() - t0))));
  const t = fns.map(() => [] as number[]);
  for (let i = 0; i < rounds; i++)
    for (const [j, f] of fns.entries()) {
      const t0 = performance.now();
      await f();
      t[j].push(performance.now() - t0);
    }
  return t.map(median);
}

function nmse(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return num / den;
}

interface BenchWeight {
  q: QuantizedTensor;
  /** (N, G) the scales as f32 (exact), for onnxruntime, which wants f32 scales with f32 activations */
  scales32: Float32Array;
  /** (N, G) integer zero points */
  zeros: Uint8Array;
}

/** binary16 bits -> number (normal numbers and zero only: all this file makes). */
function f16Value(bits: number): number {
  const e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
  return e === 0 ? 0 : 2 ** (e - 15) * (1 + m / 1024);
}

/** A small non-negative integer as binary16 bits. */
function f16OfInt(z: number): number {
  if (z === 0) return 0;
  const e = Math.floor(Math.log2(z));
  return ((e + 15) << 10) | ((z / 2 ** e - 1) * 1024);
}

/**
 * Random INT4 weight in the GPTQ/AWQ form (asymmetric, integer zero points, f16
 * scales and zeros), valid by construction, without an fp32 original.
 */
function randomInt4(N: number, K: number, groupSize: number): BenchWeight {
  const G = Math.ceil(K / groupSize);
  const codes = new Uint8Array(N * Math.ceil(K / 2));
  randomFillSync(codes);
  const scales = new Uint16Array(N * G), zeros16 = new Uint16Array(N * G);
  const scales32 = new Float32Array(N * G), zeros = new Uint8Array(N * G);
  for (let i = 0; i < N * G; i++) {
    scales[i] = (6 << 10) | Math.floor(Math.random() * 1024); // 2^-9 * [1, 2)
    scales32[i] = f16Value(scales[i]);
    zeros[i] = Math.floor(Math.random() * 16);
    zeros16[i] = f16OfInt(zeros[i]);
  }
  return { q: new QuantizedTensor(codes, scales, zeros16, [N, K], 4, groupSize, false, 'f16'), scales32, zeros };
}

function randomX(M: number, K: number): Tensor {
  const x = new Float32Array(M * K);
  for (let i = 0; i < x.length; i++) x[i] = Math.random() * 2 - 1 + (Math.random() < 0.01 ? 4 * Math.random() : 0);
  return new Tensor(x, [M, K]);
}

/** onnxruntime's zero points: 4-bit, two per byte, low nibble first, per row. */
function ortZeroPoints(w: BenchWeight): Uint8Array {
  const [N] = w.q.shape;
  const G = w.q.numGroups, rb = Math.ceil(G / 2);
  const out = new Uint8Array(N * rb);
  for (let n = 0; n < N; n++)
    for (let g = 0; g < G; g++) out[n * rb + (g >> 1)] |= w.zeros[n * G + g] << ((g & 1) * 4);
  return out;
}

function weightBytes(q: QuantizedTensor): number {
  return q.codes.byteLength + q.scales.byteLength + (q.zeros?.byteLength ?? 0);
}

export function fmtShape(N: number, K: number): string {
  return `${N}x${K}`;
}

export async function benchMatmul(o: MatmulBenchOptions, log: (s: string) => void = () => {}): Promise<MatmulBenchResult> {
  for (const [N, K] of o.shapes)
    for (const gs of o.groupSizes)
      if (!(gs <= K)) throw invalidParameter(`group size <= K = ${K} for shape ${fmtShape(N, K)}`, 'groupSizes', gs);
  setThreads(o.threads);
  const info = backendInfo();
  const notes: string[] = [];
  log(`measuring machine limits on ${o.threads} threads (read ${Math.round(o.probeBytes / 2 ** 20)} MiB, FMA and VNNI loops)...`);
  const lim = await measureMachine({ bytes: o.probeBytes, reps: 5, seconds: 0.3 });
  const vnni = info.features.avx512vnni && info.tier === 'avx512';
  if (!vnni) notes.push('no AVX-512 VNNI here: int8 rows skipped (the int8 path would run its scalar reference)');
  let ort: OrtModule | null = null;
  if (o.peer) {
    const r = await loadOrt();
    if (typeof r === 'string') notes.push(`peer skipped: ${r}`);
    else ort = r;
  } else notes.push('peer skipped: --no-peer');

  const rows: MatmulBenchRow[] = [];
  const skipped: string[] = [];
  const withPct = (r: MatmulBenchRow, l: MachineLimits): MatmulBenchRow => {
    const peak = r.accuracy === 'fp32' ? l.fmaGflops : l.vnniGops;
    return { ...r, pctReadBW: r.weightGBps / l.readGBps, pctPeak: peak ? r.gflops / peak : null };
  };
  const add = (r: Omit<MatmulBenchRow, 'gflops' | 'weightGBps' | 'pctReadBW' | 'pctPeak'>, bytes: number) => {
    const gflops = (2 * r.M * r.N * r.K) / (r.medianMs * 1e6);
    const row = withPct({ ...r, gflops, weightGBps: bytes / (r.medianMs * 1e6), pctReadBW: 0, pctPeak: null }, lim);
    rows.push(row);
    log(formatRow(row));
  };

  for (const [N, K] of o.shapes) {
    let wf32: Tensor | null = null;
    for (const [gi, gs] of o.groupSizes.entries()) {
      const bw = randomInt4(N, K, gs);
      const q = bw.q;
      const p = prepareMatmulWeight(q);
      const bytes = weightBytes(q);
      if (o.baseline && gi === 0) wf32 = dequantize(q);
      const sessions: (OrtSession | null)[] = [null, null];
      // MatMulNBits blocks are powers of two >= 16 and pad every row to whole blocks
      const ortFits = gs >= 16 && (gs & (gs - 1)) === 0 && K % gs === 0;
      if (ort && !ortFits) notes.push(`peer skipped for ${fmtShape(N, K)} group ${gs}: MatMulNBits needs a power-of-two block >= 16 dividing K`);
      if (ort && ortFits) {
        for (const [i, level] of [0, 4].entries()) {
          const model = matMulNBitsModel({ N, K, blockSize: gs, accuracyLevel: level, codes: q.codes, scales: bw.scales32, zeroPoints: ortZeroPoints(bw) });
          // no spinning: its threads would otherwise keep the cores busy after each run
          // and slow down the next candidate (ours do not spin either)
          sessions[i] = await ort.InferenceSession.create(model, {
            intraOpNumThreads: o.threads, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all',
            extra: { session: { intra_op: { allow_spinning: '0' } } },
          });
        }
      }
      for (const M of o.ms) {
        if (2 * M * N * K > o.maxFlopsPerRun) {
          skipped.push(`${fmtShape(N, K)} M=${M}`);
          continue;
        }
        const x = randomX(M, K);
        const base = { N, K, M, groupSize: gs };
        const feeds = ort ? { A: new ort.Tensor('float32', x.data as Float32Array, [M, K]) } : null;
        let y32: Float32Array | null = null, y8: Float32Array | null = null;
        const ortY: (Float32Array | null)[] = [null, null];
        const w = gi === 0 ? wf32 : null;
        const fns: Record<string, () => unknown> = { fp32: () => (y32 = matmul(x, p).data as Float32Array) };
        if (vnni) fns.int8 = () => (y8 = matmul(x, p, { accuracy: 'int8' }).data as Float32Array);
        for (const [i, s] of sessions.entries())
          if (s) fns[`ort${i}`] = async () => (ortY[i] = (await s.run(feeds!)).Y.data);
        if (w) fns.base = () => matmulF32(x, w);
        const keys = Object.keys(fns);
        const ms = Object.fromEntries((await timeRoundRobin(o.iterations, keys.map((k) => fns[k]))).map((t, i) => [keys[i], t]));
        const vs = (k: string, ours: number) => (ms[k] === undefined ? null : ms[k] / ours);
        add({ ...base, impl: 'quantform int4 fp32', accuracy: 'fp32', medianMs: ms.fp32, speedupVsOrt: vs('ort0', ms.fp32), nmseVsFp32: null }, bytes);
        if (vnni)
          add({ ...base, impl: 'quantform int4 int8 (VNNI)', accuracy: 'int8', medianMs: ms.int8, speedupVsOrt: vs('ort1', ms.int8), nmseVsFp32: nmse(y8!, y32!) }, bytes);
        if (ortY[0]) add({ ...base, impl: 'onnxruntime MatMulNBits acc=0', accuracy: 'fp32', medianMs: ms.ort0, speedupVsOrt: null, nmseVsFp32: nmse(ortY[0], y32!) }, bytes);
        if (ortY[1]) add({ ...base, impl: 'onnxruntime MatMulNBits acc=4', accuracy: 'int8', medianMs: ms.ort1, speedupVsOrt: null, nmseVsFp32: nmse(ortY[1], y32!) }, bytes);
        if (w)
          add({ ...base, groupSize: null, impl: 'fp32 GEMM baseline (quantform sgemm, fp32 weights)', accuracy: 'fp32', medianMs: ms.base, speedupVsOrt: null, nmseVsFp32: null }, N * K * 4);
      }
      for (const s of sessions) await s?.release();
    }
  }
  if (skipped.length) notes.push(`skipped as too long for this run (maxFlopsPerRun): ${[...new Set(skipped)].join(', ')}`);
  // limits measured again at the end; each is the better of the two, since load
  // from other processes only ever lowers a measurement
  log('measuring machine limits again...');
  const end = await measureMachine({ bytes: o.probeBytes, reps: 5, seconds: 0.3 });
  const best: MachineLimits = {
    ...lim,
    readGBps: Math.max(lim.readGBps, end.readGBps),
    fmaGflops: Math.max(lim.fmaGflops, end.fmaGflops),
    vnniGops: lim.vnniGops === null || end.vnniGops === null ? lim.vnniGops : Math.max(lim.vnniGops, end.vnniGops),
  };
  return { machine: { ...best, cpu: info.cpu, tier: info.tier }, rows: rows.map((r) => withPct(r, best)), notes };
}

const pct = (v: number | null) => (v === null ? '' : `${(100 * v).toFixed(0)}%`);

export function formatHeader(): string {
  return ['shape NxK'.padEnd(11), 'gs'.padStart(4), 'M'.padStart(4), 'implementation'.padEnd(50), 'median ms'.padStart(10),
    'GFLOP/s'.padStart(8), 'wt GB/s'.padStart(8), '%readBW'.padStart(8), '%peak'.padStart(6), 'vs ORT'.padStart(7), 'NMSE vs fp32'.padStart(13)].join(' ');
}

export function formatRow(r: MatmulBenchRow): string {
  return [fmtShape(r.N, r.K).padEnd(11), String(r.groupSize ?? '-').padStart(4), String(r.M).padStart(4), r.impl.padEnd(50),
    r.medianMs.toFixed(3).padStart(10), r.gflops.toFixed(1).padStart(8), r.weightGBps.toFixed(1).padStart(8),
    pct(r.pctReadBW).padStart(8), pct(r.pctPeak).padStart(6), (r.speedupVsOrt === null ? '' : `${r.speedupVsOrt.toFixed(2)}x`).padStart(7),
    (r.nmseVsFp32 === null ? '' : r.nmseVsFp32.toExponential(1)).padStart(13)].join(' ');
}

export function formatMachine(m: MatmulBenchResult['machine']): string {
  return `machine: ${m.cpu}, tier ${m.tier}, ${m.threads} threads | read ${m.readGBps.toFixed(1)} GB/s (${Math.round(m.readBytes / 2 ** 20)} MiB streamed) | ` +
    `fp32 FMA ${m.fmaGflops.toFixed(0)} GFLOP/s | int8 VNNI ${m.vnniGops === null ? 'n/a' : `${m.vnniGops.toFixed(0)} GOP/s`}`;
}
