// Real-size quantization: a synthetic Llama-2-7B-shaped checkpoint (hidden 4096,
// 32 layers, intermediate 11008, 32 heads, vocab 32000, BF16, sharded as Hugging
// Face does) written by the benchmark to a temp directory, then quantized in a
// fresh process whose peak RSS (getrusage ru_maxrss), wall time and time per block
// are reported next to the time one thread takes to read the same shards in the
// same run. Everything the benchmark writes is removed at the end.
//
// Methods plug in through SCALE_METHODS: each names the child-process script that
// quantizes the checkpoint through the streaming block pipeline (lib/engine/pipeline.ts):
// RTN tensor by tensor, GPTQ, TEQ's block-wise loss and EfficientQAT's Block-AP block by
// block with their calibration activations (random token windows: the cost does not
// depend on the text), TEQ's end-to-end loss a few whole-model steps on frozen bf16
// weights, EfficientQAT's E2E-QP a few steps of a packed (RTN-streamed) GPTQ checkpoint.
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
  /** calibration windows x tokens (random ids, seeded) */
  samples: number;
  seqLen: number;
  /** training steps (block-wise: per block); null: the method's bench default */
  steps: number | null;
  /** bytes the run may hold; null: what the OS reports available */
  maxMemoryBytes: number | null;
}

export interface ScaleMethod {
  name: string;
  description: string;
  /**
   * An ES module body that quantizes ctx.model into ctx.out and sets
   * `globalThis.layerDone[l]` (ms since `globalThis.t0`) when block l is done (and
   * `globalThis.stepDone[k]` after training step k); null when the method cannot run
   * at this size yet, with `unavailable` saying why.
   */
  script: ((ctx: ScaleContext) => string) | null;
  unavailable?: string;
  /** what one layerDone interval is: a block (default) or a training step */
  unit?: 'block' | 'step';
}

/** The child's quantizeCheckpoint call with progress hooks that record when each block and step finished. */
function pipelineScript(c: ScaleContext, options: string): string {
  return `const q = await import(${JSON.stringify(c.index)});
const ck = q.openCheckpoint(${JSON.stringify(c.model)});
let s = 12345;
const tokens = Int32Array.from({ length: ${c.samples * c.seqLen} }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % (ck.config.vocabSize - 3)) + 3);
const calibration = { tokens, samples: ${c.samples}, seqLen: ${c.seqLen}, streamLength: tokens.length };
const opts = { ...${options}, calibration${c.maxMemoryBytes ? `, maxMemoryBytes: ${c.maxMemoryBytes}` : ''} };
globalThis.plan = q.quantizePlan(ck, opts);
const r = await q.quantizeCheckpoint(ck, ${JSON.stringify(c.out)}, opts, { onProgress: (e) => {
  const t = performance.now() - globalThis.t0;
  if (e.phase === 'quantize' && e.layer !== undefined) globalThis.layerDone[e.layer] = t;
  if (e.phase === 'train') globalThis.stepDone.push(t);
} });
globalThis.trainSeconds = r.trainSeconds;
globalThis.readSeconds = r.readSeconds;
globalThis.writeSeconds = r.writeSeconds;
ck.close();`;
}

export const SCALE_METHODS: ScaleMethod[] = [
  {
    name: 'rtn',
    description: 'RTN W4 g128, streamed tensor by tensor into GPTQ (quantizeCheckpointRtn)',
    script: (c) => `const q = await import(${JSON.stringify(c.index)});
const ck = q.openCheckpoint(${JSON.stringify(c.model)});
const r = await q.quantizeCheckpointRtn(ck, ${JSON.stringify(c.out)}, { bits: 4, groupSize: 128 },
  { onProgress: (e) => { if (e.layer !== undefined) globalThis.layerDone[e.layer] = performance.now() - globalThis.t0; } });
globalThis.readSeconds = r.readSeconds;
globalThis.writeSeconds = r.writeSeconds;
ck.close();`,
  },
  {
    name: 'gptq',
    description: 'GPTQ W4 g128, true-sequential, X_q recomputed through the quantized blocks',
    script: (c) => pipelineScript(c, "{ method: 'gptq', bits: 4, groupSize: 128 }"),
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
const r = await q.quantizeCheckpointE2eQp(ck, ${JSON.stringify(c.out)}, { calibration, efficientqat: { e2eBatchSize: 1, e2eEpochs: 1, e2eMemoryBytes: 0 } },
  { onProgress: (e) => { if (e.phase === 'train') globalThis.layerDone[k++] = performance.now() - globalThis.t0; } });
globalThis.trainSeconds = r.trainSeconds;
globalThis.readSeconds = r.readSeconds;
globalThis.writeSeconds = r.writeSeconds;
ck.close();
(await import('node:fs')).rmSync(start, { recursive: true, force: true });`,
  },
  {
    name: 'efficientqat-block-ap',
    description: 'EfficientQAT Block-AP W4 g128, one epoch per block (samples / 2 steps), X_fp, Y_fp and X_q in activation stores',
    script: (c) => pipelineScript(c, "{ method: 'efficientqat', bits: 4, groupSize: 128, efficientqat: { phases: 'block-ap', epochs: 1 } }"),
  },
  {
    name: 'teq-block',
    description: 'TEQ W4 g128, block-wise loss (fp inputs and targets in activation stores), a few steps per block',
    script: (c) => pipelineScript(c, `{ method: 'teq', bits: 4, groupSize: 128, loss: 'block', steps: ${c.steps ?? 4}, warmup: 0 }`),
  },
  {
    name: 'teq-e2e',
    description: 'TEQ W4 g128, end-to-end loss on frozen bf16 weights (activation checkpointing), a few steps, then the block pass',
    script: (c) => pipelineScript(c, `{ method: 'teq', bits: 4, groupSize: 128, loss: 'e2e', steps: ${c.steps ?? 2}, warmup: 0 }`),
  },
];

export interface ScaleOptions {
  /** Llama-2-7B has 32; fewer for a quick run */
  layers?: number;
  methods?: string[];
  dir?: string;
  /** calibration windows x tokens (default 128 x 256) */
  samples?: number;
  seqLen?: number;
  /** training steps (block-wise: per block); default teq-block 4, teq-e2e 2 */
  steps?: number;
  /** the runs' --max-memory in bytes (default: what the OS reports available) */
  maxMemoryBytes?: number;
  log?: (s: string) => void;
}

export interface ScaleRun {
  method: string;
  wallSeconds: number;
  /** median time from one block's last tensor to the next's */
  secondsPerBlock: number;
  /** median time of a training step (end-to-end: the whole model), null when it has none */
  secondsPerStep: number | null;
  trainSeconds: number | null;
  /** of wallSeconds, the wait for checkpoint reads (the pipeline's own count; overlapped reads count only their wait) */
  readWaitSeconds: number;
  /** of wallSeconds, writing the output (writes and fsyncs) */
  writeSeconds: number;
  peakRssBytes: number;
  outputBytes: number;
  /** what the run planned to hold (lib/methods/quantize-model.ts quantizePlan) */
  plan: { fixedBytes: number; storeBytes: number; storeRamBytes: number; keepSaved?: number; cachedBlocks?: number } | null;
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
  samples: number;
  seqLen: number;
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
  const samples = o.samples ?? 128, seqLen = o.seqLen ?? 256;
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
    const reads = [readAll(shards)];
    const mem = await measureMachine({ parts: ['read'] });
    log(`one thread reads it in ${reads[0].toFixed(1)} s (${(bytes / reads[0] / 1e9).toFixed(2)} GB/s); memory read ${mem.readGBps.toFixed(1)} GB/s`);
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
      const ctx: ScaleContext = { index, model, out, samples, seqLen, steps: o.steps ?? null, maxMemoryBytes: o.maxMemoryBytes ?? null };
      writeFileSync(file, `globalThis.layerDone = []; globalThis.stepDone = []; globalThis.t0 = performance.now();\n${m.script(ctx)}\n` +
        'const p = globalThis.plan;\n' +
        'process.stdout.write(JSON.stringify({ wall: (performance.now() - globalThis.t0) / 1000, layerDone: globalThis.layerDone, stepDone: globalThis.stepDone, ' +
        'trainSeconds: globalThis.trainSeconds ?? null, readSeconds: globalThis.readSeconds, writeSeconds: globalThis.writeSeconds, maxRss: process.resourceUsage().maxRSS * 1024, plan: p ? { fixedBytes: p.block.fixedBytes, ' +
        'storeBytes: p.block.storeBytes, storeRamBytes: p.block.storeRamBytes, keepSaved: p.endToEnd?.keepSaved, cachedBlocks: p.endToEnd?.cachedBlocks } : null }));');
      t0 = performance.now();
      const r = spawnSync(process.execPath, [file], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (r.status !== 0) throw new QuantformError('QF_INTERNAL', `bench scale ${name} failed (${r.status}): ${r.stderr.trim().split('\n').slice(-4).join(' | ')}`);
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
        wall: number; layerDone: number[]; stepDone: number[]; trainSeconds: number | null; readSeconds: number; writeSeconds: number; maxRss: number; plan: ScaleRun['plan'];
      };
      const per = res.layerDone.slice(1).map((t, i) => (t - res.layerDone[i]) / 1000);
      const steps = res.stepDone.slice(1).map((t, i) => (t - res.stepDone[i]) / 1000);
      const run: ScaleRun = {
        method: name, wallSeconds: res.wall, secondsPerBlock: per.length ? median(per) : res.wall,
        secondsPerStep: steps.length ? median(steps) : res.stepDone.length ? res.stepDone[0] / 1000 : null, trainSeconds: res.trainSeconds,
        readWaitSeconds: res.readSeconds, writeSeconds: res.writeSeconds, peakRssBytes: res.maxRss, outputBytes: dirBytes(out), plan: res.plan,
      };
      runs.push(run);
      // the machine limit again after each run (page cache and load change while others run): the median is reported
      reads.push(readAll(shards));
      log(`${name}: ${run.wallSeconds.toFixed(1)} s wall (${run.readWaitSeconds.toFixed(1)} s waiting for reads, ${run.writeSeconds.toFixed(1)} s writing), ${run.secondsPerBlock.toFixed(2)} s per ${m.unit ?? 'block'}` +
        `${run.secondsPerStep !== null ? `, ${run.secondsPerStep.toFixed(2)} s per training step` : ''}, peak RSS ${(run.peakRssBytes / 1e9).toFixed(2)} GB, ` +
        `output ${(run.outputBytes / 1e9).toFixed(2)} GB${run.plan?.keepSaved !== undefined ? ` (end-to-end: ${run.plan.keepSaved} of ${layers} blocks keep their saved activations, ${run.plan.cachedBlocks} cached)` : ''}`);
      rmSync(out, { recursive: true, force: true });
    }
    const readSeconds = median(reads);
    return {
      shape: { layers, dim: cfg.dim, hiddenDim: cfg.hiddenDim, heads: cfg.nHeads, vocab: cfg.vocabSize, dtype: 'BF16' },
      checkpointBytes: bytes, shards: shards.length, writeSeconds, readSeconds, readGBps: bytes / readSeconds / 1e9, memReadGBps: mem.readGBps,
      samples, seqLen, runs, skipped,
    };
  } finally {
    cleanup();
    process.off('exit', cleanup);
  }
}
