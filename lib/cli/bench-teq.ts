// quantform bench teq: the stories260K table fp32 / RTN / TEQ (TinyStories
// perplexity by the shared/data/reference protocol, wall time) for W4 g32 asym,
// W4 g32 sym and W3 g32 asym. Calibration: TinyStories stories 201-1000 (the
// evaluation ids cover stories 1-63), or --calib.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { calibrationFromFile } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import { quantizedCheckpoint, quantizeModel } from '../methods/quantize-model.js';
import { Model, openCheckpoint } from '../model/model.js';
import type { Bits } from '../ops/quant.js';
import { TrainableLlama } from '../engine/llama.js';
import '../methods/index.js';
import { intOption } from './model-arg.js';
import { readEvalIds } from './quantize.js';

interface BenchTeqOpts {
  shared: string;
  steps: number;
  samples: number;
  seqLen: number;
  batchSize: number;
  loss: 'e2e' | 'block';
  extra?: boolean;
  json?: boolean;
}

export function registerBenchTeq(bench: Command): void {
  bench
    .command('teq')
    .description('stories260K: TinyStories perplexity and wall time of fp32, RTN and TEQ (W4 g32 asym/sym, W3 g32 asym)')
    .option('--shared <dir>', 'the shared/ folder with models/ and data/', '../shared')
    .option('--steps <n>', 'TEQ steps', intOption, 1000)
    .option('--samples <n>', 'calibration windows', intOption, 128)
    .option('--seq-len <n>', 'tokens per window', intOption, 256)
    .option('--batch-size <n>', 'windows per step', intOption, 2)
    .option('--loss <kind>', 'e2e | block', 'e2e')
    .option('--extra', "also rows for TEQ with the extra v->o and up->down scales ('teq+')")
    .option('--json', 'print JSON')
    .action(async (o: BenchTeqOpts) => {
      const shared = path.resolve(o.shared);
      const dir = path.join(shared, 'models/stories260K-hf');
      const text = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
      const ref = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
      for (const f of [dir, text, ref]) if (!existsSync(f)) throw new QuantformError('QF_IO', `bench teq needs ${f}`);
      const ck = openCheckpoint(dir);
      const model = TrainableLlama.fromCheckpoint(ck);
      const tok = await ck.tokenizer();
      const { ids, window } = readEvalIds(ref);
      const cal = calibrationFromFile(text, (d) => tok.encode(d, { bos: true }), { samples: o.samples, seqLen: o.seqLen, skipDocuments: 200 });
      const rows: { config: string; method: string; ppl: number; seconds: number }[] = [];
      // the one evaluator on loaded models; quantized results run on the INT4 kernels as their GPTQ export would
      const ppl = async (m: Model) => {
        try {
          return await evaluatePerplexity(m, { ids }, { ctx: window, stride: window });
        } finally {
          m.dispose();
        }
      };
      let t0 = performance.now();
      const fp = await ppl(new Model(ck, tok));
      rows.push({ config: '-', method: 'fp32', ppl: fp.ppl, seconds: (performance.now() - t0) / 1000 });
      const log = (s: string) => { if (!o.json) console.log(s); };
      log(`fp32: ppl ${fp.ppl.toFixed(4)} (reference 3.836085)`);
      for (const [bits, sym] of [[4, false], [4, true], [3, false]] as const) {
        const config = `W${bits} g32 ${sym ? 'sym' : 'asym'}`;
        for (const method of o.extra ? ['rtn', 'teq', 'teq+'] : ['rtn', 'teq']) {
          t0 = performance.now();
          const q = await quantizeModel(model, { method: method === 'teq+' ? 'teq' : method, bits: bits as Bits, groupSize: 32, symmetric: sym,
            calibration: cal, steps: o.steps, batchSize: o.batchSize, loss: o.loss, extraScales: method === 'teq+' });
          const seconds = (performance.now() - t0) / 1000;
          const p = await ppl(new Model(quantizedCheckpoint(q, tok), tok));
          rows.push({ config, method, ppl: p.ppl, seconds });
          log(`${config} ${method}: ppl ${p.ppl.toFixed(4)}, quantize ${seconds.toFixed(1)} s`);
        }
      }
      if (o.json) {
        console.log(JSON.stringify({ steps: o.steps, samples: o.samples, seqLen: o.seqLen, batchSize: o.batchSize, loss: o.loss, rows }, null, 2));
        return;
      }
      console.log(`\n| config | method | TinyStories ppl | quantize wall time (s) |\n| --- | --- | ---: | ---: |`);
      for (const r of rows) console.log(`| ${r.config} | ${r.method} | ${r.ppl.toFixed(4)} | ${r.method === 'fp32' ? '-' : r.seconds.toFixed(1)} |`);
    });
}
