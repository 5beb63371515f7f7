// `quantform bench <what>`: each benchmark registers its subcommand from its own file.
import type { Command } from 'commander';
import { registerBenchDecode } from './bench-decode.js';
import { registerBenchEfficientQat } from './bench-efficientqat.js';
import { registerBenchFptquant } from './bench-fptquant.js';
import { registerBenchGptq } from './bench-gptq.js';
import { registerBenchGptqOps } from './bench-gptq-ops.js';
import { registerBenchLoad } from './bench-load.js';
import { registerBenchModel } from './bench-model.js';
import { registerBenchPrefill } from './bench-prefill.js';
import { registerBenchMatmul } from './bench-matmul.js';
import { registerBenchQuant } from './bench-quant.js';
import { registerBenchScale } from './bench-scale.js';
import { registerBenchTeq } from './bench-teq.js';
import { registerBenchTrain } from './bench-train.js';

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('kernel and model micro-benchmarks (medians, % of the machine limit)');
  registerBenchQuant(bench);
  registerBenchModel(bench);
  registerBenchTrain(bench);
  registerBenchTeq(bench);
  registerBenchGptq(bench);
  registerBenchEfficientQat(bench);
  registerBenchGptqOps(bench);
  registerBenchMatmul(bench);
  registerBenchLoad(bench);
  registerBenchDecode(bench);
  registerBenchScale(bench);
  registerBenchPrefill(bench);
  registerBenchFptquant(bench);
}
