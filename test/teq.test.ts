// TEQ end to end: function preservation of the merge, training reduces the loss,
// checkpoints resume to the same result, bad input gets clear errors, and the GPTQ
// checkpoint loads back to exactly the weights that were quantized.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrationFromFile, calibrationFromText } from '../lib/engine/calib.js';
import { saveGptq } from '../lib/export/save.js';
import { readSafetensorsMetadata } from '../lib/io/safetensors.js';
import { mergeTeqScales } from '../lib/methods/teq.js';
import '../lib/methods/index.js';
import { dequantizedModel, quantizedCheckpoint, quantizeModel } from '../lib/methods/quantize-model.js';
import { Model, openCheckpoint } from '../lib/model/model.js';
import { QuantizedLinear } from '../lib/model/linear.js';
import { ByteTokenizer } from '../lib/model/synthetic.js';
import type { Checkpoint } from '../lib/model/checkpoint.js';
import { TrainableLlama } from '../lib/engine/llama.js';
import { evaluatePerplexity } from '../lib/eval/perplexity.js';
import { maxRel, rng } from './helpers/numeric.js';
import { syntheticModel } from './helpers/models.js';

const shared = path.resolve(process.cwd(), '../shared');
const modelDir = path.join(shared, 'models/stories260K-hf');
const tsFile = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const haveModel = existsSync(modelDir) && existsSync(tsFile);
if (!haveModel) console.log(`teq: ${modelDir} not found, stories260K tests skipped`);

/** logits of the transformed model vs the original, max |diff| / max |logit| */
const PRESERVE_REL_TOL = 1e-5;

/** A training model and the tokenizer of any checkpoint path (the loader every format shares). */
async function trainable(p: string): Promise<{ m: TrainableLlama; encode: (d: string) => number[]; tok: Awaited<ReturnType<Checkpoint['tokenizer']>> }> {
  const ck = openCheckpoint(p);
  try {
    const tok = await ck.tokenizer();
    return { m: TrainableLlama.fromCheckpoint(ck), encode: (d) => tok.encode(d, { bos: true }), tok };
  } finally {
    ck.close();
  }
}

describe('TEQ merge preserves the function (quantization off)', () => {
  for (const extra of [false, true])
    it(`synthetic model, random scales in [0.3, 3]${extra ? ', with the v->o and up->down scales' : ''}`, async () => {
      const m = syntheticModel(1);
      const t = m.clone();
      const r = rng(2);
      const alpha = Float32Array.from({ length: m.shape.layers * m.alphaPerLayer(extra) }, () => 0.3 + 2.7 * r());
      mergeTeqScales(t, alpha, extra);
      const tokens = Int32Array.from({ length: 2 * 20 }, (_, i) => (i * 37) % 64);
      const a = await m.logits(tokens, 2, 20), b = await t.logits(tokens, 2, 20);
      expect(maxRel(b, a)).toBeLessThan(PRESERVE_REL_TOL);
      // and the transform is not the identity: the weights did change
      expect(t.linear(0, 'q_proj')[1]).not.toBe(m.linear(0, 'q_proj')[1]);
      if (extra) expect(t.linear(1, 'down_proj')[1]).not.toBe(m.linear(1, 'down_proj')[1]);
    });

  it.skipIf(!haveModel)('stories260K (GQA), with the extra scales', async () => {
    const { m } = await trainable(modelDir);
    const t = m.clone();
    const r = rng(3);
    mergeTeqScales(t, Float32Array.from({ length: m.shape.layers * m.alphaPerLayer(true) }, () => 0.5 + 1.5 * r()), true);
    const tokens = Int32Array.from({ length: 64 }, (_, i) => 1 + ((i * 101) % 500));
    expect(maxRel(await t.logits(tokens, 1, 64), await m.logits(tokens, 1, 64))).toBeLessThan(PRESERVE_REL_TOL);
  });
});

const synthCal = () => calibrationFromText('x'.repeat(3000), (d) => Array.from(d, (_, i) => (i * 7919 + (i >> 3)) % 64), { samples: 4, seqLen: 32, seed: 1 });

describe('TEQ training', () => {
  it.skipIf(!haveModel)('lowers the training loss on a fixed batch of stories260K (e2e and block-wise)', async () => {
    const { m, encode } = await trainable(modelDir);
    const cal = calibrationFromFile(tsFile, encode, { samples: 4, seqLen: 128, skipDocuments: 200 });
    for (const loss of ['e2e', 'block'] as const) {
      const steps = 40;
      const q = await quantizeModel(m, { method: 'teq', bits: 3, groupSize: 32, calibration: cal, steps, batchSize: 4, lr: 2e-3, warmup: 0, schedule: 'constant', loss });
      const c = q.report.lossCurve;
      expect(c.length).toBe(loss === 'e2e' ? steps : steps * m.shape.layers);
      const seg = c.slice(0, steps);  // e2e: the run; block: the first block
      const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
      expect(mean(seg.slice(-5))).toBeLessThan(seg[0]);
    }
  });

  it('an interrupted run resumes to the same result as an uninterrupted one', async () => {
    const m = syntheticModel(5);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-teq-'));
    try {
      const opts = { method: 'teq', bits: 4 as const, groupSize: 16, calibration: synthCal(), steps: 12, batchSize: 2 };
      const full = await quantizeModel(m, opts);
      const ckpt = path.join(dir, 'ck.safetensors');
      const abort = new AbortController();
      await expect(quantizeModel(m, opts, { checkpoint: { path: ckpt, every: 4 }, signal: abort.signal, onProgress: (e) => { if (e.step === 7) abort.abort(); } }))
        .rejects.toMatchObject({ code: 'QF_ABORTED' });
      expect(readSafetensorsMetadata(ckpt).step).toBe('7');
      const resumed = await quantizeModel(m, opts, { checkpoint: { path: ckpt, every: 4 }, resume: true });
      expect(resumed.report.lossCurve).toEqual(full.report.lossCurve);
      for (const [name, q] of full.linears) expect(resumed.linears.get(name)!.codes).toEqual(q.codes);
      // a checkpoint from another configuration is refused
      await expect(quantizeModel(m, { ...opts, bits: 3 }, { checkpoint: { path: ckpt }, resume: true })).rejects.toThrow(/another model, calibration set or configuration/);
      await expect(quantizeModel(syntheticModel(6), opts, { checkpoint: { path: ckpt }, resume: true })).rejects.toThrow(/another model/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('a NaN loss stops with a clear error and keeps the last good checkpoint', async () => {
    const m = syntheticModel(7);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-teq-'));
    try {
      const ckpt = path.join(dir, 'ck.safetensors');
      // an absurd learning rate drives the scales to Inf within a few steps
      await expect(quantizeModel(m, { method: 'teq', bits: 4, groupSize: 16, calibration: synthCal(), steps: 50, batchSize: 2, lr: 1e30, warmup: 0, schedule: 'constant' },
        { checkpoint: { path: ckpt, every: 1 } })).rejects.toMatchObject({ code: 'QF_NON_FINITE', message: expect.stringMatching(/loss became NaN at step \d+/) });
      const meta = readSafetensorsMetadata(ckpt);
      expect(JSON.parse(meta.lossCurve).every(Number.isFinite)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('rejects bad input with named parameters', async () => {
    const m = syntheticModel(8);
    const long = calibrationFromText('x'.repeat(300), (d) => Array.from(d, () => 5), { samples: 1, seqLen: 128 });
    await expect(quantizeModel(m, { method: 'teq', bits: 4, calibration: long })).rejects.toThrow(/Expected seqLen <= 64 \(the model's context\) for seqLen but received 128/);
    await expect(quantizeModel(m, { method: 'teq', bits: 4 })).rejects.toThrow(/needs calibration data/);
    await expect(quantizeModel(m, { method: 'gptq-magic', bits: 4 })).rejects.toThrow(/Expected one of 'rtn', 'teq', 'gptq', 'efficientqat', 'fptquant' for method but received 'gptq-magic'/);
    await expect(quantizeModel(m, { method: 'rtn', bits: 5 as never })).rejects.toThrow(/bits/);
  });
});

describe('GPTQ checkpoint round trip', () => {
  it('saves atomically and loads back exactly the quantized weights', async () => {
    const m = syntheticModel(9);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-gptq-'));
    try {
      for (const sym of [false, true]) {
        const q = await quantizeModel(m, { method: 'teq', bits: 4, groupSize: 16, symmetric: sym, calibration: synthCal(), steps: 5 });
        const out = path.join(dir, `m-${sym}`);
        saveGptq(q, out);
        expect(() => saveGptq(q, out)).toThrow(/already exists/);
        const cfg = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
        expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 16, sym, desc_act: false, checkpoint_format: sym ? 'gptq' : 'gptq_v2' });
        const back = TrainableLlama.fromCheckpoint(openCheckpoint(out));
        const want = dequantizedModel(q);
        for (let l = 0; l < m.shape.layers; l++) expect(back.blocks[l]).toEqual(want.blocks[l]);
        expect(back.embed).toEqual(want.embed);
        // the runtime's loader (eval, generate) opens it too, dequantizing to fp32
        const ck = openCheckpoint(out);
        expect(ck.weight('layers.1.w_down')).toEqual(want.linear(1, 'down_proj'));
        expect(ck.weight('layers.0.attn_norm')).toEqual(want.norm(0, 'input'));
        // loaded as a model, its linears stay packed and run on the INT4 kernels;
        // the same checkpoint forced through fp32 dequantization gives the same logits
        const onKernels = new Model(ck, new ByteTokenizer(ck.config.vocabSize));
        const ql = onKernels.linear('layers.1.w_down');
        expect(ql).toBeInstanceOf(QuantizedLinear);
        expect((ql as QuantizedLinear).weight).toMatchObject({ bits: 4, groupSize: 16, symmetric: sym });
        const fp32Only: Checkpoint = { format: ck.format, path: ck.path, config: ck.config, weight: (n) => ck.weight(n),
          tokenizer: () => ck.tokenizer(), close: () => {} };
        const viaFp32 = new Model(fp32Only, new ByteTokenizer(ck.config.vocabSize));
        const tokens = [1, 5, 9, 13, 2, 7];
        const a = onKernels.forward(tokens).logits, b = viaFp32.forward(tokens).logits;
        let num = 0, den = 0;
        for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
        expect(num / den).toBeLessThan(1e-9); // kernels vs GEMM on the dequantized weights: float rounding only
        onKernels.dispose();
        viaFp32.dispose();
        ck.close();
      }
      expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it.skipIf(!haveModel)('stories260K: TEQ W3 beats RTN W3 on held-out TinyStories windows after 150 steps', async () => {
    const { m, encode, tok } = await trainable(modelDir);
    const cal = calibrationFromFile(tsFile, encode, { samples: 32, seqLen: 256, skipDocuments: 200 });
    const ids: number[] = JSON.parse(readFileSync(path.join(shared, 'data/reference/ppl_tinystories_tok512.json'), 'utf8')).token_ids.slice(0, 16 * 256 + 1);
    // the one evaluator, on the INT4 kernels the saved checkpoint would run on
    const ppl = async (q: Awaited<ReturnType<typeof quantizeModel>>) => {
      const model = new Model(quantizedCheckpoint(q, tok), tok);
      try {
        return (await evaluatePerplexity(model, { ids }, { ctx: 256, stride: 256 })).ppl;
      } finally {
        model.dispose();
      }
    };
    const rtn = await ppl(await quantizeModel(m, { method: 'rtn', bits: 3, groupSize: 32 }));
    const teq = await ppl(await quantizeModel(m, { method: 'teq', bits: 3, groupSize: 32, calibration: cal, steps: 150 }));
    expect(teq).toBeLessThan(rtn);
  });
});
