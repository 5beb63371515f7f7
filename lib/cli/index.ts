// quantform command line. Subcommands register themselves here.
import { Command } from 'commander';
import { backendInfo } from '../index.js';
import { QuantformError } from '../errors.js';
import { registerBench } from './bench.js';

const program = new Command();
program.name('quantform').description('Trainable low-bit quantization for Llama-family models').version('0.1.0');

program
  .command('info')
  .description('show CPU features, the kernel tier in use, threads and CUDA availability')
  .option('--json', 'print JSON')
  .action((opts: { json?: boolean }) => {
    const info = backendInfo();
    if (opts.json) console.log(JSON.stringify(info, null, 2));
    else console.log(info);
  });

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
