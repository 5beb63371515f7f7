// quantform bench qlinear | bench gptq-op: the two native ops of GPTQ / EfficientQAT on
// Llama-2-7B layer shapes, each next to its peer measured in the same run, interleaved
// round by round (medians), and the fp32 FMA peak of the machine:
//   qlinear   quantLinearBackward (dX and dS from packed codes) vs the two fp32 GEMMs
//             the same gradients cost on a materialised weight (dX = dY W, dW = dYᵀ X);
//   gptq-op   the Hessian, the factorization and the whole GPTQ quantization of one
//             linear, each as GFLOP/s next to the engine GEMM on an (N, K, 128) shape.
import type { Command } from 'commander';
import { measureMachineSync } from '../bench/machine.js';
import { formatTable, median } from '../bench/stats.js';
import { native } from '../native.js';
import { GptqHessian, gptqQuantize } from '../ops/gptq.js';
import { quantLinearBackward } from '../ops/qlinear.js';
import { quantize, type Bits } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';
import { parseShapes } from './options.js';
import { intOption } from './model-arg.js';

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5));
}

function seconds(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return (performance.now() - t0) / 1000;
}

interface QlinearOpts { shapes: string; m: number; bits: string; groupSize: number; repeats: number; json?: boolean }
interface GptqOpOpts { shapes: string; rows: number; repeats: number; json?: boolean }

export function registerBenchGptqOps(bench: Command): void {
  bench
    .command('qlinear')
    .description('quantized-linear backward (E2E-QP) from packed codes vs fp32 GEMMs on a materialised weight, Llama-2-7B shapes')
    .option('--shapes <list>', 'N x K weight shapes', '4096x4096,11008x4096,4096x11008')
    .option('--m <n>', 'tokens (rows of x)', intOption, 512)
    .option('--bits <list>', 'bit widths', '4,2')
    .option('--group-size <n>', 'group size', intOption, 128)
    .option('--repeats <n>', 'interleaved rounds (median)', intOption, 3)
    .option('--json', 'print JSON')
    .action((o: QlinearOpts) => {
      const nb = native().engine;
      const peak = measureMachineSync({ parts: ['fma'] }).fmaGflops;
      const rows: (string | number)[][] = [];
      const out: Record<string, unknown>[] = [];
      for (const [N, K] of parseShapes(o.shapes)) {
        const M = o.m, W = rand(N * K, 1), x = rand(M * K, 2), dy = rand(M * N, 3);
        const dxPeer = new Float32Array(M * K), dwPeer = new Float32Array(N * K);
        for (const bits of o.bits.split(',').map(Number) as Bits[]) {
          const q = quantize(new Tensor(W, [N, K]), { bits, groupSize: o.groupSize, paramDtype: 'f32' });
          const gi = new Float32Array(M * K), gs = new Float32Array(q.scales.length);
          const mine: number[] = [], peer: number[] = [];
          for (let r = 0; r <= o.repeats; r++) {
            const a = seconds(() => quantLinearBackward(dy, x, q, { gradInput: gi, gradScales: gs }));
            const b = seconds(() => {
              nb.gemm(dxPeer, dy, W, M, K, N, false, false, false);
              nb.gemm(dwPeer, dy, x, N, K, M, true, false, false);
            });
            if (r > 0) { mine.push(a); peer.push(b); }  // round 0 warms up
          }
          const t = median(mine), p = median(peer), gf = (4 * M * N * K) / t / 1e9;
          rows.push([`${N}x${K} INT${bits} g${o.groupSize}`, M, t * 1e3, p * 1e3, p / t, gf, (100 * gf) / peak]);
          out.push({ N, K, M, bits, groupSize: o.groupSize, ms: t * 1e3, peerMs: p * 1e3, gflops: gf, peakGflops: peak });
        }
      }
      if (o.json) return void console.log(JSON.stringify(out, null, 2));
      console.log(formatTable(['weight', 'M', 'backward ms', 'fp32 GEMMs ms', 'speed vs GEMMs', 'GFLOP/s', '% FMA peak'], rows));
      console.log(`fp32 FMA peak measured in this run: ${peak.toFixed(0)} GFLOP/s; flops counted as 4 M N K (dX and dYᵀX)`);
    });

  bench
    .command('gptq-op')
    .description('GPTQ native op on Llama-2-7B linear shapes: Hessian, factorization, whole quantization, vs the engine GEMM')
    .option('--shapes <list>', 'N x K weight shapes', '4096x4096,4096x11008')
    .option('--rows <n>', 'calibration rows for the Hessian', intOption, 2048)
    .option('--repeats <n>', 'interleaved rounds (median)', intOption, 2)
    .option('--json', 'print JSON')
    .action((o: GptqOpOpts) => {
      const nb = native().engine;
      const peak = measureMachineSync({ parts: ['fma'] }).fmaGflops;
      const rows: (string | number)[][] = [];
      const out: Record<string, unknown>[] = [];
      for (const [N, K] of parseShapes(o.shapes)) {
        const T = o.rows, X = rand(T * K, 4), W = rand(N * K, 5).map((v) => v * 0.05);
        const U = new Float32Array(K * K), A = rand(N * 128, 6), B = rand(128 * K, 7), C = new Float32Array(N * K);
        const th: number[] = [], tf: number[] = [], tq: number[] = [], tg: number[] = [];
        let H = new GptqHessian(K);
        for (let r = 0; r <= o.repeats; r++) {
          H = new GptqHessian(K);
          const a = seconds(() => H.add(X));
          const b = seconds(() => native().gptqInverseFactor(U, H.H, K, 0.01));
          const c = seconds(() => gptqQuantize(new Tensor(W, [N, K]), H, { bits: 4, groupSize: 128 }));
          const d = seconds(() => nb.gemm(C, A, B, N, K, 128, false, false, true));
          if (r > 0) { th.push(a); tf.push(b); tq.push(c); tg.push(d); }
        }
        const h = median(th), f = median(tf), q = median(tq), g = median(tg);
        const gemm = (2 * N * K * 128) / g / 1e9;
        // flops: Hessian T K² (lower half), factorization 2K³/3, column loop's trailing updates N K²
        rows.push([`${N}x${K}`, h, (T * K * K) / h / 1e9, f, ((2 / 3) * K ** 3) / f / 1e9, q, (((2 / 3) * K ** 3 + N * K * K)) / q / 1e9, gemm]);
        out.push({ N, K, rows: T, hessianS: h, factorS: f, quantizeS: q, gemmGflops: gemm, peakGflops: peak });
      }
      if (o.json) return void console.log(JSON.stringify(out, null, 2));
      console.log(formatTable(['weight', 'Hessian s', 'GFLOP/s', 'factor s', 'GFLOP/s', 'quantize s', 'GFLOP/s', 'GEMM (N,K,128) GFLOP/s'], rows));
      console.log(`Hessian of ${o.rows} rows; quantize = factor + column loop (INT4 g128); fp32 FMA peak measured in this run: ${peak.toFixed(0)} GFLOP/s`);
    });
}
