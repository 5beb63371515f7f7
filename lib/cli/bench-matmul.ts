// `quantform bench matmul`: INT4 dequant-matmul vs an fp32 GEMM baseline and
// onnxruntime MatMulNBits (lib/bench/matmul.ts).
import os from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import {
  benchMatmul, formatHeader, formatMachine, formatRow, FULL, QUICK, type MatmulBenchOptions, type Shape,
} from '../bench/matmul.js';
import { writeFileAtomic } from '../io/atomic.js';
import { parseShapes } from './options.js';

function intList(v: string): number[] {
  const out = v.split(',').map((s) => Number(s.trim()));
  if (out.some((n) => !Number.isInteger(n) || n <= 0)) throw new InvalidArgumentError(`Expected comma-separated positive integers but received '${v}'`);
  return out;
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
    .option('--shapes <list>', 'weight shapes NxK (out x in), comma-separated', (v: string): Shape[] => parseShapes(v))
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
      if (opts.out) writeFileAtomic(opts.out, JSON.stringify(r, null, 2) + '\n');
    });
}
