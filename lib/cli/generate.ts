// quantform generate: stream a continuation of a prompt.
import type { Command } from 'commander';
import { generate } from '../eval/generate.js';
import { intOption, modelFromArgs } from './model-arg.js';

interface GenOpts {
  model?: string;
  tokenizer?: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed?: number;
}

export function registerGenerate(program: Command): void {
  program
    .command('generate')
    .description('generate text from a prompt, streaming tokens as they come')
    .option('--model <path>', 'HF directory, llama2.c .bin or .gguf (default: built-in synthetic model)')
    .option('--tokenizer <path>', 'llama2.c tokenizer.bin when not next to the .bin')
    .option('--prompt <text>', 'prompt (BOS is prepended)', '')
    .option('--max-tokens <n>', 'tokens to generate', intOption, 256)
    .option('--temperature <t>', '0 = greedy', Number, 0)
    .option('--top-p <p>', 'nucleus sampling threshold', Number, 0.9)
    .option('--seed <n>', 'sampling seed', intOption)
    .action(async (o: GenOpts) => {
      const model = await modelFromArgs(o);
      try {
        process.stdout.write(o.prompt);
        const t0 = performance.now();
        let n = 0;
        for await (const t of generate(model, o.prompt, { maxTokens: o.maxTokens, temperature: o.temperature, topP: o.topP, seed: o.seed })) {
          process.stdout.write(t.text);
          n++;
        }
        const s = (performance.now() - t0) / 1000;
        process.stdout.write('\n');
        process.stderr.write(`${n} tokens, ${(n / s).toFixed(1)} tok/s\n`);
      } finally {
        model.dispose();
      }
    });
}
