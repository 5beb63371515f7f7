// quantform bench train: one forward + backward training step of a Llama-2-7B-shaped
// block (4096 hidden, 11008 intermediate, 32 heads of 128) on 512 tokens, with every
// parameter gradient, as GFLOP/s and % of the fp32 FMA peak measured in the same run
// (register-only FMA loop, native/common/probe.cpp); the same step with TEQ + W4
// fake quantization and EfficientQAT's Block-AP step (W4 and W2 g128 learned fake quant:
// dW of every linear, ds, dz, the norms); EfficientQAT's E2E-QP step from packed codes on a
// 7B-shaped model (synthetic, in child processes at two depths, fitted to 32 layers):
// tokens/s and peak RSS next to what an fp32 copy of the linears would take; and TEQ
// steps/s on stories260K (when the shared model is present).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { backendInfo } from '../backend.js';
import { measureMachineSync } from '../bench/machine.js';
import { openCheckpoint } from '../model/model.js';
import { LLAMA2_7B } from '../model/synthetic.js';
import { spawnSync } from 'node:child_process';
import { QuantformError } from '../errors.js';
import { f32ToF16 } from '../io/half.js';
import { native, type NativeBlockConfig, type NativeFqState } from '../native.js';
import { packedRowBytes, QuantizedTensor, type Bits } from '../ops/quant.js';
import { resolveEfficientQat, trainStepSizes, type PackedLlama } from '../methods/efficientqat.js';
import { calibrationFromText } from '../engine/calib.js';
import { quantizeModel } from '../methods/quantize-model.js';
import { blockLayout, HF_LINEAR, LINEARS, TrainableLlama, type LlamaShape } from '../engine/llama.js';
import '../methods/index.js';
import { intOption } from './model-arg.js';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** GEMM flops of one block step as executed: linears 3x forward (forward, dX, dW); attention
 *  scores and values computed over the full S x S square (causal masking after the GEMM), 3x. */
function blockStepFlops(c: NativeBlockConfig): { linear: number; attention: number } {
  const BT = c.B * c.T, D = c.D, Dq = c.Hq * c.hd, Dkv = c.Hkv * c.hd;
  const linFwd = 2 * BT * (D * Dq * 2 + D * Dkv * 2 + 3 * D * c.F);
  const attFwd = 2 * 2 * c.B * c.Hq * c.T * c.T * c.hd;
  return { linear: 3 * linFwd, attention: 3 * attFwd };
}

interface BenchTrainOpts {
  repeats: number;
  seq: number;
  json?: boolean;
  part: string;
  layers: string;
  e2eBits: number;
}

function fill(a: Float32Array, seed: number, scale: number): void {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 4294967296 - 0.5) * scale;
  }
}

/** EfficientQAT's min-max state of every linear of a block arena, and zeroed gradients of the same shapes. */
function learnedState(cfg: NativeBlockConfig, params: Float32Array): { st: NativeFqState; gr: NativeFqState } {
  const nb = native().engine, fq = cfg.fq!, lay = nb.blockLayout(cfg);
  const st: NativeFqState = { scales: [], zeros: [] }, gr: NativeFqState = { scales: [], zeros: [] };
  for (const n of ['wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down'] as const) {
    const { offset, rows, cols } = lay[n], gs = Math.min(fq.groupSize, cols), NG = rows * Math.ceil(cols / gs);
    const sc = new Float32Array(NG), z = fq.symmetric ? null : new Float32Array(NG);
    nb.learnedFqInit(sc, z, params.subarray(offset, offset + rows * cols), rows, cols, fq.bits, gs, fq.symmetric);
    st.scales.push(sc);
    st.zeros.push(z);
    gr.scales.push(new Float32Array(NG));
    gr.zeros.push(z ? new Float32Array(NG) : null);
  }
  return { st, gr };
}

async function timeBlockStep(cfg: NativeBlockConfig, repeats: number): Promise<{ fwd: number; bwd: number }> {
  const nb = native().engine;
  const sz = nb.blockSizes(cfg);
  const T = cfg.B * cfg.T, D = cfg.D;
  const params = new Float32Array(sz.params), grads = new Float32Array(sz.params), acts = new Float32Array(sz.saved);
  fill(params, 1, 0.04);
  const x = new Float32Array(T * D), out = new Float32Array(T * D), dx = new Float32Array(T * D), dout = new Float32Array(T * D);
  fill(x, 2, 2);
  fill(dout, 3, 1e-3);
  const fq = cfg.fq ? learnedState(cfg, params) : null;
  const alpha = cfg.teq ? new Float32Array(sz.alpha).fill(1) : null, dalpha = cfg.teq ? new Float32Array(sz.alpha) : null;
  const method = fq ? fq.st : alpha, methodGrads = fq ? fq.gr : dalpha;
  const fwd: number[] = [], bwd: number[] = [];
  for (let r = 0; r <= repeats; r++) {
    const t0 = performance.now();
    await nb.blockForward(cfg, out, acts, x, params, method, true);
    const t1 = performance.now();
    await nb.blockBackward(cfg, dx, cfg.teq ? null : grads, methodGrads, dout, acts, params, method, true);
    const t2 = performance.now();
    if (r > 0) { fwd.push((t1 - t0) / 1000); bwd.push((t2 - t1) / 1000); }  // r = 0 warms up
  }
  return { fwd: median(fwd), bwd: median(bwd) };
}

export function registerBenchTrain(bench: Command): void {
  bench
    .command('train')
    .description('training step of a Llama-2-7B-shaped block (GFLOP/s, % of FMA peak) and TEQ steps/s on stories260K')
    .option('--repeats <n>', 'timed repetitions (median reported)', intOption, 3)
    .option('--seq <n>', 'tokens of the 7B block step', intOption, 512)
    .option('--json', 'print JSON')
    .option('--part <which>', 'all | block (the 7B block steps) | e2e-qp (the packed 7B-shaped model)', 'all')
    .option('--layers <list>', 'E2E-QP: the two depths measured (each in a fresh process), fitted to 32 layers', '2,4')
    .option('--e2e-bits <n>', 'E2E-QP: bits of the packed model (g128 asym)', intOption, 4)
    .action(async (o: BenchTrainOpts) => {
      if (o.part === 'e2e-qp-child') {
        console.log(JSON.stringify(await e2eQpChild(Number(o.layers), o.seq, o.e2eBits as Bits, o.repeats)));
        return;
      }
      if (!['all', 'block', 'e2e-qp'].includes(o.part)) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --part all, block or e2e-qp but received '${o.part}'`);
      const info = backendInfo();
      // The peak is probed before each configuration and the highest probe is the limit:
      // on a shared machine a single probe can land in a busy moment and flatter the ratio.
      const probes = [measureMachineSync({ parts: ['fma'], seconds: 1.0 }).fmaGflops];
      const log = (s: string) => { if (!o.json) console.log(s); };
      log(`cpu: ${info.cpu}, tier ${info.tier}, ${info.threads} threads`);
      const hd = LLAMA2_7B.dim / LLAMA2_7B.nHeads;
      const base: NativeBlockConfig = {
        B: 1, T: o.seq, D: LLAMA2_7B.dim, F: LLAMA2_7B.hiddenDim, Hq: LLAMA2_7B.nHeads, Hkv: LLAMA2_7B.nKvHeads, hd, eps: 1e-5,
        invFreq: Float32Array.from({ length: hd / 2 }, (_, i) => 1 / Math.pow(10000, (2 * i) / hd)),
        bits: 0, groupSize: 128, symmetric: false, teq: false,
      };
      const results = [];
      for (const [name, cfg] of o.part === 'e2e-qp' ? [] : [
        ['fp32 step, all parameter gradients', base],
        ['TEQ step, W4 g128 fake-quant, alpha gradients', { ...base, bits: 4, teq: true }],
        ['Block-AP step, W4 g128 learned fake quant, all gradients (dW, ds, dz, norms)', { ...base, fq: { bits: 4, groupSize: 128, symmetric: false } }],
        ['Block-AP step, W2 g128 learned fake quant, all gradients (dW, ds, dz, norms)', { ...base, fq: { bits: 2, groupSize: 128, symmetric: false } }],
      ] as const) {
        probes.push(measureMachineSync({ parts: ['fma'], seconds: 1.0 }).fmaGflops);
        const t = await timeBlockStep(cfg, o.repeats);
        probes.push(measureMachineSync({ parts: ['fma'], seconds: 1.0 }).fmaGflops);
        const peak = Math.max(...probes);
        const f = blockStepFlops(cfg);
        const gflops = (f.linear + f.attention) / (t.fwd + t.bwd) / 1e9;
        const r = { name, tokens: cfg.B * cfg.T, forwardSeconds: t.fwd, backwardSeconds: t.bwd, stepSeconds: t.fwd + t.bwd,
          gemmGflop: (f.linear + f.attention) / 1e9, gflops, peakGflops: peak, pctOfPeak: (100 * gflops) / peak };
        results.push(r);
        log(`7B block, ${r.tokens} tokens, ${name}: forward ${t.fwd.toFixed(2)} s + backward ${t.bwd.toFixed(2)} s = ${r.stepSeconds.toFixed(2)} s; ` +
          `${r.gemmGflop.toFixed(0)} GFLOP -> ${gflops.toFixed(1)} GFLOP/s = ${r.pctOfPeak.toFixed(1)} % of the FMA peak (highest probe so far ${peak.toFixed(1)} GFLOP/s)`);
      }
      const e2e = o.part === 'block' ? null : e2eQpFit(o);
      if (e2e) log(e2e.text);
      let stories: { steps: number; seconds: number; secondsPer1000: number } | null = null;
      const dir = path.resolve(process.cwd(), '../shared/models/stories260K-hf');
      if (o.part !== 'all') log('stories260K TEQ timing: only with --part all');
      else if (existsSync(dir)) {
        const ck = openCheckpoint(dir);
        const model = TrainableLlama.fromCheckpoint(ck);
        ck.close();
        // synthetic calibration ids: speed does not depend on the text
        const cal = calibrationFromText('x'.repeat(40000), (d) => Array.from(d, (_, i) => 3 + ((i * 7919) % 500)), { samples: 32, seqLen: 256 });
        const steps = 100;
        const t0 = performance.now();
        await quantizeModel(model, { method: 'teq', bits: 4, groupSize: 32, calibration: cal, steps });
        const sec = (performance.now() - t0) / 1000;
        stories = { steps, seconds: sec, secondsPer1000: (sec * 1000) / steps };
        log(`stories260K TEQ (batch 2 x 256 tokens, W4 g32): ${steps} steps in ${sec.toFixed(1)} s -> ${stories.secondsPer1000.toFixed(1)} s per 1000 steps`);
      } else log(`stories260K TEQ timing skipped: ${dir} not found`);
      if (o.json) console.log(JSON.stringify({ cpu: info.cpu, tier: info.tier, threads: info.threads, fmaPeakProbesGflops: probes, block7B: results,
        e2eQp7B: e2e?.data ?? null, stories260KTeq: stories }, null, 2));
    });
}

interface E2eChildResult {
  layers: number;
  tokens: number;
  stepSeconds: number;
  maxRssBytes: number;
  packedBytes: number;
  fp32LinearBytes: number;
}

/**
 * One process, one depth: a 7B-shaped model with `layers` packed blocks (random codes, f16 step
 * sizes, g128 asym; fp32 embedding and LM head as Llama-2 stores them untied), E2E-QP steps on
 * `seq` tokens with every block recomputed before its backward (as at 32 layers, where the saved
 * activations exceed the budget). The median step after one warm-up and the process's peak RSS.
 */
async function e2eQpChild(layers: number, seq: number, bits: Bits, repeats: number): Promise<E2eChildResult> {
  const c = LLAMA2_7B, D = c.dim, V = c.vocabSize, hd = D / c.nHeads;
  const shape: LlamaShape = { hidden: D, intermediate: c.hiddenDim, layers, heads: c.nHeads, kvHeads: c.nKvHeads, headDim: hd, vocab: V,
    maxSeq: c.maxSeq, rmsEps: 1e-5, ropeTheta: 10000, tied: false };
  const quant = { bits, groupSize: 128, symmetric: false };
  const embed = new Float32Array(V * D), lmHead = new Float32Array(V * D);
  fill(embed, 4, 0.05);
  fill(lmHead, 5, 0.05);
  const lay = blockLayout(shape), linears = new Map<string, QuantizedTensor>();
  let packedBytes = 0, fp32LinearBytes = 0;
  for (let l = 0; l < layers; l++)
    for (const n of LINEARS) {
      const { rows, cols } = lay.linears[n], G = Math.ceil(cols / 128);
      const codes = new Uint8Array(rows * packedRowBytes(bits, cols));
      for (let i = 0; i < codes.length; i++) codes[i] = Math.imul(i, 2654435761) >>> 24;
      const scales = new Uint16Array(rows * G).fill(f32ToF16(0.02 / 2 ** bits)), zeros = new Uint16Array(rows * G).fill(f32ToF16(2 ** (bits - 1)));
      linears.set(`model.layers.${l}.${HF_LINEAR[n]}`, new QuantizedTensor(codes, scales, zeros, [rows, cols], bits, 128, false, 'f16'));
      packedBytes += codes.byteLength + scales.byteLength + zeros.byteLength;
      fp32LinearBytes += rows * cols * 4;
    }
  const ones = () => new Float32Array(D).fill(1);
  const packed: PackedLlama = { shape, embed, finalNorm: ones(), lmHead, linears, norms: Array.from({ length: layers }, () => ({ input: ones(), post: ones() })) };
  const samples = repeats + 1;
  const tokens = Int32Array.from({ length: samples * seq }, (_, i) => 3 + ((i * 7919) % (V - 3)));
  const times: number[] = [];
  let t = performance.now();
  await trainStepSizes(packed, { tokens, samples, seqLen: seq, streamLength: tokens.length }, quant,
    resolveEfficientQat({ e2eBatchSize: 1, e2eEpochs: 1, e2eMemoryBytes: 0 }, bits), {
      after: async () => {
        const now = performance.now();
        times.push((now - t) / 1000);
        t = now;
      },
    });
  return { layers, tokens: seq, stepSeconds: median(times.slice(1)), maxRssBytes: process.resourceUsage().maxRSS * 1024, packedBytes, fp32LinearBytes };
}

/** E2E-QP at two depths in fresh processes, fitted to 32 layers (step time and peak RSS are linear in the depth). */
function e2eQpFit(o: BenchTrainOpts): { text: string; data: Record<string, unknown> } {
  const depths = o.layers.split(',').map(Number);
  if (depths.length !== 2 || depths.some((d) => !Number.isInteger(d) || d < 1) || depths[0] === depths[1])
    throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --layers as two different depths like '2,4' but received '${o.layers}'`);
  const runs = depths.map((layers) => {
    const r = spawnSync(process.execPath, [process.argv[1], 'bench', 'train', '--part', 'e2e-qp-child', '--layers', String(layers), '--seq', String(o.seq),
      '--e2e-bits', String(o.e2eBits), '--repeats', String(o.repeats)], { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (r.status !== 0) throw new QuantformError('QF_INTERNAL', `E2E-QP child at ${layers} layers failed: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as E2eChildResult;
  });
  const [a, b] = runs, L = 32;
  const at32 = (f: (r: E2eChildResult) => number) => f(a) + ((f(b) - f(a)) * (L - a.layers)) / (b.layers - a.layers);
  const step32 = at32((r) => r.stepSeconds), rss32 = at32((r) => r.maxRssBytes), packed32 = (a.packedBytes / a.layers) * L, fp32 = (a.fp32LinearBytes / a.layers) * L;
  const gb = (x: number) => `${(x / 1e9).toFixed(2)} GB`;
  const lines = runs.map((r) => `  ${r.layers} layers: ${r.stepSeconds.toFixed(2)} s per step = ${(r.tokens / r.stepSeconds).toFixed(0)} tokens/s, peak RSS ${gb(r.maxRssBytes)} (packed linears ${gb(r.packedBytes)})`);
  const text = `E2E-QP step from packed codes, 7B-shaped (W${o.e2eBits} g128, ${o.seq} tokens, blocks recomputed before their backward):\n${lines.join('\n')}\n` +
    `  fitted to 32 layers: ${step32.toFixed(1)} s per step = ${(o.seq / step32).toFixed(1)} tokens/s, peak RSS ${gb(rss32)} with ${gb(packed32)} of packed linears; ` +
    `an fp32 copy of the linears alone would take ${gb(fp32)}`;
  return { text, data: { runs, fitted32: { stepSeconds: step32, tokensPerSecond: o.seq / step32, maxRssBytes: rss32, packedBytes: packed32, fp32LinearBytes: fp32 } } };
}
