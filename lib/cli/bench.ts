// `quantform bench <what>`: each benchmark registers its subcommand from its own file.
import type { Command } from 'commander';
import { registerBenchMatmul } from './bench-matmul.js';
import { registerBenchQuant } from './bench-quant.js';

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('kernel and model micro-benchmarks (medians, % of the machine limit)');
  registerBenchQuant(bench);
  registerBenchMatmul(bench);
}
