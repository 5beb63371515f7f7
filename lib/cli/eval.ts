// quantform eval: perplexity of a model on a text file (reference protocol of
// data/reference/*.json), with a progress bar and optional JSON output.
import { readFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import type { MatmulAccuracy } from '../ops/matmul.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import { intOption, modelFromArgs } from './model-arg.js';

interface EvalOpts {
  model?: string;
  tokenizer?: string;
  text: string;
  ctx: number;
  stride?: number;
  maxTokens?: number;
  batch: number;
  accuracy: MatmulAccuracy;
  json?: boolean;
}

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('next-token perplexity of a model on a text file')
    .option('--model <path>', 'HF directory, llama2.c .bin or .gguf (default: built-in synthetic model)')
    .option('--tokenizer <path>', 'llama2.c tokenizer.bin when not next to the .bin')
    .requiredOption('--text <file>', 'UTF-8 text; <|endoftext|> markers split it into separately encoded stories')
    .option('--ctx <n>', 'tokens per window', intOption, 256)
    .option('--stride <n>', 'distance between windows (default: ctx)', intOption)
    .option('--max-tokens <n>', 'score at most n predictions', intOption)
    .option('--batch <n>', 'windows per forward call', intOption, 8)
    .addOption(new Option('--accuracy <a>', "the quantized linears' matmul accuracy (MatmulAccuracy)").choices(['fp32', 'int8', 'bf16']).default('fp32'))
    .option('--json', 'print the result as JSON')
    .action(async (o: EvalOpts) => {
      const model = await modelFromArgs(o, { accuracy: o.accuracy });
      try {
        let text: string;
        try {
          text = readFileSync(o.text, 'utf8');
        } catch (e) {
          throw new QuantformError('QF_IO', `Cannot read --text ${o.text}: ${(e as Error).message}`, { cause: e });
        }
        const bar = new cliProgress.SingleBar({
          format: 'eval |{bar}| {value}/{total} windows | {tps} tok/s | ETA {eta_formatted}',
          stream: process.stderr,
          hideCursor: true,
          etaBuffer: 20,
        }, cliProgress.Presets.shades_classic);
        const t0 = performance.now();
        let started = false;
        const r = await evaluatePerplexity(model, text, { ctx: o.ctx, stride: o.stride, maxTokens: o.maxTokens, batch: o.batch }, {
          onProgress: (p) => {
            if (!started) { bar.start(p.windows, 0, { tps: '-' }); started = true; }
            const tps = p.tokensDone / ((performance.now() - t0) / 1000);
            bar.update(p.windowsDone, { tps: tps.toFixed(0) });
          },
        });
        bar.stop();
        const out = {
          model: o.model ?? 'synthetic:0', accuracy: o.accuracy, text: o.text, ctx: o.ctx, stride: o.stride ?? o.ctx, nIds: r.nIds, nPredicted: r.nPredicted,
          windows: r.windows, meanNll: r.meanNll, ppl: r.ppl, seconds: r.seconds, tokensPerSecond: r.tokensPerSecond,
          perWindowMeanNll: r.perWindowMeanNll,
        };
        if (o.json) console.log(JSON.stringify(out, null, 2));
        else
          console.log(`mean NLL ${r.meanNll.toFixed(8)} nats/token, ppl ${r.ppl.toFixed(6)} over ${r.nPredicted} predictions ` +
            `(${r.windows} windows of ${o.ctx}; ${r.tokensPerSecond.toFixed(0)} tok/s, ${r.seconds.toFixed(2)} s)`);
      } finally {
        model.dispose();
      }
    });
}
