// quantform bench scale: quantization of a Llama-2-7B-shaped checkpoint (lib/bench/scale.ts).
import type { Command } from 'commander';
import { benchScale, SCALE_METHODS } from '../bench/scale.js';
import { formatTable } from '../bench/stats.js';
import { intOption } from './model-arg.js';

export function registerBenchScale(bench: Command): void {
  bench
    .command('scale')
    .description('writes a synthetic Llama-2-7B-shaped BF16 sharded checkpoint and quantizes it: peak RSS, wall time, time per block, vs reading it')
    .option('--layers <n>', 'transformer blocks (Llama-2-7B: 32)', intOption, 32)
    .option('--methods <list>', `comma-separated: ${SCALE_METHODS.map((m) => m.name).join(', ')}`, 'rtn')
    .option('--dir <dir>', 'where the temporary checkpoint goes (default: the OS temp dir; needs ~20 GB)')
    .option('--samples <n>', 'calibration windows (random token ids)', intOption, 128)
    .option('--seq-len <n>', 'tokens per calibration window', intOption, 256)
    .option('--steps <n>', 'training steps (teq-block: per block, default 4; teq-e2e: default 2)', intOption)
    .option('--max-memory <GB>', "the runs' --max-memory (default: what the OS reports available)", Number)
    .option('--json', 'print JSON')
    .action(async (o: { layers: number; methods: string; dir?: string; samples: number; seqLen: number; steps?: number; maxMemory?: number; json?: boolean }) => {
      const r = await benchScale({ layers: o.layers, methods: o.methods.split(','), dir: o.dir, samples: o.samples, seqLen: o.seqLen, steps: o.steps,
        maxMemoryBytes: o.maxMemory !== undefined ? o.maxMemory * 1e9 : undefined, log: o.json ? undefined : (s) => console.log(s) });
      if (o.json) {
        console.log(JSON.stringify(r, null, 2));
        return;
      }
      console.log(`\n${r.shape.layers} layers, ${(r.checkpointBytes / 1e9).toFixed(1)} GB BF16 in ${r.shards} shards; one thread reads it in ${r.readSeconds.toFixed(1)} s (median of before and after each run) ` +
        `(${r.readGBps.toFixed(2)} GB/s), memory read ${r.memReadGBps.toFixed(1)} GB/s`);
      console.log(`calibration ${r.samples} x ${r.seqLen} tokens`);
      // 'read wait' is the pipeline's own wait for the checkpoint; 'wall / read' compares the run with one plain read of the file
      console.log(formatTable(['method', 'wall s', 'read wait s', 'write s', 'compute s', 's / block', 's / step', 'peak RSS GB', 'wall / read', 'output GB'],
        r.runs.map((x) => [x.method, x.wallSeconds.toFixed(1), x.readWaitSeconds.toFixed(1), x.writeSeconds.toFixed(1),
          (x.wallSeconds - x.readWaitSeconds - x.writeSeconds).toFixed(1),
          x.secondsPerBlock.toFixed(2), x.secondsPerStep !== null ? x.secondsPerStep.toFixed(1) : '-',
          (x.peakRssBytes / 1e9).toFixed(2), (x.wallSeconds / r.readSeconds).toFixed(2), (x.outputBytes / 1e9).toFixed(2)])));
      for (const s of r.skipped) console.log(`${s.method}: not run: ${s.why}`);
    });
}
