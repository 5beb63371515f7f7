// quantform bench fptquant: the stories260K table of issue 11. TinyStories perplexity by the
// shared/data/reference protocol (fp32 3.8361) of W4A16, W4A8KV8 and W4A4KV4 (weights INT4
// symmetric per output channel, activations static per tensor, KV cache static per head),
// every row from the same calibration windows (TinyStories validation stories 201-1000, which
// the evaluation ids, stories 1-63, never see), and the models run on the integer kernels
// they would be saved for (quantizedCheckpoint: what saveGptq + loadModel give).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { calibrationFromFile } from '../engine/calib.js';
import { TrainableLlama } from '../engine/llama.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import type { FptQuantOptions } from '../methods/fptquant.js';
import { quantizedCheckpoint, quantizeModel } from '../methods/quantize-model.js';
import { Model, openCheckpoint } from '../model/model.js';
import '../methods/index.js';
import { intOption } from './model-arg.js';
import { readEvalIds } from './quantize.js';

interface BenchFptOpts {
  shared: string;
  samples: number;
  seqLen: number;
  configs: string;
  ablateInputs?: boolean;
  rows?: string;
  groupSize?: number;
  clipNorm?: number;
  trainWeightRanges?: boolean;
  qpSteps?: number;
  actOrder?: boolean;
  qpLr?: number;
  e2eSteps?: number;
  e2eLr?: number;
  json?: boolean;
}

const CONFIGS: Record<string, { actBits: number; kvBits: number; inputBits?: number[] }> = {
  W4A16: { actBits: 16, kvBits: 16 },
  W4A8KV8: { actBits: 8, kvBits: 8 },
  W4A4KV4: { actBits: 4, kvBits: 4 },
  // which quantizer W4A4KV4 loses its quality to: one of them at 4 bits, every other at 8
  'A4@qkv': { actBits: 8, kvBits: 8, inputBits: [4, 8, 8, 8] },
  'A4@o': { actBits: 8, kvBits: 8, inputBits: [8, 4, 8, 8] },
  'A4@gateup': { actBits: 8, kvBits: 8, inputBits: [8, 8, 4, 8] },
  'A4@down': { actBits: 8, kvBits: 8, inputBits: [8, 8, 8, 4] },
  'KV4': { actBits: 8, kvBits: 4 },
};
const ABLATION = ['A4@qkv', 'A4@o', 'A4@gateup', 'A4@down', 'KV4'];

/** The baselines: no transforms, and weights on min/max ranges as plain RTN / GPTQ have them. */
const NONE = { qk: false, v: false, mlp: false, residualScaling: false, clipNorm: 0, trainWeightRanges: false };
/** The rows: baselines, the method, its options, and the ablation of each transform. */
const ROWS: { key: string; name: string; fpt: FptQuantOptions }[] = [
  { key: 'rtn', name: 'RTN, no transforms (ranges by search)', fpt: { ...NONE, stages: 'none', weights: 'rtn' } },
  { key: 'gptq', name: 'GPTQ, no transforms', fpt: { ...NONE, stages: 'none', weights: 'gptq' } },
  { key: 'quarot', name: 'Hadamard rotation only (QuaRot-style: residual + online before down_proj), GPTQ, no training', fpt: { ...NONE, stages: 'none', residualRotation: true, onlineHadamard: true } },
  { key: 'local', name: 'FPTQuant, local stage only (min/max weight ranges)', fpt: { stages: 'local', clipNorm: 0, trainWeightRanges: false } },
  { key: 'fpt-ref', name: 'FPTQuant, local + end-to-end, min/max weight ranges (the reference)', fpt: { clipNorm: 0, trainWeightRanges: false } },
  { key: 'fpt-clip', name: 'FPTQuant, local + end-to-end, GPTQ clipping search', fpt: { trainWeightRanges: false } },
  { key: 'fpt', name: 'FPTQuant, local + end-to-end, clipping search + ranges trained after GPTQ (default)', fpt: {} },
  { key: 'fpt+rot', name: 'FPTQuant + residual rotation + online Hadamard', fpt: { residualRotation: true, onlineHadamard: true } },
  { key: 'fpt+vh', name: 'FPTQuant, T_v from a Hadamard start', fpt: { valueHadamard: true } },
  { key: 'fpt+rot+vh', name: 'FPTQuant + residual rotation + online Hadamard, T_v from a Hadamard start', fpt: { residualRotation: true, onlineHadamard: true, valueHadamard: true } },
  { key: '-qk', name: 'FPTQuant without T_k', fpt: { qk: false } },
  { key: '-v', name: 'FPTQuant without T_v', fpt: { v: false } },
  { key: '-mlp', name: 'FPTQuant without T_u', fpt: { mlp: false } },
  { key: '-sn', name: 'FPTQuant without S_n', fpt: { residualScaling: false } },
];

export function registerBenchFptquant(bench: Command): void {
  bench
    .command('fptquant')
    .description('stories260K: TinyStories perplexity of W4A16 / W4A8KV8 / W4A4KV4 for RTN, GPTQ, QuaRot-style rotation, FPTQuant (local, local + e2e, options) and each transform removed')
    .option('--shared <dir>', 'the shared/ folder with models/ and data/', '../shared')
    .option('--samples <n>', 'calibration windows', intOption, 128)
    .option('--seq-len <n>', 'tokens per window', intOption, 256)
    .option('--configs <list>', `of ${Object.keys(CONFIGS).join(', ')}`, 'W4A16,W4A8KV8,W4A4KV4')
    .option('--ablate-inputs', `adds the W4A4KV4 ablation configs (${ABLATION.join(', ')}: one quantizer at 4 bits, the others at 8)`)
    .option('--rows <list>', `rows to run (default all): ${ROWS.map((r) => r.key).join(', ')}`)
    .option('--group-size <n>', 'weight group size (default: per output channel)', intOption)
    .option('--clip-norm <p>', "GPTQ's clipping search of the weight ranges, its norm (0: min/max; default: the method's)", Number)
    .option('--act-order', "GPTQ's act-order (columns by decreasing Hessian diagonal; per output channel only)")
    .option('--train-weight-ranges', 'force the range stage after GPTQ on in every row (it is the default of the fpt rows)')
    .option('--qp-steps <n>', 'steps of that stage', intOption)
    .option('--qp-lr <x>', 'its learning rate (log step sizes and ranges)', Number)
    .option('--e2e-steps <n>', 'steps of the end-to-end stage', intOption)
    .option('--e2e-lr <x>', 'its learning rate', Number)
    .option('--json', 'print JSON')
    .action(async (o: BenchFptOpts) => {
      const shared = path.resolve(o.shared);
      const dir = path.join(shared, 'models/stories260K-hf');
      const text = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
      const ref = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
      for (const f of [dir, text, ref]) if (!existsSync(f)) throw new QuantformError('QF_IO', `bench fptquant needs ${f}`);
      const configs = o.configs.split(',').map((c) => c.trim());
      if (o.ablateInputs) configs.push(...ABLATION.filter((c) => !configs.includes(c)));
      for (const c of configs) if (!CONFIGS[c]) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --configs from ${Object.keys(CONFIGS).join(', ')} but received '${c}'`);
      const keys = o.rows ? o.rows.split(',').map((r) => r.trim()) : ROWS.map((r) => r.key);
      const rows = keys.map((k) => {
        const r = ROWS.find((x) => x.key === k);
        if (!r) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --rows from ${ROWS.map((x) => x.key).join(', ')} but received '${k}'`);
        return r;
      });
      const ck = openCheckpoint(dir);
      const model = TrainableLlama.fromCheckpoint(ck);
      const tok = await ck.tokenizer();
      const { ids, window } = readEvalIds(ref);
      const cal = calibrationFromFile(text, (d) => tok.encode(d, { bos: true }), { samples: o.samples, seqLen: o.seqLen, seed: 0, skipDocuments: 200 });
      const log = (s: string) => { if (!o.json) console.log(s); };
      const ppl = async (m: Model) => {
        try {
          return (await evaluatePerplexity(m, { ids }, { ctx: window, stride: window })).ppl;
        } finally {
          m.dispose();
        }
      };
      const fp = await ppl(new Model(ck, tok));
      const gs = o.groupSize ?? 1 << 20;
      const over: FptQuantOptions = {
        ...(o.clipNorm !== undefined ? { clipNorm: o.clipNorm } : {}), ...(o.trainWeightRanges ? { trainWeightRanges: true } : {}),
        ...(o.qpSteps !== undefined ? { qpSteps: o.qpSteps } : {}), ...(o.qpLr !== undefined ? { qpLr: o.qpLr } : {}),
        ...(o.e2eSteps !== undefined ? { e2eSteps: o.e2eSteps } : {}), ...(o.e2eLr !== undefined ? { e2eLr: o.e2eLr } : {}),
      };
      log(`fp32: ppl ${fp.toFixed(4)}; calibration ${o.samples} x ${o.seqLen} tokens (stories 201-1000), weights INT4 symmetric ${gs >= 1 << 20 ? 'per output channel' : `g${gs}`}`);
      const table: { row: string; config: string; ppl: number; seconds: number }[] = [];
      for (const r of rows)
        for (const c of configs) {
          const t0 = performance.now();
          const q = await quantizeModel(model, { method: 'fptquant', bits: 4, groupSize: gs, symmetric: true, calibration: cal, fpt: { ...r.fpt, ...CONFIGS[c], ...over },
            ...(o.actOrder ? { gptq: { actOrder: true } } : {}) });
          const p = await ppl(new Model(quantizedCheckpoint(q, tok), tok));
          const seconds = (performance.now() - t0) / 1000;
          table.push({ row: r.key, config: c, ppl: p, seconds });
          log(`${r.name} ${c}: ppl ${p.toFixed(4)} (${seconds.toFixed(1)} s)`);
        }
      if (o.json) {
        console.log(JSON.stringify({ fp32: fp, groupSize: gs, samples: o.samples, seqLen: o.seqLen, table }, null, 2));
        return;
      }
      console.log(`\n| method (stories260K, TinyStories ppl, fp32 ${fp.toFixed(4)}) | ${configs.join(' | ')} | time per config |`);
      console.log(`|---|${configs.map(() => '---:').join('|')}|---:|`);
      for (const r of rows) {
        const cells = configs.map((c) => table.find((t) => t.row === r.key && t.config === c)!);
        console.log(`| ${r.name} | ${cells.map((x) => x.ppl.toFixed(4)).join(' | ')} | ${cells.map((x) => `${x.seconds.toFixed(0)} s`).join(' / ')} |`);
      }
    });
}
