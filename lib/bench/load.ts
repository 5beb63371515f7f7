// Checkpoint load speed: quantform's loadModel on a synthetic TinyLlama-shaped F16
// GGUF and on the same model as sharded BF16 safetensors, next to node-llama-cpp
// loading the same GGUF (an optional peer: mmap, and with mmap off so it reads
// every byte as quantform does) and next to the machine's limits measured in the
// same run: one thread reading the file from the page cache, and the memory
// read / copy bandwidth (measureMachine). Every load runs in a fresh process with
// the page cache warm; medians over interleaved rounds. The files are written to
// a temp directory by the benchmark and removed after.
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { seededRandom } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { packageRoot } from '../native.js';
import { measureMachine } from './machine.js';
import { median } from './stats.js';
import { checkFreeDisk, checkpointBytes, tinyLlamaShape, writeSyntheticGguf, writeSyntheticHf } from './synthetic-files.js';

export interface LoadBenchOptions {
  /** transformer blocks of the TinyLlama shape (12: the 1.3 GB model of issue 9; 22: TinyLlama-1.1B). Default 12. */
  layers?: number;
  rounds?: number;
  /** where the files are written (default os.tmpdir()) */
  dir?: string;
  /** compare with node-llama-cpp when it is installed. Default true. */
  peer?: boolean;
  log?: (s: string) => void;
}

export interface LoadRow {
  name: string;
  /** median seconds */
  seconds: number;
  /** file bytes / seconds, GB/s */
  gbps: number;
  /** speed as a share of one thread reading the same file from the page cache */
  pctOfPageCacheRead: number;
}

export interface LoadBenchResult {
  shape: { layers: number; dim: number; hiddenDim: number; heads: number; kvHeads: number; vocab: number };
  fileBytes: number;
  rounds: number;
  machine: { pageCacheReadGBps: number; memReadGBps: number; memCopyGBps: number; threads: number };
  rows: LoadRow[];
  /** why node-llama-cpp did not run, when it did not */
  peerSkipped: string | null;
}

/** node-llama-cpp's entry, resolved from this package (an optional peer), or why it is missing. */
function llamaCppEntry(): string | { missing: string } {
  try {
    return createRequire(path.join(packageRoot(), 'package.json')).resolve('node-llama-cpp');
  } catch (e) {
    return { missing: `node-llama-cpp is not installed (${(e as Error).message.split('\n')[0]}); ` +
      'install it with `npm install --no-save --ignore-scripts node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1`' };
  }
}

/**
 * Times one load in a fresh Node process (what a CLI run sees: no heap left over
 * from an earlier load), the page cache warm. `body` is an ES module snippet that
 * defines `load()` returning a disposer; only load() is timed.
 */
function timeInChild(dir: string, body: string): number {
  const script = `${body}\nconst t0 = performance.now(); const done = await load(); const s = (performance.now() - t0) / 1000; await done(); ` +
    'process.stdout.write(JSON.stringify({ s }));';
  // a file, not -e: node-llama-cpp test-loads its binary in a child that inherits execArgv
  const file = path.join(dir, 'timed-load.mjs');
  writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new QuantformError('QF_INTERNAL', `bench load: a timed child process failed (${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { s: number }).s;
}

function shuffled<T>(xs: T[], seed: number): T[] {
  const out = [...xs];
  const rand = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** One thread reading `file` end to end through an 8 MiB buffer: what the page cache delivers to a plain reader. */
function pageCacheRead(file: string): number {
  const buf = Buffer.allocUnsafe(8 << 20);
  const fd = openSync(file, 'r');
  const t0 = performance.now();
  let n = 0;
  try {
    for (let r; (r = readSync(fd, buf, 0, buf.length, n)) > 0;) n += r;
  } finally {
    closeSync(fd);
  }
  return n / ((performance.now() - t0) / 1000) / 1e9;
}

export async function benchLoad(o: LoadBenchOptions = {}): Promise<LoadBenchResult> {
  const log = o.log ?? (() => {});
  const layers = o.layers ?? 12, rounds = o.rounds ?? 3;
  const cfg = tinyLlamaShape(layers);
  const bytes = checkpointBytes(cfg);
  const base = o.dir ?? os.tmpdir();
  checkFreeDisk(base, 2 * bytes);
  const dir = mkdtempSync(path.join(base, 'qf-bench-load-'));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', cleanup);
  try {
    const gguf = path.join(dir, 'model-f16.gguf'), hf = path.join(dir, 'hf-bf16');
    const t0 = performance.now();
    writeSyntheticGguf(gguf, cfg, 'F16');
    const shards = writeSyntheticHf(hf, cfg, 'BF16', Math.ceil(bytes / 3));
    const fileBytes = statSync(gguf).size;
    log(`wrote ${(fileBytes / 1e9).toFixed(2)} GB F16 GGUF and ${shards.length} BF16 safetensors shards (${layers} layers, hidden ${cfg.dim}, ` +
      `intermediate ${cfg.hiddenDim}, ${cfg.nHeads}/${cfg.nKvHeads} heads, vocab ${cfg.vocabSize}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const entry = o.peer === false ? { missing: 'disabled with --no-peer' } : llamaCppEntry();
    const index = JSON.stringify(pathToFileURL(path.join(packageRoot(), 'dist', 'index.js')).href);
    const hfBytes = shards.reduce((a, f) => a + statSync(path.join(hf, f)).size, 0);
    const loads: { name: string; bytes: number; body: string }[] = [
      { name: 'quantform loadModel, F16 GGUF', bytes: fileBytes,
        body: `const q = await import(${index}); const load = async () => { const m = await q.loadModel(${JSON.stringify(gguf)}); return () => m.dispose(); };` },
      { name: `quantform Model, BF16 safetensors (${shards.length} shards)`, bytes: hfBytes,
        body: `const q = await import(${index}); const tok = new q.ByteTokenizer(${cfg.vocabSize}); ` +
          `const load = async () => { const m = new q.Model(q.openCheckpoint(${JSON.stringify(hf)}), tok); return () => m.dispose(); };` },
    ];
    if (typeof entry === 'string')
      for (const mmap of [true, false])
        loads.push({ name: `node-llama-cpp loadModel, ${mmap ? 'mmap' : 'no mmap (reads every byte)'}`, bytes: fileBytes,
          body: `const { getLlama } = await import(${JSON.stringify(pathToFileURL(entry).href)}); ` +
            "const llama = await getLlama({ gpu: false, logLevel: 'error', build: 'never' }); " +
            `const load = async () => { const m = await llama.loadModel({ modelPath: ${JSON.stringify(gguf)}, gpuLayers: 0, useMmap: ${mmap} }); ` +
            'return async () => { await m.dispose(); await llama.dispose(); }; };' });
    const times = new Map<string, number[]>(loads.map((l) => [l.name, []]));
    const cacheReads: number[] = [];
    pageCacheRead(gguf);  // the page cache warm for every reader
    for (const f of shards) pageCacheRead(path.join(hf, f));
    for (const l of loads) timeInChild(dir, l.body);  // untimed: a VM's first touch of memory it has not used lately is slow for everyone
    for (let r = 0; r < rounds; r++) {
      cacheReads.push(pageCacheRead(gguf));
      // a fresh order every round (seeded): on a VM a load right after another
      // process freed gigabytes pays or saves page work that is not its own
      for (const l of shuffled(loads, r)) times.get(l.name)!.push(timeInChild(dir, l.body));
      log(`round ${r + 1}/${rounds}: ${loads.map((l) => `${l.name} ${times.get(l.name)![r].toFixed(2)} s`).join('; ')}`);
    }
    const lim = await measureMachine({ parts: ['read', 'copy'] });
    const cache = median(cacheReads);
    const rows: LoadRow[] = loads.map((l) => {
      const sec = median(times.get(l.name)!);
      return { name: l.name, seconds: sec, gbps: l.bytes / sec / 1e9, pctOfPageCacheRead: (100 * l.bytes / sec / 1e9) / cache };
    });
    return {
      shape: { layers, dim: cfg.dim, hiddenDim: cfg.hiddenDim, heads: cfg.nHeads, kvHeads: cfg.nKvHeads, vocab: cfg.vocabSize },
      fileBytes, rounds, machine: { pageCacheReadGBps: cache, memReadGBps: lim.readGBps, memCopyGBps: lim.copyGBps, threads: lim.threads },
      rows, peerSkipped: typeof entry === 'string' ? null : entry.missing,
    };
  } finally {
    cleanup();
    process.off('exit', cleanup);
  }
}
