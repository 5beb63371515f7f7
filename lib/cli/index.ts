// quantform command line. Subcommands register themselves here.
import { Command } from 'commander';
import { backendInfo } from '../index.js';
import { benchCommand } from './bench.js';
import { registerBenchMatmul } from './bench-matmul.js';

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

registerBenchMatmul(benchCommand(program));

await program.parseAsync(process.argv);
