// EfficientQAT end to end on short runs: Block-AP lowers every block's reconstruction
// loss and leaves weights that are exactly their saved codes; E2E-QP keeps codes and
// zero points, trains the step sizes and lowers the cross-entropy; from GPTQ it starts
// at GPTQ's codes; the result saves as GPTQ and loads back to the same logits;
// interrupted runs resume to the same result (inside Block-AP and inside E2E-QP); a
// NaN loss keeps the last good checkpoint; bad input is refused by name; streamed from a
// checkpoint with the activations spilled to disk it gives the in-memory run's bits. On
// stories260K (when ../shared is present) one short run beats RTN on held-out stories.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrationFromFile, calibrationFromText } from '../lib/engine/calib.js';
import { saveGptq } from '../lib/export/save.js';
import { readSafetensorsMetadata } from '../lib/io/safetensors.js';
import '../lib/methods/index.js';
import { checkpointLinears, checkStart, cosineToFloor, type EfficientQatOptions } from '../lib/methods/efficientqat.js';
import { quantizeCheckpoint, quantizedCheckpoint, quantizeModel, quantizePlan, type QuantizedModel } from '../lib/methods/quantize-model.js';
import { Model, openCheckpoint } from '../lib/model/model.js';
import { ByteTokenizer, SyntheticCheckpoint } from '../lib/model/synthetic.js';
import { TrainableLlama } from '../lib/engine/llama.js';
import { evaluatePerplexity } from '../lib/eval/perplexity.js';
import { readEvalIds } from '../lib/cli/quantize.js';
import { dequantize } from '../lib/ops/quant.js';
import { sameBits } from './helpers/numeric.js';
import { syntheticModel } from './helpers/models.js';

const shared = path.resolve(process.cwd(), '../shared');
const modelDir = path.join(shared, 'models/stories260K-hf');
const tsFile = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const evalFile = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const haveModel = existsSync(modelDir) && existsSync(tsFile) && existsSync(evalFile);
if (!haveModel) console.log(`efficientqat: ${modelDir} not found, the stories260K case is skipped`);

const cal = (samples = 8) => calibrationFromText('x'.repeat(4000), (d) => Array.from(d, (_, i) => (i * 7919 + (i >> 3)) % 64), { samples, seqLen: 32, seed: 1 });
const base = { method: 'efficientqat', bits: 3 as const, groupSize: 16, symmetric: false };
// learning rates for a random model that has no structure to keep: large enough to move in a few steps
const fast: EfficientQatOptions = { epochs: 3, lrQuant: 2e-3, lrWeight: 1e-3, e2eEpochs: 6, e2eBatchSize: 4, e2eLr: 3e-3 };
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

describe('Block-AP', () => {
  it('lowers every block\'s reconstruction loss; the block\'s weights are exactly its saved codes', async () => {
    const m = syntheticModel(21);
    const q = await quantizeModel(m, { ...base, calibration: cal(), efficientqat: { ...fast, phases: 'block-ap' } });
    const curves = q.report.lossCurves!;
    expect(curves.map((c) => c.label)).toEqual(['Block-AP block 0 (MSE)', 'Block-AP block 1 (MSE)']);
    for (const c of curves) {
      expect(c.losses.length).toBe(3 * 4);  // 3 epochs of 8 windows in batches of 2
      expect(mean(c.losses.slice(-3)), c.label).toBeLessThan(0.8 * c.losses[0]);
    }
    for (const [name, t] of q.linears) {
      const [, , l, , n] = name.split('.');
      const lin = { q_proj: 'q_proj', k_proj: 'k_proj', v_proj: 'v_proj', o_proj: 'o_proj', gate_proj: 'gate_proj', up_proj: 'up_proj', down_proj: 'down_proj' }[n]!;
      expect(sameBits(q.model.linear(Number(l), lin as 'q_proj'), dequantize(t).data as Float32Array), name).toBe(true);
      expect(t.paramDtype).toBe('f16');
    }
    // the norms trained too
    expect(sameBits(q.model.norm(0, 'input'), m.norm(0, 'input'))).toBe(false);
  });

  it('the schedule is the reference\'s cosine to lr / 20, no warm-up', () => {
    expect(cosineToFloor(1e-4, 0, 100, 20)).toBeCloseTo(1e-4, 12);
    expect(cosineToFloor(1e-4, 50, 100, 20)).toBeCloseTo(0.5 * (1e-4 + 5e-6), 12);
    expect(cosineToFloor(1e-4, 100, 100, 20)).toBeCloseTo(5e-6, 12);
  });
});

describe('E2E-QP', () => {
  it('keeps codes and zero points, trains the step sizes, lowers the cross-entropy; saved, it loads to the same logits', async () => {
    const m = syntheticModel(22);
    const ap = await quantizeModel(m, { ...base, calibration: cal(), efficientqat: { ...fast, phases: 'block-ap' } });
    const q = await quantizeModel(ap.model, { ...base, calibration: cal(), efficientqat: { ...fast, phases: 'e2e-qp', start: ap.linears } });
    const c = q.report.lossCurves!;
    expect(c.map((x) => x.label)).toEqual(['E2E-QP (cross-entropy)']);
    expect(c[0].losses.length).toBe(6 * 2);
    expect(mean(c[0].losses.slice(-2))).toBeLessThan(c[0].losses[0]);
    let changed = 0;
    for (const [name, t] of q.linears) {
      const s = ap.linears.get(name)!;
      expect(t.codes, name).toEqual(s.codes);
      expect(t.zeros, name).toEqual(s.zeros);
      changed += t.scales.some((v, i) => v !== s.scales[i]) ? 1 : 0;
    }
    expect(changed).toBe(q.linears.size);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-eqat-'));
    try {
      const tok = new ByteTokenizer(64);
      saveGptq(q, path.join(dir, 'out'));
      const loaded = new Model(openCheckpoint(path.join(dir, 'out')), tok);
      const mem = new Model(quantizedCheckpoint(q, tok), tok);
      try {
        const ids = Array.from({ length: 20 }, (_, i) => (i * 5) % 64);
        expect(sameBits(loaded.forward(ids).logits, mem.forward(ids).logits)).toBe(true);
      } finally {
        loaded.dispose();
        mem.dispose();
      }
      // E2E-QP alone from the saved checkpoint (its bits, group size and symmetry) refines it again
      const ck = openCheckpoint(path.join(dir, 'out'));
      const again = await quantizeModel(TrainableLlama.fromCheckpoint(ck), { ...base, calibration: cal(),
        efficientqat: { ...fast, phases: 'e2e-qp', e2eEpochs: 1, start: checkpointLinears(ck).linears } });
      ck.close();
      for (const [name, t] of again.linears) expect(t.codes, name).toEqual(q.linears.get(name)!.codes);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('from GPTQ (init gptq, no Block-AP, lr 0) the result is GPTQ\'s codes and scales, bit for bit', async () => {
    const m = syntheticModel(23);
    const g = await quantizeModel(m, { ...base, method: 'gptq', calibration: cal() });
    const q = await quantizeModel(m, { ...base, calibration: cal(), efficientqat: { phases: 'e2e-qp', init: 'gptq', e2eLr: 0, e2eEpochs: 1 } });
    for (const [name, t] of g.linears) {
      const r = q.linears.get(name)!;
      expect(r.codes, name).toEqual(t.codes);
      expect(r.scales, name).toEqual(t.scales);
      expect(r.zeros, name).toEqual(t.zeros);
    }
  });
});

describe('checkpoints, resume and failures', () => {
  const opts = { ...base, calibration: cal(), seed: 3, efficientqat: { ...fast, epochs: 2 } };
  for (const at of [8, 11, 16, 21])
    it(`an interrupted run (step ${at} of 16 Block-AP + 12 E2E-QP) resumes to the same result`, async () => {
      const m = syntheticModel(24);
      const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-eqat-'));
      try {
        const full = await quantizeModel(m, opts);
        const ckpt = path.join(dir, 'ck.safetensors');
        const abort = new AbortController();
        await expect(quantizeModel(m, opts, { checkpoint: { path: ckpt, every: 5 }, signal: abort.signal, onProgress: (e) => { if (e.step === at) abort.abort(); } }))
          .rejects.toMatchObject({ code: 'QF_ABORTED' });
        expect(readSafetensorsMetadata(ckpt).step).toBe(String(at));
        const resumed = await quantizeModel(m, opts, { checkpoint: { path: ckpt, every: 5 }, resume: true });
        expect(resumed.report.lossCurve).toEqual(full.report.lossCurve);
        for (const [name, q] of full.linears) {
          expect(resumed.linears.get(name)!.codes, name).toEqual(q.codes);
          expect(resumed.linears.get(name)!.scales, name).toEqual(q.scales);
        }
        expect(sameBits(resumed.model.norm(1, 'post'), full.model.norm(1, 'post'))).toBe(true);
        await expect(quantizeModel(m, { ...opts, efficientqat: { ...opts.efficientqat, e2eLr: 1e-3 } }, { checkpoint: { path: ckpt }, resume: true }))
          .rejects.toThrow(/another model, calibration set or configuration/);
      } finally {
        rmSync(dir, { recursive: true });
      }
    });

  it('a NaN loss stops with QF_NON_FINITE and keeps the last good checkpoint', async () => {
    const m = syntheticModel(25);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-eqat-'));
    try {
      const ckpt = path.join(dir, 'ck.safetensors');
      await expect(quantizeModel(m, { ...base, calibration: cal(), efficientqat: { lrWeight: 1e30, phases: 'block-ap' } }, { checkpoint: { path: ckpt, every: 1 } }))
        .rejects.toMatchObject({ code: 'QF_NON_FINITE', message: expect.stringMatching(/loss became (NaN|Infinity) at step \d+/) });
      expect(JSON.parse(readSafetensorsMetadata(ckpt).lossCurve).every(Number.isFinite)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('bad input is refused by name, before anything trains', async () => {
    const m = syntheticModel(26);
    await expect(quantizeModel(m, { ...base, bits: 5 as never, calibration: cal() })).rejects.toMatchObject({ code: 'QF_UNSUPPORTED_BITS' });
    await expect(quantizeModel(m, { ...base, groupSize: 40, calibration: cal() }))
      .rejects.toThrow(/Expected groupSize <= 32 \(the input size of self_attn.q_proj\) or >= 48 \(one group per row of every linear\) but received 40/);
    await expect(quantizeModel(m, { ...base, calibration: cal(2), efficientqat: { batchSize: 4 } })).rejects.toThrow(/Calibration holds 2 windows, too few for batchSize 4/);
    await expect(quantizeModel(m, { ...base, calibration: cal(), efficientqat: { phases: 'sideways' as never } })).rejects.toThrow(/Expected 'block-ap', 'e2e-qp' or 'both' for phases/);
    const other: QuantizedModel = await quantizeModel(syntheticModel(27), { ...base, method: 'rtn' });
    await expect(quantizeModel(m, { ...base, calibration: cal(), efficientqat: { phases: 'both', start: other.linears } })).rejects.toThrow(/Expected phases 'e2e-qp' with start/);
    const wide = syntheticModel(28);
    const w4 = await quantizeModel(wide, { ...base, bits: 4, method: 'rtn' });
    expect(() => checkStart(m.shape, w4.linears, { bits: 3, groupSize: 16, symmetric: false })).toThrow(/is INT4 g16 asym, not the requested INT3 g16 asym/);
    const missing = new Map(other.linears);
    missing.delete('model.layers.1.mlp.down_proj');
    await expect(quantizeModel(m, { ...base, calibration: cal(), efficientqat: { phases: 'e2e-qp', start: missing } }))
      .rejects.toThrow(/holds no model.layers.1.mlp.down_proj: it is not a checkpoint of this model/);
  });
});

describe('streamed (quantizeCheckpoint)', () => {
  const synth = () => new SyntheticCheckpoint({ dim: 64, hiddenDim: 96, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 4000, maxSeq: 64, seed: 9 });
  const opts = { ...base, calibration: cal(), seed: 2, efficientqat: { ...fast, epochs: 1, e2eEpochs: 1 } };

  it('into a GPTQ directory with the activations spilled to disk, the result is the in-memory run\'s, bit for bit', async () => {
    const ck = synth();
    const mem = await quantizeModel(TrainableLlama.fromCheckpoint(ck), opts);
    // a budget that leaves the activation stores almost no RAM: X_fp, Y_fp and X_q go to the spill file
    const budget = quantizePlan(ck, opts).block.fixedBytes + (128 << 20) + 4096;
    expect(quantizePlan(ck, { ...opts, maxMemoryBytes: budget }).block.storeRamBytes).toBeLessThan(8192);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-eqat-'));
    try {
      const out = path.join(dir, 'out');
      const r = await quantizeCheckpoint(ck, out, { ...opts, maxMemoryBytes: budget }, { save: { tokenizer: new ByteTokenizer(64) } });
      expect(r.lossCurve).toEqual(mem.report.lossCurve);
      expect(r.lossCurves!.map((c) => c.label)).toEqual(['Block-AP block 0 (MSE)', 'Block-AP block 1 (MSE)', 'E2E-QP (cross-entropy)']);
      const saved = openCheckpoint(out);
      try {
        for (let l = 0; l < 2; l++) {
          for (const [w, n] of [['wq', 'self_attn.q_proj'], ['wo', 'self_attn.o_proj'], ['w_down', 'mlp.down_proj']] as const) {
            const a = saved.quantizedWeight!(`layers.${l}.${w}`)!, b = mem.linears.get(`model.layers.${l}.${n}`)!;
            expect(a.codes, `${l} ${w}`).toEqual(b.codes);
            expect(sameBits(dequantize(a).data as Float32Array, dequantize(b).data as Float32Array), `${l} ${w}`).toBe(true);
          }
          expect(sameBits(saved.weight(`layers.${l}.ffn_norm`), mem.model.norm(l, 'post'))).toBe(true);
        }
      } finally {
        saved.close();
      }
    } finally {
      rmSync(dir, { recursive: true });
      ck.close();
    }
  });

  it('a budget too small for E2E-QP fails before any block trains, with the numbers', () => {
    const ck = synth();
    const o = { ...opts, efficientqat: { ...opts.efficientqat, e2eBatchSize: 8 } };
    const need = quantizePlan(ck, o).block.fixedBytes;
    // untied: (2 x 4000 x 64 + 5 x 64) fp32 = 2.05 MB of embedding, LM head and norms
    expect(() => quantizePlan(ck, { ...o, maxMemoryBytes: need + 1 }))
      .toThrow(/too small for E2E-QP of this model: it holds the packed linears \(.*MB\), the fp32 embedding, LM head and norms \(2\.0 MB\).*in all/);
  });
});

describe('stories260K', () => {
  it.skipIf(!haveModel)('a short Block-AP + E2E-QP run (W3 g32, 32 windows) beats RTN on held-out stories', async () => {
    const ck = openCheckpoint(modelDir);
    const tok = await ck.tokenizer();
    const m = TrainableLlama.fromCheckpoint(ck);
    const calibration = calibrationFromFile(tsFile, (d) => tok.encode(d, { bos: true }), { samples: 32, seqLen: 256, skipDocuments: 200 });
    const { ids, window } = readEvalIds(evalFile);
    const ppl = async (q: QuantizedModel) => {
      const model = new Model(quantizedCheckpoint(q, tok), tok);
      try {
        return (await evaluatePerplexity(model, { ids: ids.slice(0, 4096) }, { ctx: window, stride: window })).ppl;
      } finally {
        model.dispose();
      }
    };
    const cfg = { method: 'efficientqat', bits: 3 as const, groupSize: 32, symmetric: false, calibration };
    const rtn = await ppl(await quantizeModel(m, { ...cfg, method: 'rtn' }));
    const q = await quantizeModel(m, { ...cfg, efficientqat: { epochs: 1, e2eLr: 5e-5 } });
    const p = await ppl(q);
    expect(p).toBeLessThan(0.92 * rtn);
    ck.close();
  });
});
