// GGUF (llama.cpp) checkpoints, versions 1-3, F32/F16 tensors, with the embedded
// SentencePiece vocabulary. Every count and length in the header is checked
// against the bytes left in the file before anything is allocated for it.
// RoPE: llama.cpp's converters store q/k in the interleaved order; they are
// permuted to rotate_half at load (convert.ts).
import { QuantformError, need } from '../errors.js';
import { SentencePieceBpe } from '../tokenizer/sentencepiece.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint } from './checkpoint.js';
import { validateConfig, weightShape, type LlamaConfig } from './config.js';
import { permuteInterleavedToHalf } from './convert.js';
import { CheckpointFile, FileCursor } from '../io/file.js';
import { readTensor, validateLayout, type StoredTensor } from '../io/tensors.js';

const GGUF_MAGIC = 0x46554747;  // "GGUF" little-endian
type Value = number | bigint | boolean | string | Value[] | Buffer[];

export interface GgufHeader {
  version: number;
  metadata: Map<string, Value>;
  tensors: StoredTensor[];
  /** (ne0, ne1, ...) of each tensor as ggml stores them, fastest dimension first */
  dims: Map<string, number[]>;
}

function corrupt(file: CheckpointFile, msg: string): QuantformError {
  return new QuantformError('QF_CORRUPT_FILE', `${file.path}: ${msg}`);
}

export function readGgufHeader(file: CheckpointFile): GgufHeader {
  need.instance(file, CheckpointFile, 'file');
  const c = new FileCursor(file);
  if (file.size < 8) throw corrupt(file, `${file.size} bytes is too short for a GGUF header`);
  const magic = c.u32('magic');
  if (magic !== GGUF_MAGIC) throw corrupt(file, `bad magic 0x${magic.toString(16).padStart(8, '0')} (expected 0x46554747, "GGUF")`);
  const version = c.u32('version');
  if (version < 1 || version > 3) throw new QuantformError('QF_UNSUPPORTED', `${file.path}: GGUF version ${version} is not supported (1, 2 or 3)`);
  const v1 = version === 1;
  const count = (what: string): number => (v1 ? c.u32(what) : c.u64(what));
  const nTensors = count('tensor count');
  const nKv = count('metadata count');
  // a key/value needs at least 8 bytes, a tensor info at least 24: refuse counts the file cannot hold
  if (nKv * 8 > c.remaining) throw corrupt(file, `metadata count ${nKv} cannot fit in the ${c.remaining} bytes left`);
  if (nTensors * 24 > c.remaining) throw corrupt(file, `tensor count ${nTensors} cannot fit in the ${c.remaining} bytes left`);
  const str = (what: string): Buffer => {
    const n = count(`${what} length`);
    if (n > c.remaining) throw corrupt(file, `${what} length ${n} runs past the end of the file`);
    return c.bytes(n, what);
  };
  const scalarSize: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (type: number, what: string): Value => {
    switch (type) {
      case 0: return c.u8(what);
      case 1: return c.i8(what);
      case 2: return c.u16(what);
      case 3: return c.i16(what);
      case 4: return c.u32(what);
      case 5: return c.i32(what);
      case 6: return c.f32(what);
      case 7: return c.u8(what) !== 0;
      case 8: return str(what).toString('utf8');
      case 10: return c.u64(what);
      case 11: return c.i64(what);
      case 12: return c.f64(what);
      case 9: {
        const et = c.u32(`${what} element type`);
        const n = count(`${what} element count`);
        const min = et === 8 ? (v1 ? 4 : 8) : scalarSize[et];
        if (min === undefined) throw corrupt(file, `${what} has unknown element type ${et}`);
        if (n * min > c.remaining) throw corrupt(file, `${what} claims ${n} elements, more than the ${c.remaining} bytes left can hold`);
        if (et === 8) {
          const out: Buffer[] = [];
          for (let i = 0; i < n; i++) out.push(Buffer.from(str(`${what}[${i}]`)));
          return out;
        }
        const out: Value[] = [];
        for (let i = 0; i < n; i++) out.push(value(et, `${what}[${i}]`));
        return out;
      }
      default:
        throw corrupt(file, `${what} has unknown value type ${type}`);
    }
  };
  const metadata = new Map<string, Value>();
  for (let i = 0; i < nKv; i++) {
    const key = str(`metadata key ${i}`).toString('utf8');
    metadata.set(key, value(c.u32(`type of '${key}'`), `'${key}'`));
  }
  const infos: { name: string; ne: number[]; type: number; off: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str(`tensor ${i} name`).toString('utf8');
    const nd = c.u32(`n_dims of '${name}'`);
    if (nd < 1 || nd > 4) throw corrupt(file, `tensor '${name}' has ${nd} dimensions (1-4 allowed)`);
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(v1 ? c.u32(`dim ${d} of '${name}'`) : c.u64(`dim ${d} of '${name}'`));
    const type = c.u32(`type of '${name}'`);
    const off = c.u64(`offset of '${name}'`);
    infos.push({ name, ne, type, off });
  }
  const align = Number(metadata.get('general.alignment') ?? 32);
  if (!Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0) throw corrupt(file, `general.alignment ${align} is not a power of two`);
  const dataStart = Math.ceil(c.pos / align) * align;
  const tensors: StoredTensor[] = [];
  const dims = new Map<string, number[]>();
  for (const t of infos) {
    if (t.type !== 0 && t.type !== 1)
      throw new QuantformError('QF_UNSUPPORTED', `${file.path}: tensor '${t.name}' has ggml type ${t.type}; supported: 0 (F32), 1 (F16)`);
    const dtype = t.type === 0 ? 'F32' : 'F16';
    const n = t.ne.reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(n * 4)) throw corrupt(file, `tensor '${t.name}' has an impossible size`);
    tensors.push({ name: t.name, shape: [...t.ne].reverse(), dtype, file, offset: dataStart + t.off, nbytes: n * (dtype === 'F32' ? 4 : 2) });
    dims.set(t.name, t.ne);
  }
  validateLayout(tensors);
  return { version, metadata, tensors, dims };
}

function ggufName(name: string): string {
  if (name === 'embed') return 'token_embd.weight';
  if (name === 'final_norm') return 'output_norm.weight';
  if (name === 'lm_head') return 'output.weight';
  const [, l, w] = name.split('.');
  const map: Record<string, string> = {
    attn_norm: 'attn_norm', ffn_norm: 'ffn_norm', wq: 'attn_q', wk: 'attn_k', wv: 'attn_v', wo: 'attn_output',
    w_gate: 'ffn_gate', w_up: 'ffn_up', w_down: 'ffn_down',
  };
  return `blk.${l}.${map[w]}.weight`;
}

export class GgufCheckpoint implements Checkpoint {
  readonly format = 'gguf' as const;
  readonly config: LlamaConfig;
  readonly header: GgufHeader;
  private readonly file: CheckpointFile;
  private readonly byName = new Map<string, StoredTensor>();

  constructor(readonly path: string) {
    this.file = new CheckpointFile(path);
    try {
      this.header = readGgufHeader(this.file);
      for (const t of this.header.tensors) this.byName.set(t.name, t);
      const md = this.header.metadata;
      const arch = String(md.get('general.architecture') ?? 'llama');
      if (arch !== 'llama') throw new QuantformError('QF_UNSUPPORTED', `${path}: GGUF architecture '${arch}' is not supported (llama only)`);
      const num = (k: string, dflt?: number): number => {
        const v = md.get(`${arch}.${k}`);
        if (v === undefined) {
          if (dflt !== undefined) return dflt;
          throw new QuantformError('QF_CORRUPT_FILE', `${path}: metadata '${arch}.${k}' is missing`);
        }
        return Number(v);
      };
      const dim = num('embedding_length'), nHeads = num('attention.head_count');
      const tokens = md.get('tokenizer.ggml.tokens');
      const embd = this.byName.get('token_embd.weight');
      const vocab = Array.isArray(tokens) ? tokens.length : embd ? embd.shape[0] : 0;
      this.config = {
        architecture: 'gguf:llama',
        dim,
        hiddenDim: num('feed_forward_length'),
        nLayers: num('block_count'),
        nHeads,
        nKvHeads: num('attention.head_count_kv', nHeads),
        headDim: dim / nHeads,
        vocabSize: vocab,
        maxSeq: num('context_length', 2048),
        normEps: num('attention.layer_norm_rms_epsilon', 1e-5),
        ropeTheta: num('rope.freq_base', 10000),
        ropeScaling: null,
        tiedEmbeddings: !this.byName.has('output.weight'),
        bosId: Number(md.get('tokenizer.ggml.bos_token_id') ?? 1),
        eosId: Number(md.get('tokenizer.ggml.eos_token_id') ?? 2),
      };
      validateConfig(this.config, path);
      for (const n of ['embed', 'final_norm', ...(this.config.tiedEmbeddings ? [] : ['lm_head'])]) this.stored(n);
      for (let l = 0; l < this.config.nLayers; l++)
        for (const w of ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_up', 'w_down']) this.stored(`layers.${l}.${w}`);
    } catch (e) {
      this.file.close();
      throw e;
    }
  }

  private stored(name: string): StoredTensor {
    const g = ggufName(name);
    const t = this.byName.get(g);
    if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${g}' is missing`);
    const want = weightShape(this.config, name);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${this.path}: tensor '${g}' has shape [${t.shape.join(', ')}] but the metadata implies [${want.join(', ')}]`);
    return t;
  }

  weight(name: string): Float32Array {
    const w = readTensor(this.stored(name));
    const kind = name.split('.')[2];
    if (kind === 'wq') return permuteInterleavedToHalf(w, this.config.nHeads, this.config.dim);
    if (kind === 'wk') return permuteInterleavedToHalf(w, this.config.nKvHeads, this.config.dim);
    return w;
  }

  async tokenizer(): Promise<Tokenizer> {
    const md = this.header.metadata;
    const tokens = md.get('tokenizer.ggml.tokens'), scores = md.get('tokenizer.ggml.scores');
    if (!Array.isArray(tokens) || !Array.isArray(scores) || tokens.length !== scores.length)
      throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: no embedded tokenizer (tokenizer.ggml.tokens / scores)`);
    // GGUF stores SentencePiece pieces with '▁' for space; llama2.c-style pieces use ' '
    const pieces = (tokens as Buffer[]).map((b) => Buffer.from(b.toString('utf8').replace(/\u2581/g, ' '), 'utf8'));
    return new SentencePieceBpe(pieces, Float32Array.from(scores as number[]), this.config.bosId, this.config.eosId);
  }

  close(): void {
    this.file.close();
  }
}
