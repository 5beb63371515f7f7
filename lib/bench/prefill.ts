// quantform bench prefill: prefill (T tokens, logits of the last one) and decode of a synthetic
// TinyLlama-shaped model (hidden 2048, intermediate 5632, 32/4 heads, vocab 32000; `layers` of
// its 22) in four forms, in one process, interleaved rounds, medians:
//   fp32             quantform's fp32 model (the engine's GEMM)
//   W4A16 g32        INT4 g32 symmetric weights (RTN) on the dequant-matmul kernels, fp32 activations
//   W4A8KV8 g32      the same weights, FPTQuant's static INT8 activations and KV cache (S_n on): the
//                    int8 x int4 VNNI kernels, activations quantized in the epilogues that produce them
//   W4A8KV8 channel  FPTQuant's default per-output-channel weights, otherwise the same
//   llama.cpp Q4_0   node-llama-cpp (test/peers) on the GGUF exportGguf writes from the same g32
//                    weights (Q4_0 is INT4 g32 symmetric: exact), 2 threads
// Speed only: the static scales are fixed plausible values (quality is bench fptquant's). The machine's
// fp32 FMA, int8 VNNI and int8 AMX peaks are measured in the same run; each row's linears (their
// multiply-adds over the whole prefill time: a lower bound) against the peak of the units they run on.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { QuantformError } from '../errors.js';
import { exportGguf } from '../export/gguf.js';
import { quantizeCheckpointRtn } from '../methods/quantize-model.js';
import type { Checkpoint } from '../model/checkpoint.js';
import type { ActivationQuant } from '../model/fpt.js';
import { Model, openCheckpoint } from '../model/model.js';
import { SyntheticCheckpoint } from '../model/synthetic.js';
import { packageRoot } from '../native.js';
import type { SpmVocab } from '../export/vocab.js';
import { measureMachineSync } from './machine.js';
import { median } from './stats.js';

export interface PrefillBenchOptions {
  /** TinyLlama layers to build (default 4: the linears dominate; the ratios are per layer) */
  layers?: number;
  /** prompt tokens (default 512) */
  tokens?: number;
  /** decode steps after the prompt (default 16) */
  decode?: number;
  rounds?: number;
  /** compare with llama.cpp (node-llama-cpp in test/peers). Default true. */
  peer?: boolean;
  dir?: string;
  log?: (s: string) => void;
}

export interface PrefillRow {
  name: string;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  decodeSecondsPerToken: number;
  /** the machine limit its linears run against: fp32 FMA, int8 VNNI or int8 AMX (null: a peer) */
  peak: 'fma' | 'vnni' | 'amx' | null;
}

export interface PrefillBenchResult {
  layers: number;
  tokens: number;
  rows: PrefillRow[];
  fmaGflops: number;
  vnniGops: number | null;
  /** int8 AMX peak of the same run; null without AMX-INT8 */
  amxInt8Gops: number | null;
  /** multiply-add ops (2 per MAC) of the linears of one prefill, LM head of the last token included */
  linearOps: number;
  loadAverage: number[];
  peerSkipped?: string;
}

/** A byte-fallback vocabulary for llama.cpp (<unk> <s> </s>, 256 bytes, word pieces): the model is random, only its size matters. */
function syntheticVocab(V: number): SpmVocab {
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)];
  for (let i = tokens.length; i < V; i++) tokens.push(`\u2581w${i}`);
  return {
    tokens, scores: Float32Array.from({ length: V }, (_, i) => -i), types: Uint8Array.from({ length: V }, (_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1)),
    bosId: 1, eosId: 2, unkId: 0, padId: null, addBos: true, addEos: false, addSpacePrefix: true, source: 'synthetic',
  };
}

/** A checkpoint with FPTQuant's run-time part added (speed only: fixed static scales). */
function withStaticScales(ck: Checkpoint): Checkpoint {
  const c = ck.config, L = c.nLayers;
  const aq: ActivationQuant = {
    actBits: 8, kvBits: 8, residualScaling: true, hadamardBlock: 0, residualRotation: false,
    actScales: new Float32Array(L * 4).fill(4 / 127), kvScales: new Float32Array(L * 2 * c.nKvHeads).fill(3 / 127),
  };
  return Object.assign(Object.create(Object.getPrototypeOf(ck)) as Checkpoint, ck, { activationQuant: () => aq });
}

interface Runner {
  name: string;
  prefill(tokens: number[]): Promise<void>;
  decode(tokens: number[], steps: number): Promise<number>;
  dispose(): Promise<void>;
}

function quantformRunner(name: string, m: Model): Runner {
  return {
    name,
    prefill: async (t) => { m.forward(t, { lastOnly: true }); },
    decode: async (t, steps) => {
      m.forward(t, { lastOnly: true });
      const t0 = performance.now();
      for (let s = 0; s < steps; s++) m.forward([t[s % t.length]], { pos0: t.length + s, lastOnly: true });
      return (performance.now() - t0) / 1000 / steps;
    },
    dispose: async () => m.dispose(),
  };
}

interface LlamaPeer {
  getLlama(o: Record<string, unknown>): Promise<{
    loadModel(o: Record<string, unknown>): Promise<{
      createContext(o: Record<string, unknown>): Promise<{
        getSequence(): {
          evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
          clearHistory(): Promise<void>;
        };
        dispose(): Promise<void>;
      }>;
      dispose(): Promise<void>;
    }>;
    dispose(): Promise<void>;
  }>;
  LlamaLogLevel: { error: unknown };
}

async function llamaRunner(gguf: string, ctxSize: number, batch: number): Promise<Runner | string> {
  let entry: string;
  try {
    entry = createRequire(path.join(packageRoot(), 'test', 'peers', 'package.json')).resolve('node-llama-cpp');
  } catch {
    return 'node-llama-cpp is not installed in test/peers (npm ci --prefix test/peers --omit=optional --ignore-scripts)';
  }
  const peer = (await import(pathToFileURL(entry).href)) as LlamaPeer;
  const llama = await peer.getLlama({ gpu: false, build: 'never', logLevel: peer.LlamaLogLevel.error, progressLogs: false });
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const ctx = await model.createContext({ contextSize: ctxSize, batchSize: batch, threads: { ideal: 2, min: 2 }, sequences: 1 });
  const seq = ctx.getSequence();
  return {
    name: 'llama.cpp Q4_0 (node-llama-cpp)',
    prefill: async (t) => {
      await seq.clearHistory();
      await seq.evaluateWithoutGeneratingNewTokens(t);
    },
    decode: async (t, steps) => {
      await seq.clearHistory();
      await seq.evaluateWithoutGeneratingNewTokens(t);
      const t0 = performance.now();
      for (let s = 0; s < steps; s++) await seq.evaluateWithoutGeneratingNewTokens([t[s % t.length]]);
      return (performance.now() - t0) / 1000 / steps;
    },
    dispose: async () => {
      await ctx.dispose();
      await model.dispose();
      await llama.dispose();
    },
  };
}

export async function benchPrefill(o: PrefillBenchOptions = {}): Promise<PrefillBenchResult> {
  const log = o.log ?? (() => {});
  const layers = o.layers ?? 4, T = o.tokens ?? 512, steps = o.decode ?? 16, rounds = o.rounds ?? 5;
  if (!(layers >= 1 && layers <= 22) || !(T >= 1 && T <= 1024) || !(steps >= 1) || !(rounds >= 1))
    throw new QuantformError('QF_INVALID_ARGUMENT', `Expected 1 <= layers <= 22, 1 <= tokens <= 1024, decode >= 1, rounds >= 1 but received ${layers}, ${T}, ${steps}, ${rounds}`);
  const syn = { dim: 2048, hiddenDim: 5632, nLayers: layers, nHeads: 32, nKvHeads: 4, vocabSize: 32000, maxSeq: 2048, seed: 3 };
  const base = o.dir ?? os.tmpdir();
  const dir = mkdtempSync(path.join(base, 'qf-bench-prefill-'));
  const runners: Runner[] = [];
  let peerSkipped: string | undefined;
  try {
    const t0 = performance.now();
    const g32 = path.join(dir, 'w4g32'), pc = path.join(dir, 'w4pc');
    await quantizeCheckpointRtn(new SyntheticCheckpoint(syn), g32, { bits: 4, groupSize: 32, symmetric: true });
    await quantizeCheckpointRtn(new SyntheticCheckpoint(syn), pc, { bits: 4, groupSize: 1 << 20, symmetric: true });
    log(`built ${layers}-layer TinyLlama-shaped INT4 checkpoints (g32 and per-channel, RTN symmetric) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const maxSeq = T + steps + 1;
    const fp = new SyntheticCheckpoint(syn), tok = await fp.tokenizer();
    runners.push(quantformRunner('quantform fp32', new Model(fp, tok, { maxSeq })));
    runners.push(quantformRunner('quantform W4A16 g32', new Model(openCheckpoint(g32), tok, { maxSeq })));
    runners.push(quantformRunner('quantform W4A8KV8 g32 (FPTQuant kernels)', new Model(withStaticScales(openCheckpoint(g32)), tok, { maxSeq })));
    runners.push(quantformRunner('quantform W4A8KV8 per-channel (FPTQuant default)', new Model(withStaticScales(openCheckpoint(pc)), tok, { maxSeq })));
    if (o.peer !== false) {
      const gguf = path.join(dir, 'q4_0.gguf');
      const r = await exportGguf(g32, gguf, { exact: true, vocab: syntheticVocab(syn.vocabSize) });
      if (!r.tensors.filter((t) => /layers/.test(t.name) && !/norm/.test(t.name)).every((t) => t.type === 'Q4_0'))
        throw new QuantformError('QF_INTERNAL', 'bench prefill: the GGUF export did not write Q4_0 for every linear');
      const lr = existsSync(gguf) ? await llamaRunner(gguf, maxSeq + 8, T) : 'the GGUF was not written';
      if (typeof lr === 'string') peerSkipped = lr;
      else runners.push(lr);
    } else peerSkipped = 'disabled with --no-peer';
    const prompt = Array.from({ length: T }, (_, t) => 3 + ((t * 7919) % 31000));
    const pre = new Map<string, number[]>(), dec = new Map<string, number[]>();
    for (const r of runners) {
      await r.prefill(prompt);  // warm-up: pages, workspaces
      pre.set(r.name, []);
      dec.set(r.name, []);
    }
    let fma = 0, vnni: number | null = null, amx: number | null = null;
    for (let round = 0; round < rounds; round++) {
      const m = measureMachineSync({ parts: ['fma', 'vnni', 'amx'], seconds: 0.2 });
      fma = Math.max(fma, m.fmaGflops);
      vnni = m.vnniGops === null ? null : Math.max(vnni ?? 0, m.vnniGops);
      amx = m.amxInt8Gops === null ? null : Math.max(amx ?? 0, m.amxInt8Gops);
      // rotate the order every round: no runner always follows the same one
      for (let i = 0; i < runners.length; i++) {
        const r = runners[(i + round) % runners.length];
        const t1 = performance.now();
        await r.prefill(prompt);
        pre.get(r.name)!.push((performance.now() - t1) / 1000);
        dec.get(r.name)!.push(await r.decode(prompt.slice(0, 32), steps));
      }
      log(`round ${round + 1}/${rounds}`);
    }
    // per-channel int8 linears run on AMX tiles where the CPU has them; g32 ones on VNNI (matmul.h)
    const peakOf = (name: string): PrefillRow['peak'] =>
      name.startsWith('llama.cpp') ? null : !/W4A8/.test(name) ? 'fma' : /per-channel/.test(name) && amx !== null ? 'amx' : 'vnni';
    const rows = runners.map((r) => {
      const s = median(pre.get(r.name)!);
      return { name: r.name, prefillSeconds: s, prefillTokensPerSecond: T / s, decodeSecondsPerToken: median(dec.get(r.name)!), peak: peakOf(r.name) };
    });
    const { dim: D, hiddenDim: F, nHeads: Hq, nKvHeads: Hkv, vocabSize: V } = syn, hd = D / Hq;
    const linearOps = 2 * (T * layers * (2 * D * Hq * hd + 2 * D * Hkv * hd + 3 * D * F) + D * V);
    return { layers, tokens: T, rows, fmaGflops: fma, vnniGops: vnni, amxInt8Gops: amx, linearOps, loadAverage: os.loadavg(), peerSkipped };
  } finally {
    for (const r of runners) await r.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}
