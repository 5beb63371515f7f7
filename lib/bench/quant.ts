// Quantize / dequantize throughput per kernel tier on LLM layer shapes, next to
// the machine's memory bandwidth measured in the same run. Both ops stream: the
// limit is the copy bandwidth (bytes read + bytes written).
import { backendInfo, setKernelPolicy, type KernelPolicy } from '../backend.js';
import { dequantize, packedRowBytes, quantize, numGroups, type Bits } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { measureMachine } from './machine.js';
import { median, timeRuns } from './stats.js';

export interface QuantBenchOptions {
  shapes: [number, number][];
  bits: Bits;
  groupSize: number;
  symmetric: boolean;
  iters: number;
  tiers?: Exclude<KernelPolicy, 'auto'>[];
  onRow?: (row: QuantBenchRow) => void;
}

export interface QuantBenchRow {
  op: 'quantize' | 'dequantize';
  tier: string;
  N: number;
  K: number;
  medianMs: number;
  gbps: number;
  /** gbps / measured copy bandwidth */
  pctOfCopyBandwidth: number;
  speedupVsRef: number | null;
}

export interface QuantBenchResult {
  machine: { cpu: string; threads: number; bestTier: string; memory: { readGBps: number; copyGBps: number; bytes: number } };
  config: Omit<QuantBenchOptions, 'onRow'>;
  rows: QuantBenchRow[];
}

/** Deterministic weights with a few large outliers, fast to make at 100M+ elements. */
function weights(N: number, K: number): Tensor {
  const data = new Float32Array(N * K);
  let x = 0x2545f491;
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    data[i] = ((x >>> 0) / 4294967296 - 0.5) * (i % 251 === 7 ? 0.5 : 0.05);
  }
  return new Tensor(data, [N, K]);
}

export async function runQuantBench(opts: QuantBenchOptions): Promise<QuantBenchResult> {
  const info = backendInfo();
  const all: Exclude<KernelPolicy, 'auto'>[] = ['ref', 'avx2', 'avx512'];
  const tiers = (opts.tiers ?? all).filter((t) => all.indexOf(t) <= all.indexOf(info.bestTier));
  const lim = await measureMachine({ parts: ['read', 'copy'] });
  const memory = { readGBps: lim.readGBps, copyGBps: lim.copyGBps, bytes: lim.readBytes };
  const rows: QuantBenchRow[] = [];
  const qopts = { bits: opts.bits, groupSize: opts.groupSize, symmetric: opts.symmetric };
  try {
    for (const [N, K] of opts.shapes) {
      const w = weights(N, K);
      const G = numGroups(K, Math.min(opts.groupSize, K));
      const paramBytes = N * G * 4 * (opts.symmetric ? 1 : 2);
      const packedBytes = N * packedRowBytes(opts.bits, K);
      const bytes = N * K * 4 + packedBytes + paramBytes; // same traffic both ways
      const refMs: Record<string, number> = {};
      for (const tier of tiers) {
        setKernelPolicy(tier);
        const q = quantize(w, qopts);
        const out = new Float32Array(N * K); // reused: the benchmark measures the kernel, not page faults
        // the reference tier is slow on big shapes: fewer runs keep the benchmark short
        const iters = tier === 'ref' ? Math.min(3, opts.iters) : opts.iters;
        for (const op of ['quantize', 'dequantize'] as const) {
          const secs = timeRuns(op === 'quantize' ? () => quantize(w, qopts) : () => dequantize(q, { out }), iters);
          const ms = median(secs) * 1e3;
          if (tier === 'ref') refMs[op] = ms;
          const gbps = bytes / (ms / 1e3) / 1e9;
          const row: QuantBenchRow = {
            op, tier, N, K, medianMs: ms, gbps, pctOfCopyBandwidth: (100 * gbps) / memory.copyGBps,
            speedupVsRef: refMs[op] ? refMs[op] / ms : null,
          };
          rows.push(row);
          opts.onRow?.(row);
        }
      }
    }
  } finally {
    setKernelPolicy('auto');
  }
  const { onRow: _omit, ...config } = opts;
  return { machine: { cpu: info.cpu, threads: info.threads, bestTier: info.bestTier, memory }, config: { ...config, tiers }, rows };
}
