// GGUF (llama.cpp) checkpoints, versions 1-3, with the embedded SentencePiece
// vocabulary. Tensors of every ggml type in lib/export/ggml.ts: F32, F16, BF16 and
// the block-quantized Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K. Linear weights in a
// block type are handed to the model in quantform's canonical packed format
// (quantizedWeight: Q4_0 and Q8_0 exactly with their f16 scales; the others with
// f32 per-(sub-)block scales and zero points), so they run on the INT2/INT4/INT8
// kernels; weight() dequantizes any of them bit for bit as llama.cpp does (for
// training and for embeddings and norms). Every count, length, type and byte range
// in the header is checked against the file before anything is allocated for it.
// RoPE: llama.cpp's converters store q/k in the interleaved order; they are
// permuted to rotate_half at load (convert.ts).
import { QuantformError, need } from '../errors.js';
import { SentencePieceBpe } from '../tokenizer/sentencepiece.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint, TensorSource } from './checkpoint.js';
import { LINEAR_WEIGHTS, validateConfig, weightShape, type LlamaConfig } from './config.js';
import { interleavedToHalfOrder, interleavedToHalfRows, permuteInterleavedToHalf } from './convert.js';
import { CheckpointFile, FileCursor } from '../io/file.js';
import { readTensor, type StoredDType } from '../io/tensors.js';
import { GGML_TYPES, ggmlBytes, ggmlTypeById, ggmlTypeLabel, type GgmlType } from '../export/ggml.js';
import { fromParts, permuteRows } from '../export/canonical.js';
import type { QuantizedTensor } from '../ops/quant.js';

/** ggml float types the native reader widens (io/tensors.ts). */
const NATIVE_FLOAT: Partial<Record<string, StoredDType>> = { F32: 'F32', F16: 'F16', BF16: 'BF16' };

const GGUF_MAGIC = 0x46554747;  // "GGUF" little-endian
type Value = number | bigint | boolean | string | Value[] | Buffer[];

export interface GgufTensor {
  name: string;
  /** row-major shape (ggml's ne reversed): a linear is [out, in] */
  shape: number[];
  /** (ne0, ne1, ...) as ggml stores them, fastest dimension first */
  ne: number[];
  type: GgmlType;
  file: CheckpointFile;
  /** absolute byte offset in `file` */
  offset: number;
  nbytes: number;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, Value>;
  tensors: GgufTensor[];
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
  const tensors: GgufTensor[] = [];
  const names = new Set<string>();
  for (const t of infos) {
    const type = ggmlTypeById(t.type);
    if (!type)
      throw new QuantformError('QF_UNSUPPORTED', `${file.path}: tensor '${t.name}' has ggml type ${ggmlTypeLabel(t.type)}; quantform reads ${GGML_TYPES.map((g) => g.name).join(', ')}`);
    if (names.has(t.name)) throw corrupt(file, `tensor '${t.name}' appears twice`);
    names.add(t.name);
    const n = t.ne.reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(n * 4)) throw corrupt(file, `tensor '${t.name}' has an impossible size [${t.ne.join(', ')}]`);
    if (t.ne[0] % type.blockSize !== 0)
      throw corrupt(file, `tensor '${t.name}' (${type.name}) has rows of ${t.ne[0]} values, not a multiple of the block size ${type.blockSize}`);
    if (t.off % align !== 0) throw corrupt(file, `tensor '${t.name}' has offset ${t.off}, not a multiple of the alignment ${align}`);
    tensors.push({ name: t.name, shape: [...t.ne].reverse(), ne: t.ne, type, file, offset: dataStart + t.off, nbytes: ggmlBytes(type, n) });
  }
  checkRanges(file, tensors);
  return { version, metadata, tensors };
}

/** Every tensor inside the file, no two overlapping. */
function checkRanges(file: CheckpointFile, tensors: GgufTensor[]): void {
  for (const t of tensors)
    if (t.offset + t.nbytes > file.size)
      throw corrupt(file, `tensor '${t.name}' spans bytes [${t.offset}, ${t.offset + t.nbytes}) past the end of the file (${file.size} bytes; ${t.type.name} [${t.ne.join(', ')}], truncated?)`);
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1], t = sorted[i];
    if (p.nbytes > 0 && t.nbytes > 0 && t.offset < p.offset + p.nbytes)
      throw corrupt(file, `tensors '${p.name}' [${p.offset}, ${p.offset + p.nbytes}) and '${t.name}' [${t.offset}, ${t.offset + t.nbytes}) overlap`);
  }
}

/** llama.cpp's tensor name of a canonical weight name ('layers.0.wq' -> 'blk.0.attn_q.weight'). */
export function ggufName(name: string): string {
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
  private readonly byName = new Map<string, GgufTensor>();

  constructor(readonly path: string) {
    need.string(path, 'path');
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
        headDim: num('attention.key_length', dim / nHeads),
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
      if (this.byName.has('rope_freqs.weight'))
        throw new QuantformError('QF_UNSUPPORTED', `${path}: rope_freqs.weight (per-dimension RoPE frequency factors, Llama 3 rope_scaling) is not supported by quantform's GGUF loader`);
      for (const n of ['embed', 'final_norm', ...(this.config.tiedEmbeddings ? [] : ['lm_head'])]) this.stored(n);
      for (let l = 0; l < this.config.nLayers; l++)
        for (const w of ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_up', 'w_down']) this.stored(`layers.${l}.${w}`);
    } catch (e) {
      this.file.close();
      throw e;
    }
  }

  private stored(name: string): GgufTensor {
    const g = ggufName(name);
    const t = this.byName.get(g);
    if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${g}' is missing`);
    const want = weightShape(this.config, name);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${this.path}: tensor '${g}' has shape [${t.shape.join(', ')}] but the metadata implies [${want.join(', ')}]`);
    return t;
  }

  /** The ggml type a weight is stored in (canonical name), e.g. 'Q4_0'. */
  storedType(name: string): GgmlType {
    return this.stored(name).type;
  }

  private read(t: GgufTensor): Uint8Array {
    return this.file.read(t.offset, t.nbytes, `tensor '${t.name}'`);
  }

  /** q/k rows: llama.cpp's interleaved order -> rotate_half; null for other weights. */
  private ropeHeads(name: string): number | null {
    const kind = name.split('.')[2];
    return kind === 'wq' ? this.config.nHeads : kind === 'wk' ? this.config.nKvHeads : null;
  }

  /** Float tensors (F32/F16/BF16) are read and widened natively, straight into their destination. */
  tensorSource(name: string): TensorSource | null {
    const t = this.stored(name);
    const dtype = NATIVE_FLOAT[t.type.name];
    if (!dtype) return null;
    const heads = this.ropeHeads(name);
    return {
      tensor: { name: t.name, shape: t.shape, dtype, file: t.file, offset: t.offset, nbytes: t.nbytes },
      dstRow: heads === null ? null : interleavedToHalfRows(heads, t.shape[0]),
    };
  }

  weight(name: string): Float32Array {
    const src = this.tensorSource(name);
    if (src) return readTensor(src.tensor, { dstRow: src.dstRow });
    const t = this.stored(name);
    const n = t.ne.reduce((a, b) => a * b, 1);
    const w = t.type.dequantize(this.read(t), n);
    const heads = this.ropeHeads(name);
    return heads === null ? w : permuteInterleavedToHalf(w, heads, this.config.dim);
  }

  /** Linear weights in a block type, in canonical form for the quantized kernels (no fp32 copy). */
  quantizedWeight(name: string): QuantizedTensor | null {
    const linear = name === 'lm_head' || LINEAR_WEIGHTS.some((w) => name.endsWith(`.${w}`));
    const t = this.stored(name);
    if (!linear || !t.type.toCanonical) return null;
    const [N, K] = t.shape;
    const parts = t.type.toCanonical(this.read(t), N, K);
    if (!parts) return null;
    const q = fromParts(parts, N, K);
    const heads = this.ropeHeads(name);
    return heads === null ? q : permuteRows(q, interleavedToHalfOrder(heads, N));
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
