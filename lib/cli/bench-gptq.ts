// quantform bench gptq: the stories260K table of issue 10 for RTN and GPTQ (TinyStories
// perplexity by the shared/data/reference protocol, wall time per config) on the five
// configs W4 g32 asym/sym, W3 g32 asym, W2 g32 asym and W4 per-channel asym, with
// GPTQ run once per calibration seed. Calibration: TinyStories stories 201-1000 (the
// evaluation ids cover stories 1-63).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { calibrationFromFile } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import { quantizedCheckpoint, quantizeModel, type QuantizedModel } from '../methods/quantize-model.js';
import { Model, openCheckpoint } from '../model/model.js';
import type { Bits } from '../ops/quant.js';
import { TrainableLlama } from '../engine/llama.js';
import '../methods/index.js';
import { intOption } from './model-arg.js';
import { readEvalIds } from './quantize.js';

interface BenchGptqOpts {
  shared: string;
  samples: number;
  seqLen: number;
  seeds: string;
  damp: number;
  paramsFrom: 'updated' | 'batch-start' | 'best';
  json?: boolean;
}

/** The reference implementation's perplexities (issue 10: PyTorch, 256 x 256 calibration tokens). */
const CONFIGS: { name: string; bits: Bits; groupSize: number; symmetric: boolean; refRtn: number; refGptq: number }[] = [
  { name: 'W4 g32 asym', bits: 4, groupSize: 32, symmetric: false, refRtn: 4.141, refGptq: 4.038 },
  { name: 'W4 g32 sym', bits: 4, groupSize: 32, symmetric: true, refRtn: 4.371, refGptq: 4.131 },
  { name: 'W3 g32 asym', bits: 3, groupSize: 32, symmetric: false, refRtn: 6.534, refGptq: 5.368 },
  { name: 'W2 g32 asym', bits: 2, groupSize: 32, symmetric: false, refRtn: 281.2, refGptq: 121.8 },
  // per-channel: one group per row of every linear (group size capped at its K)
  { name: 'W4 per-channel asym', bits: 4, groupSize: 1 << 20, symmetric: false, refRtn: 4.195, refGptq: 4.1 },
];

export function registerBenchGptq(bench: Command): void {
  bench
    .command('gptq')
    .description('stories260K: TinyStories perplexity and wall time of RTN and GPTQ on W4/W3/W2 g32 and W4 per-channel, vs the reference')
    .option('--shared <dir>', 'the shared/ folder with models/ and data/', '../shared')
    .option('--samples <n>', 'calibration windows', intOption, 256)
    .option('--seq-len <n>', 'tokens per window', intOption, 256)
    .option('--seeds <list>', 'calibration seeds, one GPTQ run each', '0,1')
    .option('--damp <x>', 'fraction of the mean Hessian diagonal added to it', (v: string) => Number(v), 0.01)
    .option('--params-from <from>', "group parameters from the 'updated' or the 'batch-start' weights, or the 'best' of both", 'updated')
    .option('--json', 'print JSON')
    .action(async (o: BenchGptqOpts) => {
      const shared = path.resolve(o.shared);
      const dir = path.join(shared, 'models/stories260K-hf');
      const text = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
      const ref = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
      for (const f of [dir, text, ref]) if (!existsSync(f)) throw new QuantformError('QF_IO', `bench gptq needs ${f}`);
      const seeds = o.seeds.split(',').map((s) => Number(s));
      if (seeds.some((s) => !Number.isInteger(s) || s < 0)) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --seeds like '0,1' but received '${o.seeds}'`);
      const ck = openCheckpoint(dir);
      const model = TrainableLlama.fromCheckpoint(ck);
      const tok = await ck.tokenizer();
      const { ids, window } = readEvalIds(ref);
      const cals = seeds.map((seed) => calibrationFromFile(text, (d) => tok.encode(d, { bos: true }), { samples: o.samples, seqLen: o.seqLen, seed, skipDocuments: 200 }));
      const log = (s: string) => { if (!o.json) console.log(s); };
      // the one evaluator on loaded models; quantized results run on the kernels their GPTQ export would
      const ppl = async (m: Model) => {
        try {
          return await evaluatePerplexity(m, { ids }, { ctx: window, stride: window });
        } finally {
          m.dispose();
        }
      };
      const pplOf = (q: QuantizedModel) => ppl(new Model(quantizedCheckpoint(q, tok), tok));
      const fp = await ppl(new Model(ck, tok));
      log(`fp32: ppl ${fp.ppl.toFixed(4)}; calibration ${o.samples} x ${o.seqLen} tokens, seeds ${seeds.join(', ')}, damp ${o.damp}, group parameters from '${o.paramsFrom}'`);
      const rows: { config: string; rtn: number; gptq: number[]; gptqSeconds: number[]; refRtn: number; refGptq: number }[] = [];
      for (const c of CONFIGS) {
        const base = { bits: c.bits, groupSize: c.groupSize, symmetric: c.symmetric };
        const rtn = (await pplOf(await quantizeModel(model, { method: 'rtn', ...base }))).ppl;
        const gptq: number[] = [], secs: number[] = [];
        for (const cal of cals) {
          const t0 = performance.now();
          const q = await quantizeModel(model, { method: 'gptq', ...base, calibration: cal, gptq: { damp: o.damp, paramsFrom: o.paramsFrom } });
          secs.push((performance.now() - t0) / 1000);
          gptq.push((await pplOf(q)).ppl);
        }
        rows.push({ config: c.name, rtn, gptq, gptqSeconds: secs, refRtn: c.refRtn, refGptq: c.refGptq });
        log(`${c.name}: RTN ${rtn.toFixed(4)}, GPTQ ${gptq.map((p) => p.toFixed(4)).join(' / ')} (reference ${c.refGptq}), ${secs.map((s) => s.toFixed(1)).join(' / ')} s`);
      }
      if (o.json) {
        console.log(JSON.stringify({ samples: o.samples, seqLen: o.seqLen, seeds, damp: o.damp, paramsFrom: o.paramsFrom, fp32: fp.ppl, rows }, null, 2));
        return;
      }
      const fmt = (p: number) => (p >= 100 ? p.toFixed(1) : p.toFixed(3));
      console.log(`\n| config | RTN | GPTQ (seed ${seeds.join(' / ')}) | reference RTN | reference GPTQ | GPTQ wall time (s) |\n| --- | ---: | ---: | ---: | ---: | ---: |`);
      for (const r of rows)
        console.log(`| ${r.config} | ${fmt(r.rtn)} | ${r.gptq.map((p) => fmt(p) + (p <= r.refGptq ? '' : ' (above)')).join(' / ')} | ${fmt(r.refRtn)} | ${fmt(r.refGptq)} | ${r.gptqSeconds.map((s) => s.toFixed(1)).join(' / ')} |`);
      console.log('(wall times include the calibration forwards; timings on a shared machine are noisy)');
    });
}
