// quantform bench efficientqat: the stories260K table of issue 10, RTN / GPTQ / TEQ /
// Block-AP / Block-AP + E2E-QP on W4 g32 asym/sym, W3 g32 asym, W2 g32 asym and W4
// per-channel asym (TinyStories perplexity by the shared/data/reference protocol,
// wall time per method), next to the reference implementation's perplexities.
// Calibration: TinyStories stories 201-1000 (the evaluation ids cover stories 1-63).
// Block-AP + E2E-QP is one Block-AP run whose result E2E-QP refines (its time is the
// sum of both phases). The control trains per-group step sizes of the unquantized
// model end to end (the weights are s_g * (w / s_g0) with continuous "codes"), so the
// in-domain fine-tuning share of E2E-QP's gain can be read off.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { calibrationFromFile, type CalibrationSet } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import { e2eControl, EFFICIENTQAT_RECIPES, type EfficientQatOptions } from '../methods/efficientqat.js';
import { modelCheckpoint, quantizedCheckpoint, quantizeModel, type QuantizedModel } from '../methods/quantize-model.js';
import { Model, openCheckpoint } from '../model/model.js';
import type { Bits } from '../ops/quant.js';
import { TrainableLlama } from '../engine/llama.js';
import '../methods/index.js';
import { intOption } from './model-arg.js';
import { readEvalIds } from './quantize.js';

interface BenchEqatOpts {
  shared: string;
  samples: number;
  seqLen: number;
  configs: string;
  seeds?: string;
  methods: string;
  init: string;
  recipe: string;
  teqSteps: number;
  control?: boolean;
  json?: boolean;
  epochs?: number;
  lrQuant?: number;
  lrWeight?: number;
  e2eLr?: number;
  e2eEpochs?: number;
  e2eBatch?: number;
}

/** The reference implementation's perplexities (issue 10: PyTorch, 256 x 256 calibration tokens). */
export const EQAT_CONFIGS: { key: string; name: string; bits: Bits; groupSize: number; symmetric: boolean; ref: Record<string, number> }[] = [
  { key: 'w4g32', name: 'W4 g32 asym', bits: 4, groupSize: 32, symmetric: false, ref: { rtn: 4.141, gptq: 4.038, 'block-ap': 4.029, both: 3.923 } },
  { key: 'w4g32sym', name: 'W4 g32 sym', bits: 4, groupSize: 32, symmetric: true, ref: { rtn: 4.371, gptq: 4.131, 'block-ap': 4.098, both: 4.003 } },
  { key: 'w3g32', name: 'W3 g32 asym', bits: 3, groupSize: 32, symmetric: false, ref: { rtn: 6.534, gptq: 5.368, 'block-ap': 5.038, both: 4.882 } },
  { key: 'w2g32', name: 'W2 g32 asym', bits: 2, groupSize: 32, symmetric: false, ref: { rtn: 281.2, gptq: 121.8, 'block-ap': 76.4, both: 52.9 } },
  // per-channel: one group per row of every linear
  { key: 'w4pc', name: 'W4 per-channel asym', bits: 4, groupSize: 1 << 20, symmetric: false, ref: { rtn: 4.195, gptq: 4.1, 'block-ap': 4.071, both: 4.009 } },
];

const METHODS = ['rtn', 'gptq', 'teq', 'block-ap', 'both'] as const;

export function registerBenchEfficientQat(bench: Command): void {
  bench
    .command('efficientqat')
    .description('stories260K: TinyStories perplexity and wall time of RTN, GPTQ, TEQ, Block-AP and Block-AP + E2E-QP on five configs, vs the reference')
    .option('--shared <dir>', 'the shared/ folder with models/ and data/', '../shared')
    .option('--samples <n>', 'calibration windows', intOption, 256)
    .option('--seq-len <n>', 'tokens per window', intOption, 256)
    .option('--configs <list>', `configs: ${EQAT_CONFIGS.map((c) => c.key).join(',')}`, EQAT_CONFIGS.map((c) => c.key).join(','))
    .option('--seeds <list>', 'calibration seeds (default: 0,1 for W2, 0 otherwise)')
    .option('--methods <list>', `columns: ${METHODS.join(',')}`, METHODS.join(','))
    .option('--recipe <name>', `EfficientQAT hyperparameters: ${Object.keys(EFFICIENTQAT_RECIPES).join(' | ')}`, 'reference')
    .option('--init <rtn|gptq>', "Block-AP's start (overrides the recipe's)", '')
    .option('--teq-steps <n>', 'TEQ steps (TEQ with the extra v->o and up->down scales)', intOption, 1000)
    .option('--control', 'also E2E training of per-group step sizes of the unquantized model (the fine-tuning control)')
    .option('--epochs <n>', 'Block-AP epochs (overrides the recipe)', intOption)
    .option('--lr-quant <x>', 'Block-AP lr of s and z (overrides the recipe)', Number)
    .option('--lr-weight <x>', 'Block-AP lr of weights (overrides the recipe)', Number)
    .option('--e2e-lr <x>', 'E2E-QP lr (overrides the recipe)', Number)
    .option('--e2e-epochs <n>', 'E2E-QP epochs (overrides the recipe)', intOption)
    .option('--e2e-batch <n>', 'E2E-QP windows per step (overrides the recipe)', intOption)
    .option('--json', 'print JSON')
    .action(async (o: BenchEqatOpts) => {
      const shared = path.resolve(o.shared);
      const dir = path.join(shared, 'models/stories260K-hf');
      const text = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
      const ref = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
      for (const f of [dir, text, ref]) if (!existsSync(f)) throw new QuantformError('QF_IO', `bench efficientqat needs ${f}`);
      const recipe = EFFICIENTQAT_RECIPES[o.recipe];
      if (!recipe) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --recipe ${Object.keys(EFFICIENTQAT_RECIPES).join(' or ')} but received '${o.recipe}'`);
      const configs = o.configs.split(',').map((k) => {
        const c = EQAT_CONFIGS.find((x) => x.key === k);
        if (!c) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --configs from ${EQAT_CONFIGS.map((x) => x.key).join(',')} but received '${k}'`);
        return c;
      });
      const methods = o.methods.split(',');
      for (const m of methods)
        if (!(METHODS as readonly string[]).includes(m)) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --methods from ${METHODS.join(',')} but received '${m}'`);
      const seedsOf = (bits: Bits) => (o.seeds ?? (bits === 2 ? '0,1' : '0')).split(',').map(Number);
      const ck = openCheckpoint(dir);
      const model = TrainableLlama.fromCheckpoint(ck);
      const tok = await ck.tokenizer();
      const { ids, window } = readEvalIds(ref);
      const cals = new Map<number, CalibrationSet>();
      const calOf = (seed: number) => {
        let c = cals.get(seed);
        if (!c) cals.set(seed, (c = calibrationFromFile(text, (d) => tok.encode(d, { bos: true }), { samples: o.samples, seqLen: o.seqLen, seed, skipDocuments: 200 })));
        return c;
      };
      const ppl = async (m: Model) => {
        try {
          return (await evaluatePerplexity(m, { ids }, { ctx: window, stride: window })).ppl;
        } finally {
          m.dispose();
        }
      };
      const pplOf = (q: QuantizedModel) => ppl(new Model(quantizedCheckpoint(q, tok), tok));
      const log = (s: string) => { if (!o.json) console.log(s); };
      const fp = await ppl(new Model(ck, tok));
      log(`fp32: ppl ${fp.toFixed(4)}; calibration ${o.samples} x ${o.seqLen} tokens from TinyStories stories 201-1000; recipe '${o.recipe}'`);
      type Cell = { ppl: number[]; seconds: number[] };
      const rows: { config: string; ref: Record<string, number>; cells: Record<string, Cell> }[] = [];
      const timed = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
        const t0 = performance.now();
        const r = await fn();
        return [r, (performance.now() - t0) / 1000];
      };
      for (const c of configs) {
        const base = { bits: c.bits, groupSize: c.groupSize, symmetric: c.symmetric };
        const eq: EfficientQatOptions = { ...recipe(c.bits) };
        if (o.init) eq.init = o.init as 'rtn' | 'gptq';
        if (o.epochs !== undefined) eq.epochs = o.epochs;
        if (o.lrQuant !== undefined) eq.lrQuant = o.lrQuant;
        if (o.lrWeight !== undefined) eq.lrWeight = o.lrWeight;
        if (o.e2eLr !== undefined) eq.e2eLr = o.e2eLr;
        if (o.e2eEpochs !== undefined) eq.e2eEpochs = o.e2eEpochs;
        if (o.e2eBatch !== undefined) eq.e2eBatchSize = o.e2eBatch;
        const cells: Record<string, Cell> = {};
        const put = (m: string, p: number, s: number) => {
          cells[m] ??= { ppl: [], seconds: [] };
          cells[m].ppl.push(p);
          cells[m].seconds.push(s);
          log(`${c.name} ${m}: ppl ${p.toFixed(4)} (reference ${c.ref[m] ?? '-'}), ${s.toFixed(1)} s`);
        };
        if (methods.includes('rtn')) {
          const [q, s] = await timed(() => quantizeModel(model, { method: 'rtn', ...base }));
          put('rtn', await pplOf(q), s);
        }
        for (const seed of seedsOf(c.bits)) {
          const calibration = calOf(seed);
          if (methods.includes('gptq')) {
            const [q, s] = await timed(() => quantizeModel(model, { method: 'gptq', ...base, calibration }));
            put('gptq', await pplOf(q), s);
          }
          if (methods.includes('teq')) {
            const [q, s] = await timed(() => quantizeModel(model, { method: 'teq', ...base, calibration, steps: o.teqSteps, extraScales: true }));
            put('teq', await pplOf(q), s);
          }
          if (methods.includes('block-ap') || methods.includes('both')) {
            const [ap, s1] = await timed(() => quantizeModel(model, { method: 'efficientqat', ...base, calibration, seed, efficientqat: { ...eq, phases: 'block-ap' } }));
            if (methods.includes('block-ap')) put('block-ap', await pplOf(ap), s1);
            if (methods.includes('both')) {
              const [q, s2] = await timed(() => quantizeModel(ap.model, { method: 'efficientqat', ...base, calibration, seed,
                efficientqat: { ...eq, phases: 'e2e-qp', start: ap.linears } }));
              put('both', await pplOf(q), s1 + s2);
            }
          }
        }
        rows.push({ config: c.name, ref: c.ref, cells });
      }
      let control: { ppl: number; seconds: number } | null = null;
      if (o.control) {
        const eq = recipe(4);
        const [m, s] = await timed(() => e2eControl(model, calOf(0), { ...eq, ...(o.e2eLr !== undefined ? { e2eLr: o.e2eLr } : {}),
          ...(o.e2eEpochs !== undefined ? { e2eEpochs: o.e2eEpochs } : {}) }));
        control = { ppl: await ppl(new Model(modelCheckpoint(m, tok), tok)), seconds: s };
        log(`control (step sizes of the unquantized model, end to end): ppl ${control.ppl.toFixed(4)} (reference 3.749), ${s.toFixed(1)} s`);
      }
      if (o.json) {
        console.log(JSON.stringify({ samples: o.samples, seqLen: o.seqLen, recipe: o.recipe, fp32: fp, rows, control }, null, 2));
        return;
      }
      const fmt = (p: number) => (p >= 100 ? p.toFixed(1) : p.toFixed(3));
      const cols = METHODS.filter((m) => methods.includes(m));
      const title: Record<string, string> = { rtn: 'RTN', gptq: 'GPTQ', teq: 'TEQ', 'block-ap': 'Block-AP', both: 'Block-AP + E2E-QP' };
      console.log(`\n| config | ${cols.map((m) => `${title[m]} (ref)`).join(' | ')} | ${cols.map((m) => `${title[m]} s`).join(' | ')} |`);
      console.log(`| --- | ${cols.map(() => '---:').join(' | ')} | ${cols.map(() => '---:').join(' | ')} |`);
      for (const r of rows) {
        const cell = (m: string) => {
          const x = r.cells[m];
          if (!x) return '-';
          const refv = r.ref[m];
          return `${x.ppl.map((p) => fmt(p) + (refv !== undefined && p > refv ? '*' : '')).join(' / ')}${refv !== undefined ? ` (${fmt(refv)})` : ''}`;
        };
        const secs = (m: string) => (r.cells[m] ? r.cells[m].seconds.map((s) => s.toFixed(0)).join(' / ') : '-');
        console.log(`| ${r.config} | ${cols.map(cell).join(' | ')} | ${cols.map(secs).join(' | ')} |`);
      }
      if (control) console.log(`\ncontrol, step sizes of the unquantized model trained end to end: ${control.ppl.toFixed(3)} (reference 3.749), ${control.seconds.toFixed(0)} s`);
      console.log(`fp32 ${fp.toFixed(3)}; * above the reference; several values: one per calibration seed; times on a shared 2-core machine`);
    });
}
