// quantform bench train: one forward + backward training step of a Llama-2-7B-shaped
// block (4096 hidden, 11008 intermediate, 32 heads of 128) on 512 tokens, with every
// parameter gradient, as GFLOP/s and % of the fp32 FMA peak measured in the same run
// (register-only FMA loop, native/common/probe.cpp); the same step with TEQ + W4
// fake quantization; and TEQ steps/s on stories260K (when the shared model is present).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { backendInfo } from '../backend.js';
import { measureMachineSync } from '../bench/machine.js';
import { openCheckpoint } from '../model/model.js';
import { LLAMA2_7B } from '../model/synthetic.js';
import { native, type NativeBlockConfig } from '../native.js';
import { calibrationFromText } from '../engine/calib.js';
import { quantizeModel } from '../methods/quantize-model.js';
import { TrainableLlama } from '../engine/llama.js';
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
}

function fill(a: Float32Array, seed: number, scale: number): void {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 4294967296 - 0.5) * scale;
  }
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
  const alpha = cfg.teq ? new Float32Array(sz.alpha).fill(1) : null, dalpha = cfg.teq ? new Float32Array(sz.alpha) : null;
  const fwd: number[] = [], bwd: number[] = [];
  for (let r = 0; r <= repeats; r++) {
    const t0 = performance.now();
    await nb.blockForward(cfg, out, acts, x, params, alpha, true);
    const t1 = performance.now();
    await nb.blockBackward(cfg, dx, cfg.teq ? null : grads, dalpha, dout, acts, params, alpha, true);
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
    .action(async (o: BenchTrainOpts) => {
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
      for (const [name, cfg] of [
        ['fp32 step, all parameter gradients', base],
        ['TEQ step, W4 g128 fake-quant, alpha gradients', { ...base, bits: 4, teq: true }],
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
      let stories: { steps: number; seconds: number; secondsPer1000: number } | null = null;
      const dir = path.resolve(process.cwd(), '../shared/models/stories260K-hf');
      if (existsSync(dir)) {
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
      if (o.json) console.log(JSON.stringify({ cpu: info.cpu, tier: info.tier, threads: info.threads, fmaPeakProbesGflops: probes, block7B: results, stories260KTeq: stories }, null, 2));
    });
}
