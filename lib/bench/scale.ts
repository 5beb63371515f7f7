// Real-size quantization: a synthetic Llama-2-7B-shaped checkpoint (hidden 4096,
// 32 layers, intermediate 11008, 32 heads, vocab 32000, BF16, sharded as Hugging
// Face does) written by the benchmark to a temp directory, then quantized in a
// fresh process whose peak RSS (getrusage ru_maxrss), wall time and time per block
// are reported next to the time one thread takes to read the same shards in the
// same run. Everything the benchmark writes is removed at the end.
//
// Methods plug in through SCALE_METHODS: each names the child-process script that
// quantizes the checkpoint. RTN streams tensor by tensor; EfficientQAT's E2E-QP trains
// a packed (RTN-streamed) GPTQ checkpoint; TEQ with the block-wise loss and Block-AP
// join once the block pipeline streams blocks.
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { QuantformError } from '../errors.js';
import { LLAMA2_7B } from '../model/synthetic.js';
import { packageRoot } from '../native.js';
import { measureMachine } from './machine.js';
import { median } from './stats.js';
import { checkFreeDisk, checkpointBytes, shapeOf, writeSyntheticHf } from './synthetic-files.js';

export interface ScaleContext {
  /** file URL of quantform's dist/index.js, for the child's import */
  index: string;
  /** the checkpoint directory */
  model: string;
  /** the output directory (must not exist) */
  out: string;
}

export interface ScaleMethod {
  name: string;
  description: string;
  /**
   * An ES module body that quantizes ctx.model into ctx.out and sets
   * `globalThis.layerDone[l]` (ms since `globalThis.t0`) when block l is done;
   * null when the method cannot run at this size yet, with `unavailable` saying why.
   */
  script: ((ctx: ScaleContext) => string) | null;
  unavailable?: string;
  /** what one layerDone interval is: a block (default) or a training step */
  unit?: 'block' | 'step';
}

export const SCALE_METHODS: ScaleMethod[] = [
  {
    name: 'rtn',
    description: 'RTN W4 g128, streamed tensor by tensor into GPTQ (quantizeCheckpointRtn)',
    script: (c) => `const q = await import(${JSON.stringify(c.index)});
const ck = q.openCheckpoint(${JSON.stringify(c.model)});
await q.quantizeCheckpointRtn(ck, ${JSON.stringify(c.out)}, { bits: 4, groupSize: 128 },
  { onProgress: (e) => { if (e.layer !== undefined) globalThis.layerDone[e.layer] = performance.now() - globalThis.t0; } });
ck.close();`,
  },
  {
    name: 'efficientqat-e2e',
    description: 'EfficientQAT E2E-QP of a W4 g128 GPTQ checkpoint (RTN-streamed first), 2 steps of 512 tokens, the model packed throughout',
    unit: 'step',
    script: (c) => `const q = await import(${JSON.stringify(c.index)});
const start = ${JSON.stringify(c.out + '-start')};
let ck = q.openCheckpoint(${JSON.stringify(c.model)});
await q.quantizeCheckpointRtn(ck, start, { bits: 4, groupSize: 128 });
ck.close();
globalThis.t0 = performance.now();
ck = q.openCheckpoint(start);
const V = ck.config.vocabSize, S = 512, N = 2;
const calibration = { tokens: Int32Array.from({ length: N * S }, (_, i) => 3 + ((i * 7919) % (V - 3))), samples: N, seqLen: S, streamLength: N * S };
let k = 0;
await q.quantizeCheckpointE2eQp(ck, ${JSON.stringify(c.out)}, { calibration, efficientqat: { e2eBatchSize: 1, e2eEpochs: 1, e2eMemoryBytes: 0 } },
  { onProgress: (e) => { if (e.phase === 'train') globalThis.layerDone[k++] = performance.now() - globalThis.t0; } });
ck.close();
(await import('node:fs')).rmSync(start, { recursive: true, force: true });`,
  },
  {
    name: 'efficientqat-block-ap',
    description: 'EfficientQAT Block-AP, a few steps per block on 2 x 512 calibration tokens',
    script: null,
    unavailable: 'Block-AP trains block by block on the in-memory model today; it streams through the block pipeline (lib/engine/pipeline.ts, branch stream) ' +
      'once that lands: the per-block step (learned fake quant, dW / ds / dz natively) is in place; add its script here',
  },
  {
    name: 'teq-block',
    description: 'TEQ, block-wise loss, a few steps per block on 128 x 256 calibration tokens',
    script: null,
    unavailable: 'the block-wise trainer still holds the whole model in fp32 (27 GB for 7B); it streams blocks once the engine rewrite lands ' +
      '(its activation store, lib/io/activation-store.ts, is ready); add its script here',
  },
];

export interface ScaleOptions {
  /** Llama-2-7B has 32; fewer for a quick run */
  layers?: number;
  methods?: string[];
  dir?: string;
  log?: (s: string) => void;
}

export interface ScaleRun {
  method: string;
  wallSeconds: number;
  /** median time from one block's last tensor to the next's */
  secondsPerBlock: number;
  peakRssBytes: number;
  outputBytes: number;
}

export interface ScaleResult {
  shape: { layers: number; dim: number; hiddenDim: number; heads: number; vocab: number; dtype: 'BF16' };
  checkpointBytes: number;
  shards: number;
  writeSeconds: number;
  /** one thread reading every shard end to end just before the runs */
  readSeconds: number;
  readGBps: number;
  memReadGBps: number;
  runs: ScaleRun[];
  skipped: { method: string; why: string }[];
}

function readAll(files: string[]): number {
  const buf = Buffer.allocUnsafe(8 << 20);
  let n = 0;
  const t0 = performance.now();
  for (const f of files) {
    const fd = openSync(f, 'r');
    try {
      for (let off = 0, r; (r = readSync(fd, buf, 0, buf.length, off)) > 0; off += r) n += r;
    } finally {
      closeSync(fd);
    }
  }
  return (performance.now() - t0) / 1000;
}

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((a, f) => a + statSync(path.join(dir, f)).size, 0);
}

export async function benchScale(o: ScaleOptions = {}): Promise<ScaleResult> {
  const log = o.log ?? (() => {});
  const layers = o.layers ?? 32;
  const cfg = shapeOf({ ...LLAMA2_7B, nLayers: layers });
  const want = o.methods ?? ['rtn'];
  for (const m of want)
    if (!SCALE_METHODS.some((s) => s.name === m))
      throw new QuantformError('QF_INVALID_ARGUMENT', `Expected methods among ${SCALE_METHODS.map((s) => s.name).join(', ')} but received '${m}'`);
  const bytes = checkpointBytes(cfg, 2);
  const base = o.dir ?? os.tmpdir();
  // the checkpoint, and a W4 output of about a third of it
  checkFreeDisk(base, bytes * 1.4);
  const dir = mkdtempSync(path.join(base, 'qf-bench-scale-'));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', cleanup);
  try {
    const model = path.join(dir, 'llama2-7b-shaped-bf16');
    let t0 = performance.now();
    const shards = writeSyntheticHf(model, cfg, 'BF16', 5e9).map((f) => path.join(model, f));
    const writeSeconds = (performance.now() - t0) / 1000;
    log(`wrote a Llama-2-7B-shaped BF16 checkpoint (${layers} layers, ${(bytes / 1e9).toFixed(1)} GB, ${shards.length} shards) in ${writeSeconds.toFixed(1)} s`);
    const readSeconds = readAll(shards);
    const mem = await measureMachine({ parts: ['read'] });
    log(`one thread reads it in ${readSeconds.toFixed(1)} s (${(bytes / readSeconds / 1e9).toFixed(2)} GB/s); memory read ${mem.readGBps.toFixed(1)} GB/s`);
    const index = pathToFileURL(path.join(packageRoot(), 'dist', 'index.js')).href;
    const runs: ScaleRun[] = [];
    const skipped: { method: string; why: string }[] = [];
    for (const name of want) {
      const m = SCALE_METHODS.find((s) => s.name === name)!;
      if (!m.script) {
        skipped.push({ method: name, why: m.unavailable ?? 'not available' });
        log(`${name}: skipped, ${m.unavailable}`);
        continue;
      }
      const out = path.join(dir, `out-${name}`);
      const file = path.join(dir, `run-${name}.mjs`);
      writeFileSync(file, `globalThis.layerDone = []; globalThis.t0 = performance.now();\n${m.script({ index, model, out })}\n` +
        'process.stdout.write(JSON.stringify({ wall: (performance.now() - globalThis.t0) / 1000, layerDone: globalThis.layerDone, ' +
        'maxRss: process.resourceUsage().maxRSS * 1024 }));');
      t0 = performance.now();
      const r = spawnSync(process.execPath, [file], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (r.status !== 0) throw new QuantformError('QF_INTERNAL', `bench scale ${name} failed (${r.status}): ${r.stderr.trim().split('\n').slice(-4).join(' | ')}`);
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as { wall: number; layerDone: number[]; maxRss: number };
      const per = res.layerDone.slice(1).map((t, i) => (t - res.layerDone[i]) / 1000);
      const run = { method: name, wallSeconds: res.wall, secondsPerBlock: per.length ? median(per) : res.wall, peakRssBytes: res.maxRss, outputBytes: dirBytes(out) };
      runs.push(run);
      log(`${name}: ${run.wallSeconds.toFixed(1)} s wall, ${run.secondsPerBlock.toFixed(2)} s per ${m.unit ?? 'block'}, peak RSS ${(run.peakRssBytes / 1e9).toFixed(2)} GB, ` +
        `output ${(run.outputBytes / 1e9).toFixed(2)} GB`);
      rmSync(out, { recursive: true, force: true });
    }
    return {
      shape: { layers, dim: cfg.dim, hiddenDim: cfg.hiddenDim, heads: cfg.nHeads, vocab: cfg.vocabSize, dtype: 'BF16' },
      checkpointBytes: bytes, shards: shards.length, writeSeconds, readSeconds, readGBps: bytes / readSeconds / 1e9, memReadGBps: mem.readGBps, runs, skipped,
    };
  } finally {
    cleanup();
    process.off('exit', cleanup);
  }
}
