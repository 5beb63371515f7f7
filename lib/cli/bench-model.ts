// quantform bench model: prefill and decode tokens/s of the native forward on
// stories260K (when the shared model is present) and on one synthetic
// Llama-2-7B-shaped block, with the GEMM's share of the machine's fp32 FMA peak
// measured in the same run (register-only FMA loop, native/common/probe.cpp),
// and decode's weight streaming as a share of the measured memory read bandwidth.
// The 2-vCPU machines this runs on deliver anywhere between one and two cores' worth
// of FMA throughput from minute to minute, so every ratio pairs a timing with a peak
// measured right next to it (median over repeats of kernel-time / adjacent-peak).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { backendInfo } from '../backend.js';
import { measureMachineSync } from '../bench/machine.js';
import { median } from '../bench/stats.js';
import { loadModel, type Model } from '../model/model.js';
import { LLAMA2_7B } from '../model/synthetic.js';
import { native } from '../native.js';
import { intOption } from './model-arg.js';

interface BenchOpts {
  model?: string;
  repeats: number;
  json?: boolean;
}


/** fp32 GEMM flops of one token through the model (linears + lm_head), without attention. */
function linearFlopsPerToken(m: Model): number {
  const c = m.config, q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  return 2 * (c.nLayers * (c.dim * q * 2 + c.dim * kv * 2 + 3 * c.dim * c.hiddenDim) + c.dim * c.vocabSize);
}

interface ModelBench {
  model: string;
  prefill: { B: number; T: number; seconds: number; tokensPerSecond: number; gemmGflops: number; pctOfPeak: number };
  decode: { context: number; steps: number; secondsPerToken: number; tokensPerSecond: number; weightGBps: number; pctOfReadBandwidth: number };
}

/** Median over repeats of (flops / seconds) / (peak measured just before), and the median time. */
function paired(fn: () => void, flops: number, repeats: number): { seconds: number; gflops: number; pct: number } {
  fn();  // warm-up: page in weights, size buffers
  const secs: number[] = [], pcts: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const peak = measureMachineSync({ parts: ['fma'], seconds: 0.25 }).fmaGflops;
    const t0 = performance.now();
    fn();
    const s = (performance.now() - t0) / 1000;
    secs.push(s);
    pcts.push((100 * flops) / s / 1e9 / peak);
  }
  const seconds = median(secs);
  return { seconds, gflops: flops / seconds / 1e9, pct: median(pcts) };
}

function benchModel(name: string, m: Model, B: number, T: number, steps: number, repeats: number): ModelBench {
  const V = m.config.vocabSize;
  const rows = Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, t) => (b * 7919 + t * 104729) % V));
  const p = paired(() => m.forward(rows), linearFlopsPerToken(m) * B * T, repeats);
  const prompt = rows[0];
  // every decode step streams all linear weights once (fp32)
  const weightBytes = (linearFlopsPerToken(m) / 2) * 4;
  const perToks: number[] = [], pcts: number[] = [];
  for (let i = 0; i <= repeats; i++) {
    const bw = measureMachineSync({ parts: ['read'], bytes: 256 * 2 ** 20, reps: 1 }).readGBps;
    m.forward(prompt, { lastOnly: true });
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) m.forward([prompt[s % T]], { pos0: T + s, lastOnly: true });
    const perTok = (performance.now() - t0) / 1000 / steps;
    if (i === 0) continue;  // warm-up
    perToks.push(perTok);
    pcts.push((100 * weightBytes) / perTok / 1e9 / bw);
  }
  const perTok = median(perToks);
  const gbps = weightBytes / perTok / 1e9;
  return {
    model: name,
    prefill: { B, T, seconds: p.seconds, tokensPerSecond: (B * T) / p.seconds, gemmGflops: p.gflops, pctOfPeak: p.pct },
    decode: { context: T, steps, secondsPerToken: perTok, tokensPerSecond: 1 / perTok, weightGBps: gbps, pctOfReadBandwidth: median(pcts) },
  };
}

export function registerBenchModel(bench: Command): void {
  bench
    .command('model')
    .description('prefill/decode tokens/s on stories260K and a Llama-2-7B-shaped block; GEMM % of FMA peak')
    .option('--model <path>', 'model to benchmark besides the 7B block (default: ../shared/models/stories260K-hf when present)')
    .option('--repeats <n>', 'timed repetitions (median reported)', intOption, 3)
    .option('--json', 'print JSON')
    .action(async (o: BenchOpts) => {
      const info = backendInfo();
      const nat = native();
      const lim = measureMachineSync({ parts: ['read', 'fma'], seconds: 1.0 });
      const peak = lim.fmaGflops;
      const bw = lim;
      const log = (s: string) => { if (!o.json) console.log(s); };
      log(`cpu: ${info.cpu}, tier ${info.tier}, ${info.threads} threads; fp32 FMA peak (register-only loop) ${peak.toFixed(1)} GFLOP/s; ` +
        `memory read ${bw.readGBps.toFixed(1)} GB/s`);
      // GEMM alone at a prefill shape: 512 tokens x 4096 -> 4096
      const [M, N, K] = [512, 4096, 4096];
      const a = new Float32Array(M * K).map((_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
      const w = new Float32Array(N * K).map((_, i) => ((i * 40503) % 1000) / 1000 - 0.5);
      const y = new Float32Array(M * N);
      const g = paired(() => nat.engine.gemm(y, a, w, M, N, K, false, true, false), 2 * M * N * K, o.repeats);
      const gemm = { M, N, K, seconds: g.seconds, gflops: g.gflops, pctOfPeak: g.pct };
      log(`GEMM ${M}x${N}x${K}: median ${(g.seconds * 1000).toFixed(1)} ms, ${g.gflops.toFixed(1)} GFLOP/s = ${g.pct.toFixed(1)} % of the adjacent peak`);
      const results: ModelBench[] = [];
      const dflt = path.resolve(process.cwd(), '../shared/models/stories260K-hf');
      const small = o.model ?? (existsSync(dflt) ? dflt : undefined);
      if (small) {
        const m = await loadModel(small);
        try {
          results.push(benchModel(small, m, 8, 256, 64, o.repeats));
        } finally {
          m.dispose();
        }
      } else log('stories260K not found (../shared/models/stories260K-hf): skipped; pass --model');
      // one Llama-2-7B block; a 512-token vocabulary keeps the head out of the block's numbers
      const block = await loadModel({ synthetic: { ...LLAMA2_7B, vocabSize: 512, nLayers: 1, seed: 1, tiedEmbeddings: true } }, { maxSeq: 1024 });
      try {
        results.push(benchModel('synthetic Llama-2-7B block (1 layer, vocab 512)', block, 1, 512, 16, o.repeats));
      } finally {
        block.dispose();
      }
      for (const r of results) {
        log(`${r.model}\n  prefill B=${r.prefill.B} T=${r.prefill.T}: ${r.prefill.tokensPerSecond.toFixed(0)} tok/s, ` +
          `linear GEMMs ${r.prefill.gemmGflops.toFixed(1)} GFLOP/s = ${r.prefill.pctOfPeak.toFixed(1)} % of peak\n` +
          `  decode after ${r.decode.context} tokens: ${r.decode.tokensPerSecond.toFixed(1)} tok/s (${(r.decode.secondsPerToken * 1000).toFixed(2)} ms/token), ` +
          `weights streamed at ${r.decode.weightGBps.toFixed(1)} GB/s = ${r.decode.pctOfReadBandwidth.toFixed(1)} % of the adjacent read bandwidth`);
      }
      if (o.json) console.log(JSON.stringify({ cpu: info.cpu, tier: info.tier, threads: info.threads, fmaPeakGflops: peak, memoryReadGBps: bw.readGBps, gemm, models: results }, null, 2));
    });
}
