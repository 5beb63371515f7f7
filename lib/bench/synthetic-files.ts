// Writes synthetic checkpoints of real model shapes for the I/O benchmarks: a GGUF
// v3 file (F16 or BF16 matrices, F32 norms, a SentencePiece vocabulary llama.cpp
// accepts) and Hugging Face safetensors directories (sharded like save_pretrained).
// The values are random halves drawn once into a pattern and repeated with a
// per-tensor shift: a load benchmark measures bytes moved, and generating 10^10
// random numbers would take longer than the benchmark.
import { closeSync, mkdirSync, openSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { QuantformError } from '../errors.js';
import { SafetensorsWriter, type TensorSpec } from '../io/safetensors.js';
import { f32ToF16 } from '../io/half.js';
import { ggufName } from '../model/gguf.js';
import { hfModuleName } from '../model/hf.js';
import { hfConfigFromLlama, weightNames, weightShape, type LlamaConfig } from '../model/config.js';
import { SyntheticCheckpoint, type SyntheticOptions } from '../model/synthetic.js';
import { TOKEN_TYPE, type SpmVocab } from '../export/vocab.js';

export type HalfDType = 'F16' | 'BF16';

/** TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 32 / 4 heads, vocab 32000) with `layers` blocks. */
export function tinyLlamaShape(layers: number): LlamaConfig {
  return new SyntheticCheckpoint({ dim: 2048, hiddenDim: 5632, nLayers: layers, nHeads: 32, nKvHeads: 4, vocabSize: 32000, maxSeq: 2048 }).config;
}

/** The config of a synthetic checkpoint of the given options (Llama-2-7B: LLAMA2_7B). */
export function shapeOf(o: SyntheticOptions): LlamaConfig {
  return new SyntheticCheckpoint(o).config;
}

const isNorm = (name: string) => /norm$/.test(name);

/** A SentencePiece vocabulary of V pieces llama.cpp accepts: <unk> <s> </s>, the 256 byte pieces, then distinct word pieces. */
export function syntheticVocab(V: number): SpmVocab {
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)];
  for (let i = tokens.length; i < V; i++) tokens.push(`\u2581w${i}`);
  const types = Uint8Array.from(tokens, (_, i) => (i === 0 ? TOKEN_TYPE.UNKNOWN : i < 3 ? TOKEN_TYPE.CONTROL : i < 259 ? TOKEN_TYPE.BYTE : TOKEN_TYPE.NORMAL));
  return { tokens, scores: Float32Array.from(tokens, (_, i) => -i), types, bosId: 1, eosId: 2, unkId: 0, padId: null,
    addBos: true, addEos: false, addSpacePrefix: true, source: 'synthetic vocabulary' };
}

/** Bytes a checkpoint of `cfg` takes with 16-bit matrices and f32 norms. */
export function checkpointBytes(cfg: LlamaConfig, normBytes = 4): number {
  return weightNames(cfg).reduce((a, n) => a + weightShape(cfg, n).reduce((x, y) => x * y, 1) * (isNorm(n) ? normBytes : 2), 0);
}

/** Refuses to start when `dir`'s file system lacks `bytes` plus a 2 GB margin. */
export function checkFreeDisk(dir: string, bytes: number): number {
  const s = statfsSync(dir);
  const free = s.bavail * s.bsize;
  if (free < bytes + 2e9)
    throw new QuantformError('QF_IO', `${dir} has ${(free / 1e9).toFixed(1)} GB free; the benchmark needs ${(bytes / 1e9).toFixed(1)} GB plus a 2 GB margin (choose another --dir)`);
  return free;
}

/** 16-bit random weights ~ U(-0.05, 0.05), 8 Mi elements, repeated across tensors. */
function pattern(dt: HalfDType): Uint16Array {
  const n = 1 << 23;
  const p = new Uint16Array(n);
  let s = 0x9e3779b9;
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    f[0] = (s / 4294967296 - 0.5) * 0.1;
    p[i] = dt === 'F16' ? f32ToF16(f[0]) : u[0] >>> 16;
  }
  return p;
}

/** Calls emit(chunk) with the bytes of one tensor: `n` elements of the pattern from a shifted start. */
function emitPattern(p: Uint16Array, n: number, shift: number, emit: (b: Uint8Array) => void): void {
  let at = shift % p.length;
  for (let done = 0; done < n;) {
    const take = Math.min(n - done, p.length - at);
    emit(new Uint8Array(p.buffer, at * 2, take * 2));
    done += take;
    at = 0;
  }
}

/** A GGUF v3 file of `cfg`: matrices `dt`, norms F32 (ones), a llama SentencePiece vocabulary of cfg.vocabSize pieces. */
export function writeSyntheticGguf(file: string, cfg: LlamaConfig, dt: HalfDType): void {
  const head: Buffer[] = [];
  const u32 = (x: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(x >>> 0); head.push(b); };
  const u64 = (x: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(x)); head.push(b); };
  const str = (s: string) => { const b = Buffer.from(s, 'utf8'); u64(b.length); head.push(b); };
  const kv = (k: string, type: number, write: () => void) => { str(k); u32(type); write(); };
  const V = cfg.vocabSize;
  const vocab = syntheticVocab(V);
  const names = weightNames(cfg);
  let nKv = 0;
  const kvs: (() => void)[] = [];
  const add = (k: string, type: number, w: () => void) => { nKv++; kvs.push(() => kv(k, type, w)); };
  add('general.architecture', 8, () => str('llama'));
  add('general.name', 8, () => str('quantform synthetic'));
  add('general.alignment', 4, () => u32(32));
  add('llama.context_length', 4, () => u32(cfg.maxSeq));
  add('llama.embedding_length', 4, () => u32(cfg.dim));
  add('llama.block_count', 4, () => u32(cfg.nLayers));
  add('llama.feed_forward_length', 4, () => u32(cfg.hiddenDim));
  add('llama.attention.head_count', 4, () => u32(cfg.nHeads));
  add('llama.attention.head_count_kv', 4, () => u32(cfg.nKvHeads));
  add('llama.rope.dimension_count', 4, () => u32(cfg.headDim));
  add('llama.attention.layer_norm_rms_epsilon', 6, () => { const b = Buffer.alloc(4); b.writeFloatLE(cfg.normEps); head.push(b); });
  add('llama.rope.freq_base', 6, () => { const b = Buffer.alloc(4); b.writeFloatLE(cfg.ropeTheta); head.push(b); });
  add('tokenizer.ggml.model', 8, () => str('llama'));
  add('tokenizer.ggml.tokens', 9, () => { u32(8); u64(V); vocab.tokens.forEach(str); });
  add('tokenizer.ggml.scores', 9, () => { u32(6); u64(V); const b = Buffer.alloc(4 * V); vocab.scores.forEach((x, i) => b.writeFloatLE(x, 4 * i)); head.push(b); });
  add('tokenizer.ggml.token_type', 9, () => {
    u32(5); u64(V);
    const b = Buffer.alloc(4 * V);
    vocab.types.forEach((t, i) => b.writeInt32LE(t, 4 * i));
    head.push(b);
  });
  add('tokenizer.ggml.bos_token_id', 4, () => u32(1));
  add('tokenizer.ggml.eos_token_id', 4, () => u32(2));
  add('tokenizer.ggml.unknown_token_id', 4, () => u32(0));
  u32(0x46554747);
  u32(3);
  u64(names.length);
  u64(nKv);
  for (const k of kvs) k();
  const align = (x: number) => Math.ceil(x / 32) * 32;
  let off = 0;
  const plan: { name: string; n: number; norm: boolean; off: number }[] = [];
  for (const name of names) {
    const shape = weightShape(cfg, name);
    const n = shape.reduce((a, b) => a * b, 1);
    const norm = isNorm(name);
    str(ggufName(name));
    u32(shape.length);
    for (const d of [...shape].reverse()) u64(d);
    u32(norm ? 0 : dt === 'F16' ? 1 : 30);
    u64(off);
    plan.push({ name, n, norm, off });
    off = align(off + n * (norm ? 4 : 2));
  }
  const header = Buffer.concat(head);
  const dataStart = align(header.length);
  const p = pattern(dt);
  const fd = openSync(file, 'w');
  try {
    const write = (b: Uint8Array, at: number) => { let o = 0; while (o < b.length) o += writeSync(fd, b, o, b.length - o, at + o); };
    write(header, 0);
    plan.forEach((t, i) => {
      let at = dataStart + t.off;
      if (t.norm) write(new Uint8Array(new Float32Array(t.n).fill(1).buffer), at);
      else emitPattern(p, t.n, i * 7919, (b) => { write(b, at); at += b.length; });
    });
  } finally {
    closeSync(fd);
  }
}

/** A Hugging Face directory of `cfg` (config.json + safetensors, every tensor `dt`), sharded above maxShardBytes. */
export function writeSyntheticHf(dir: string, cfg: LlamaConfig, dt: HalfDType, maxShardBytes: number): string[] {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...hfConfigFromLlama(cfg), torch_dtype: dt === 'BF16' ? 'bfloat16' : 'float16' }, null, 2));
  const names = weightNames(cfg);
  const specs: TensorSpec[] = names.map((n) => ({ name: `${hfModuleName(n)}.weight`, dtype: dt, shape: weightShape(cfg, n) }));
  const w = new SafetensorsWriter(dir, specs, { maxShardBytes, metadata: { format: 'pt' } });
  const p = pattern(dt);
  const one = dt === 'BF16' ? 0x3f80 : 0x3c00;
  try {
    names.forEach((name, i) => {
      const n = weightShape(cfg, name).reduce((a, b) => a * b, 1);
      if (isNorm(name)) {
        w.write(specs[i].name, new Uint16Array(n).fill(one));
        return;
      }
      // the writer takes a tensor in one call: assemble it from the pattern (one tensor in memory at a time)
      const buf = new Uint8Array(n * 2);
      let at = 0;
      emitPattern(p, n, i * 7919, (b) => { buf.set(b, at); at += b.length; });
      w.write(specs[i].name, buf);
    });
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
  return w.files;
}
