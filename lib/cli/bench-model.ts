// quantform bench model: prefill and decode tokens/s of the native forward on
// stories260K (when the shared model is present) and on one synthetic
// Llama-2-7B-shaped block, with the GEMM's share of the machine's fp32 FMA peak
// measured in the same run (register-only FMA loop, native/common/fma_probe.cpp).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { backendInfo } from '../backend.js';
import { loadModel, type Model } from '../model/model.js';
import { LLAMA2_7B } from '../model/synthetic.js';
import { native } from '../native.js';
import { intOption } from './model-arg.js';

interface BenchOpts {
  model?: string;
  repeats: number;
  json?: boolean;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function time(fn: () => void, repeats: number): number {
  fn();  // warm-up: page in weights, size buffers
  const t: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    fn();
    t.push((performance.now() - t0) / 1000);
  }
  return median(t);
}

/** fp32 GEMM flops of one token through the model (linears + lm_head), without attention. */
function linearFlopsPerToken(m: Model): number {
  const c = m.config, q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  return 2 * (c.nLayers * (c.dim * q * 2 + c.dim * kv * 2 + 3 * c.dim * c.hiddenDim) + c.dim * c.vocabSize);
}

interface ModelBench {
  model: string;
  prefill: { B: number; T: number; seconds: number; tokensPerSecond: number; gemmGflops: number; pctOfPeak: number };
  decode: { context: number; steps: number; secondsPerToken: number; tokensPerSecond: number };
}

function benchModel(name: string, m: Model, B: number, T: number, steps: number, repeats: number, peak: number): ModelBench {
  const V = m.config.vocabSize;
  const rows = Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, t) => (b * 7919 + t * 104729) % V));
  const sp = time(() => m.forward(rows), repeats);
  const gflops = (linearFlopsPerToken(m) * B * T) / sp / 1e9;
  const prompt = rows[0];
  const sd = time(() => {
    m.forward(prompt, { lastOnly: true });
    for (let s = 0; s < steps; s++) m.forward([prompt[s % T]], { pos0: T + s, lastOnly: true });
  }, repeats);
  const prefillOnce = time(() => m.forward(prompt, { lastOnly: true }), repeats);
  const perTok = Math.max(sd - prefillOnce, 1e-9) / steps;
  return {
    model: name,
    prefill: { B, T, seconds: sp, tokensPerSecond: (B * T) / sp, gemmGflops: gflops, pctOfPeak: (100 * gflops) / peak },
    decode: { context: T, steps, secondsPerToken: perTok, tokensPerSecond: 1 / perTok },
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
      const peak = nat.fmaPeak(info.threads, 1.0);
      const log = (s: string) => { if (!o.json) console.log(s); };
      log(`cpu: ${info.cpu}, tier ${info.tier}, ${info.threads} threads; fp32 FMA peak (register-only loop) ${peak.toFixed(1)} GFLOP/s`);
      // GEMM alone at a prefill shape: 512 tokens x 4096 -> 4096
      const [M, N, K] = [512, 4096, 4096];
      const a = new Float32Array(M * K).map((_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
      const w = new Float32Array(N * K).map((_, i) => ((i * 40503) % 1000) / 1000 - 0.5);
      const sg = time(() => nat.matmulForward(a, w, null, M, N, K, false), o.repeats);
      const gemm = { M, N, K, seconds: sg, gflops: (2 * M * N * K) / sg / 1e9, pctOfPeak: 0 };
      gemm.pctOfPeak = (100 * gemm.gflops) / peak;
      log(`GEMM ${M}x${N}x${K}: median ${(sg * 1000).toFixed(1)} ms, ${gemm.gflops.toFixed(1)} GFLOP/s = ${gemm.pctOfPeak.toFixed(1)} % of peak`);
      const results: ModelBench[] = [];
      const dflt = path.resolve(process.cwd(), '../shared/models/stories260K-hf');
      const small = o.model ?? (existsSync(dflt) ? dflt : undefined);
      if (small) {
        const m = await loadModel(small);
        try {
          results.push(benchModel(small, m, 8, 256, 64, o.repeats, peak));
        } finally {
          m.dispose();
        }
      } else log('stories260K not found (../shared/models/stories260K-hf): skipped; pass --model');
      // one Llama-2-7B block; a 512-token vocabulary keeps the head out of the block's numbers
      const block = await loadModel({ synthetic: { ...LLAMA2_7B, vocabSize: 512, nLayers: 1, seed: 1, tiedEmbeddings: true } }, { maxSeq: 1024 });
      try {
        results.push(benchModel('synthetic Llama-2-7B block (1 layer, vocab 512)', block, 1, 512, 16, o.repeats, peak));
      } finally {
        block.dispose();
      }
      for (const r of results) {
        log(`${r.model}\n  prefill B=${r.prefill.B} T=${r.prefill.T}: ${r.prefill.tokensPerSecond.toFixed(0)} tok/s, ` +
          `linear GEMMs ${r.prefill.gemmGflops.toFixed(1)} GFLOP/s = ${r.prefill.pctOfPeak.toFixed(1)} % of peak\n` +
          `  decode after ${r.decode.context} tokens: ${r.decode.tokensPerSecond.toFixed(1)} tok/s (${(r.decode.secondsPerToken * 1000).toFixed(2)} ms/token)`);
      }
      if (o.json) console.log(JSON.stringify({ cpu: info.cpu, tier: info.tier, threads: info.threads, fmaPeakGflops: peak, gemm, models: results }, null, 2));
    });
}
