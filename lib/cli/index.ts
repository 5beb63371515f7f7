// quantform command line. Subcommands register themselves here.
import { Command } from 'commander';
import { backendInfo } from '../index.js';
import { QuantformError } from '../errors.js';
import { registerBench } from './bench.js';
import { registerEval } from './eval.js';
import { registerGenerate } from './generate.js';
import { registerQuantize } from './quantize.js';
import { registerExport } from './export.js';
import { VERSION } from '../version.js';

const program = new Command();
program.name('quantform').description('Trainable low-bit quantization for Llama-family models').version(VERSION);

program
  .command('info')
  .description('show CPU features, the kernel tier in use, threads and CUDA availability')
  .option('--json', 'print JSON')
  .action((opts: { json?: boolean }) => {
    const info = backendInfo();
    if (opts.json) console.log(JSON.stringify(info, null, 2));
    else console.log(info);
  });

registerEval(program);
registerGenerate(program);
registerQuantize(program);
registerExport(program);
registerBench(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  // user errors print one clear line, not a stack
  if (e instanceof QuantformError) {
    console.error(`quantform: ${e.message} [${e.code}]`);
    process.exitCode = 1;
  } else throw e;
}
