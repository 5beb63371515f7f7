// FPTQuant (issue 11) on the engine's fpt slot: function preservation of every transform (block
// step, native merge, the whole runtime model), the block step's backward (finite differences),
// the merge's backward, the integer path against fake quantization, the method end to end, its
// checkpoint format round trip, and bad input.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native, type NativeBlockConfig, type NativeFptConfig, type NativeFptPackedBlock } from '../lib/native.js';
import { TrainableLlama } from '../lib/engine/llama.js';
import { Model, openCheckpoint } from '../lib/model/model.js';
import { ByteTokenizer, SyntheticCheckpoint } from '../lib/model/synthetic.js';
import type { Checkpoint } from '../lib/model/checkpoint.js';
import type { LlamaConfig } from '../lib/model/config.js';
import { activationConfig, readActivationQuant, type ActivationQuant } from '../lib/model/fpt.js';
import { calibrationFromText } from '../lib/engine/calib.js';
import { dequantizedModel, quantizeCheckpoint, quantizeModel, quantizedCheckpoint } from '../lib/methods/quantize-model.js';
import { hadamardBlockOf, residualRotationMatrix, rotateResidual } from '../lib/methods/fptquant.js';
import { saveGptq } from '../lib/export/save.js';
import { exportGguf } from '../lib/export/gguf.js';
import { QuantizedLinear, Fp32Linear } from '../lib/model/linear.js';
import { Tensor } from '../lib/ops/tensor.js';
import { dequantize, quantize } from '../lib/ops/quant.js';
import '../lib/methods/index.js';
import { dot, fdCheck, maxRel, nmse, uniform } from './helpers/numeric.js';

const eng = native().engine;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-fpt-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Function preservation with quantization off: logits equal the original's to this relative error. */
const PRESERVE_REL = 1e-5;

const hd = 8;
const blockCfg = (over: Partial<NativeBlockConfig> = {}): NativeBlockConfig => ({
  B: 2, T: 5, D: 32, F: 48, Hq: 4, Hkv: 2, hd, eps: 1e-5,
  invFreq: Float32Array.from({ length: hd / 2 }, (_, i) => 1 / Math.pow(10000, (2 * i) / hd)),
  bits: 0, groupSize: 128, symmetric: true, teq: false, ...over,
});

function blockSetup(c: NativeBlockConfig, seed: number) {
  const sz = eng.blockSizes(c), lay = eng.blockLayout(c);
  const params = uniform(sz.params, seed, 0.3);
  for (const k of ['attn_norm', 'ffn_norm'] as const) for (let i = 0; i < c.D; i++) params[lay[k].offset + i] = 1 + 0.1 * Math.sin(i + seed);
  return { params, x: uniform(c.B * c.T * c.D, seed + 1, 2), BT: c.B * c.T };
}

/** A block's output as the real residual: out * c_out under S_n. */
function blockOut(c: NativeBlockConfig, params: Float32Array, fp: Float32Array, x: Float32Array, saved: Float32Array | null = null,
  cIn: Float32Array | null = null): { out: Float32Array; raw: Float32Array; cOut: Float32Array } {
  const BT = c.B * c.T, out = new Float32Array(BT * c.D), cOut = new Float32Array(BT);
  const sn = c.fpt?.residualScaling === true;
  eng.fptBlockForward(c, out, saved, x, params, fp, cIn, sn ? cOut : null, null, false);
  const real = out.slice();
  if (sn) for (let r = 0; r < BT; r++) for (let i = 0; i < c.D; i++) real[r * c.D + i] *= cOut[r];
  return { out: real, raw: out, cOut };
}

const ALONE: [string, NativeFptConfig][] = [
  ['T_k', { qk: true }], ['T_v', { v: true }], ['T_v from a Hadamard start', { v: true, vHadamard: true }], ['T_u', { mlp: true }], ['S_n', { residualScaling: true }],
  ['online Hadamard', { hadamardBlock: 16 }], ['all together', { qk: true, v: true, mlp: true, residualScaling: true, hadamardBlock: 16 }],
];

describe('FPTQuant block step: exact with quantization off', () => {
  for (const [name, f] of ALONE)
    it(`${name}: the step on the original weights, and the plain step on the merged ones, equal the block (1e-5 relative)`, () => {
      const base = blockCfg(), c = { ...base, fpt: f };
      const { params, x, BT } = blockSetup(base, 3);
      const fp = uniform(eng.fptLayout(c).total, 11, 0.4);
      const ref = new Float32Array(BT * base.D);
      eng.blockForward(base, ref, null, x, params, null, false);
      expect(maxRel(blockOut(c, params, fp, x).out, ref)).toBeLessThan(PRESERVE_REL);
      const merged = params.slice();
      eng.fptMerge(c, merged, fp, null);
      const mc = { ...base, fpt: { merged: true, residualScaling: f.residualScaling, hadamardBlock: f.hadamardBlock } };
      expect(maxRel(blockOut(mc, merged, fp, x).out, ref)).toBeLessThan(PRESERVE_REL);
      if (f.qk || f.v || f.mlp) expect(maxRel(merged, params)).toBeGreaterThan(1e-2);  // the weights did change
    });

  it('the layout of the parameters comes from the engine and sizes what it names', () => {
    const c = { ...blockCfg(), fpt: {} }, L = eng.fptLayout(c), half = hd / 2;
    expect(L).toEqual({ qkLogScale: 0, qkAngle: 2 * half, vLu: 4 * half, mlpLogScale: 4 * half + 2 * hd * hd,
      actLogScale: 4 * half + 2 * hd * hd + 48, kvLogScale: 4 * half + 2 * hd * hd + 52, total: 4 * half + 2 * hd * hd + 56 });
    expect(eng.blockSizes(c).fpt).toBe(L.total);
  });
});

describe('FPTQuant backward', () => {
  it('block: dx and the S_n carry dc_in vs finite differences (all transforms, S_n, Hadamard, quantization off)', () => {
    const c = blockCfg({ B: 1, T: 3, D: 16, F: 24, eps: 1e-2, fpt: { qk: true, v: true, mlp: true, residualScaling: true, hadamardBlock: 8 } });
    const { params, x, BT } = blockSetup(c, 5);
    const fp = uniform(eng.fptLayout(c).total, 6, 0.3), cIn = Float32Array.from({ length: BT }, (_, i) => 0.5 + 0.4 * i);
    const R = uniform(BT * c.D, 7), Rc = uniform(BT, 8);
    // L = <R, out c_out> + <Rc, c_out>
    const loss = () => { const o = blockOut(c, params, fp, x, null, cIn); return dot(o.out, R) + dot(o.cOut, Rc); };
    const saved = new Float32Array(eng.blockSizes(c).saved);
    const o = blockOut(c, params, fp, x, saved, cIn);
    const dout = new Float32Array(BT * c.D), dc = new Float32Array(BT);
    for (let r = 0; r < BT; r++) {
      let s = Rc[r];
      for (let i = 0; i < c.D; i++) { dout[r * c.D + i] = R[r * c.D + i] * o.cOut[r]; s += R[r * c.D + i] * o.raw[r * c.D + i]; }
      dc[r] = s;
    }
    const dx = new Float32Array(BT * c.D), dfp = new Float32Array(fp.length);
    eng.fptBlockBackward(c, dx, dfp, dc, dout, saved, params, fp, false);
    fdCheck(loss, x, dx, 16, 1e-3);
    fdCheck(loss, cIn, dc, 3, 1e-3);
    // function preservation holds for the gradient too: the transforms do not move the loss
    const scale = Math.max(...Array.from(dx, Math.abs));
    for (let i = 0; i < eng.fptLayout(c).actLogScale; i++) expect(Math.abs(dfp[i])).toBeLessThan(1e-4 * scale);
  });

  it('block: the transforms through the merged weights (the outlier penalty on them) vs finite differences', () => {
    const c = blockCfg({ B: 1, T: 3, D: 16, F: 24, fpt: { qk: true, v: true, mlp: true, hadamardBlock: 8, lpWeight: 1, lpP: 4 } });
    const { params, x } = blockSetup(c, 9);
    const fp = uniform(eng.fptLayout(c).total, 10, 0.3), saved = new Float32Array(eng.blockSizes(c).saved), lp = new Float32Array(1);
    const penalty = () => { eng.fptBlockForward(c, new Float32Array(x.length), saved, x, params, fp, null, null, lp, false); return lp[0]; };
    penalty();
    const dfp = new Float32Array(fp.length);
    eng.fptBlockBackward(c, new Float32Array(x.length), dfp, null, new Float32Array(x.length), saved, params, fp, false);
    fdCheck(penalty, fp, dfp, 40, 1e-3);
  });

  it('merge: T_k, T_v (through A = LU and A^-1), T_u and the Hadamard side vs finite differences of <R, merge(W)>', () => {
    const c = blockCfg({ fpt: { qk: true, v: true, mlp: true, hadamardBlock: 16 } });
    const { params } = blockSetup(c, 12);
    const L = eng.fptLayout(c), fp = uniform(L.total, 13, 0.3), R = uniform(params.length, 14);
    const f = () => { const m = params.slice(); eng.fptMerge(c, m, fp, null); return dot(m, R); };
    const dfp = new Float32Array(L.total);
    eng.fptMergeBackward(c, dfp, R, params, fp);
    fdCheck(f, fp.subarray(0, L.actLogScale), dfp.subarray(0, L.actLogScale), 60, 1e-2);
  });

  it('merge: T_v from a Hadamard start (A = H L U) vs finite differences; a non-power-of-two hd or T_v off is refused', () => {
    const c = blockCfg({ fpt: { v: true, vHadamard: true } });
    const { params } = blockSetup(c, 15);
    const L = eng.fptLayout(c), fp = uniform(L.total, 16, 0.3), R = uniform(params.length, 17);
    const f = () => { const m = params.slice(); eng.fptMerge(c, m, fp, null); return dot(m, R); };
    const dfp = new Float32Array(L.total);
    eng.fptMergeBackward(c, dfp, R, params, fp);
    fdCheck(f, fp.subarray(0, L.actLogScale), dfp.subarray(0, L.actLogScale), 40, 1e-2);
    const off = { ...c, fpt: { vHadamard: true } };
    expect(() => eng.fptMerge(off, params.slice(), new Float32Array(eng.fptLayout(off).total), null)).toThrow(/T_v off/);
  });
});

/** A runtime checkpoint of a trainable model's fp32 weights (and a run-time FPTQuant part). */
function checkpointOf(m: TrainableLlama, base: LlamaConfig, aq: ActivationQuant | null): Checkpoint {
  const config: LlamaConfig = { ...base, tiedEmbeddings: m.shape.tied };
  return {
    format: 'memory', path: 'memory:fpt-test', config,
    weight: (name) => {
      if (name === 'embed') return m.embed;
      if (name === 'final_norm') return m.finalNorm;
      if (name === 'lm_head') return m.lmHead;
      const [, l, w] = name.split('.');
      const map: Record<string, string> = { wq: 'q_proj', wk: 'k_proj', wv: 'v_proj', wo: 'o_proj', w_gate: 'gate_proj', w_up: 'up_proj', w_down: 'down_proj' };
      if (w === 'attn_norm' || w === 'ffn_norm') return m.norm(Number(l), w === 'attn_norm' ? 'input' : 'post');
      return m.linear(Number(l), map[w] as 'q_proj');
    },
    activationQuant: () => aq,
    tokenizer: async () => new ByteTokenizer(config.vocabSize),
    close: () => {},
  };
}

const fpOnly = (L: number, Hkv: number, residualScaling: boolean, hadamardBlock: number): ActivationQuant => ({
  actBits: 16, kvBits: 16, residualScaling, hadamardBlock, residualRotation: false,
  actScales: new Float32Array(L * 4), kvScales: new Float32Array(L * 2 * Hkv),
});

describe('FPTQuant on the whole runtime model: logits of the transformed model equal the original (quantization off)', () => {
  const syn = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 4, tiedEmbeddings: true, outlierChannels: 2 });
  const tokens = [[1, 5, 9, 33, 2, 17, 40], [1, 60, 3, 3, 12, 8, 51]];
  const original = new Model(syn, new ByteTokenizer(61)).forward(tokens).logits;
  const cases: [string, NativeFptConfig, boolean][] = [...ALONE.map(([n, f]) => [n, f, false] as [string, NativeFptConfig, boolean]),
    ['residual rotation', {}, true], ['all together with the residual rotation', { qk: true, v: true, mlp: true, residualScaling: true, hadamardBlock: 16 }, true]];
  for (const [name, f, rotate] of cases)
    it(`${name}`, () => {
      const m = TrainableLlama.fromCheckpoint(syn);
      if (rotate) rotateResidual(m, residualRotationMatrix(32, 1));
      const c = { ...m.blockConfig(1, 1), fpt: { ...f, residualScaling: false } };
      const P = eng.fptLayout(c).total;
      m.blocks.forEach((b, l) => eng.fptMerge(c, b, uniform(P, 20 + l, 0.4), null));
      const run = new Model(checkpointOf(m, syn.config, fpOnly(2, 2, f.residualScaling === true, f.hadamardBlock ?? 0)), new ByteTokenizer(61));
      try {
        expect(maxRel(run.forward(tokens).logits, original)).toBeLessThan(PRESERVE_REL);
        // the KV-cache path too: the last token after a 6-token prefill
        run.forward(tokens.map((t) => t.slice(0, 6)));
        const last = run.forward(tokens.map((t) => [t[6]]), { pos0: 6 }).logits;
        const want = Float32Array.from({ length: 2 * 61 }, (_, i) => original[(Math.floor(i / 61) * 7 + 6) * 61 + (i % 61)]);
        expect(maxRel(last, want)).toBeLessThan(PRESERVE_REL);
      } finally {
        run.dispose();
      }
      if (rotate) expect(m.shape.tied).toBe(false);
    });
});

describe('FPTQuant method and checkpoint', () => {
  const syn = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 7, outlierChannels: 2 });
  const tok = new ByteTokenizer(61);
  const text = Array.from({ length: 60 }, (_, i) => `story ${i} about a cat and a ${i % 7 ? 'dog' : 'bird'} that ran ${i} miles`).join('<|endoftext|>');
  const cal = calibrationFromText(text, (d) => tok.encode(d, { bos: true }), { samples: 16, seqLen: 32, seed: 1 });
  const quick = { localSteps: 6, e2eSteps: 6, rangeWindows: 4, batchSize: 2, weights: 'rtn' as const, trainWeightRanges: false };

  it('W4A8KV8: the integer kernels agree with the fake-quantized step, and the checkpoint reloads bit for bit', async () => {
    const model = TrainableLlama.fromCheckpoint(syn);
    const q = await quantizeModel(model, { method: 'fptquant', bits: 4, groupSize: 1 << 20, symmetric: true, calibration: cal, fpt: { ...quick, actBits: 8, onlineHadamard: true } });
    expect(q.activations).toMatchObject({ actBits: 8, kvBits: 8, residualScaling: true, hadamardBlock: 16 });
    expect(q.report.lossCurve.length).toBe(2 * 6 + 6);
    const mem = new Model(quantizedCheckpoint(q, tok), tok);
    const tokens = Int32Array.from(cal.tokens.subarray(0, 32));
    const ints = mem.forward(tokens).logits;
    // the same model fake-quantized on the training step (dequantized weights, merged transforms)
    const dq = TrainableLlama.fromCheckpoint({ ...quantizedCheckpoint(q, tok), activationQuant: () => null });
    const nb = native().engine, s = dq.shape, D = s.hidden, T = 32;
    const P = nb.fptLayout({ ...dq.blockConfig(1, T), fpt: {} }).total;
    let x = new Float32Array(T * D), c = new Float32Array(T).fill(1);
    nb.embeddingForward(x, tokens, dq.embed, T, s.vocab, D);
    for (let l = 0; l < s.layers; l++) {
      const p = new Float32Array(P), lay = nb.fptLayout({ ...dq.blockConfig(1, T), fpt: {} });
      for (let i = 0; i < 4; i++) p[lay.actLogScale + i] = Math.log(q.activations!.actScales[l * 4 + i]);
      for (let i = 0; i < 4; i++) p[lay.kvLogScale + i] = Math.log(q.activations!.kvScales[l * 4 + i]);
      const y = new Float32Array(T * D), c2 = new Float32Array(T);
      nb.fptBlockForward({ ...dq.blockConfig(1, T), fpt: { merged: true, residualScaling: true, hadamardBlock: 16, actBits: 8, kvBits: 8 } }, y, null, x, dq.blocks[l], p, c, c2, null, false);
      x = y;
      c = c2;
    }
    const n = new Float32Array(T * D), fake = new Float32Array(T * s.vocab);
    nb.rmsnormScaledForward(n, null, x, dq.finalNorm, c, T, D, s.rmsEps);
    nb.gemm(fake, n, dq.lmHead, T, s.vocab, D, false, true, false);
    expect(nmse(ints, fake)).toBeLessThan(1e-4);
    // saved and reloaded: the same integer model
    const out = path.join(tmp, 'w4a8kv8');
    saveGptq(q, out, { tokenizer: tok });
    const qc = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
    expect(qc.quantform).toMatchObject({ method: 'fptquant', activations: { bits: 8, scheme: 'static', granularity: 'tensor' },
      kv_cache: { bits: 8, granularity: 'head' }, online_transforms: ['residual_scaling', 'hadamard:down_proj:16'] });
    const back = new Model(openCheckpoint(out), tok);
    try {
      expect(back.activationQuant?.actBits).toBe(8);
      expect(nmse(back.forward(tokens).logits, ints)).toBe(0);
      // paths that cannot run activation scales say so
      expect(() => TrainableLlama.fromCheckpoint(openCheckpoint(out))).toThrow(/quantizes activations or applies transforms at run time/);
      await expect(exportGguf(out, path.join(tmp, 'x.gguf'))).rejects.toThrow(/quantizes activations/);
      back.setLinear('layers.0.wo', new Fp32Linear(new Tensor(new Float32Array(32 * 32), [32, 32])));
      expect(() => back.forward(tokens)).toThrow(/Static 8-bit activations run on INT4 weights .* wo is not quantized/);
    } finally {
      back.dispose();
      mem.dispose();
    }
    expect(QuantizedLinear).toBeDefined();
  });

  it('trainWeightRanges: the stage after the block pass trains the step sizes (codes frozen) and the static ranges', async () => {
    const run = (over: object) => quantizeModel(TrainableLlama.fromCheckpoint(syn), { method: 'fptquant', bits: 4, groupSize: 1 << 20, symmetric: true, calibration: cal,
      fpt: { ...quick, actBits: 8, clipNorm: 2.4, ...over } });
    const q0 = await run({}), q1 = await run({ trainWeightRanges: true, qpSteps: 5 });
    expect(q1.report.lossCurve.length).toBe(2 * 6 + 6 + 5);
    expect(q1.report.lossCurve.slice(0, 18)).toEqual(q0.report.lossCurve);  // the stages before are untouched
    let moved = 0;
    for (const [name, a] of q0.linears) {
      const b = q1.linears.get(name)!;
      expect(b.codes).toEqual(a.codes);
      for (let i = 0; i < a.scales.length; i++) if (a.scales[i] !== b.scales[i]) moved++;
    }
    expect(moved).toBeGreaterThan(0);
    expect(Array.from(q1.activations!.actScales)).not.toEqual(Array.from(q0.activations!.actScales));
    // the trained model runs on the integer kernels
    const tokens = Int32Array.from(cal.tokens.subarray(0, 32));
    const m0 = new Model(quantizedCheckpoint(q0, tok), tok), m1 = new Model(quantizedCheckpoint(q1, tok), tok);
    try {
      const l1 = m1.forward(tokens).logits;
      expect(l1.every(Number.isFinite)).toBe(true);
      // five steps cannot be told from noise here, but they must not throw the model off the fp one
      const ref = await TrainableLlama.fromCheckpoint(syn).logits(tokens, 1, 32);
      expect(nmse(l1, ref)).toBeLessThan(1.5 * nmse(m0.forward(tokens).logits, ref));
    } finally {
      m0.dispose();
      m1.dispose();
    }
  });

  it('W8A16 with the online Hadamard: the run-time transform is exact, the checkpoint is weight-only plus the Hadamard', async () => {
    const model = TrainableLlama.fromCheckpoint(syn);
    const q = await quantizeModel(model, { method: 'fptquant', bits: 8, groupSize: 1 << 20, symmetric: true, calibration: cal,
      fpt: { ...quick, actBits: 16, kvBits: 16, onlineHadamard: true, stages: 'none' } });
    // the integer model (dequant-matmul kernels + the Hadamard before down_proj) and its dequantized weights run in fp32
    const mem = new Model(quantizedCheckpoint(q, tok), tok);
    const fp = new Model(checkpointOf(dequantizedModel(q), syn.config, fpOnly(2, 2, false, 16)), tok);
    const plain = new Model(checkpointOf(dequantizedModel(q), syn.config, null), tok);
    const tokens = Int32Array.from(cal.tokens.subarray(0, 32));
    try {
      const a = mem.forward(tokens).logits;
      expect(nmse(a, fp.forward(tokens).logits)).toBeLessThan(1e-10);
      expect(nmse(a, plain.forward(tokens).logits)).toBeGreaterThan(1e-3);  // W_down holds H: without it the model is wrong
    } finally {
      mem.dispose();
      fp.dispose();
      plain.dispose();
    }
    const out = path.join(tmp, 'w8a16');
    saveGptq(q, out, { tokenizer: tok, format: 'gptq_v2' });
    expect(JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config.quantform).toEqual({ method: 'fptquant', online_transforms: ['hadamard:down_proj:16'] });
  });
});

describe('FPTQuant on the streaming pipeline', () => {
  const syn = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 7, outlierChannels: 2 });
  const tok = new ByteTokenizer(61);
  const text = Array.from({ length: 60 }, (_, i) => `story ${i} about a cat and a ${i % 7 ? 'dog' : 'bird'} that ran ${i} miles`).join('<|endoftext|>');
  const cal = calibrationFromText(text, (d) => tok.encode(d, { bos: true }), { samples: 16, seqLen: 32, seed: 1 });
  const opts = { method: 'fptquant', bits: 4 as const, groupSize: 1 << 20, symmetric: true, calibration: cal,
    fpt: { localSteps: 4, e2eSteps: 4, qpSteps: 3, rangeWindows: 4, batchSize: 2, actBits: 8, onlineHadamard: true, residualRotation: true } };

  it('GPTQ on the merged model as a block method, then the range stage: quantizeCheckpoint writes what quantizeModel keeps, bit for bit', async () => {
    const q = await quantizeModel(TrainableLlama.fromCheckpoint(syn), opts);
    const without = { ...opts.fpt, trainWeightRanges: false };
    const gptq = await quantizeModel(TrainableLlama.fromCheckpoint(syn), { ...opts, fpt: without });
    const rtn = await quantizeModel(TrainableLlama.fromCheckpoint(syn), { ...opts, fpt: { ...without, weights: 'rtn' } });
    const name = 'model.layers.1.mlp.down_proj';
    // the transforms are the same (same training), the codes are GPTQ's, not RTN's; the range stage keeps GPTQ's codes
    expect(gptq.activations!.actScales).toEqual(rtn.activations!.actScales);
    expect(Buffer.compare(Buffer.from(gptq.linears.get(name)!.codes), Buffer.from(rtn.linears.get(name)!.codes))).not.toBe(0);
    expect(q.linears.get(name)!.codes).toEqual(gptq.linears.get(name)!.codes);
    const out = path.join(tmp, 'streamed');
    const report = await quantizeCheckpoint(syn, out, opts, { save: { tokenizer: tok } });
    expect(report.activations).toEqual(q.report.activations);
    expect(report.lossCurve).toEqual(q.report.lossCurve);
    expect(report.linears.map((l) => l.errorAfter)).toEqual(q.report.linears.map((l) => l.errorAfter));
    const back = new Model(openCheckpoint(out), tok), mem = new Model(quantizedCheckpoint(q, tok), tok);
    try {
      const tokens = Int32Array.from(cal.tokens.subarray(0, 32));
      expect(back.activationQuant?.residualRotation).toBe(true);
      expect(nmse(back.forward(tokens).logits, mem.forward(tokens).logits)).toBe(0);
    } finally {
      back.dispose();
      mem.dispose();
    }
  });

  it('the whole fp32 model over --max-memory: QF_OUT_OF_MEMORY naming the budget, before anything is read or written', async () => {
    const out = path.join(tmp, 'oom');
    await expect(quantizeCheckpoint(syn, out, { ...opts, maxMemoryBytes: 5e4 }, { budgetLabel: '--max-memory 0.00005 GB', save: { tokenizer: tok } }))
      .rejects.toMatchObject({ code: 'QF_OUT_OF_MEMORY',
        message: expect.stringMatching(/^--max-memory 0\.00005 GB is too small for fptquant on .*: it needs the whole model in memory, the fp32 model \(.* MB\), the fp teacher/) });
    expect(existsSync(out)).toBe(false);
  });
});

describe('FPTQuant on packed weights (the range stage after GPTQ: step sizes trained with the quantizers on)', () => {
  const base = blockCfg({ B: 1, T: 3, D: 16, F: 24, eps: 1e-2 });
  const { params, x, BT } = blockSetup(base, 9);
  const lay = eng.blockLayout(base);
  const names = ['wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down'] as const;
  // every linear RTN-quantized INT4 symmetric per output channel: the packed block, and its dequantized arena
  const qs = names.map((n) => {
    const { offset, rows, cols } = lay[n];
    return quantize(new Tensor(params.slice(offset, offset + rows * cols), [rows, cols]), { bits: 4, groupSize: cols, symmetric: true, paramDtype: 'f32' });
  });
  const dense = params.slice();
  names.forEach((n, j) => dense.set(dequantize(qs[j]).data as Float32Array, lay[n].offset));
  const block = (): NativeFptPackedBlock => ({
    attnNorm: params.slice(lay.attn_norm.offset, lay.attn_norm.offset + base.D), ffnNorm: params.slice(lay.ffn_norm.offset, lay.ffn_norm.offset + base.D),
    codes: qs.map((q) => q.codes), scales: qs.map((q) => Float32Array.from(q.scales)), zeros: qs.map(() => null),
    grads: { scales: qs.map((q) => new Float32Array(q.scales.length)), zeros: qs.map(() => null) },
  });
  const fq = { bits: 4, groupSize: 1 << 20, symmetric: true, packed: true };
  const cIn = Float32Array.from({ length: BT }, (_, i) => 0.5 + 0.4 * i);
  const R = uniform(BT * base.D, 7), Rc = uniform(BT, 8);
  /** L = <R, out c_out> + <Rc, c_out>, its gradients dout, dc from a saved forward */
  const lossOf = (c: NativeBlockConfig, w: Float32Array | NativeFptPackedBlock, fp: Float32Array, saved: Float32Array | null = null) => {
    const out = new Float32Array(BT * base.D), cOut = new Float32Array(BT);
    eng.fptBlockForward(c, out, saved, x, w, fp, cIn, cOut, null, false);
    let L = 0;
    const dout = new Float32Array(BT * base.D), dc = new Float32Array(BT);
    for (let r = 0; r < BT; r++) {
      let g = Rc[r];
      for (let i = 0; i < base.D; i++) {
        L += R[r * base.D + i] * out[r * base.D + i] * cOut[r];
        dout[r * base.D + i] = R[r * base.D + i] * cOut[r];
        g += R[r * base.D + i] * out[r * base.D + i];
      }
      L += Rc[r] * cOut[r];
      dc[r] = g;
    }
    return { L, out, dout, dc };
  };

  it('the step sizes and dx vs finite differences (S_n, online Hadamard; quantizers off)', () => {
    const c = { ...base, fq, fpt: { merged: true, residualScaling: true, hadamardBlock: 8 } };
    const fp = new Float32Array(eng.fptLayout(c).total), b = block();
    const saved = new Float32Array(eng.blockSizes(c).saved);
    const { dout, dc } = lossOf(c, b, fp, saved);
    const dx = new Float32Array(BT * base.D), dfp = new Float32Array(fp.length);
    eng.fptBlockBackward(c, dx, dfp, dc, dout, saved, b, fp, false);
    fdCheck(() => lossOf(c, b, fp).L, x, dx, 12, 1e-3);
    for (let j = 0; j < names.length; j++) fdCheck(() => lossOf(c, b, fp).L, b.scales[j]!, b.grads!.scales[j]!, 4, 1e-4);
  });

  it('with the activation and KV quantizers on: the same step as on the dequantized arena (forward, dx, the ranges\' gradients)', () => {
    const fpt: NativeFptConfig = { merged: true, residualScaling: true, hadamardBlock: 8, actBits: 8, kvBits: 8 };
    const cp = { ...base, fq, fpt }, ca = { ...base, fpt };
    const L = eng.fptLayout(ca), fp = new Float32Array(L.total);
    for (let i = 0; i < 4; i++) fp[L.actLogScale + i] = Math.log(0.02);
    for (let i = 0; i < 2 * base.Hkv; i++) fp[L.kvLogScale + i] = Math.log(0.05);
    const run = (c: NativeBlockConfig, w: Float32Array | NativeFptPackedBlock) => {
      const saved = new Float32Array(eng.blockSizes(c).saved);
      const { out, dout, dc } = lossOf(c, w, fp, saved);
      const dx = new Float32Array(BT * base.D), dfp = new Float32Array(fp.length);
      eng.fptBlockBackward(c, dx, dfp, dc, dout, saved, w, fp, false);
      return { out, dx, dfp, dc };
    };
    const p = run(cp, block()), a = run(ca, dense);
    expect(maxRel(p.out, a.out)).toBeLessThan(1e-4);
    expect(maxRel(p.dx, a.dx)).toBeLessThan(1e-3);
    expect(maxRel(p.dc, a.dc)).toBeLessThan(1e-3);
    const ranges = (d: Float32Array) => d.slice(L.actLogScale, L.total);
    expect(maxRel(ranges(p.dfp), ranges(a.dfp))).toBeLessThan(1e-3);
    expect(Math.max(...Array.from(ranges(a.dfp), Math.abs))).toBeGreaterThan(0);
  });

  it('a packed block needs config.fq.packed, its step sizes and (backward) their gradients', () => {
    const c = { ...base, fq, fpt: { merged: true } }, fp = new Float32Array(eng.fptLayout(c).total);
    const out = new Float32Array(BT * base.D);
    expect(() => eng.fptBlockForward({ ...base, fpt: { merged: true } }, out, null, x, block(), fp, null, null, null, false)).toThrow(/Expected a parameter arena for params/);
    expect(() => eng.fptBlockForward(c, out, null, x, dense, fp, null, null, null, false)).toThrow(/Expected a packed block/);
    const saved = new Float32Array(eng.blockSizes(c).saved);
    eng.fptBlockForward(c, out, saved, x, block(), fp, null, null, null, false);
    const { grads: _, ...noGrads } = block();
    expect(() => eng.fptBlockBackward(c, new Float32Array(BT * base.D), new Float32Array(fp.length), null, out, saved, noGrads, fp, false))
      .toThrow(/gradients for params.grads/);
  });
});

describe('FPTQuant mixed activation precision (inputBits, the W4A4 ablation)', () => {
  const c = (fpt: NativeFptConfig) => ({ ...blockCfg(), fpt: { qk: true, v: true, mlp: true, residualScaling: true, kvBits: 8, ...fpt } });
  const { params, x } = blockSetup(blockCfg(), 5);
  const lay = eng.fptLayout(c({})), fp = uniform(lay.total, 13, 0.4);
  // steps small enough that 4 bits clip what 8 bits keep (the two grids share the step)
  for (let i = 0; i < 4; i++) fp[lay.actLogScale + i] = Math.log(0.05);
  const out = (f: NativeFptConfig) => blockOut(c(f), params, fp, x).out;

  it('every input at the bits of actBits is actBits; each input at 4 bits changes the output, all four at 4 are actBits 4', () => {
    const a8 = out({ actBits: 8 }), a4 = out({ actBits: 4 });
    expect(out({ actBits: 8, inputBits: [8, 8, 8, 8] })).toEqual(a8);
    expect(out({ actBits: 8, inputBits: [4, 4, 4, 4] })).toEqual(a4);
    expect(out({ actBits: 4, inputBits: [0, 0, 0, 0] })).toEqual(a4);
    for (let i = 0; i < 4; i++) {
      const bits = [8, 8, 8, 8];
      bits[i] = 4;
      const y = out({ actBits: 8, inputBits: bits });
      expect(maxRel(y, a8)).toBeGreaterThan(1e-4);
      expect(maxRel(y, a4)).toBeGreaterThan(1e-4);
    }
  });

  it('the checkpoint keeps per-input bits (bits_per_input) and refuses a bad list', () => {
    const cfg = { nLayers: 1, nKvHeads: 2 } as LlamaConfig;
    const a: ActivationQuant = { actBits: 8, inputBits: [8, 4, 8, 8], kvBits: 8, residualScaling: true, hadamardBlock: 0, residualRotation: false,
      actScales: Float32Array.of(0.1, 0.2, 0.3, 0.4), kvScales: Float32Array.of(1, 2, 3, 4) };
    const qf = activationConfig(a);
    expect(qf.activations).toMatchObject({ bits: 8, bits_per_input: [8, 4, 8, 8] });
    const tensor = (name: string) => (name.endsWith('act_scales') ? a.actScales : a.kvScales);
    expect(readActivationQuant(qf, cfg, 'x', tensor)?.inputBits).toEqual([8, 4, 8, 8]);
    const bad = { ...qf, activations: { ...(qf.activations as object), bits_per_input: [8, 6, 8, 8] } };
    expect(() => readActivationQuant(bad, cfg, 'x', tensor)).toThrow(/bits_per_input must be 4 entries of 4 or 8 but is \[8,6,8,8\]/);
  });

  it('bad per-input bits are refused by the method and the engine', async () => {
    const syn = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 1, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 2 });
    const tok = new ByteTokenizer(61);
    const cal = calibrationFromText('a b c d e f g h '.repeat(40), (d) => tok.encode(d, { bos: true }), { samples: 4, seqLen: 16 });
    await expect(quantizeModel(TrainableLlama.fromCheckpoint(syn), { method: 'fptquant', bits: 4, symmetric: true, calibration: cal, fpt: { inputBits: [8, 8, 2, 8] } }))
      .rejects.toThrow(/Expected array of 4 entries of 4 or 8 .* for inputBits/);
    await expect(quantizeModel(TrainableLlama.fromCheckpoint(syn), { method: 'fptquant', bits: 4, symmetric: true, calibration: cal, fpt: { actBits: 16, inputBits: [8, 8, 4, 8] } }))
      .rejects.toThrow(/for actBits but received 16/);
    expect(() => out({ actBits: 8, inputBits: [8, 8, 5, 8] })).toThrow(/per-input activation bits 4 or 8 .* input 2 received 5/);
    expect(() => out({ actBits: 0, inputBits: [8, 8, 4, 8] })).toThrow(/with activation bits set/);
    expect(() => out({ actBits: 8, inputBits: [8, 8, 4] })).toThrow(/array of 4 integers .* for inputBits/);
  });
});

describe('FPTQuant bad input', () => {
  const syn = new SyntheticCheckpoint({ dim: 32, hiddenDim: 45, nLayers: 1, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 2 });
  const tok = new ByteTokenizer(61);
  const cal = calibrationFromText('a b c d e f g h i j k l m n o p q r s t u v w x y z '.repeat(40), (d) => tok.encode(d, { bos: true }), { samples: 4, seqLen: 16 });

  it('activation bits other than 4, 8, 16', async () => {
    await expect(quantizeModel(TrainableLlama.fromCheckpoint(syn), { method: 'fptquant', bits: 4, symmetric: true, calibration: cal, fpt: { actBits: 6 } }))
      .rejects.toThrow(/Expected 4, 8 or 16 for actBits but received 6 of type number/);
    expect(() => eng.fptLayout({ ...blockCfg(), fpt: { actBits: 3 } })).toThrow(/activation bits 4, 8 or 16 \(fp\) but received 3/);
  });

  it('an online Hadamard where no power-of-two block divides the intermediate size', async () => {
    expect(hadamardBlockOf(172)).toBe(4);
    expect(hadamardBlockOf(5632)).toBe(512);
    await expect(quantizeModel(TrainableLlama.fromCheckpoint(syn), { method: 'fptquant', bits: 4, symmetric: true, calibration: cal, fpt: { onlineHadamard: true } }))
      .rejects.toThrow(/power-of-two block dividing the intermediate size, but 45 is odd/);
    expect(() => eng.fptLayout({ ...blockCfg(), fpt: { hadamardBlock: 32 } })).toThrow(/power of two dividing F = 48 but received 32/);
  });

  it('a value transform that became singular, and non-finite parameters, stop the step with QF_NON_FINITE', () => {
    const c = { ...blockCfg(), fpt: { v: true } }, L = eng.fptLayout(c);
    const fp = new Float32Array(L.total);
    eng.fptCheck(c, fp);
    fp[L.vLu + 1] = 1e4;  // U[0, 1]: cond_1 of A = LU far past the limit
    expect(() => eng.fptCheck(c, fp)).toThrow(/T_v of kv head 0 became singular: cond_1\(A\) = .* \(limit 1e\+06\)/);
    const { params, x, BT } = blockSetup(blockCfg(), 1);
    expect(() => eng.fptBlockForward(c, new Float32Array(BT * 32), null, x, params, fp, null, null, null, false)).toThrow(/became singular/);
    fp[L.vLu + 1] = 0;
    fp[L.actLogScale] = NaN;
    expect(() => eng.fptCheck(c, fp)).toThrow(/FPTQuant parameter \d+ of the block is nan/);
  });

  it('a run that diverges stops with a clear error and keeps its last good checkpoint', async () => {
    const syn2 = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 1, nHeads: 4, nKvHeads: 2, vocabSize: 61, maxSeq: 64, seed: 2 });
    const ck = path.join(tmp, 'diverge.ckpt.safetensors');
    await expect(quantizeModel(TrainableLlama.fromCheckpoint(syn2), { method: 'fptquant', bits: 4, symmetric: true, calibration: cal,
      fpt: { localSteps: 40, stages: 'local', localLr: 1e6, rangeWindows: 2, batchSize: 2, weights: 'rtn' } }, { checkpoint: { path: ck, every: 1 } }))
      .rejects.toThrow(/QF_NON_FINITE|became singular|is NaN|non-finite|last good state/);
    if (existsSync(ck)) {
      const { readSafetensors } = await import('../lib/io/safetensors.js');
      const arena = readSafetensors(ck).get('arena')!.data as Float32Array;
      const c = { ...blockCfg({ D: 32, F: 48 }), fpt: { qk: true, v: true, mlp: true, actBits: 8, kvBits: 8, residualScaling: true } };
      const P = eng.fptLayout(c).total;
      eng.fptCheck(c, arena.subarray(0, P));  // the kept state is a valid one
    }
  });
});
