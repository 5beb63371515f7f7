// `quantform bench matmul`: INT4 dequant-matmul vs an fp32 GEMM baseline and
// onnxruntime MatMulNBits (lib/bench/matmul.ts).
import { renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import {
  benchMatmul, formatHeader, formatMachine, formatRow, FULL, QUICK, type MatmulBenchOptions, type Shape,
} from '../bench/matmul.js';

function intList(v: string): number[] {
  const out = v.split(',').map((s) => Number(s.trim()));
  if (out.some((n) => !Number.isInteger(n) || n <= 0)) throw new InvalidArgumentError(`Expected comma-separated positive integers but received '${v}'`);
  return out;
}

function shapeList(v: string): Shape[] {
  return v.split(',').map((s) => {
    const m = /^\s*(\d+)x(\d+)\s*$/.exec(s);
    if (!m) throw new InvalidArgumentError(`Expected shapes as NxK[,NxK...] (e.g. 4096x4096) but received '${s}'`);
    return [Number(m[1]), Number(m[2])] as const;
  });
}

interface Opts {
  quick?: boolean;
  shapes?: Shape[];
  m?: number[];
  groupSizes?: number[];
  iterations?: number;
  threads?: number;
  peer: boolean;
  baseline: boolean;
  json?: boolean;
  out?: string;
}

export function registerBenchMatmul(bench: Command): void {
  bench
    .command('matmul')
    .description('INT4 dequant-matmul (fp32 and int8 accuracy) vs fp32 GEMM and onnxruntime MatMulNBits, on Llama layer shapes')
    .option('--quick', 'a short run (< 1 minute on 2 cores): 4096x4096 and 32768x4096, group size 128')
    .option('--shapes <list>', 'weight shapes NxK (out x in), comma-separated', shapeList)
    .option('--m <list>', 'rows of x, comma-separated (default 1,8,32,512)', intList)
    .option('--group-sizes <list>', 'group sizes, comma-separated (default 32,128; --quick: 128)', intList)
    .option('--iterations <n>', 'timed runs per row at least (median reported; short rows run more)', (v) => intList(v)[0])
    .option('--threads <n>', 'threads for quantform and onnxruntime (default: all cores)', (v) => intList(v)[0])
    .option('--no-peer', 'skip onnxruntime')
    .option('--no-baseline', 'skip the fp32 GEMM baseline')
    .option('--json', 'print the result as JSON (progress goes to stderr)')
    .option('--out <file>', 'also write the JSON result to this file')
    .action(async (opts: Opts) => {
      const base = opts.quick ? QUICK : FULL;
      const o: MatmulBenchOptions = {
        ...base,
        shapes: opts.shapes ?? base.shapes,
        ms: opts.m ?? base.ms,
        groupSizes: opts.groupSizes ?? base.groupSizes,
        iterations: opts.iterations ?? base.iterations,
        threads: opts.threads ?? os.availableParallelism(),
        peer: opts.peer,
        baseline: opts.baseline,
      };
      const log = (s: string) => (opts.json ? process.stderr : process.stdout).write(s + '\n');
      log(formatHeader());
      const r = await benchMatmul(o, log);
      const summary = [formatMachine(r.machine), ...r.notes.map((n) => `note: ${n}`)];
      if (opts.json) console.log(JSON.stringify(r, null, 2));
      else {
        console.log('\n' + summary.join('\n') + '\n');
        console.log(formatHeader());
        for (const row of r.rows) console.log(formatRow(row));
      }
      if (opts.out) {
        const tmp = `${opts.out}.${process.pid}.tmp`;
        writeFileSync(tmp, JSON.stringify(r, null, 2));
        renameSync(tmp, opts.out);
      }
    });
}
