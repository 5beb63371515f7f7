// Checkpoint files written by the test (temp dir): every supported layout loads to
// the same model (dtypes, shards, GGUF versions, llama2.c shared/unshared head), and
// every kind of corrupt file gets a clear error naming the file and tensor, without
// allocating what a lying header asks for.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ByteTokenizer, Model, SyntheticCheckpoint, loadLlama2cTokenizer, loadModel, openCheckpoint, weightNames,
} from '../lib/index.js';
import {
  bf16Bits, bf16Value, f16Bits, f16Value, ggufBytes, hfConfig, hfEntries, llama2cBytes, safetensorsBytes, tokenizerBinBytes, writeHfDir,
} from './helpers/writers.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'qf-model-files-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => {
  const d = path.join(tmp, `${n++}-${name}`);
  mkdirSync(d);
  return d;
};

// Loaders move bytes (F32) or widen exactly (F16, BF16); models built from the same
// fp32 weights give logits equal to fp32 rounding of the GEMM.
const SAME_ABS = 1e-5;

const base = new SyntheticCheckpoint({ dim: 32, hiddenDim: 40, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 40, maxSeq: 32, seed: 3 });
const cfg = base.config;
const w = (name: string) => base.weight(name);
const tokens = [1, 5, 9, 13, 2, 7, 39, 0];

function logitsOf(ckptPath: string): Float32Array {
  const m = new Model(openCheckpoint(ckptPath), new ByteTokenizer(cfg.vocabSize));
  try {
    return m.forward(tokens).logits;
  } finally {
    m.dispose();
  }
}
const reference = (() => {
  const m = new Model(new SyntheticCheckpoint({ dim: 32, hiddenDim: 40, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 40, maxSeq: 32, seed: 3 }), new ByteTokenizer(40));
  const l = m.forward(tokens).logits;
  m.dispose();
  return l;
})();
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((mx, v, i) => Math.max(mx, Math.abs(v - b[i])), 0);

describe('every layout loads to the same model', () => {
  it('HF safetensors F32, single file and 3 shards', () => {
    const d1 = fresh('hf');
    writeHfDir(d1, cfg, w, 'F32');
    expect(maxDiff(logitsOf(d1), reference)).toBeLessThan(SAME_ABS);
    const d3 = fresh('hf-sharded');
    writeHfDir(d3, cfg, w, 'F32', 3);
    expect(maxDiff(logitsOf(d3), reference)).toBeLessThan(SAME_ABS);
  });

  it('F16 and BF16 tensors widen exactly', () => {
    for (const [dt, bits, value] of [['F16', f16Bits, f16Value], ['BF16', bf16Bits, bf16Value]] as const) {
      const d = fresh(dt);
      writeHfDir(d, cfg, w, dt);
      const ck = openCheckpoint(d);
      for (const name of weightNames(cfg)) {
        const got = ck.weight(name), src = w(name);
        for (let i = 0; i < src.length; i += 7) expect(got[i]).toBe(Math.fround(value(bits(src[i]))));
      }
      ck.close();
    }
  });

  it('GGUF v1, v2, v3 (F32 and F16) with interleaved q/k', () => {
    for (const version of [1, 2, 3]) {
      const f = path.join(fresh('gguf'), 'm.gguf');
      writeFileSync(f, ggufBytes(cfg, w, { version }));
      expect(maxDiff(logitsOf(f), reference), `v${version}`).toBeLessThan(SAME_ABS);
    }
    const f16 = path.join(fresh('gguf16'), 'm.gguf');
    writeFileSync(f16, ggufBytes(cfg, w, { dtype: 'F16' }));
    const ck = openCheckpoint(f16);
    const e = ck.weight('embed');
    expect(e[3]).toBe(Math.fround(f16Value(f16Bits(w('embed')[3]))));
    ck.close();
  });

  it('F16 and BF16 GGUF load through the native model as the same rounded weights in HF layout do (q/k reordered while read)', () => {
    for (const dt of ['F16', 'BF16'] as const) {
      const g = path.join(fresh(`gguf-${dt}`), 'm.gguf');
      writeFileSync(g, ggufBytes(cfg, w, { dtype: dt }));
      const h = fresh(`hf-${dt}`);
      writeHfDir(h, cfg, w, dt);
      const a = logitsOf(g), b = logitsOf(h);
      expect(maxDiff(a, b), dt).toBe(0);
      expect(maxDiff(a, reference), dt).toBeGreaterThan(0);  // really rounded, not the f32 weights
      const ck = openCheckpoint(g);
      expect(ck.weight('layers.1.wk')).toEqual(openCheckpoint(h).weight('layers.1.wk'));
      ck.close();
    }
  });

  it('llama2.c .bin with unshared and shared classifier', () => {
    const f = path.join(fresh('l2c'), 'm.bin');
    writeFileSync(f, llama2cBytes(cfg, w));
    expect(maxDiff(logitsOf(f), reference)).toBeLessThan(SAME_ABS);
    const tied = new SyntheticCheckpoint({ dim: 32, hiddenDim: 40, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 40, maxSeq: 32, seed: 3, tiedEmbeddings: true });
    const f2 = path.join(fresh('l2c-tied'), 'm.bin');
    writeFileSync(f2, llama2cBytes(tied.config, (x) => tied.weight(x)));
    const ck = openCheckpoint(f2);
    expect(ck.config.tiedEmbeddings).toBe(true);
    ck.close();
  });

  it('loadModel finds tokenizer.bin next to a llama2.c checkpoint', async () => {
    const d = fresh('l2c-tok');
    writeFileSync(path.join(d, 'm.bin'), llama2cBytes(cfg, w));
    const pieces = ['<unk>', '\n<s>\n', '\n</s>\n', ' ', 'a', 'b', ' a', 'ab', ' ab', ...Array.from({ length: 31 }, (_, i) => `x${i}`)];
    writeFileSync(path.join(d, 'tokenizer.bin'), tokenizerBinBytes(pieces));
    const m = await loadModel(path.join(d, 'm.bin'));
    // merges by score: ' a' (-6) beats 'ab' (-7); then ' ab' (-8)
    expect(m.tokenizer.encode('ab')).toEqual([1, 8]);
    expect(m.tokenizer.decode([1, 8, 5])).toBe('abb');
    m.dispose();
  });

  it('Llama 3 rope_scaling and Mistral architecture names load', () => {
    const d = fresh('llama3');
    writeFileSync(path.join(d, 'model.safetensors'), safetensorsBytes(hfEntries(cfg, w, 'F32')));
    writeFileSync(path.join(d, 'config.json'), JSON.stringify(hfConfig(cfg, {
      architectures: ['MistralForCausalLM'],
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8 },
    })));
    const ck = openCheckpoint(d);
    expect(ck.config.ropeScaling?.factor).toBe(8);
    expect(ck.config.architecture).toBe('MistralForCausalLM');
    ck.close();
  });
});

describe('bad input: clear errors naming file and tensor, no huge allocations', () => {
  const hfDir = (mutate: (buf: Buffer) => Buffer, header?: (h: Record<string, unknown>) => void, config?: Record<string, unknown>): string => {
    const d = fresh('bad');
    writeFileSync(path.join(d, 'config.json'), JSON.stringify(config ?? hfConfig(cfg)));
    writeFileSync(path.join(d, 'model.safetensors'), mutate(safetensorsBytes(hfEntries(cfg, w, 'F32'), header)));
    return d;
  };
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return (e as { code: string; message: string });
    }
    throw new Error('expected an error');
  };

  it('truncated safetensors file', () => {
    const d = hfDir((b) => b.subarray(0, b.length - 100));
    const e = code(() => openCheckpoint(d));
    expect(e.code).toBe('QF_CORRUPT_FILE');
    expect(e.message).toMatch(/model\.safetensors: tensor 'model\.layers\.1\.mlp\.down_proj\.weight' spans bytes \[\d+, \d+\) past the end of the file/);
  });

  it('header length past the end of the file, and an absurd one (no allocation)', () => {
    for (const len of [1000000n, 2n ** 62n]) {
      const d = hfDir((b) => { const c = Buffer.from(b); c.writeBigUInt64LE(len); return c; });
      const e = code(() => openCheckpoint(d));
      expect(e.code).toBe('QF_CORRUPT_FILE');
      expect(e.message).toMatch(/model\.safetensors: header length \d+ runs past the end of the file/);
    }
  });

  it('overlapping and out-of-range tensor offsets', () => {
    const over = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { data_offsets: number[] }).data_offsets = [0, 128]; });
    expect(code(() => openCheckpoint(over)).message).toMatch(/tensors '.*' .* and '.*' .* overlap/);
    const out = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { data_offsets: number[] }).data_offsets = [1e9, 1e9 + 128]; });
    expect(code(() => openCheckpoint(out)).message).toMatch(/tensor 'model\.norm\.weight' spans bytes \[\d+, \d+\) past the end/);
    const neg = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { data_offsets: number[] }).data_offsets = [-8, 120]; });
    expect(code(() => openCheckpoint(neg)).message).toMatch(/tensor 'model\.norm\.weight' has invalid data_offsets/);
    const size = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { shape: number[] }).shape = [33]; });
    expect(code(() => openCheckpoint(size)).message).toMatch(/tensor 'model\.norm\.weight' \(F32 \[33\]\) needs 132 bytes but its byte range holds 128/);
  });

  it('unknown dtype, and a weight stored as integers', () => {
    const d = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { dtype: string }).dtype = 'I4'; });
    const e = code(() => openCheckpoint(d));
    expect(e.code).toBe('QF_UNSUPPORTED');
    expect(e.message).toMatch(/model\.safetensors: tensor 'model\.norm\.weight' has dtype "I4", which is not a safetensors dtype/);
    const i32 = hfDir((b) => b, (h) => { (h['model.norm.weight'] as { dtype: string }).dtype = 'I32'; });
    const f = code(() => openCheckpoint(i32));
    expect(f.code).toBe('QF_UNSUPPORTED');
    expect(f.message).toMatch(/model\.safetensors: tensor 'model\.norm\.weight' has dtype I32; supported: F32, F16, BF16/);
  });

  it('shapes that contradict config.json, and missing tensors', () => {
    const d = hfDir((b) => b, undefined, hfConfig(cfg, { intermediate_size: 41 }));
    const e = code(() => openCheckpoint(d));
    expect(e.code).toBe('QF_SHAPE_MISMATCH');
    expect(e.message).toMatch(/tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[40, 32\] but config\.json implies \[41, 32\]/);
    const m = hfDir((b) => b, (h) => { delete h['model.layers.1.mlp.up_proj.weight']; });
    expect(code(() => openCheckpoint(m)).message).toMatch(/tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing/);
    const untied = hfDir((b) => b, (h) => { delete h['lm_head.weight']; });
    expect(code(() => openCheckpoint(untied)).message).toMatch(/tensor 'lm_head\.weight' is missing/);
  });

  it('bad config.json and header JSON', () => {
    const arch = hfDir((b) => b, undefined, hfConfig(cfg, { architectures: ['GPT2LMHeadModel'] }));
    expect(code(() => openCheckpoint(arch)).message).toMatch(/architecture 'GPT2LMHeadModel' is not supported/);
    const gqa = hfDir((b) => b, undefined, hfConfig(cfg, { num_key_value_heads: 3 }));
    expect(code(() => openCheckpoint(gqa)).message).toMatch(/num_key_value_heads 3 does not divide num_attention_heads 4/);
    const json = hfDir((b) => { const c = Buffer.from(b); c[8] = 0x7b + 1; return c; });
    expect(code(() => openCheckpoint(json)).message).toMatch(/header is not valid JSON/);
  });

  const gguf = (o: Parameters<typeof ggufBytes>[2], mutate: (b: Buffer) => Buffer = (b) => b) => {
    const f = path.join(fresh('bad-gguf'), 'm.gguf');
    writeFileSync(f, mutate(ggufBytes(cfg, w, o)));
    return f;
  };

  it('GGUF: bad magic, version, counts, lengths, types, truncation', () => {
    expect(code(() => openCheckpoint(gguf({ magic: 0x46554748 }))).message).toMatch(/m\.gguf: bad magic 0x46554748/);
    expect(code(() => openCheckpoint(gguf({ version: 7 }))).message).toMatch(/GGUF version 7 is not supported/);
    expect(code(() => openCheckpoint(gguf({ tensorCount: 2n ** 40n }))).message).toMatch(/tensor count 1099511627776 cannot fit/);
    // the first key's string length (v3: u64 at byte 24) claims 2^50 bytes
    expect(code(() => openCheckpoint(gguf({}, (b) => { const c = Buffer.from(b); c.writeBigUInt64LE(2n ** 50n, 24); return c; }))).message)
      .toMatch(/metadata key 0 length 1125899906842624 runs past the end of the file/);
    const iq = code(() => openCheckpoint(gguf({ ggmlType: 16 })));
    expect(iq.code).toBe('QF_UNSUPPORTED');
    expect(iq.message).toMatch(/tensor 'token_embd\.weight' has ggml type IQ2_XXS \(16\); quantform reads F32, F16, BF16, Q4_0, Q4_1/);
    expect(code(() => openCheckpoint(gguf({ ggmlType: 99 }))).message).toMatch(/has ggml type unknown \(99\)/);
    expect(code(() => openCheckpoint(gguf({}, (b) => b.subarray(0, b.length - 64)))).message).toMatch(/tensor '.*' spans bytes .* past the end of the file/);
    expect(code(() => openCheckpoint(gguf({}, (b) => b.subarray(0, 200)))).message).toMatch(/m\.gguf: tensor count 21 cannot fit in the \d+ bytes left/);
  });

  it('GGUF metadata that disagrees with its tensors', () => {
    const ffn = code(() => openCheckpoint(gguf({ meta: { hiddenDim: 41 } })));
    expect(ffn.code).toBe('QF_SHAPE_MISMATCH');
    expect(ffn.message).toMatch(/m\.gguf: tensor 'blk\.0\.ffn_gate\.weight' has shape \[40, 32\] but the metadata implies \[41, 32\]/);
    expect(code(() => openCheckpoint(gguf({ meta: { nLayers: 3 } }))).message).toMatch(/m\.gguf: tensor 'blk\.2\.attn_norm\.weight' is missing/);
  });

  it('sharded safetensors: an index naming a missing shard, and one that misplaces a tensor', () => {
    const d = fresh('shards');
    writeHfDir(d, cfg, w, 'F32', 3);
    rmSync(path.join(d, 'model-00002-of-00003.safetensors'));
    const e = code(() => openCheckpoint(d));
    expect(e.code).toBe('QF_IO');
    expect(e.message).toMatch(/model\.safetensors\.index\.json: names shard model-00002-of-00003\.safetensors \(for tensor '.*'\), which does not exist in /);
    const m = fresh('shards-misplaced');
    writeHfDir(m, cfg, w, 'F32', 3);
    const idxFile = path.join(m, 'model.safetensors.index.json');
    const idx = JSON.parse(readFileSync(idxFile, 'utf8'));
    idx.weight_map['model.norm.weight'] = idx.weight_map['model.norm.weight'] === 'model-00001-of-00003.safetensors' ? 'model-00002-of-00003.safetensors' : 'model-00001-of-00003.safetensors';
    writeFileSync(idxFile, JSON.stringify(idx));
    expect(code(() => openCheckpoint(m)).message).toMatch(/index\.json: maps tensor 'model\.norm\.weight' to model-0000\d-of-00003\.safetensors but it is in model-0000\d-of-00003\.safetensors/);
  });

  it('GGUF array claiming more elements than the file holds', () => {
    const f = gguf({ vocab: ['a', 'b', 'c'] }, (b) => {
      const c = Buffer.from(b);
      const at = c.indexOf(Buffer.from('tokenizer.ggml.tokens')) + 'tokenizer.ggml.tokens'.length + 8;  // after value type + element type
      c.writeBigUInt64LE(2n ** 45n, at);
      return c;
    });
    expect(code(() => openCheckpoint(f)).message).toMatch(/'tokenizer\.ggml\.tokens' claims 35184372088832 elements/);
  });

  it('llama2.c: truncated, trailing bytes, absurd header', () => {
    const good = llama2cBytes(cfg, w);
    const f = (b: Buffer) => { const p = path.join(fresh('bad-l2c'), 'm.bin'); writeFileSync(p, b); return p; };
    expect(code(() => openCheckpoint(f(good.subarray(0, good.length - 4)))).message).toMatch(/m\.bin: tensor 'lm_head' spans bytes .* past the end/);
    expect(code(() => openCheckpoint(f(Buffer.concat([good, Buffer.alloc(4)])))).message).toMatch(/header implies \d+ bytes but the file has \d+/);
    const huge = Buffer.from(good);
    huge.writeInt32LE(1 << 30, 0);
    huge.writeInt32LE(1 << 20, 12);
    expect(code(() => openCheckpoint(f(huge))).message).toMatch(/m\.bin: tensor 'embed' spans bytes \[28, \d+\) past the end/);
    expect(code(() => openCheckpoint(f(good.subarray(0, 20)))).message).toMatch(/too short for the 28-byte llama2\.c header/);
  });

  it('llama2.c tokenizer.bin: truncated and lying lengths', () => {
    const t = tokenizerBinBytes(['<unk>', 'a', 'b']);
    const p = path.join(fresh('tok'), 't.bin');
    writeFileSync(p, t.subarray(0, t.length - 1));
    expect(() => loadLlama2cTokenizer(p, 3)).toThrow(/t\.bin: token 2 needs 1 bytes at offset \d+ but only 0 remain/);
    writeFileSync(p, t);
    expect(() => loadLlama2cTokenizer(p, 1 << 30)).toThrow(/cannot hold 1073741824 tokens/);
  });

  it('a path that does not exist', async () => {
    await expect(loadModel(path.join(tmp, 'nope'))).rejects.toThrow(/does not exist/);
  });
});

