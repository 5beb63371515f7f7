// GGUF export (lib/export/gguf.ts) and quantized GGUF load (lib/model/gguf.ts),
// without third-party runtimes: what each quantform format becomes (exact, rounded,
// re-encoded, refused under exact), that the file loads back into quantform with the
// same codes and logits, q/k in llama.cpp's interleaved order, the FFN padding, the
// vocabulary checks, refusals of models GGUF cannot express, lying/truncated files,
// atomic output. Files from the gguf python package (an independent reader and
// writer) are checked when a python with numpy + gguf exists (skipped otherwise).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  dequantize, evaluatePerplexity, exportGguf, exportOnnx, generate, GgufCheckpoint, ggmlType, loadModel, Model, openCheckpoint, permuteHalfToInterleaved, quantize,
  quantizeModel, QuantformError, saveGptq, SyntheticCheckpoint, Tensor, TOKEN_TYPE, TrainableLlama, vocabFromCheckpoint, vocabFromSentencePiece,
  vocabFromTokenizerJson, weightShape, type Checkpoint, type QuantOptions, type QuantizedTensor, type SyntheticOptions,
} from '../lib/index.js';
import { loadLlama2cTokenizer } from '../lib/tokenizer/sentencepiece.js';
import { python } from './helpers/peers.js';
import { testVocab } from './helpers/vocab.js';
import { sharedDir } from './helpers/tiers.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-gguf-export-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let nTmp = 0;
const fresh = (name: string) => path.join(tmp, `${nTmp++}-${name}`);

const shared = sharedDir();
const HF = path.join(shared, 'models/stories260K-hf');
const LLAMA2_TOK = path.join(shared, 'models/llama2-tokenizer');
const REF = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const haveShared = [HF, REF].every((p) => existsSync(p));
if (!haveShared) console.warn(`gguf-export: real-model cases skipped, shared files not found under ${shared}`);
const py = python();
if (!py.ok) console.warn(`gguf-export: gguf-python cases skipped: ${py.reason}`);

// logits of the same codes through another kernel (INT4 vs INT8, f32 vs f16 parameters): fp32 rounding only
const LOGIT_ABS_TOL = 2e-4;
// Q4_1 rounds each group's minimum to f16 (relative weight error ~4e-4): logits relative to their largest magnitude
const Q4_1_LOGIT_REL_TOL = 1e-3;
// The same weights as groups of 64 and as groups of 32 with the scale repeated: the split kernel
// (decode rows on VNNI) scales each group's exact integer sum once, so the fp32 rounding of the
// sums differs by the grouping, at fp32 level
const REGROUPED_LOGIT_REL_TOL = 1e-6;

/** A synthetic model whose linears are RTN-quantized in memory, as a GPTQ checkpoint would hand them over. */
class QuantView implements Checkpoint {
  readonly format = 'synthetic' as const;
  private readonly cache = new Map<string, QuantizedTensor>();
  constructor(readonly base: Checkpoint, private readonly q: (name: string) => QuantOptions | null) {}
  get path(): string { return this.base.path; }
  get config() { return this.base.config; }
  quantizedWeight(name: string): QuantizedTensor | null {
    // as GPTQ checkpoints: linears of the blocks only (embeddings and the head stay fp32)
    const o = name === 'embed' || name === 'lm_head' || weightShape(this.config, name).length < 2 ? null : this.q(name);
    if (!o) return null;
    let t = this.cache.get(name);
    if (!t) {
      t = quantize(new Tensor(this.base.weight(name), weightShape(this.config, name) as [number, number]), { paramDtype: 'f16', ...o });
      this.cache.set(name, t);
    }
    return t;
  }
  weight(name: string): Float32Array {
    const t = this.quantizedWeight(name);
    return t ? (dequantize(t).data as Float32Array) : this.base.weight(name);
  }
  tokenizer() { return this.base.tokenizer(); }
  close(): void {}
}

const SYN_K: SyntheticOptions = { dim: 256, hiddenDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 300, maxSeq: 64, seed: 3 };
const view = (o: QuantOptions | ((n: string) => QuantOptions | null), syn: SyntheticOptions = SYN_K) =>
  new QuantView(new SyntheticCheckpoint(syn), typeof o === 'function' ? o : () => o);
const ids = [1, 5, 77, 200, 31, 9, 150, 42, 260, 3, 18, 99];

async function logitsOf(ck: Checkpoint): Promise<Float32Array> {
  const m = new Model(ck, await ck.tokenizer());
  try { return m.forward(ids).logits; } finally { m.dispose(); }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

async function exported(ck: Checkpoint, opts: Parameters<typeof exportGguf>[2] = {}) {
  const file = fresh('m.gguf');
  const report = await exportGguf(ck, file, { vocab: testVocab(ck.config.vocabSize), ...opts });
  return { file, report, byName: new Map(report.tensors.map((t) => [t.name, t])) };
}

const errOf = async (p: Promise<unknown>): Promise<QuantformError> => {
  try { await p; } catch (e) { if (e instanceof QuantformError) return e; throw e; }
  throw new Error('expected a QuantformError');
};

describe('GGUF export: exact mappings', () => {
  it('INT4 sym g32 -> Q4_0, bit-exact: the reloaded file hands back the same codes and scales, logits identical', async () => {
    const src = view({ bits: 4, groupSize: 32, symmetric: true });
    const { file, report } = await exported(src);
    const lin = report.tensors.filter((t) => t.shape.length === 2 && t.name !== 'token_embd.weight' && t.name !== 'output.weight');
    expect(lin.length).toBe(14);
    for (const t of lin) expect([t.type, t.fidelity, t.maxAbsError]).toEqual(['Q4_0', 'exact', 0]);
    expect(report.tensors.find((t) => t.name === 'token_embd.weight')?.type).toBe('F32');
    const back = new GgufCheckpoint(file);
    try {
      for (const name of ['layers.0.wq', 'layers.1.wk', 'layers.0.w_down']) {
        const a = src.quantizedWeight(name)!, b = back.quantizedWeight(name)!;
        expect([b.bits, b.groupSize, b.symmetric, b.paramDtype]).toEqual([4, 32, true, 'f16']);
        expect(Buffer.from(b.codes).equals(Buffer.from(a.codes))).toBe(true);
        expect(Array.from(b.scales as Uint16Array)).toEqual(Array.from(a.scales as Uint16Array));
      }
      expect(maxDiff(await logitsOf(back), await logitsOf(src))).toBe(0);
    } finally {
      back.close();
    }
  });

  it('groups of 64 and 128 span whole 32-blocks: Q4_0 / Q4_1 with the group scale repeated, codes and scales as they were', async () => {
    for (const [gs, sym, type] of [[64, true, 'Q4_0'], [128, false, 'Q4_1']] as const) {
      const src = view({ bits: 4, groupSize: gs, symmetric: sym });
      const { file, byName } = await exported(src);
      expect(byName.get('blk.0.ffn_up.weight')?.type).toBe(type);
      expect(byName.get('blk.0.ffn_up.weight')?.fidelity).toBe(sym ? 'exact' : 'rounded');
      const back = new GgufCheckpoint(file);
      try {
        if (sym) {
          // the weights themselves are untouched: the same codes, each g64 scale twice as g32 scales
          const a = src.quantizedWeight('layers.0.w_up')!, b = back.quantizedWeight('layers.0.w_up')!;
          expect([b.groupSize, Buffer.from(b.codes).equals(Buffer.from(a.codes))]).toEqual([32, true]);
          const sa = Array.from(a.scales as Uint16Array), sb = Array.from(b.scales as Uint16Array);
          expect(sb).toEqual(sa.flatMap((v) => [v, v]));
        }
        const want = await logitsOf(src), d = maxDiff(await logitsOf(back), want);
        // Q4_1's minimum is rounded once to f16: logits move by that, relative to their range
        const range = maxDiff(want, new Float32Array(want.length));
        if (sym) expect(d / range).toBeLessThan(REGROUPED_LOGIT_REL_TOL);
        else expect(d / range).toBeLessThan(Q4_1_LOGIT_REL_TOL);
      } finally {
        back.close();
      }
    }
  });

  it('INT4 asym: Q4_1 rounds m = -d*z once to f16 (measured, reported); exact writes Q5_0, bit-exact', async () => {
    const src = view({ bits: 4, groupSize: 32, symmetric: false });
    const a = await exported(src);
    const t = a.byName.get('blk.0.attn_v.weight')!;
    expect([t.type, t.fidelity]).toEqual(['Q4_1', 'rounded']);
    expect(t.maxAbsError).toBeGreaterThan(0);
    expect(t.relError).toBeLessThan(1e-3);
    expect(t.note).toMatch(/m = -d\*z rounded to f16/);
    const b = await exported(src, { exact: true });
    for (const x of b.report.tensors.filter((x) => x.shape.length === 2 && x.source !== 'f32')) expect([x.type, x.fidelity, x.maxAbsError]).toEqual(['Q5_0', 'exact', 0]);
    const back = new GgufCheckpoint(b.file);
    try {
      // Q5_0 loads as INT8 codes on the INT8 kernels: the same values
      const q = back.quantizedWeight('layers.0.wv')!;
      expect([q.bits, q.symmetric]).toEqual([8, true]);
      expect(Array.from(dequantize(q).data as Float32Array)).toEqual(Array.from(dequantize(src.quantizedWeight('layers.0.wv')!).data as Float32Array));
      expect(maxDiff(await logitsOf(back), await logitsOf(src))).toBeLessThan(LOGIT_ABS_TOL);
    } finally {
      back.close();
    }
  });

  it('INT8 sym -> Q8_0 exact; INT8 asym is re-encoded (exact refuses it)', async () => {
    const s = await exported(view({ bits: 8, groupSize: 32, symmetric: true }));
    expect([s.byName.get('blk.1.attn_output.weight')?.type, s.byName.get('blk.1.attn_output.weight')?.fidelity]).toEqual(['Q8_0', 'exact']);
    const a = await exported(view({ bits: 8, groupSize: 32, symmetric: false }));
    const t = a.byName.get('blk.1.attn_output.weight')!;
    expect([t.type, t.fidelity]).toEqual(['Q8_0', 're-encoded']);
    expect(t.relError).toBeGreaterThan(0);
    expect(t.relError).toBeLessThan(0.02);
    const e = await errOf(exported(view({ bits: 8, groupSize: 32, symmetric: false }), { exact: true }));
    expect(e.code).toBe('QF_UNSUPPORTED');
    expect(e.message).toMatch(/blk\.0\.attn_q\.weight: INT8 asym g32 \(f16\) has no exact GGUF type/);
  });

  it('INT3 / INT2: compact Q3_K / Q2_K with the added error measured; exact keeps their codes in Q4_0 bit for bit', async () => {
    for (const [bits, sym, compact] of [[3, true, 'Q3_K'], [2, false, 'Q2_K']] as const) {
      const src = view({ bits, groupSize: 32, symmetric: sym });
      const c = await exported(src);
      const t = c.byName.get('blk.0.ffn_gate.weight')!;
      expect([t.type, t.fidelity]).toEqual([compact, 're-encoded']);
      expect(t.relError).toBeGreaterThan(0);
      // re-encoding values that already sit on a 2/3-bit grid adds little next to the quantization itself
      expect(t.relError).toBeLessThan(bits === 3 ? 0.08 : 0.2);
      const e = await exported(src, { exact: true });
      for (const x of e.report.tensors.filter((x) => x.source !== 'f32' && x.shape.length === 2)) expect([x.type, x.fidelity, x.maxAbsError]).toEqual(['Q4_0', 'exact', 0]);
      const back = new GgufCheckpoint(e.file);
      try {
        expect(maxDiff(await logitsOf(back), await logitsOf(src))).toBeLessThan(LOGIT_ABS_TOL);
      } finally {
        back.close();
      }
    }
  });

  it('a group size that is not a multiple of 32 is re-encoded (Q4_K on 256-rows, Q4_0/Q4_1 otherwise); exact refuses with the reason', async () => {
    const r = await exported(view({ bits: 4, groupSize: 16, symmetric: false }));
    const t = r.byName.get('blk.0.ffn_down.weight')!;
    expect([t.type, t.fidelity]).toEqual(['Q4_K', 're-encoded']);
    expect(t.relError).toBeGreaterThan(0);
    expect(t.relError).toBeLessThan(0.1);
    const small = await exported(view({ bits: 4, groupSize: 16, symmetric: true }, { dim: 64, hiddenDim: 128, nLayers: 1, nHeads: 4, vocabSize: 300, maxSeq: 32 }));
    expect(small.byName.get('blk.0.attn_q.weight')?.type).toBe('Q4_0');
    expect(small.byName.get('blk.0.attn_q.weight')?.fidelity).toBe('re-encoded');
    const out = fresh('refused.gguf');
    const e = await errOf(exportGguf(view({ bits: 4, groupSize: 16, symmetric: true }), out, { vocab: testVocab(300), exact: true }));
    expect(e.message).toMatch(/INT4 sym g16 \(f16\) has no exact GGUF type .* re-encoded as Q4_K/);
    // atomic: nothing at the output path, no temp files left next to it
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(path.dirname(out)).filter((f) => f.includes('refused'))).toEqual([]);
  });
});

describe('GGUF export: layout', () => {
  it('q/k rows are written in llama.cpp\'s interleaved RoPE order, untied head and norms as stored', async () => {
    const src = view({ bits: 4, groupSize: 32, symmetric: true });
    const { file } = await exported(src);
    const back = new GgufCheckpoint(file);
    try {
      const cfg = src.config;
      const raw = (name: string) => {
        const t = back.header.tensors.find((x) => x.name === name)!;
        return t.type.dequantize(new Uint8Array(readFileSync(file).subarray(t.offset, t.offset + t.nbytes)), t.ne[0] * t.ne[1]);
      };
      const wq = dequantize(src.quantizedWeight('layers.0.wq')!).data as Float32Array;
      expect(Array.from(raw('blk.0.attn_q.weight'))).toEqual(Array.from(permuteHalfToInterleaved(wq, cfg.nHeads, cfg.dim)));
      const wk = dequantize(src.quantizedWeight('layers.0.wk')!).data as Float32Array;
      expect(Array.from(raw('blk.0.attn_k.weight'))).toEqual(Array.from(permuteHalfToInterleaved(wk, cfg.nKvHeads, cfg.dim)));
      expect(back.config.tiedEmbeddings).toBe(false);
      expect(Array.from(back.weight('lm_head'))).toEqual(Array.from(src.weight('lm_head')));
      expect(Array.from(back.weight('layers.1.ffn_norm'))).toEqual(Array.from(src.weight('layers.1.ffn_norm')));
      const md = back.header.metadata;
      expect(md.get('general.architecture')).toBe('llama');
      expect(md.get('general.file_type')).toBe(2);
      expect(md.get('llama.rope.dimension_count')).toBe(cfg.headDim);
      expect(md.get('tokenizer.ggml.model')).toBe('llama');
      expect(md.get('tokenizer.ggml.add_bos_token')).toBe(true);
    } finally {
      back.close();
    }
  });

  it('an FFN of 172 is padded to 192 with zero channels: same logits; rows that are not a multiple of 32 stay F32', async () => {
    const src = view({ bits: 4, groupSize: 32, symmetric: false }, { dim: 64, hiddenDim: 172, nLayers: 2, nHeads: 8, nKvHeads: 4, vocabSize: 300, maxSeq: 32 });
    const { file, report, byName } = await exported(src, { exact: true });
    expect(report.ffnPadded).toEqual({ from: 172, to: 192 });
    expect(byName.get('blk.0.ffn_down.weight')?.shape).toEqual([64, 192]);
    expect(byName.get('blk.0.ffn_gate.weight')?.shape).toEqual([192, 64]);
    const back = new GgufCheckpoint(file);
    try {
      expect(back.config.hiddenDim).toBe(192);
      expect(maxDiff(await logitsOf(back), await logitsOf(src))).toBeLessThan(LOGIT_ABS_TOL);
    } finally {
      back.close();
    }
    const odd = await exported(view({ bits: 4, groupSize: 16, symmetric: true }, { dim: 48, hiddenDim: 96, nLayers: 1, nHeads: 4, vocabSize: 300, maxSeq: 32 }));
    const q = odd.byName.get('blk.0.attn_q.weight')!;
    expect([q.type, q.fidelity]).toEqual(['F32', 'exact']);
    expect(q.note).toMatch(/rows of 48 values are not a multiple of 32/);
  });

  it('floatType F16 halves embeddings and the head; norms stay F32', async () => {
    const { byName } = await exported(view({ bits: 4, groupSize: 32, symmetric: true }), { floatType: 'F16' });
    expect(byName.get('token_embd.weight')?.type).toBe('F16');
    expect(byName.get('output.weight')?.type).toBe('F16');
    expect(byName.get('output.weight')?.fidelity).toBe('rounded');
    expect(byName.get('output.weight')?.relError).toBeLessThan(2 ** -11);
    expect(byName.get('output_norm.weight')?.type).toBe('F32');
  });
});

describe('GGUF export: refusals', () => {
  it('a model without a SentencePiece vocabulary, or one whose tokenizer GGUF cannot represent', async () => {
    const e = await errOf(exportGguf(new SyntheticCheckpoint({ nLayers: 1 }), fresh('x.gguf')));
    expect(e.code).toBe('QF_UNSUPPORTED');
    expect(e.message).toMatch(/GGUF cannot represent this tokenizer: a synthetic model has no SentencePiece vocabulary/);
    const gpt2 = { model: { type: 'BPE', byte_fallback: false, vocab: { a: 0 }, merges: [] } };
    expect(() => vocabFromTokenizerJson(gpt2, {}, 'tokenizer.json')).toThrow(/byte-level BPE without byte_fallback .* needs a llama\.cpp pre-tokenizer/);
    expect(() => vocabFromTokenizerJson({ model: { type: 'Unigram' } }, {}, 'tokenizer.json')).toThrow(/model type 'Unigram'/);
  });

  it.skipIf(!haveShared)('tokenizer.json merges that SentencePiece scores cannot reproduce are refused with the first difference', async () => {
    const dir = fresh('tampered');
    cpSync(HF, dir, { recursive: true });
    const tj = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as { model: { merges: unknown[] } };
    tj.model.merges.shift();  // '▁' + 't': BPE never forms '▁t' now, SentencePiece still would
    writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    const e = await errOf(exportGguf(dir, fresh('x.gguf')));
    expect(e.code).toBe('QF_UNSUPPORTED');
    expect(e.message).toMatch(/its SentencePiece form tokenizes .* differently from the model's tokenizer \(first difference at token \d+/);
  });

  it('activation-quantized models and run-time transforms are refused by GGUF and ONNX export', async () => {
    const tl = TrainableLlama.fromCheckpoint(new SyntheticCheckpoint({ dim: 64, hiddenDim: 128, nLayers: 1, nHeads: 4, vocabSize: 300, maxSeq: 32 }));
    const q = await quantizeModel(tl, { method: 'rtn', bits: 4, groupSize: 32, symmetric: true });
    const dir = fresh('actq');
    saveGptq(q, dir);
    const cfgFile = path.join(dir, 'config.json');
    const cfg = JSON.parse(readFileSync(cfgFile, 'utf8')) as { quantization_config: { quantform: Record<string, unknown> } };
    cfg.quantization_config.quantform.activations = { bits: 8 };
    writeFileSync(cfgFile, JSON.stringify(cfg));
    for (const p of [exportGguf(dir, fresh('a.gguf')), exportOnnx(dir, fresh('a-onnx'))])
      expect((await errOf(p)).message).toMatch(/the model quantizes activations statically \(8-bit: \{"bits":8\}\); (GGUF|ONNX) stores weight-only quantized models/);
    delete cfg.quantization_config.quantform.activations;
    cfg.quantization_config.quantform.online_transforms = ['hadamard:down_proj'];
    writeFileSync(cfgFile, JSON.stringify(cfg));
    expect((await errOf(exportGguf(dir, fresh('b.gguf')))).message).toMatch(/applies transforms at run time: hadamard:down_proj \(online Hadamard\); GGUF .* has no op for run-time transforms/);
  });
});

describe('quantized GGUF in: lying and truncated files', () => {
  const good = async () => (await exported(view({ bits: 4, groupSize: 32, symmetric: true }, { dim: 64, hiddenDim: 128, nLayers: 1, nHeads: 4, vocabSize: 300, maxSeq: 32 }))).file;
  /** byte offset of a tensor info's fields (after its name) */
  const infoAt = (b: Buffer, name: string) => {
    const nameBytes = Buffer.from(name);
    const at = b.indexOf(nameBytes, 24) + nameBytes.length;
    const nd = b.readUInt32LE(at);
    return { ne0: at + 4, type: at + 4 + 8 * nd, offset: at + 8 + 8 * nd };
  };
  const write = (b: Buffer) => { const f = fresh('bad.gguf'); writeFileSync(f, b); return f; };
  const open = (f: string) => { try { new GgufCheckpoint(f).close(); } catch (e) { return e as QuantformError; } throw new Error('opened'); };

  it('truncated data, overlapping or misaligned offsets, rows not a multiple of the block, duplicate names', async () => {
    const b = readFileSync(await good());
    expect(open(write(b.subarray(0, b.length - 100))).message).toMatch(/tensor '[\w.]+' spans bytes .* past the end of the file \(\d+ bytes; (Q4_0|F32) \[.*\], truncated\?\)/);
    const overlap = Buffer.from(b);
    const down = infoAt(overlap, 'blk.0.ffn_down.weight'), up = infoAt(overlap, 'blk.0.ffn_up.weight');
    overlap.writeBigUInt64LE(overlap.readBigUInt64LE(up.offset), down.offset);
    expect(open(write(overlap)).message).toMatch(/tensors '.*' \[\d+, \d+\) and '.*' \[\d+, \d+\) overlap/);
    const mis = Buffer.from(b);
    mis.writeBigUInt64LE(mis.readBigUInt64LE(down.offset) + 2n, down.offset);
    expect(open(write(mis)).message).toMatch(/tensor 'blk\.0\.ffn_down\.weight' has offset \d+, not a multiple of the alignment 32/);
    const rows = Buffer.from(b);
    rows.writeBigUInt64LE(48n, infoAt(rows, 'blk.0.attn_q.weight').ne0);
    expect(open(write(rows)).message).toMatch(/tensor 'blk\.0\.attn_q\.weight' \(Q4_0\) has rows of 48 values, not a multiple of the block size 32/);
    const dup = Buffer.from(b);
    const i = dup.indexOf(Buffer.from('blk.0.attn_k.weight'));
    dup.write('blk.0.attn_q.weight', i);
    expect(open(write(dup)).message).toMatch(/tensor 'blk\.0\.attn_q\.weight' appears twice/);
    const iq = Buffer.from(b);
    iq.writeUInt32LE(18, infoAt(iq, 'blk.0.attn_q.weight').type);
    const e = open(write(iq));
    expect(e.code).toBe('QF_UNSUPPORTED');
    expect(e.message).toMatch(/has ggml type IQ3_XXS \(18\); quantform reads F32, F16, BF16, Q4_0/);
  });

  it('a Q4_1 block with d = 0 and m != 0 has no s * (q - z) form: the tensor is read as fp32 instead', () => {
    const block = new Uint8Array(20);
    block[2] = 0x00; block[3] = 0x3c;  // m = 1.0, d = 0
    expect(ggmlType('Q4_1').toCanonical!(block, 1, 32)).toBeNull();
    expect(Array.from(ggmlType('Q4_1').dequantize(block, 32))).toEqual(new Array(32).fill(1));
  });
});

const ref = () => (JSON.parse(readFileSync(REF, 'utf8')) as { token_ids: number[] }).token_ids;

describe.skipIf(!haveShared)('stories260K: export -> reload keeps the quantized model (shared models present)', () => {
  it('RTN W4 g32 sym/asym GPTQ dir -> GGUF -> quantform eval: the same perplexity', async () => {
    for (const symmetric of [true, false]) {
      const q = await quantizeModel(TrainableLlama.fromCheckpoint(openCheckpoint(HF)), { method: 'rtn', bits: 4, groupSize: 32, symmetric });
      const dir = fresh(`rtn-${symmetric}`);
      saveGptq(q, dir, { tokenizerDir: HF });
      const file = fresh('rtn.gguf');
      const r = await exportGguf(dir, file);
      expect(r.ffnPadded).toEqual({ from: 172, to: 192 });
      expect(r.vocab).toMatch(/tokenizer\.json$/);
      const a = await loadModel(dir), b = await loadModel(file);
      try {
        expect(b.linear('layers.0.wq').kind).toBe('quantized');
        const pa = await evaluatePerplexity(a, { ids: ref() }), pb = await evaluatePerplexity(b, { ids: ref() });
        expect(Math.abs(pb.ppl - pa.ppl) / pa.ppl).toBeLessThan(symmetric ? 1e-6 : 1e-4);
        expect(b.tokenizer.encode('Once upon a time, Lily saw a dog.')).toEqual(a.tokenizer.encode('Once upon a time, Lily saw a dog.'));
      } finally {
        a.dispose();
        b.dispose();
      }
    }
  });

  it('a quantized GGUF is a starting point for quantization: TrainableLlama.fromCheckpoint reads it dequantized', async () => {
    const q = await quantizeModel(TrainableLlama.fromCheckpoint(openCheckpoint(HF)), { method: 'rtn', bits: 4, groupSize: 32, symmetric: true });
    const dir = fresh('rtn-start');
    saveGptq(q, dir, { tokenizerDir: HF });
    const file = fresh('start.gguf');
    await exportGguf(dir, file);
    const ck = new GgufCheckpoint(file);
    try {
      const tl = TrainableLlama.fromCheckpoint(ck);
      expect(tl.shape.intermediate).toBe(192);
      // the padded FFN channels are zeros; the rest are the GPTQ model's dequantized weights
      const wq = tl.linear(0, 'q_proj'), want = q.model.linear(0, 'q_proj');
      const deq = dequantize(q.linears.get('model.layers.0.self_attn.q_proj')!).data as Float32Array;
      expect(Array.from(wq)).toEqual(Array.from(deq));
      expect(want.length).toBe(wq.length);
      const again = await quantizeModel(tl, { method: 'rtn', bits: 4, groupSize: 32, symmetric: true });
      expect(again.linears.size).toBe(35);
    } finally {
      ck.close();
    }
  });

  it.skipIf(!existsSync(LLAMA2_TOK))('tokenizer.model (SentencePiece protobuf) gives the pieces, scores and types of the llama2.c export of it', () => {
    const v = vocabFromSentencePiece(readFileSync(path.join(LLAMA2_TOK, 'tokenizer.model')), 'tokenizer.model');
    const bin = loadLlama2cTokenizer(path.join(LLAMA2_TOK, 'tokenizer.bin'), 32000).vocabulary();
    expect(v.tokens.length).toBe(32000);
    expect(v.tokens.slice(0, 5)).toEqual(['<unk>', '<s>', '</s>', '<0x00>', '<0x01>']);
    let mism = 0;
    for (let i = 3; i < 32000; i++) if (v.tokens[i] !== bin.pieces[i].toString('utf8').replace(/ /g, '\u2581') || v.scores[i] !== bin.scores[i]) mism++;
    expect(mism).toBe(0);
    expect([v.types[0], v.types[1], v.types[3], v.types[300]]).toEqual([TOKEN_TYPE.UNKNOWN, TOKEN_TYPE.CONTROL, TOKEN_TYPE.BYTE, TOKEN_TYPE.NORMAL]);
    expect(v.addSpacePrefix).toBe(true);
  });

  it('the vocabulary of every source format agrees (tokenizer.json scores from merges, tok512.bin, the GGUF)', async () => {
    const fromJson = vocabFromCheckpoint((await loadModel(HF)).checkpoint);
    const fromBin = vocabFromCheckpoint((await loadModel(path.join(shared, 'models/stories260K/stories260K.bin'))).checkpoint);
    expect(fromJson.tokens).toEqual(fromBin.tokens);
    expect(Array.from(fromJson.types)).toEqual(Array.from(fromBin.types));
    // merge ranks order the merged pieces as tok512.bin's scores do
    const merged = fromJson.tokens.map((_, i) => i).filter((i) => fromJson.scores[i] > -1e4 && fromJson.types[i] === TOKEN_TYPE.NORMAL && [...fromJson.tokens[i]].length > 1);
    const byJson = [...merged].sort((a, b) => fromJson.scores[b] - fromJson.scores[a]);
    const byBin = [...merged].sort((a, b) => fromBin.scores[b] - fromBin.scores[a]);
    expect(byJson).toEqual(byBin);
  });
});

describe.skipIf(!py.ok)('the gguf python package as an independent reader and writer', () => {
  const run = (script: string, ...args: string[]) => execFileSync(py.ok ? py.value : 'python3', ['-c', script, ...args], { encoding: 'utf8', timeout: 120_000 });

  it('reads every tensor of quantform\'s export with the values quantform reads (K-quants included)', async () => {
    const src = view((n) => (n.endsWith('w_up') ? { bits: 3, groupSize: 32, symmetric: true } : n.endsWith('wo') ? { bits: 4, groupSize: 16 } : { bits: 4, groupSize: 32, symmetric: false }));
    const { file, byName } = await exported(src);
    expect(byName.get('blk.0.ffn_up.weight')?.type).toBe('Q3_K');
    expect(byName.get('blk.0.attn_output.weight')?.type).toBe('Q4_K');
    const out = JSON.parse(run(`
import sys, json, hashlib, numpy as np, gguf
r = gguf.GGUFReader(sys.argv[1])
res = {}
for t in r.tensors:
    v = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    res[t.name] = [t.tensor_type.name, [int(x) for x in t.shape], hashlib.sha256(v.tobytes()).hexdigest()]
f = r.fields['tokenizer.ggml.tokens']
res['_tokens'] = len(f.data)
print(json.dumps(res))`, file)) as Record<string, [string, number[], string] | number>;
    const ck = new GgufCheckpoint(file);
    try {
      expect(out._tokens).toBe(300);
      for (const t of ck.header.tensors) {
        const [type, shape, sha] = out[t.name] as [string, number[], string];
        expect(type).toBe(t.type.name);
        expect(shape).toEqual(t.ne);
        const mine = t.type.dequantize(new Uint8Array(readFileSync(file).subarray(t.offset, t.offset + t.nbytes)), t.ne.reduce((a, b) => a * b, 1));
        expect(createHash('sha256').update(mine).digest('hex')).toBe(sha);
      }
    } finally {
      ck.close();
    }
  });

  it.skipIf(!haveShared)('a Q4_0 / Q8_0 model written by the gguf package loads packed and matches its fp32 dequantization', async () => {
    for (const qt of ['Q4_0', 'Q8_0']) {
      const file = fresh(`gguf-py-${qt}.gguf`);
      run(`
import sys, json, struct, numpy as np, gguf
from safetensors.numpy import load_file
d, out, qt = sys.argv[1], sys.argv[2], sys.argv[3]
t = load_file(d + '/model.safetensors'); c = json.load(open(d + '/config.json')); tj = json.load(open(d + '/tokenizer.json'))
w = gguf.GGUFWriter(out, 'llama')
w.add_context_length(c['max_position_embeddings']); w.add_embedding_length(c['hidden_size']); w.add_block_count(c['num_hidden_layers'])
w.add_feed_forward_length(c['intermediate_size']); w.add_head_count(c['num_attention_heads']); w.add_head_count_kv(c['num_key_value_heads'])
w.add_layer_norm_rms_eps(c['rms_norm_eps']); w.add_rope_freq_base(c['rope_theta'])
vocab = sorted(tj['model']['vocab'].items(), key=lambda kv: kv[1])
w.add_tokenizer_model('llama'); w.add_token_list([k for k, _ in vocab]); w.add_token_scores([-float(i) for _, i in vocab])
w.add_bos_token_id(1); w.add_eos_token_id(2)
def perm(x, h):
    return x.reshape(h, 2, x.shape[0] // h // 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)
names = {'input_layernorm': 'attn_norm', 'post_attention_layernorm': 'ffn_norm', 'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
         'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down'}
w.add_tensor('token_embd.weight', t['model.embed_tokens.weight']); w.add_tensor('output_norm.weight', t['model.norm.weight'])
q = gguf.GGMLQuantizationType[qt]
for l in range(c['num_hidden_layers']):
    for k, v in names.items():
        x = t[f'model.layers.{l}.{k}.weight']
        if k == 'self_attn.q_proj': x = perm(x, c['num_attention_heads'])
        if k == 'self_attn.k_proj': x = perm(x, c['num_key_value_heads'])
        x = np.ascontiguousarray(x)
        if x.ndim == 2 and x.shape[1] % 32 == 0:
            w.add_tensor(f'blk.{l}.{v}.weight', gguf.quants.quantize(x, q), raw_dtype=q)
        else:
            w.add_tensor(f'blk.{l}.{v}.weight', x)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()`, HF, file, qt);
      const m = await loadModel(file);
      try {
        expect(m.linear('layers.0.wq').kind).toBe('quantized');
        expect(m.linear('layers.0.w_down').kind).toBe('f32');  // K = 172: the writer left it F32
        const ck = m.checkpoint as GgufCheckpoint;
        // the packed weights and weight()'s bit-exact dequantization describe the same matrix
        for (const name of ['layers.0.wq', 'layers.2.wk', 'layers.4.w_up']) {
          const a = dequantize(ck.quantizedWeight(name)!).data as Float32Array;
          expect(maxDiff(a, ck.weight(name))).toBe(0);
        }
        const text = 'Once upon a time, there was a little dog.';
        const out: number[] = [];
        for await (const t of generate(m, text, { maxTokens: 16, temperature: 0 })) out.push(t.id);
        expect(out.length).toBe(16);
        const p = await evaluatePerplexity(m, { ids: ref().slice(0, 2049) });
        expect(p.ppl).toBeLessThan(qt === 'Q8_0' ? 4.0 : 5.5);
      } finally {
        m.dispose();
      }
    }
  });
});

