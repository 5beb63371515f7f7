// `bench decode`: a model as a user runs it, side by side with the two peers a Node
// user would otherwise pick. A synthetic TinyLlama-shaped model (hidden 2048,
// intermediate 5632, 32/4 heads, vocab 32000; 12 and 22 layers) is quantized once
// to INT4 groups of 32, symmetric, f16 scales, every linear and the LM head, and
// written as GGUF (exportGguf: Q4_0, the same codes and scales bit for bit) and as
// ONNX (exportOnnx: MatMulNBits on the same codes). quantform and node-llama-cpp
// load the same GGUF file, onnxruntime-node the ONNX directory. Each engine runs in
// a fresh process per round (rounds interleaved, order shuffled per round), with
// the same threads and the same prompt: load time, prefill of 8 / 256 / 1024
// tokens, greedy decode of 64 tokens after a short prompt and after a 2048-token
// context. The memory read bandwidth is measured between the runs of every round,
// and decode's weight traffic (bytes of every linear and the head, once per token)
// is reported as a share of it, paired per round. Medians over rounds.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { backendInfo, setThreads } from '../backend.js';
import { seededRandom } from '../engine/calib.js';
import { QuantformError, invalidParameter, is } from '../errors.js';
import { generate } from '../eval/generate.js';
import { exportGguf } from '../export/gguf.js';
import { exportOnnx } from '../export/onnx.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { LINEAR_WEIGHTS, weightNames, weightShape, type LlamaConfig } from '../model/config.js';
import { loadModel } from '../model/model.js';
import type { MatmulAccuracy } from '../ops/matmul.js';
import { SyntheticCheckpoint } from '../model/synthetic.js';
import { packageRoot } from '../native.js';
import { quantize, type QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { measureMachine } from './machine.js';
import { loadOrt } from './matmul.js';
import { median } from './stats.js';
import { checkFreeDisk, syntheticVocab } from './synthetic-files.js';

export type DecodeEngine = 'quantform' | 'node-llama-cpp' | 'onnxruntime';
export const DECODE_ENGINES: readonly DecodeEngine[] = ['quantform', 'node-llama-cpp', 'onnxruntime'];

export interface DecodeBenchOptions {
  /** block counts of the TinyLlama shape to benchmark (default [12]) */
  layers?: number[];
  rounds?: number;
  threads?: number;
  /** prefill prompt lengths (default 8, 256, 1024) */
  prompts?: number[];
  /** greedy tokens per decode measurement (default 64) */
  decodeTokens?: number;
  /** context before the long decode measurement (default 2048; 0 skips it) */
  longContext?: number;
  /** engines to run (default all three; missing peers are reported and skipped) */
  engines?: DecodeEngine[];
  /**
   * Also run node-llama-cpp on one thread (default true when threads > 1): its thread
   * pool synchronizes by spinning, which collapses when another process takes one of
   * the cores, so on a shared machine its best number may be the one-thread one.
   */
  llamaCppSingleThread?: boolean;
  /** MatMulNBits accuracy_level of the ONNX export (default 4: int8 activations, onnxruntime's fastest CPU path) */
  ortAccuracyLevel?: number;
  /** quantform's matmul accuracies to run, one engine row each (default ['fp32']; see loadModel's accuracy) */
  accuracies?: MatmulAccuracy[];
  /** where the model files go (default a temp dir, removed after); with keep, files found there are reused */
  dir?: string;
  keep?: boolean;
  /** other shapes (tests): merged into the TinyLlama shape */
  shape?: Partial<Pick<LlamaConfig, 'dim' | 'hiddenDim' | 'nHeads' | 'nKvHeads' | 'vocabSize'>>;
  log?: (s: string) => void;
}

/** What one engine measured in one process (one round). */
export interface EngineRun {
  engine: DecodeEngine;
  loadSeconds: number;
  /** prompt length -> seconds of its prefill */
  prefillSeconds: Record<string, number>;
  /** seconds per greedy token after the short prompt / after the long context (null: not run) */
  decodeShortSeconds: number;
  decodeLongSeconds: number | null;
  /** what ran: kernel paths, thread counts, cache types (engine-specific words) */
  path: string;
}

export interface EngineSummary {
  engine: DecodeEngine;
  /** the engine and its thread count, e.g. 'node-llama-cpp, 1 thread' */
  label: string;
  threads: number;
  /** why it did not run, when it did not */
  skipped: string | null;
  path: string;
  loadSeconds: number;
  prefillTokensPerSecond: Record<string, number>;
  decodeShortTokensPerSecond: number;
  decodeLongTokensPerSecond: number | null;
  /** weight bytes per token x tokens/s over the read bandwidth of the same round, median over rounds, % */
  decodeShortPctOfRead: number;
  decodeLongPctOfRead: number | null;
}

export interface DecodeModelResult {
  layers: number;
  params: number;
  /** bytes of every linear and the LM head at INT4 g32 with f16 scales: what one decode step must read */
  weightBytesPerToken: number;
  fileBytes: { gguf: number; onnx: number };
  engines: EngineSummary[];
}

export interface DecodeBenchResult {
  shape: { dim: number; hiddenDim: number; heads: number; kvHeads: number; vocab: number };
  threads: number;
  rounds: number;
  prompts: number[];
  decodeTokens: number;
  longContext: number;
  machine: { cpu: string; tier: string; readGBps: number[]; readGBpsMedian: number; loadAverage: number[] };
  models: DecodeModelResult[];
}

/** What a child process is told to run. */
export interface ChildSpec {
  engine: DecodeEngine;
  /** quantform's matmul accuracy (quantform only; default fp32) */
  accuracy?: MatmulAccuracy;
  gguf: string;
  onnxDir: string;
  threads: number;
  prompt: number[];
  prompts: number[];
  decodeTokens: number;
  longContext: number;
  maxSeq: number;
  config: { nLayers: number; nKvHeads: number; headDim: number; vocabSize: number };
}

const QUANT = { bits: 4, groupSize: 32, symmetric: true, paramDtype: 'f16' } as const;

/** The benchmark's model: TinyLlama's shape with `layers` blocks, context 4096 (room for 2048 + the decoded tokens). */
export function decodeBenchConfig(layers: number, shape: DecodeBenchOptions['shape'] = {}): LlamaConfig {
  return new SyntheticCheckpoint({ dim: 2048, hiddenDim: 5632, nHeads: 32, nKvHeads: 4, vocabSize: 32000, ...shape, nLayers: layers, maxSeq: 4096, seed: 13 }).config;
}

/** Bytes one decode step reads: every linear and the head as INT4 codes plus one f16 scale per 32 weights. */
export function int4WeightBytes(cfg: LlamaConfig): number {
  const names = [...weightNames(cfg).filter((n) => LINEAR_WEIGHTS.some((w) => n.endsWith(`.${w}`))), 'lm_head'];
  return names.reduce((a, n) => {
    const [N, K] = weightShape(cfg, n);
    return a + N * (Math.ceil(K / 2) + 2 * Math.ceil(K / QUANT.groupSize));
  }, 0);
}

/**
 * A synthetic checkpoint whose linears and LM head are quantized (INT4 g32 sym, f16
 * scales), each once: both exporters read the same QuantizedTensors.
 */
function quantizedSynthetic(cfg: LlamaConfig): Checkpoint {
  const base = new SyntheticCheckpoint({ dim: cfg.dim, hiddenDim: cfg.hiddenDim, nLayers: cfg.nLayers, nHeads: cfg.nHeads, nKvHeads: cfg.nKvHeads,
    vocabSize: cfg.vocabSize, maxSeq: cfg.maxSeq, seed: 13 });
  const cache = new Map<string, QuantizedTensor>();
  const isLinear = (name: string) => name === 'lm_head' || LINEAR_WEIGHTS.some((w) => name.endsWith(`.${w}`));
  return {
    format: 'memory', path: 'synthetic:bench-decode', config: base.config,
    weight: (name) => base.weight(name),
    quantizedWeight: (name) => {
      if (!isLinear(name)) return null;
      let q = cache.get(name);
      if (!q) {
        q = quantize(new Tensor(base.weight(name), weightShape(base.config, name)), QUANT);
        cache.set(name, q);
      }
      return q;
    },
    tokenizer: () => base.tokenizer(),
    close: () => cache.clear(),
  };
}

interface ModelFiles { gguf: string; onnxDir: string; ggufBytes: number; onnxBytes: number }

async function writeModelFiles(dir: string, cfg: LlamaConfig, ortLevel: number, reuse: boolean, log: (s: string) => void): Promise<ModelFiles> {
  const gguf = path.join(dir, 'model-q4_0.gguf'), onnxDir = path.join(dir, `onnx-l${ortLevel}`), done = path.join(dir, `files-l${ortLevel}.json`);
  const key = JSON.stringify({ v: 1, cfg, QUANT, ortLevel });
  if (reuse && existsSync(done)) {
    const f = JSON.parse(readFileSync(done, 'utf8')) as ModelFiles & { key: string };
    if (f.key === key && existsSync(gguf) && existsSync(onnxDir)) {
      log(`reusing the model files in ${dir}`);
      return { gguf, onnxDir, ggufBytes: f.ggufBytes, onnxBytes: f.onnxBytes };
    }
  }
  rmSync(gguf, { force: true });
  rmSync(onnxDir, { recursive: true, force: true });
  const t0 = performance.now();
  const ck = quantizedSynthetic(cfg);
  try {
    const vocab = syntheticVocab(cfg.vocabSize);
    const g = await exportGguf(ck, gguf, { vocab });
    const o = await exportOnnx(ck, onnxDir, { vocab, accuracyLevel: ortLevel as 0 | 1 | 2 | 3 | 4 });
    const files: ModelFiles = { gguf, onnxDir, ggufBytes: g.bytes, onnxBytes: o.bytes };
    writeFileSync(done, JSON.stringify({ ...files, key }));
    log(`wrote ${(g.bytes / 1e9).toFixed(2)} GB GGUF (Q4_0) and ${(o.bytes / 1e9).toFixed(2)} GB ONNX (MatMulNBits, accuracy_level ${ortLevel}) ` +
      `of the same INT4 g32 weights in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    return files;
  } finally {
    ck.close();
  }
}

/** A package's entry: from quantform's own dependencies, else from test/peers (a clone with the test peers installed). */
export function peerEntry(name: string): string | { missing: string } {
  for (const from of [packageRoot(), path.join(packageRoot(), 'test', 'peers')]) {
    try {
      return createRequire(path.join(from, 'package.json')).resolve(name);
    } catch {
      // try the next place
    }
  }
  return { missing: `${name} is not installed (neither a dependency of quantform nor in test/peers)` };
}

function argmax(v: Float32Array, off = 0, n = v.length): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (v[off + i] > v[off + best]) best = i;
  return best;
}

// ---------------------------------------------------------------------------
// Engines (each runs in its own child process: runChild)
// ---------------------------------------------------------------------------

async function runQuantform(s: ChildSpec): Promise<EngineRun> {
  setThreads(s.threads);
  const t0 = performance.now();
  const m = await loadModel(s.gguf, { maxSeq: s.maxSeq, accuracy: s.accuracy ?? 'fp32' });
  const loadSeconds = (performance.now() - t0) / 1000;
  try {
    m.forward(s.prompt.slice(0, 8), { lastOnly: true });  // first touch of the workspaces
    const prefillSeconds: Record<string, number> = {};
    for (const T of s.prompts) {
      const p0 = performance.now();
      m.forward(s.prompt.slice(0, T), { lastOnly: true });
      prefillSeconds[T] = (performance.now() - p0) / 1000;
    }
    // greedy decode through the user API: the first token comes from the prefill, the next ones are timed
    const decode = async (ctx: number): Promise<number> => {
      let n = 0, start = 0;
      for await (const _ of generate(m, s.prompt.slice(0, ctx), { maxTokens: s.decodeTokens + 1, temperature: 0, stopAtEos: false })) {
        if (n++ === 0) start = performance.now();
      }
      return (performance.now() - start) / 1000 / s.decodeTokens;
    };
    const decodeShortSeconds = await decode(8);
    const decodeLongSeconds = s.longContext > 0 ? await decode(s.longContext) : null;
    const info = backendInfo();
    return { engine: 'quantform', loadSeconds, prefillSeconds, decodeShortSeconds, decodeLongSeconds,
      path: `tier ${info.tier}, ${info.threads} threads, accuracy ${s.accuracy ?? 'fp32'}` };
  } finally {
    m.dispose();
  }
}

interface LlamaCppModule {
  getLlama(o: { gpu: false; build: 'never'; logLevel: unknown; progressLogs: boolean }): Promise<LlamaCpp>;
  LlamaLogLevel: { error: unknown };
}
interface LlamaCpp {
  loadModel(o: { modelPath: string; gpuLayers: number }): Promise<LlamaCppModel>;
  dispose(): Promise<void>;
  readonly cpuMathCores: number;
}
interface LlamaCppModel {
  createContext(o: { contextSize: number; threads: number; sequences: number; batchSize: number }): Promise<LlamaCppContext>;
  dispose(): Promise<void>;
}
interface LlamaCppContext {
  getSequence(): LlamaCppSequence;
  readonly flashAttention: boolean;
  dispose(): Promise<void>;
}
interface LlamaCppSequence {
  clearHistory(): Promise<void>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], o: { temperature: number }): AsyncGenerator<number>;
}

async function runLlamaCpp(s: ChildSpec): Promise<EngineRun> {
  const entry = peerEntry('node-llama-cpp');
  if (typeof entry !== 'string') throw new QuantformError('QF_UNSUPPORTED', entry.missing);
  const mod = (await import(pathToFileURL(entry).href)) as LlamaCppModule;
  const llama = await mod.getLlama({ gpu: false, build: 'never', logLevel: mod.LlamaLogLevel.error, progressLogs: false });
  try {
    const t0 = performance.now();
    const model = await llama.loadModel({ modelPath: s.gguf, gpuLayers: 0 });
    const loadSeconds = (performance.now() - t0) / 1000;
    // one batch holds the longest prompt (llama.cpp still splits it into micro-batches of 512)
    const ctx = await model.createContext({ contextSize: s.maxSeq, threads: s.threads, sequences: 1,
      batchSize: Math.max(512, ...s.prompts, s.longContext) });
    try {
      const seq = ctx.getSequence();
      await seq.evaluateWithoutGeneratingNewTokens(s.prompt.slice(0, 8));
      const prefillSeconds: Record<string, number> = {};
      for (const T of s.prompts) {
        await seq.clearHistory();
        const p0 = performance.now();
        await seq.evaluateWithoutGeneratingNewTokens(s.prompt.slice(0, T));
        prefillSeconds[T] = (performance.now() - p0) / 1000;
      }
      const decode = async (n: number): Promise<number> => {
        await seq.clearHistory();
        let k = 0, start = 0;
        for await (const _ of seq.evaluate(s.prompt.slice(0, n), { temperature: 0 })) {
          if (k++ === 0) start = performance.now();
          if (k > s.decodeTokens) break;
        }
        return (performance.now() - start) / 1000 / s.decodeTokens;
      };
      const decodeShortSeconds = await decode(8);
      const decodeLongSeconds = s.longContext > 0 ? await decode(s.longContext) : null;
      return { engine: 'node-llama-cpp', loadSeconds, prefillSeconds, decodeShortSeconds, decodeLongSeconds,
        path: `llama.cpp CPU (prebuilt), ${s.threads} threads, KV cache F16, flash attention ${ctx.flashAttention ? 'on' : 'off'}` };
    } finally {
      await ctx.dispose();
      await model.dispose();
    }
  } finally {
    await llama.dispose();
  }
}

interface OrtValue { data: Float32Array; dims: readonly number[] }
interface OrtDecodeModule {
  Tensor: new (type: string, data: BigInt64Array | Float32Array, dims: number[]) => OrtValue;
  InferenceSession: { create(file: string, o: Record<string, unknown>): Promise<OrtDecodeSession> };
}
interface OrtDecodeSession {
  run(feeds: Record<string, OrtValue>): Promise<Record<string, OrtValue>>;
  release(): Promise<void>;
}

async function runOrt(s: ChildSpec): Promise<EngineRun> {
  const found = await loadOrt();
  if (typeof found === 'string') throw new QuantformError('QF_UNSUPPORTED', found);
  const ort = found as unknown as OrtDecodeModule;
  const { nLayers, nKvHeads, headDim, vocabSize: V } = s.config;
  const file = path.join(s.onnxDir, 'onnx', 'model_q4.onnx');
  const t0 = performance.now();
  const sess = await ort.InferenceSession.create(file, { intraOpNumThreads: s.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const loadSeconds = (performance.now() - t0) / 1000;
  const i64 = (xs: number[]) => BigInt64Array.from(xs, (x) => BigInt(x));
  // one forward of `ids` after `past` (null: empty cache); returns the last position's argmax and the new cache
  const step = async (ids: number[], pastLen: number, past: Record<string, OrtValue> | null) => {
    const T = ids.length;
    const feeds: Record<string, OrtValue> = {
      input_ids: new ort.Tensor('int64', i64(ids), [1, T]),
      attention_mask: new ort.Tensor('int64', i64(new Array<number>(pastLen + T).fill(1)), [1, pastLen + T]),
      position_ids: new ort.Tensor('int64', i64(Array.from({ length: T }, (_, i) => pastLen + i)), [1, T]),
    };
    for (let l = 0; l < nLayers; l++)
      for (const kv of ['key', 'value'])
        feeds[`past_key_values.${l}.${kv}`] = past ? past[`present.${l}.${kv}`] : new ort.Tensor('float32', new Float32Array(0), [1, nKvHeads, 0, headDim]);
    const out = await sess.run(feeds);
    const logits = out.logits;
    return { next: argmax(logits.data, (T - 1) * V, V), cache: out };
  };
  try {
    await step(s.prompt.slice(0, 8), 0, null);
    const prefillSeconds: Record<string, number> = {};
    for (const T of s.prompts) {
      const p0 = performance.now();
      await step(s.prompt.slice(0, T), 0, null);
      prefillSeconds[T] = (performance.now() - p0) / 1000;
    }
    const decode = async (n: number): Promise<number> => {
      let r = await step(s.prompt.slice(0, n), 0, null);
      const start = performance.now();
      for (let i = 0; i < s.decodeTokens; i++) r = await step([r.next], n + i, r.cache);
      return (performance.now() - start) / 1000 / s.decodeTokens;
    };
    const decodeShortSeconds = await decode(8);
    const decodeLongSeconds = s.longContext > 0 ? await decode(s.longContext) : null;
    return { engine: 'onnxruntime', loadSeconds, prefillSeconds, decodeShortSeconds, decodeLongSeconds,
      path: `onnxruntime-node CPU EP, ${s.threads} intra-op threads, MatMulNBits, fp32 KV cache through the JS API` };
  } finally {
    await sess.release();
  }
}

/** Runs one engine as the child process of a round (spec from a file); prints its EngineRun as JSON. */
export async function runChild(specFile: string): Promise<EngineRun> {
  const s = JSON.parse(readFileSync(specFile, 'utf8')) as ChildSpec;
  if (s.engine === 'quantform') return runQuantform(s);
  if (s.engine === 'node-llama-cpp') return runLlamaCpp(s);
  return runOrt(s);
}

/** Why an engine cannot run here (null: it can). */
async function engineMissing(e: DecodeEngine): Promise<string | null> {
  if (e === 'quantform') return null;
  if (e === 'node-llama-cpp') {
    const entry = peerEntry('node-llama-cpp');
    return typeof entry === 'string' ? null : `${entry.missing}; install it with \`npm ci --prefix test/peers --omit=optional --ignore-scripts\` ` +
      'or `npm i -E --omit=optional node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1`';
  }
  const ort = await loadOrt();
  return typeof ort === 'string' ? ort : null;
}

function runInChild(dir: string, spec: ChildSpec): EngineRun | string {
  const file = path.join(dir, `spec-${spec.engine}-${spec.threads}.json`);
  writeFileSync(file, JSON.stringify(spec));
  const cli = path.join(packageRoot(), 'dist', 'cli.js');
  const r = spawnSync(process.execPath, [cli, 'bench', 'decode', '--child', file], { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.status !== 0) return `${spec.engine} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as EngineRun;
}

function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const out = [...xs];
  const rand = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

interface Variant { engine: DecodeEngine; threads: number; label: string; accuracy?: MatmulAccuracy }

function checkOptions(o: DecodeBenchOptions) {
  const layers = o.layers ?? [12];
  if (!Array.isArray(layers) || layers.length === 0 || !layers.every((l) => is.positiveInteger(l)))
    throw invalidParameter('non-empty array of positive integers', 'layers', layers);
  const rounds = o.rounds ?? 3, threads = o.threads ?? 2, decodeTokens = o.decodeTokens ?? 64, longContext = o.longContext ?? 2048;
  if (!is.positiveInteger(rounds)) throw invalidParameter('positive integer', 'rounds', rounds);
  if (!is.positiveInteger(threads)) throw invalidParameter('positive integer', 'threads', threads);
  if (!is.positiveInteger(decodeTokens)) throw invalidParameter('positive integer', 'decodeTokens', decodeTokens);
  if (!is.nonNegativeInteger(longContext)) throw invalidParameter('non-negative integer', 'longContext', longContext);
  const prompts = o.prompts ?? [8, 256, 1024];
  if (!Array.isArray(prompts) || !prompts.every((p) => is.positiveInteger(p) && p >= 8)) throw invalidParameter('array of integers >= 8', 'prompts', prompts);
  const maxSeq = 4096;
  if (Math.max(...prompts, longContext) + decodeTokens + 1 > maxSeq)
    throw invalidParameter(`prompts and longContext + decodeTokens below the context of ${maxSeq}`, 'longContext', longContext);
  const engines = o.engines ?? [...DECODE_ENGINES];
  if (!Array.isArray(engines) || engines.length === 0 || !engines.every((e) => DECODE_ENGINES.includes(e)))
    throw invalidParameter(`non-empty array of ${DECODE_ENGINES.join(', ')}`, 'engines', engines);
  const ortLevel = o.ortAccuracyLevel ?? 4;
  const accuracies = o.accuracies ?? ['fp32'];
  if (!Array.isArray(accuracies) || accuracies.length === 0 || !accuracies.every((a) => is.oneOf(a, ['fp32', 'bf16', 'int8'] as const)))
    throw invalidParameter("non-empty array of 'fp32', 'bf16', 'int8'", 'accuracies', accuracies);
  const tn = `${threads} thread${threads > 1 ? 's' : ''}`;
  // fp32 first: the ratio rows compare against the first quantform row
  const order = [...new Set(accuracies)].sort((a, b) => Number(b === 'fp32') - Number(a === 'fp32'));
  const variants: Variant[] = engines.flatMap((e): Variant[] => e === 'quantform'
    ? order.map((a) => ({ engine: e, threads, accuracy: a, label: a === 'fp32' ? `quantform, ${tn}` : `quantform ${a}, ${tn}` }))
    : [{ engine: e, threads, label: `${e}, ${tn}` }]);
  if (engines.includes('node-llama-cpp') && threads > 1 && o.llamaCppSingleThread !== false)
    variants.splice(variants.findIndex((v) => v.engine === 'node-llama-cpp') + 1, 0, { engine: 'node-llama-cpp', threads: 1, label: 'node-llama-cpp, 1 thread' });
  if (![0, 1, 2, 3, 4].includes(ortLevel)) throw invalidParameter('integer in [0, 4]', 'ortAccuracyLevel', ortLevel);
  return { layers, rounds, threads, decodeTokens, longContext, prompts, maxSeq, engines, variants, ortLevel };
}

export async function benchDecode(o: DecodeBenchOptions = {}): Promise<DecodeBenchResult> {
  const log = o.log ?? (() => {});
  const c = checkOptions(o);
  const info = backendInfo();
  setThreads(c.threads);
  const base = o.dir ?? os.tmpdir();
  mkdirSync(base, { recursive: true });
  const work = o.keep ? base : mkdtempSync(path.join(base, 'qf-bench-decode-'));
  const cleanup = () => { if (!o.keep) rmSync(work, { recursive: true, force: true }); };
  process.once('exit', cleanup);
  const reads: number[] = [];
  const probe = async () => {
    const r = (await measureMachine({ parts: ['read'], reps: 3 })).readGBps;
    reads.push(r);
    return r;
  };
  try {
    const missing = new Map<DecodeEngine, string>();
    for (const e of c.engines) {
      const why = await engineMissing(e);
      if (why) {
        missing.set(e, why);
        log(`${e}: skipped: ${why}`);
      }
    }
    const runnable = c.variants.filter((v) => !missing.has(v.engine));
    const models: DecodeModelResult[] = [];
    for (const layers of c.layers) {
      const cfg = decodeBenchConfig(layers, o.shape);
      const dir = path.join(work, `tinyllama-${layers}l${o.shape ? `-${cfg.dim}` : ''}`);
      mkdirSync(dir, { recursive: true });
      checkFreeDisk(dir, 3 * int4WeightBytes(cfg) + 8 * cfg.vocabSize * cfg.dim);
      const files = await writeModelFiles(dir, cfg, c.ortLevel, o.keep === true, log);
      const rand = seededRandom(layers);
      const prompt = Array.from({ length: Math.max(...c.prompts, c.longContext, 8) }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)));
      const runs = new Map<string, { run: EngineRun; read: number }[]>(runnable.map((v) => [v.label, []]));
      const failed = new Map<string, string>();
      for (let r = 0; r < c.rounds; r++) {
        for (const v of shuffled(runnable, 1000 * layers + r)) {
          const e = v.label;
          if (failed.has(e)) continue;
          const read = await probe();
          const res = runInChild(dir, { engine: v.engine, accuracy: v.accuracy, gguf: files.gguf, onnxDir: files.onnxDir, threads: v.threads, prompt, prompts: c.prompts,
            decodeTokens: c.decodeTokens, longContext: c.longContext, maxSeq: c.maxSeq,
            config: { nLayers: cfg.nLayers, nKvHeads: cfg.nKvHeads, headDim: cfg.headDim, vocabSize: cfg.vocabSize } });
          if (typeof res === 'string') {
            failed.set(e, res);
            log(`${layers} layers, round ${r + 1}: ${res}`);
            continue;
          }
          runs.get(e)!.push({ run: res, read });
          log(`${layers} layers, round ${r + 1}/${c.rounds}, ${e}: load ${res.loadSeconds.toFixed(2)} s, ` +
            `prefill ${c.prompts.map((T) => `${T}: ${(T / res.prefillSeconds[T]).toFixed(0)}`).join(' ')} tok/s, ` +
            `decode ${(1 / res.decodeShortSeconds).toFixed(1)}${res.decodeLongSeconds ? ` / ${(1 / res.decodeLongSeconds).toFixed(1)} at ${c.longContext}` : ''} tok/s ` +
            `(read ${read.toFixed(1)} GB/s)`);
        }
      }
      const wb = int4WeightBytes(cfg);
      const engines: EngineSummary[] = c.variants.map((v) => {
        const rs = runs.get(v.label) ?? [];
        const skipped = missing.get(v.engine) ?? failed.get(v.label) ?? (rs.length === 0 ? 'no run completed' : null);
        const pct = (sec: number, read: number) => (100 * wb) / sec / 1e9 / read;
        const long = rs.every((x) => x.run.decodeLongSeconds !== null) && rs.length > 0;
        return {
          engine: v.engine, label: v.label, threads: v.threads, skipped, path: rs[0]?.run.path ?? '',
          loadSeconds: rs.length ? median(rs.map((x) => x.run.loadSeconds)) : NaN,
          prefillTokensPerSecond: Object.fromEntries(c.prompts.map((T) => [String(T), rs.length ? median(rs.map((x) => T / x.run.prefillSeconds[T])) : NaN])),
          decodeShortTokensPerSecond: rs.length ? median(rs.map((x) => 1 / x.run.decodeShortSeconds)) : NaN,
          decodeLongTokensPerSecond: long ? median(rs.map((x) => 1 / x.run.decodeLongSeconds!)) : null,
          decodeShortPctOfRead: rs.length ? median(rs.map((x) => pct(x.run.decodeShortSeconds, x.read))) : NaN,
          decodeLongPctOfRead: long ? median(rs.map((x) => pct(x.run.decodeLongSeconds!, x.read))) : null,
        };
      });
      const params = weightNames(cfg).reduce((a, n) => a + weightShape(cfg, n).reduce((x, y) => x * y, 1), 0);
      models.push({ layers, params, weightBytesPerToken: wb, fileBytes: { gguf: files.ggufBytes, onnx: files.onnxBytes }, engines });
    }
    await probe();
    const cfg = decodeBenchConfig(1, o.shape);
    return {
      shape: { dim: cfg.dim, hiddenDim: cfg.hiddenDim, heads: cfg.nHeads, kvHeads: cfg.nKvHeads, vocab: cfg.vocabSize },
      threads: c.threads, rounds: c.rounds, prompts: c.prompts, decodeTokens: c.decodeTokens, longContext: c.longContext,
      machine: { cpu: info.cpu, tier: info.tier, readGBps: reads, readGBpsMedian: median(reads), loadAverage: os.loadavg() },
      models,
    };
  } finally {
    cleanup();
    process.off('exit', cleanup);
  }
}
