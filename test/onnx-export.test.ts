// ONNX export (lib/export/onnx.ts) run by onnxruntime-node (the package's optional
// peer) and Transformers.js (test/peers): MatMulNBits blobs decoded by an
// independent reading of the op's contract equal quantform's values; the decoder's
// logits match quantform's forward on awkward configurations (GQA, INT2/INT3/INT8,
// a group size MatMulNBits cannot take, K = 172); the KV cache and left-padded
// batches behave as Transformers.js drives them; stories260K scores the same
// perplexity (within 0.5 %) and generates the same greedy text for 64 tokens; the
// onnx checker accepts the model (python onnx, when present). Each skips with the
// reason when its peer is missing.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { afterAll, describe, expect, it } from 'vitest';
import {
  dequantize, evaluatePerplexity, exportOnnx, generate, loadModel, matMulNBitsParts, Model, openCheckpoint, quantize, quantizeModel, saveGptq, SyntheticCheckpoint,
  Tensor, TrainableLlama, weightShape, type Checkpoint, type QuantOptions, type QuantizedTensor, type SyntheticOptions,
} from '../lib/index.js';
import { VOCAB_PROBE } from '../lib/export/vocab.js';
import { onnxRuntime, python, transformersJs, type Ort, type OrtSession } from './helpers/peers.js';
import { testVocab } from './helpers/vocab.js';
import { sharedDir } from './helpers/tiers.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-onnx-export-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let nTmp = 0;
const fresh = (name: string) => path.join(tmp, `${nTmp++}-${name}`);

const shared = sharedDir();
const HF = path.join(shared, 'models/stories260K-hf');
const BIN = path.join(shared, 'models/stories260K/stories260K.bin');
const REF = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const TINY = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const haveShared = [HF, BIN, REF, TINY].every((p) => existsSync(p));
if (!haveShared) console.warn(`onnx-export: real-model cases skipped, shared files not found under ${shared}`);
const ortFound = await onnxRuntime();
if (!ortFound.ok) console.warn(`onnx-export: onnxruntime cases skipped: ${ortFound.reason}`);
const tjs = await transformersJs();
if (!tjs.ok) console.warn(`onnx-export: Transformers.js case skipped: ${tjs.reason}`);
const pyOnnx = python(['onnx']);
if (!pyOnnx.ok) console.warn(`onnx-export: onnx.checker case skipped: ${pyOnnx.reason}`);

// onnxruntime dequantizes the same codes and runs fp32 GEMMs in another summation order
const LOGIT_REL_TOL = 1e-5;
const PPL_REL_TOL = 0.005;

/** Linears of a synthetic model RTN-quantized in memory (as a GPTQ checkpoint hands them over). */
function quantView(syn: SyntheticOptions, q: (name: string) => QuantOptions | null): Checkpoint {
  const base = new SyntheticCheckpoint(syn);
  const cache = new Map<string, QuantizedTensor>();
  const qw = (name: string): QuantizedTensor | null => {
    if (name === 'embed' || name === 'lm_head' || weightShape(base.config, name).length < 2) return null;
    const o = q(name);
    if (!o) return null;
    if (!cache.has(name)) cache.set(name, quantize(new Tensor(base.weight(name), weightShape(base.config, name) as [number, number]), { paramDtype: 'f16', ...o }));
    return cache.get(name)!;
  };
  return {
    format: 'synthetic', path: base.path, config: base.config, tokenizer: () => base.tokenizer(), close: () => undefined,
    quantizedWeight: qw,
    weight: (name: string) => { const t = qw(name); return t ? (dequantize(t).data as Float32Array) : base.weight(name); },
  };
}

/** MatMulNBits' contract read independently: w[n, k] = (nibble(B[n, k / bs], k % bs) - zp) * scale. */
function decodeMatMulNBits(p: NonNullable<ReturnType<typeof matMulNBitsParts>>, N: number, K: number): Float32Array {
  const w = new Float32Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const b = Math.floor(k / p.blockSize), j = k % p.blockSize;
      const byte = p.B[(n * p.kBlocks + b) * p.blob + (p.bits === 4 ? j >> 1 : j)];
      const q = p.bits === 4 ? (byte >> (4 * (j & 1))) & 15 : byte;
      const zb = p.bits === 4 ? Math.ceil(p.kBlocks / 2) : p.kBlocks;
      const z = p.zeroPoints ? (p.bits === 4 ? (p.zeroPoints[n * zb + (b >> 1)] >> (4 * (b & 1))) & 15 : p.zeroPoints[n * zb + b]) : 2 ** (p.bits - 1);
      w[n * K + k] = Math.fround((q - z) * p.scales[n * p.kBlocks + b]);
    }
  return w;
}

describe('MatMulNBits blobs hold quantform\'s codes exactly', () => {
  const x = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 0.1 + (i % 53 === 0 ? 0.4 : 0));
  it.each([
    { bits: 4, gs: 32, sym: true, K: 64 }, { bits: 4, gs: 32, sym: false, K: 172 }, { bits: 4, gs: 128, sym: false, K: 256 },
    { bits: 3, gs: 64, sym: true, K: 128 }, { bits: 2, gs: 16, sym: false, K: 80 }, { bits: 8, gs: 32, sym: false, K: 96 }, { bits: 8, gs: 16, sym: true, K: 48 },
  ] as const)('INT$bits g$gs sym=$sym K=$K', ({ bits, gs, sym, K }) => {
    const N = 7;
    const q = quantize(new Tensor(x(N * K), [N, K]), { bits, groupSize: gs, symmetric: sym, paramDtype: 'f16' });
    const p = matMulNBitsParts(q)!;
    expect(p.blockSize).toBe(gs);
    expect(p.bits).toBe(bits === 8 ? 8 : 4);
    // symmetric 4-bit leaves the default zero point 8; INT2/INT3 symmetric need theirs written
    expect(p.zeroPoints === null).toBe(sym && (bits === 4 || bits === 8));
    expect(Array.from(decodeMatMulNBits(p, N, K))).toEqual(Array.from(dequantize(q).data as Float32Array));
  });

  it('group sizes that are not a power of two >= 16 do not fit the op', () => {
    for (const gs of [8, 24, 48]) expect(matMulNBitsParts(quantize(new Tensor(x(2 * 96), [2, 96]), { bits: 4, groupSize: gs }))).toBeNull();
  });
});

function feeds(ort: Ort, cfg: { nLayers: number; nKvHeads: number; headDim: number }, rows: number[][], opts: { past?: Record<string, { data: Float32Array; dims: readonly number[] }>; pastLen?: number; mask?: number[][]; pos?: number[][] } = {}) {
  const B = rows.length, T = rows[0].length, P = opts.pastLen ?? 0;
  const flat = (a: number[][]) => BigInt64Array.from(a.flat().map(BigInt));
  const mask = opts.mask ?? rows.map(() => new Array<number>(P + T).fill(1));
  const pos = opts.pos ?? rows.map(() => Array.from({ length: T }, (_, i) => P + i));
  const f: Record<string, InstanceType<Ort['Tensor']>> = {
    input_ids: new ort.Tensor('int64', flat(rows), [B, T]),
    attention_mask: new ort.Tensor('int64', flat(mask), [B, P + T]),
    position_ids: new ort.Tensor('int64', flat(pos), [B, T]),
  };
  for (let l = 0; l < cfg.nLayers; l++)
    for (const kv of ['key', 'value']) {
      const past = opts.past?.[`present.${l}.${kv}`];
      f[`past_key_values.${l}.${kv}`] = past ? new ort.Tensor('float32', past.data, [...past.dims]) : new ort.Tensor('float32', new Float32Array(0), [B, cfg.nKvHeads, 0, cfg.headDim]);
    }
  return f;
}

const onnxFile = (dir: string) => path.join(dir, 'onnx', readdirSync(path.join(dir, 'onnx')).find((f) => f.endsWith('.onnx'))!);
const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) { d = Math.max(d, Math.abs(a[i] - b[i])); m = Math.max(m, Math.abs(b[i])); }
  return d / m;
};

describe.skipIf(!ortFound.ok)('onnxruntime runs the exported decoder', () => {
  const ort = ortFound.ok ? ortFound.value : (null as unknown as Ort);
  const SYN: SyntheticOptions = { dim: 64, hiddenDim: 172, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 300, maxSeq: 64, seed: 5 };
  const cases: { name: string; q: (n: string) => QuantOptions | null }[] = [
    { name: 'INT4 g32 asym', q: () => ({ bits: 4, groupSize: 32, symmetric: false }) },
    { name: 'INT4 g16 sym / INT8 g32 asym / fp32 v', q: (n) => (n.endsWith('wv') ? null : n.endsWith('w_down') ? { bits: 8, groupSize: 32 } : { bits: 4, groupSize: 16, symmetric: true }) },
    { name: 'INT3 g64 sym / INT2 g32 asym', q: (n) => (n.endsWith('wq') || n.endsWith('wk') ? { bits: 3, groupSize: 64, symmetric: true } : { bits: 2, groupSize: 32 }) },
    { name: 'INT4 g24 (fp32 MatMul fallback)', q: () => ({ bits: 4, groupSize: 24 }) },
  ];
  const ids = [1, 17, 230, 5, 99, 64, 12, 250, 3, 41, 77, 8];

  for (const c of cases) {
    it(`${c.name}: logits match quantform's forward, MatMulNBits where it fits`, async () => {
      const ck = quantView(SYN, c.q);
      const dir = fresh('syn-onnx');
      const r = await exportOnnx(ck, dir, { vocab: testVocab(300) });
      const kinds = new Set(r.tensors.filter((t) => t.shape.length === 2 && t.source !== 'f32').map((t) => t.type.split(' ')[0]));
      expect(kinds.has(c.name.includes('g24') ? 'MatMul' : 'MatMulNBits')).toBe(true);
      if (c.name.includes('g24')) expect(r.tensors.find((t) => t.type === 'MatMul (FLOAT)' && t.source !== 'f32')?.note).toMatch(/does not fit MatMulNBits .* exact values as an fp32 MatMul/);
      const sess = await ort.InferenceSession.create(onnxFile(dir));
      expect([...sess.inputNames].slice(0, 3)).toEqual(['input_ids', 'attention_mask', 'position_ids']);
      expect(sess.outputNames).toContain('present.1.value');
      const out = await sess.run(feeds(ort, ck.config, [ids]));
      const m = new Model(ck, await ck.tokenizer());
      try {
        expect(relDiff(out.logits.data, m.forward(ids).logits)).toBeLessThan(LOGIT_REL_TOL);
      } finally {
        m.dispose();
      }
    });
  }

  it('the KV cache continues a sequence, and left-padded batches give each row its own logits', async () => {
    const ck = quantView(SYN, () => ({ bits: 4, groupSize: 32, symmetric: false }));
    const dir = fresh('kv-onnx');
    await exportOnnx(ck, dir, { vocab: testVocab(300) });
    const sess: OrtSession = await ort.InferenceSession.create(onnxFile(dir));
    const V = 300;
    const full = (await sess.run(feeds(ort, ck.config, [ids]))).logits.data;
    const first = await sess.run(feeds(ort, ck.config, [ids.slice(0, 8)]));
    expect(first['present.0.key'].dims).toEqual([1, 2, 8, 8]);
    const second = await sess.run(feeds(ort, ck.config, [ids.slice(8)], { past: first, pastLen: 8 }));
    expect(second['present.1.value'].dims).toEqual([1, 2, 12, 8]);
    expect(relDiff(second.logits.data, full.subarray(8 * V))).toBeLessThan(LOGIT_REL_TOL);
    // batch: row 0 is ids[0..12), row 1 is ids[0..9) left-padded by 3 (position ids from the mask, as Transformers.js makes them)
    const pad = [0, 0, 0, ...ids.slice(0, 9)];
    const out = await sess.run(feeds(ort, ck.config, [ids, pad], {
      mask: [new Array(12).fill(1), [0, 0, 0, ...new Array(9).fill(1)]],
      pos: [Array.from({ length: 12 }, (_, i) => i), [1, 1, 1, ...Array.from({ length: 9 }, (_, i) => i)]],
    }));
    const alone = (await sess.run(feeds(ort, ck.config, [ids.slice(0, 9)]))).logits.data;
    expect(relDiff(out.logits.data.subarray(0, 12 * V), full)).toBeLessThan(LOGIT_REL_TOL);
    expect(relDiff(out.logits.data.subarray(15 * V, 24 * V), alone)).toBeLessThan(LOGIT_REL_TOL);
  });

  it('a failed export leaves no output directory and no temp directory', async () => {
    const dir = fresh('refused-onnx');
    // a synthetic model has no vocabulary to write tokenizer.json from: refused after the temp directory exists
    await expect(exportOnnx(quantView(SYN, () => ({ bits: 4, groupSize: 32 })), dir)).rejects.toThrow(/a synthetic model has no SentencePiece vocabulary/);
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(tmp).filter((f) => f.includes('refused-onnx'))).toEqual([]);
  });

  describe.skipIf(!haveShared)('stories260K (shared models present)', () => {
    const rows: string[] = [];
    afterAll(() => { if (rows.length) console.log(['ONNX round trip (stories260K, TinyStories protocol):', ...rows].join('\n  ')); });
    const protocol = () => JSON.parse(readFileSync(REF, 'utf8')) as { token_ids: number[] };

    /** perplexity through onnxruntime with quantform's windowing: 80 windows of 256 from position 0 */
    const ortPerplexity = async (sess: OrtSession, cfg: Checkpoint['config'], idsAll: number[]) => {
      const W = 256, nW = Math.floor((idsAll.length - 1) / W);
      let sum = 0;
      for (let w0 = 0; w0 < nW; w0 += 8) {
        const rowsW = Array.from({ length: Math.min(8, nW - w0) }, (_, b) => idsAll.slice((w0 + b) * W, (w0 + b) * W + W));
        const lg = (await sess.run(feeds(ortFound.ok ? ortFound.value : ort, cfg, rowsW))).logits.data;
        const V = cfg.vocabSize;
        rowsW.forEach((_, b) => {
          for (let t = 0; t < W; t++) {
            const o = (b * W + t) * V;
            let mx = -Infinity, s = 0;
            for (let v = 0; v < V; v++) mx = Math.max(mx, lg[o + v]);
            for (let v = 0; v < V; v++) s += Math.exp(lg[o + v] - mx);
            sum += mx + Math.log(s) - lg[o + idsAll[(w0 + b) * W + t + 1]];
          }
        });
      }
      return Math.exp(sum / (nW * W));
    };

    const ortGreedy = async (sess: OrtSession, cfg: Checkpoint['config'], prompt: number[], n: number) => {
      let out = await sess.run(feeds(ort, cfg, [prompt]));
      const V = cfg.vocabSize, got: number[] = [];
      let len = prompt.length, last = prompt.length - 1;
      for (let s = 0; s < n; s++) {
        let best = 0;
        for (let v = 1; v < V; v++) if (out.logits.data[last * V + v] > out.logits.data[last * V + best]) best = v;
        got.push(best);
        out = await sess.run(feeds(ort, cfg, [[best]], { past: out, pastLen: len }));
        len++;
        last = 0;
      }
      return got;
    };

    for (const symmetric of [true, false]) {
      it(`RTN W4 g32 ${symmetric ? 'sym' : 'asym'}: onnxruntime's perplexity within 0.5 %, greedy identical for 64 tokens`, async () => {
        const q = await quantizeModel(TrainableLlama.fromCheckpoint(openCheckpoint(HF)), { method: 'rtn', bits: 4, groupSize: 32, symmetric });
        const src = fresh('gptq');
        saveGptq(q, src, { tokenizerDir: HF });
        const dir = fresh('stories-onnx');
        const r = await exportOnnx(src, dir);
        expect(existsSync(path.join(dir, 'onnx/model_q4.onnx'))).toBe(true);
        expect(existsSync(path.join(dir, 'onnx/model_q4.onnx_data'))).toBe(true);
        const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
        expect(config['transformers.js_config']).toEqual({ dtype: 'q4', use_external_data_format: true });
        expect(config.quantization_config).toBeUndefined();
        const sess = await ort.InferenceSession.create(onnxFile(dir));
        const m = await loadModel(src);
        try {
          const ids = protocol().token_ids;
          const ppl = (await evaluatePerplexity(m, { ids })).ppl, oppl = await ortPerplexity(sess, m.config, ids);
          const prompt = m.tokenizer.encode('Once upon a time', { bos: true });
          const mine: number[] = [];
          for await (const t of generate(m, prompt, { maxTokens: 64, temperature: 0, stopAtEos: false })) mine.push(t.id);
          const theirs = await ortGreedy(sess, m.config, prompt, 64);
          rows.push(`RTN ${symmetric ? 'sym ' : 'asym'}: quantform ${ppl.toFixed(6)}, onnxruntime ${oppl.toFixed(6)} (${(100 * (oppl / ppl - 1)).toExponential(2)} %), greedy ${mine.join() === theirs.join() ? 'identical' : 'differs'}; export ${r.seconds.toFixed(2)} s, ${(r.bytes / 1e3).toFixed(0)} kB`);
          expect(Math.abs(oppl - ppl) / ppl).toBeLessThan(PPL_REL_TOL);
          expect(theirs).toEqual(mine);
        } finally {
          m.dispose();
        }
        if (pyOnnx.ok) {
          const out = execFileSync(pyOnnx.value, ['-c', 'import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=False); m = onnx.load(sys.argv[1], load_external_data=False); print(m.ir_version, [(o.domain, o.version) for o in m.opset_import])', onnxFile(dir)], { encoding: 'utf8' });
          expect(out).toMatch(/^8 \[\('', 17\), \('com\.microsoft', 1\)\]/);
        }
      });
    }

    it('a llama2.c source gets a tokenizer.json written from tok512.bin that tokenizers.js reads as quantform does', async () => {
      const dir = fresh('bin-onnx');
      const r = await exportOnnx(BIN, dir);
      expect(r.vocab).toMatch(/tok512\.bin \(tokenizer\.json written from it\)/);
      const tok = new HfTokenizer(JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
      const m = await loadModel(BIN);
      try {
        const stories = readFileSync(TINY, 'utf8').split('<|endoftext|>').map((s) => s.trim()).filter(Boolean).slice(0, 100);
        for (const text of [...VOCAB_PROBE, ...stories]) expect(tok.encode(text, { add_special_tokens: false }).ids).toEqual(m.tokenizer.encode(text, { bos: false }));
        const sess = await ort.InferenceSession.create(onnxFile(dir));
        const ids = m.tokenizer.encode('Once upon a time, there was a little girl.', { bos: true });
        expect(relDiff((await sess.run(feeds(ort, m.config, [ids]))).logits.data, m.forward(ids).logits)).toBeLessThan(LOGIT_REL_TOL);
      } finally {
        m.dispose();
      }
    });

    it.skipIf(!tjs.ok)('Transformers.js (local model path, remote models off) generates quantform\'s greedy text for 64 tokens', async () => {
      const t = tjs.ok ? tjs.value : (null as never);
      const q = await quantizeModel(TrainableLlama.fromCheckpoint(openCheckpoint(HF)), { method: 'rtn', bits: 4, groupSize: 32, symmetric: false });
      const src = fresh('gptq-tjs');
      saveGptq(q, src, { tokenizerDir: HF });
      const dir = fresh('tjs-onnx');
      await exportOnnx(src, dir);
      t.env.allowRemoteModels = false;
      t.env.allowLocalModels = true;
      t.env.localModelPath = path.dirname(dir) + path.sep;
      const tokenizer = await t.AutoTokenizer.from_pretrained(path.basename(dir));
      const model = await t.AutoModelForCausalLM.from_pretrained(path.basename(dir));
      const m = await loadModel(src);
      try {
        const out = await model.generate({ ...tokenizer('Once upon a time'), max_new_tokens: 64, do_sample: false });
        const all = Array.from(out.data, Number);
        const prompt = m.tokenizer.encode('Once upon a time', { bos: true });
        const mine: number[] = [];
        for await (const x of generate(m, prompt, { maxTokens: 64, temperature: 0, stopAtEos: false })) mine.push(x.id);
        rows.push(`Transformers.js: greedy ${all.slice(prompt.length).join() === mine.join() ? 'identical' : 'differs'} for 64 tokens: ${JSON.stringify(m.tokenizer.decode(all).slice(0, 60))}...`);
        expect(all.slice(0, prompt.length)).toEqual(prompt);
        expect(all.slice(prompt.length)).toEqual(mine);
      } finally {
        m.dispose();
        await model.dispose();
      }
    });
  });
});

