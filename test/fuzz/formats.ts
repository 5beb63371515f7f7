// The parsers of untrusted input, one fuzz suite each: valid base inputs (small
// synthetic ones always; the real stories260K / Llama 2 files from ../shared when
// present), a seeded mutation, and the public entry point that reads the result.
// Structured writers record where their integer fields (counts, lengths, offsets,
// dims, types) lie, so the mutations aim at the numbers a lying header would change.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ByteTokenizer, GptqCheckpoint, Model, SyntheticCheckpoint, TrainableLlama, calibrationFromText, loadHfTokenizer,
  loadLlama2cTokenizer, loadModel, loadSentencePieceTokenizer, openCheckpoint, permuteHalfToInterleaved, quantizeModel,
  saveGptq, weightNames, weightShape, type Checkpoint, type LlamaConfig, type QuantizeModelOptions,
} from '../../lib/index.js';
import { encode, ggufName, hfConfig, hfEntries, llama2cBytes, safetensorsBytes } from '../helpers/writers.js';
import { EXTREME_INTS, Rng, mutateBytes, mutateJson, writeExtreme } from './mutate.js';

export interface FuzzInput {
  files: Map<string, Buffer>;
  mutation: string;
}

export interface FuzzFormat {
  name: string;
  /** what the suite feeds and which public entry point reads it */
  entry: string;
  generate(seed: number): Promise<FuzzInput>;
  run(dir: string): Promise<void>;
}

const SHARED = path.resolve(process.cwd(), '../shared');
const shared = (p: string): string | null => {
  const f = path.join(SHARED, p);
  return existsSync(f) ? f : null;
};

// a whole Llama in a few KB: every case writes, parses and loads it in milliseconds
const SYNTH = { dim: 16, hiddenDim: 24, nLayers: 1, nHeads: 2, nKvHeads: 1, vocabSize: 40, maxSeq: 16, seed: 7 };
const synth = new SyntheticCheckpoint(SYNTH);
const cfg = synth.config;
const weight = (n: string) => synth.weight(n);

interface Base {
  name: string;
  files: Map<string, Buffer>;
}

const lazy = <T>(f: () => T): (() => T) => {
  let v: T | undefined;
  return () => (v ??= f());
};

/** Loads every weight into the native model and runs one token: the whole loader path. */
function loadAndRun(ck: Checkpoint): void {
  const m = new Model(ck, new ByteTokenizer(Math.max(4, ck.config.vocabSize)));
  try {
    m.forward([0]);
  } finally {
    m.dispose();
  }
}

async function loadTokenizeRun(file: string): Promise<void> {
  const m = await loadModel(file);
  try {
    const ids = m.tokenizer.encode('Once upon a time, a cat sat.');
    m.tokenizer.decode(ids);
    m.forward(ids.slice(0, Math.min(ids.length, m.maxSeq)).map((i) => (i < m.config.vocabSize ? i : 0)));
  } finally {
    m.dispose();
  }
}

// ---------------- safetensors ----------------

/** safetensors bytes plus the header-length field offset; the header text is mutated as JSON. */
function mutateSafetensors(rng: Rng, b: Buffer): { out: Buffer; what: string } {
  if (b.length < 8) return mutateBytes(rng, b);
  const n = Number(b.readBigUInt64LE(0));
  if (n > b.length - 8 || rng.chance(0.35)) return mutateBytes(rng, b, [0]);
  const header = b.toString('utf8', 8, 8 + n), data = b.subarray(8 + n);
  const choice = rng.int(5);
  let text: string, what: string;
  if (choice === 0) {
    // structural lies: overlapping ranges, ranges past the end, shapes that overflow, dtypes
    const h = JSON.parse(header) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    const names = Object.keys(h).filter((k) => k !== '__metadata__');
    const a = h[rng.pick(names)], c = h[rng.pick(names)];
    const lie = rng.int(6);
    if (lie === 0) { c.data_offsets = [...a.data_offsets]; what = 'two tensors share a byte range'; }
    else if (lie === 1) { a.data_offsets = [a.data_offsets[0], data.length + 1 + rng.int(1 << 20)]; what = 'range past the end'; }
    else if (lie === 2) { a.shape = [2 ** 31, 2 ** 31]; what = 'shape [2^31, 2^31]'; }
    else if (lie === 3) { a.dtype = rng.pick(['F64', 'I8', 'U8', 'BOOL', 'F8_E4M3', '', 'bf16']); what = `dtype ${a.dtype}`; }
    else if (lie === 4) { a.data_offsets = [a.data_offsets[0] + 1, a.data_offsets[1] + 1]; what = 'range shifted by one byte'; }
    else { a.shape = [...a.shape, 0]; what = 'a zero dimension'; }
    text = JSON.stringify(h);
  } else {
    const r = mutateJson(rng, header);
    text = r.out.toString('utf8');
    what = `header: ${r.what}`;
  }
  const json = Buffer.from(text, 'utf8');
  const len = Buffer.alloc(8);
  // usually a truthful length, so the mutated JSON reaches the validators
  len.writeBigUInt64LE(rng.chance(0.9) ? BigInt(json.length) : rng.pick(EXTREME_INTS) & 0xffffffffffffffffn);
  return { out: Buffer.concat([len, json, data]), what };
}

const hfBases = lazy((): Base[] => {
  const out: Base[] = [];
  for (const dt of ['F32', 'F16', 'BF16'] as const)
    out.push({ name: `synthetic ${dt}`, files: new Map([
      ['config.json', Buffer.from(JSON.stringify(hfConfig(cfg)))],
      ['model.safetensors', safetensorsBytes(hfEntries(cfg, weight, dt))],
    ]) });
  const real = shared('models/stories260K-hf');
  if (real) out.push({ name: 'stories260K-hf', files: new Map(['config.json', 'model.safetensors'].map((f) => [f, readFileSync(path.join(real, f))])) });
  return out;
});

const safetensors: FuzzFormat = {
  name: 'safetensors',
  entry: 'openCheckpoint(dir) + new Model (HF config.json + model.safetensors)',
  async generate(seed) {
    const rng = new Rng(seed);
    const base = rng.pick(hfBases());
    const files = new Map(base.files);
    let what: string;
    if (rng.chance(0.85)) {
      const r = mutateSafetensors(rng, files.get('model.safetensors')!);
      files.set('model.safetensors', r.out);
      what = r.what;
    } else {
      const r = mutateJson(rng, files.get('config.json')!.toString());
      files.set('config.json', r.out);
      what = `config.json: ${r.what}`;
    }
    return { files, mutation: `${base.name}: ${what}` };
  },
  async run(dir) {
    loadAndRun(openCheckpoint(dir));
  },
};

const shardedBase = lazy((): Base => {
  const entries = hfEntries(cfg, weight, 'F32');
  const files = new Map<string, Buffer>([['config.json', Buffer.from(JSON.stringify(hfConfig(cfg)))]]);
  const map: Record<string, string> = {};
  for (let s = 0; s < 2; s++) {
    const f = `model-0000${s + 1}-of-00002.safetensors`;
    const part = entries.filter((_, i) => i % 2 === s);
    part.forEach((e) => { map[e.name] = f; });
    files.set(f, safetensorsBytes(part));
  }
  files.set('model.safetensors.index.json', Buffer.from(JSON.stringify({ metadata: { total_size: 0 }, weight_map: map })));
  return { name: 'synthetic 2 shards', files };
});

const sharded: FuzzFormat = {
  name: 'safetensors-sharded',
  entry: 'openCheckpoint(dir) + new Model (model.safetensors.index.json + shards)',
  async generate(seed) {
    const rng = new Rng(seed);
    const files = new Map(shardedBase().files);
    const index = JSON.parse(files.get('model.safetensors.index.json')!.toString()) as { weight_map: Record<string, string> };
    const names = Object.keys(index.weight_map);
    const k = rng.int(6);
    let what: string;
    if (k === 0) {
      const n = rng.pick(names);
      index.weight_map[n] = rng.pick(['../config.json', '/etc/passwd', 'missing.safetensors', '', 'model-00001-of-00002.safetensors', 'config.json']);
      what = `index maps ${n} to '${index.weight_map[n]}'`;
      files.set('model.safetensors.index.json', Buffer.from(JSON.stringify(index)));
    } else if (k === 1) {
      // every tensor in shard 2 as well: names that appear twice
      files.set('model-00002-of-00002.safetensors', safetensorsBytes(hfEntries(cfg, weight, 'F32')));
      what = 'shard 2 also holds the tensors of shard 1';
    } else if (k <= 3) {
      const r = mutateJson(rng, files.get('model.safetensors.index.json')!.toString());
      files.set('model.safetensors.index.json', r.out);
      what = `index: ${r.what}`;
    } else {
      const f = rng.pick(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
      const r = mutateSafetensors(rng, files.get(f)!);
      files.set(f, r.out);
      what = `${f}: ${r.what}`;
    }
    return { files, mutation: what };
  },
  async run(dir) {
    loadAndRun(openCheckpoint(dir));
  },
};

// ---------------- GGUF ----------------

type GgufValue = { type: number; value: unknown };

/** GGUF writer over explicit (key, type, value) metadata, recording the offset of every integer field. */
function ggufFile(version: number, kvs: [string, GgufValue][], tensors: { name: string; ne: number[]; type: number; data: Buffer }[], align = 32):
  { bytes: Buffer; fields: number[] } {
  const parts: Buffer[] = [];
  const fields: number[] = [];
  let size = 0;
  const push = (b: Buffer, field = false) => { if (field) fields.push(size); parts.push(b); size += b.length; };
  const v1 = version === 1;
  const u32 = (x: number, field = true) => { const b = Buffer.alloc(4); b.writeUInt32LE(x >>> 0); push(b, field); };
  const cnt = (x: number) => { if (v1) u32(x); else { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(x)); push(b, true); } };
  const str = (s: string) => { const b = Buffer.from(s, 'utf8'); cnt(b.length); push(b); };
  const scalar = (type: number, v: unknown) => {
    const b = Buffer.alloc(8);
    switch (type) {
      case 0: b.writeUInt8(Number(v) & 0xff); push(b.subarray(0, 1)); return;
      case 1: b.writeInt8(Number(v)); push(b.subarray(0, 1)); return;
      case 2: b.writeUInt16LE(Number(v)); push(b.subarray(0, 2)); return;
      case 3: b.writeInt16LE(Number(v)); push(b.subarray(0, 2)); return;
      case 4: b.writeUInt32LE(Number(v) >>> 0); push(b.subarray(0, 4), true); return;
      case 5: b.writeInt32LE(Number(v) | 0); push(b.subarray(0, 4), true); return;
      case 6: b.writeFloatLE(Number(v)); push(b.subarray(0, 4)); return;
      case 7: b.writeUInt8(v ? 1 : 0); push(b.subarray(0, 1)); return;
      case 8: str(String(v)); return;
      case 10: b.writeBigUInt64LE(BigInt(v as number)); push(b, true); return;
      case 11: b.writeBigInt64LE(BigInt(v as number)); push(b, true); return;
      case 12: b.writeDoubleLE(Number(v)); push(b); return;
    }
  };
  const value = (t: GgufValue) => {
    if (t.type === 9) {
      const arr = t.value as { type: number; items: unknown[] };
      u32(arr.type);
      cnt(arr.items.length);
      for (const it of arr.items) arr.type === 9 ? value(it as GgufValue) : scalar(arr.type, it);
    } else scalar(t.type, t.value);
  };
  u32(0x46554747, false);
  u32(version);
  cnt(tensors.length);
  cnt(kvs.length);
  for (const [k, v] of kvs) { str(k); u32(v.type); value(v); }
  let off = 0;
  const datas: Buffer[] = [];
  for (const t of tensors) {
    str(t.name);
    u32(t.ne.length);
    for (const d of t.ne) cnt(d);
    u32(t.type);
    const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(off)); push(b, true);
    const padded = Buffer.alloc(Math.ceil(t.data.length / align) * align);
    t.data.copy(padded);
    datas.push(padded);
    off += padded.length;
  }
  const pad = Math.ceil(size / align) * align - size;
  push(Buffer.alloc(pad));
  for (const d of datas) push(d);
  return { bytes: Buffer.concat(parts), fields };
}

/** A loadable GGUF of the synthetic model, with metadata of every type (scalars, arrays, an array of arrays). */
function ggufModel(rng: Rng, version: number, dtype: 'F32' | 'F16'): { kvs: [string, GgufValue][]; tensors: { name: string; ne: number[]; type: number; data: Buffer }[] } {
  const vocab = Array.from({ length: cfg.vocabSize }, (_, i) => (i < 3 ? ['<unk>', '<s>', '</s>'][i] : i < 30 ? String.fromCharCode(94 + i) : `\u2581${String.fromCharCode(64 + i)}`));
  const kvs: [string, GgufValue][] = [
    ['general.architecture', { type: 8, value: 'llama' }],
    ['general.name', { type: 8, value: 'fuzz' }],
    ['general.alignment', { type: 4, value: 32 }],
    ['llama.context_length', { type: 4, value: cfg.maxSeq }],
    ['llama.embedding_length', { type: 4, value: cfg.dim }],
    ['llama.block_count', { type: 4, value: cfg.nLayers }],
    ['llama.feed_forward_length', { type: 4, value: cfg.hiddenDim }],
    ['llama.attention.head_count', { type: 4, value: cfg.nHeads }],
    ['llama.attention.head_count_kv', { type: 4, value: cfg.nKvHeads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 6, value: cfg.normEps }],
    ['llama.rope.freq_base', { type: 6, value: cfg.ropeTheta }],
    ['fuzz.u8', { type: 0, value: 200 }], ['fuzz.i8', { type: 1, value: -100 }], ['fuzz.u16', { type: 2, value: 60000 }],
    ['fuzz.i16', { type: 3, value: -30000 }], ['fuzz.i32', { type: 5, value: -5 }], ['fuzz.bool', { type: 7, value: true }],
    ['fuzz.u64', { type: 10, value: 123456789 }], ['fuzz.i64', { type: 11, value: -123456789 }], ['fuzz.f64', { type: 12, value: 0.25 }],
    ['fuzz.arr.u8', { type: 9, value: { type: 0, items: [1, 2, 3] } }],
    ['fuzz.arr.f32', { type: 9, value: { type: 6, items: [0.5, 1.5] } }],
    ['fuzz.arr.arr', { type: 9, value: { type: 9, items: [{ type: 9, value: { type: 4, items: [7, 8] } }] } }],
    ['tokenizer.ggml.model', { type: 8, value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 9, value: { type: 8, items: vocab } }],
    ['tokenizer.ggml.scores', { type: 9, value: { type: 6, items: vocab.map((_, i) => -i) } }],
    ['tokenizer.ggml.token_type', { type: 9, value: { type: 5, items: vocab.map((_, i) => (i < 3 ? 3 : 1)) } }],
    ['tokenizer.ggml.bos_token_id', { type: 4, value: 1 }],
    ['tokenizer.ggml.eos_token_id', { type: 4, value: 2 }],
  ];
  const tensors = weightNames(cfg).map((n) => {
    let data = weight(n);
    const kind = n.split('.')[2];
    if (kind === 'wq') data = permuteHalfToInterleaved(data, cfg.nHeads, cfg.dim);
    if (kind === 'wk') data = permuteHalfToInterleaved(data, cfg.nKvHeads, cfg.dim);
    return { name: ggufName(n), ne: [...weightShape(cfg, n)].reverse(), type: dtype === 'F32' ? 0 : 1, data: encode(data, dtype) };
  });
  // shuffle the key order now and then: readers must not depend on it
  if (rng.chance(0.3)) kvs.sort(() => rng.next() - 0.5);
  return { kvs, tensors };
}

const gguf: FuzzFormat = {
  name: 'gguf',
  entry: 'loadModel(file.gguf) + tokenizer encode/decode + forward',
  async generate(seed) {
    const rng = new Rng(seed);
    const real = shared('models/stories260K/tinyllamas-stories-260k-f32.gguf');
    if (real && rng.chance(0.2)) {
      const r = mutateBytes(rng, readFileSync(real), [8, 12, 16, 20, 24]);
      return { files: new Map([['model.gguf', r.out]]), mutation: `stories260K gguf v1: ${r.what}` };
    }
    const version = rng.pick([1, 2, 3]), dtype = rng.pick(['F32', 'F16'] as const);
    const { kvs, tensors } = ggufModel(rng, version, dtype);
    const k = rng.int(10);
    let what = '';
    if (k === 0) {
      const i = rng.int(kvs.length);
      kvs.splice(rng.int(kvs.length), 0, [kvs[i][0], { type: rng.pick([4, 8, 6]), value: rng.pick([0, 1, 2 ** 31, 'x']) }]);
      what = `duplicate key ${kvs[i][0]}`;
    } else if (k === 1) {
      const i = rng.int(tensors.length);
      tensors.push({ ...tensors[i] });
      what = `duplicate tensor ${tensors[i].name}`;
    } else if (k === 2) {
      const t = rng.pick(tensors);
      t.ne = rng.pick([[0], [2 ** 32, 2 ** 32], [1, 1, 1, 1, 1], [], [2 ** 31, 3], t.ne.map((d) => d * 2)]);
      what = `tensor ${t.name} ne [${t.ne}]`;
    } else if (k === 3) {
      const t = rng.pick(tensors);
      t.type = rng.pick([2, 3, 8, 10, 12, 14, 16, 30, 255, 2 ** 31]);
      what = `tensor ${t.name} ggml type ${t.type}`;
    } else if (k === 4) {
      const i = rng.int(kvs.length);
      kvs[i] = [kvs[i][0], { type: 9, value: { type: rng.pick([0, 4, 8, 9, 13, 2 ** 31]), items: [] } }];
      what = `${kvs[i][0]} becomes an empty array of an odd type`;
    } else if (k === 5) {
      const i = kvs.findIndex(([key]) => key === 'general.alignment');
      kvs[i] = ['general.alignment', { type: 4, value: rng.pick([0, 1, 3, 2 ** 31, 0xffffffff, 64]) }];
      what = `alignment ${String(kvs[i][1].value)}`;
    }
    const file = ggufFile(version, kvs, tensors);
    let bytes = file.bytes;
    if (k >= 5 || rng.chance(0.3)) {
      const r = mutateBytes(rng, bytes, file.fields);
      bytes = r.out;
      what = what ? `${what}; ${r.what}` : r.what;
    }
    return { files: new Map([['model.gguf', bytes]]), mutation: `v${version} ${dtype}: ${what}` };
  },
  async run(dir) {
    await loadTokenizeRun(path.join(dir, 'model.gguf'));
  },
};

// ---------------- llama2.c ----------------

function tokenizerBin(pieces: string[]): { bytes: Buffer; fields: number[] } {
  const parts: Buffer[] = [];
  const fields = [0];
  const h = Buffer.alloc(4);
  h.writeInt32LE(Math.max(...pieces.map((p) => Buffer.byteLength(p))));
  parts.push(h);
  let off = 4;
  pieces.forEach((p, i) => {
    const b = Buffer.from(p, 'utf8'), m = Buffer.alloc(8);
    m.writeFloatLE(-i, 0);
    m.writeInt32LE(b.length, 4);
    fields.push(off + 4);
    parts.push(m, b);
    off += 8 + b.length;
  });
  return { bytes: Buffer.concat(parts), fields };
}

const synthPieces = Array.from({ length: cfg.vocabSize }, (_, i) => (i < 3 ? ['<unk>', '<s>', '</s>'][i] : i < 30 ? String.fromCharCode(94 + i) : ` ${String.fromCharCode(64 + i)}`));

const llama2c: FuzzFormat = {
  name: 'llama2c',
  entry: 'loadModel(model.bin) with tokenizer.bin next to it',
  async generate(seed) {
    const rng = new Rng(seed);
    const realBin = shared('models/stories260K/stories260K.bin'), realTok = shared('models/stories260K/tok512.bin');
    const useReal = realBin && realTok && rng.chance(0.2);
    const bin = useReal ? readFileSync(realBin!) : llama2cBytes({ ...cfg, tiedEmbeddings: rng.chance(0.5) }, weight);
    const tok = useReal ? readFileSync(realTok!) : tokenizerBin(synthPieces).bytes;
    const files = new Map([['model.bin', bin], ['tokenizer.bin', tok]]);
    const k = rng.int(4);
    let what: string;
    if (k <= 1) {
      // one of the 7 header ints (dim, hidden, layers, heads, kv heads, vocab, seq) set to an extreme
      const out = Buffer.from(bin), field = rng.int(7), v = rng.pick(EXTREME_INTS);
      writeExtreme(out, 4 * field, 4, rng.chance(0.3) ? -v : v);
      files.set('model.bin', out);
      what = `header int ${field} = ${out.readInt32LE(4 * field)}`;
    } else if (k === 2) {
      const r = mutateBytes(rng, bin, [0, 4, 8, 12, 16, 20, 24]);
      files.set('model.bin', r.out);
      what = r.what;
    } else {
      const r = mutateBytes(rng, tok);
      files.set('tokenizer.bin', r.out);
      what = `tokenizer.bin: ${r.what}`;
    }
    return { files, mutation: `${useReal ? 'stories260K' : 'synthetic'}: ${what}` };
  },
  async run(dir) {
    await loadTokenizeRun(path.join(dir, 'model.bin'));
  },
};

// ---------------- tokenizers ----------------

/** A small Llama-style BPE tokenizer.json (byte fallback, '▁' normalizer), in the layout of stories260K's. */
const syntheticTokenizerJson = lazy((): string => {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  let id = 259;
  for (const p of ['\u2581', 't', 'h', 'e', 'a', 'n', 'o', '\u2581t', 'he', '\u2581a', 'an', '\u2581the']) vocab[p] = id++;
  return JSON.stringify({
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['<unk>', '<s>', '</s>'].map((c, i) => ({ id: i, content: c, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null,
    post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }], special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true,
      ignore_merges: false, vocab, merges: [['\u2581', 't'], ['h', 'e'], ['\u2581', 'a'], ['a', 'n'], ['\u2581t', 'he']] },
  });
});

const tokenizerJson: FuzzFormat = {
  name: 'tokenizer-json',
  entry: 'loadHfTokenizer(dir) + encode/decode',
  async generate(seed) {
    const rng = new Rng(seed);
    const real = shared('models/stories260K-hf/tokenizer.json');
    const useReal = real && rng.chance(0.5);
    const text = useReal ? readFileSync(real!, 'utf8') : syntheticTokenizerJson();
    const r = mutateJson(rng, text);
    return { files: new Map([['tokenizer.json', r.out]]), mutation: `${useReal ? 'stories260K' : 'synthetic'}: ${r.what}` };
  },
  async run(dir) {
    const t = loadHfTokenizer(dir, { ...cfg, vocabSize: 512 });
    t.decode(t.encode('Once upon a time, there was a <s> cat. \u00e9\u65e5'));
  },
};

/** protobuf writer for a SentencePiece ModelProto, recording the offset of every varint. */
function spmFile(pieces: { piece: string; score: number; type: number }[], modelType = 2): { bytes: Buffer; fields: number[] } {
  const varint = (v: number): Buffer => {
    const out: number[] = [];
    let x = BigInt.asUintN(64, BigInt(v));
    do {
      let b = Number(x & 0x7fn);
      x >>= 7n;
      if (x) b |= 0x80;
      out.push(b);
    } while (x);
    return Buffer.from(out);
  };
  const parts: Buffer[] = [], fields: number[] = [];
  let size = 0;
  const push = (b: Buffer, field = false) => { if (field) fields.push(size); parts.push(b); size += b.length; };
  for (const p of pieces) {
    const s = Buffer.from(p.piece, 'utf8');
    const score = Buffer.alloc(4); score.writeFloatLE(p.score);
    const body = Buffer.concat([Buffer.from([0x0a]), varint(s.length), s, Buffer.from([0x15]), score, Buffer.from([0x18]), varint(p.type)]);
    push(Buffer.from([0x0a]));
    push(varint(body.length), true);
    push(body);
  }
  const trainer = Buffer.concat([Buffer.from([0x18]), varint(modelType), varint(40 * 8), varint(0), varint(41 * 8), varint(1), varint(42 * 8), varint(2)]);
  push(Buffer.from([0x12]));
  push(varint(trainer.length), true);
  push(trainer);
  return { bytes: Buffer.concat(parts), fields };
}

const tokenizerModel: FuzzFormat = {
  name: 'tokenizer-model',
  entry: 'loadSentencePieceTokenizer(tokenizer.model) + encode/decode',
  async generate(seed) {
    const rng = new Rng(seed);
    const real = shared('models/llama2-tokenizer/tokenizer.model');
    if (real && rng.chance(0.15)) {
      const r = mutateBytes(rng, readFileSync(real));
      return { files: new Map([['tokenizer.model', r.out]]), mutation: `Llama 2 tokenizer.model: ${r.what}` };
    }
    const pieces = synthPieces.map((p, i) => ({ piece: p.replace(/ /g, '\u2581'), score: -i, type: i < 3 ? (i === 0 ? 2 : 3) : 1 }));
    let what = '';
    const k = rng.int(5);
    if (k === 0) { pieces[rng.int(pieces.length)].type = rng.pick([0, 7, 2 ** 31, -1]); what = 'piece type out of range'; }
    const file = spmFile(pieces, k === 1 ? rng.pick([1, 3, 4, 0, 99]) : 2);
    if (k === 1) what = 'model_type other than BPE';
    const r = mutateBytes(rng, file.bytes, file.fields);
    return { files: new Map([['tokenizer.model', r.out]]), mutation: `synthetic: ${what ? what + '; ' : ''}${r.what}` };
  },
  async run(dir) {
    const t = loadSentencePieceTokenizer(path.join(dir, 'tokenizer.model'));
    t.decode(t.encode('Once upon a time, a cat. \u00e9'));
  },
};

const tokenizerBinFmt: FuzzFormat = {
  name: 'tokenizer-bin',
  entry: 'loadLlama2cTokenizer(tokenizer.bin, vocabSize) + encode/decode',
  async generate(seed) {
    const rng = new Rng(seed);
    const real = shared('models/stories260K/tok512.bin');
    const useReal = real && rng.chance(0.3);
    const base = useReal ? { bytes: readFileSync(real!), fields: [0, 8] } : tokenizerBin(synthPieces);
    const r = mutateBytes(rng, base.bytes, base.fields);
    const vocab = rng.chance(0.8) ? (useReal ? 512 : cfg.vocabSize) : rng.pick([0, 1, -1, 2 ** 31, 1e9, 600]);
    return { files: new Map([['tokenizer.bin', r.out], ['vocab.json', Buffer.from(JSON.stringify(vocab))]]), mutation: `${useReal ? 'tok512' : 'synthetic'} vocab ${vocab}: ${r.what}` };
  },
  async run(dir) {
    const vocab = JSON.parse(readFileSync(path.join(dir, 'vocab.json'), 'utf8')) as number;
    const t = loadLlama2cTokenizer(path.join(dir, 'tokenizer.bin'), vocab);
    t.decode(t.encode('Once upon a time, a cat. \u00e9'));
  },
};

// ---------------- GPTQ ----------------

const gptqBases = lazy(async (): Promise<Base[]> => {
  const out: Base[] = [];
  const tmp = mkdtempSync(path.join(tmpdir(), 'qf-fuzz-gptq-'));
  try {
    const model = TrainableLlama.fromCheckpoint(synth);
    for (const [bits, symmetric] of [[4, false], [4, true], [3, false]] as const) {
      const q = await quantizeModel(model, { method: 'rtn', bits, groupSize: 8, symmetric });
      const dir = path.join(tmp, `w${bits}${symmetric ? 's' : 'a'}`);
      saveGptq(q, dir);
      out.push({ name: `rtn w${bits} g8 ${symmetric ? 'sym' : 'asym'}`, files: new Map(['config.json', 'model.safetensors'].map((f) => [f, readFileSync(path.join(dir, f))])) });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return out;
});

const gptq: FuzzFormat = {
  name: 'gptq',
  entry: 'openCheckpoint(dir) (GPTQ config.json quantization_config + safetensors) + new Model + GptqCheckpoint.weight',
  async generate(seed) {
    const rng = new Rng(seed);
    const base = rng.pick(await gptqBases());
    const files = new Map(base.files);
    const k = rng.int(6);
    let what: string;
    if (k <= 1) {
      const c = JSON.parse(files.get('config.json')!.toString()) as { quantization_config: Record<string, unknown> };
      const q = c.quantization_config;
      const key = rng.pick(['bits', 'group_size', 'sym', 'desc_act', 'checkpoint_format', 'quant_method']);
      q[key] = rng.pick<unknown>([0, 1, 5, 16, -1, '4', null, true, 2 ** 31, 'gptq_v3', 'awq', 1.5, 4, 8, 2]);
      files.set('config.json', Buffer.from(JSON.stringify(c)));
      what = `quantization_config.${key} = ${JSON.stringify(q[key])}`;
    } else if (k === 2) {
      const r = mutateJson(rng, files.get('config.json')!.toString());
      files.set('config.json', r.out);
      what = `config.json: ${r.what}`;
    } else if (k === 3) {
      // values inside g_idx / qzeros / qweight: indices the dequantizer trusts
      const st = files.get('model.safetensors')!;
      const n = Number(st.readBigUInt64LE(0));
      const h = JSON.parse(st.toString('utf8', 8, 8 + n)) as Record<string, { dtype: string; data_offsets: [number, number] }>;
      const names = Object.keys(h).filter((x) => /g_idx|qzeros|qweight|scales/.test(x));
      const t = h[rng.pick(names)];
      const out = Buffer.from(st);
      const [b, e] = t.data_offsets;
      const at = 8 + n + b + 4 * rng.int(Math.max(1, (e - b) / 4));
      writeExtreme(out, at, 4, rng.pick([-1n, 0x7fffffffn, 0x80000000n, 1000n, 0xffffffffn]));
      files.set('model.safetensors', out);
      what = `a value of ${rng.pick(names)} set to an extreme`;
    } else {
      const r = mutateSafetensors(rng, files.get('model.safetensors')!);
      files.set('model.safetensors', r.out);
      what = r.what;
    }
    return { files, mutation: `${base.name}: ${what}` };
  },
  async run(dir) {
    // the dequantizing path first: loading the model closes the checkpoint
    const ck = openCheckpoint(dir);
    if (ck instanceof GptqCheckpoint) ck.weight('layers.0.wq');
    loadAndRun(ck);
  },
};

// ---------------- training checkpoints (--resume) ----------------

const resumeSetup = lazy(() => {
  const model = TrainableLlama.fromCheckpoint(synth);
  const bt = new ByteTokenizer(cfg.vocabSize);
  const text = Array.from({ length: 300 }, (_, i) => String.fromCharCode(97 + ((i * 11) % 26))).join('');
  const calibration = calibrationFromText(text, (d) => bt.encode(d), { samples: 2, seqLen: 8, seed: 3 });
  const opts: QuantizeModelOptions = { method: 'teq', bits: 4, groupSize: 8, calibration, steps: 3, batchSize: 1 };
  return { model, opts };
});

const resumeBase = lazy(async (): Promise<Buffer> => {
  const { model, opts } = resumeSetup();
  const tmp = mkdtempSync(path.join(tmpdir(), 'qf-fuzz-resume-'));
  try {
    const file = path.join(tmp, 'ckpt.safetensors');
    await quantizeModel(model, opts, { checkpoint: { path: file, every: 1 } });
    return readFileSync(file);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

const resume: FuzzFormat = {
  name: 'resume',
  entry: 'quantizeModel(..., { checkpoint, resume: true }) on a training checkpoint',
  async generate(seed) {
    const rng = new Rng(seed);
    const base = await resumeBase();
    const k = rng.int(4);
    let r: { out: Buffer; what: string };
    if (k <= 1) {
      // the metadata the reader trusts (step, lossCurve) and the arena's description, fingerprint kept
      const n = Number(base.readBigUInt64LE(0));
      const h = JSON.parse(base.toString('utf8', 8, 8 + n)) as { __metadata__: Record<string, string>; arena: { dtype: string; shape: number[]; data_offsets: number[] } };
      const key = rng.pick(['step', 'lossCurve', 'arena.dtype', 'arena.shape', 'arena.offsets']);
      const v = rng.pick<string>(['-1', '0', '2', '3', '4', '1e9', 'NaN', '', 'x', '[]', '[1,2', '{"a":1}', '[1e999]', '2.5', '9007199254740993', '"3"', '[null]']);
      if (key === 'step' || key === 'lossCurve') h.__metadata__[key] = v;
      else if (key === 'arena.dtype') h.arena.dtype = rng.pick(['F16', 'I32', 'F64', 'BF16']);
      else if (key === 'arena.shape') h.arena.shape = [h.arena.shape[0] + rng.pick([-1, 1, -4])];
      else h.arena.data_offsets = [h.arena.data_offsets[0], h.arena.data_offsets[1] - 4];
      const json = Buffer.from(JSON.stringify(h));
      const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(json.length));
      r = { out: Buffer.concat([len, json, base.subarray(8 + n)]), what: `${key} = ${key === 'step' || key === 'lossCurve' ? v : 'changed'}` };
    } else if (k === 2) {
      // NaN / Inf / huge values in the optimizer state
      const n = Number(base.readBigUInt64LE(0));
      const out = Buffer.from(base);
      const at = 8 + n + 4 * rng.int((out.length - 8 - n) / 4);
      out.writeFloatLE(rng.pick([NaN, Infinity, -Infinity, 3e38, -1, 0]), at);
      r = { out, what: `arena float at ${at}` };
    } else r = mutateSafetensors(rng, base);
    return { files: new Map([['ckpt.safetensors', r.out]]), mutation: r.what };
  },
  async run(dir) {
    const { model, opts } = resumeSetup();
    await quantizeModel(model, opts, { checkpoint: { path: path.join(dir, 'ckpt.safetensors'), every: 100 }, resume: true });
  },
};

export const FORMATS: readonly FuzzFormat[] = [safetensors, sharded, gguf, llama2c, tokenizerJson, tokenizerModel, tokenizerBinFmt, gptq, resume];

export function format(name: string): FuzzFormat {
  const f = FORMATS.find((x) => x.name === name);
  if (!f) throw new Error(`unknown fuzz format '${name}' (known: ${FORMATS.map((x) => x.name).join(', ')})`);
  return f;
}
