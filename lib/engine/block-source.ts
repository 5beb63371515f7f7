// Where the quantize pipeline (lib/engine/pipeline.ts) gets a model's weights from,
// one block at a time: a runtime Checkpoint of any format (read lazily, tensor by
// tensor, natively widened) or a TrainableLlama already in memory. Every tensor is
// checked against the config when it is read, so a checkpoint that disagrees with
// its config half-way through is a clear error naming the tensor, never a wrong
// block. Frozen copies (end-to-end losses) come as bf16 when that is exact (the
// checkpoint stores BF16) and as fp32 otherwise, unless the caller asks for bf16.
import { createHash } from 'node:crypto';
import { fromNative, need, QuantformError } from '../errors.js';
import { native } from '../native.js';
import { FLOAT_DTYPES, readTensor, rowsCols } from '../io/tensors.js';
import { needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { checkFinite } from '../ops/finite.js';
import { hfConfigFromLlama, LAYER_WEIGHTS, needConfig, weightShape, type LlamaConfig } from '../model/config.js';
import { blockLayout, RUNTIME_LINEAR, LINEARS, shapeOfConfig, TrainableLlama, type LlamaShape } from './llama.js';

/** The LlamaConfig of a training model (its shape, and bos/eos from its config.json). */
export function configOfModel(m: TrainableLlama): LlamaConfig {
  const s = m.shape, h = m.hfConfig;
  const id = (v: unknown, d: number) => (typeof v === 'number' ? v : Array.isArray(v) && typeof v[0] === 'number' ? v[0] : d);
  return {
    architecture: 'LlamaForCausalLM', dim: s.hidden, hiddenDim: s.intermediate, nLayers: s.layers, nHeads: s.heads, nKvHeads: s.kvHeads,
    headDim: s.headDim, vocabSize: s.vocab, maxSeq: s.maxSeq, normEps: s.rmsEps, ropeTheta: s.ropeTheta, ropeScaling: null,
    tiedEmbeddings: s.tied, bosId: id(h.bos_token_id, 1), eosId: id(h.eos_token_id, 2),
  };
}

export type FrozenDType = 'f32' | 'bf16';
export type PlainDType = 'F32' | 'F16' | 'BF16';

/** A model's weights, block by block (canonical names of lib/model/config.ts). */
export interface BlockSource {
  readonly config: LlamaConfig;
  readonly shape: LlamaShape;
  /** config.json fields the output keeps */
  readonly hfConfig: Record<string, unknown>;
  /** where it comes from, for messages */
  readonly path: string;
  /** 'bf16' when every block tensor is stored as BF16 (a bf16 frozen copy is then exact), else 'f32' */
  readonly exactFrozen: FrozenDType;
  /** every block linear is stored as BF16 / F16 in kernel row order (readLinearHalf never returns null) */
  readonly halfLinears: boolean;
  /** block l as one fp32 arena (blockLayout order), into `out` when given */
  readBlock(l: number, out?: Float32Array): Float32Array;
  /** block l as one bf16 arena (exact when exactFrozen is 'bf16', else rounded to nearest even) */
  readBlockBf16(l: number, out?: Uint16Array): Uint16Array;
  /** block l's fp32 arena without a copy, for sources already in memory (read-only) */
  resident?(l: number): Float32Array;
  /** one linear (rows, cols) fp32, into `out` when given */
  readLinear(name: string, out?: Float32Array): Float32Array;
  /**
   * One linear's stored bits when it is stored as BF16 or F16 in kernel row order
   * (into `out`, which must hold it); null otherwise (then readLinear). RTN quantizes
   * these directly: no fp32 copy of the weight is ever written.
   */
  readLinearHalf?(name: string, out: Uint16Array): { dtype: 'bf16' | 'f16'; data: Uint16Array } | null;
  /** readLinearHalf with the bytes read on a libuv worker (the caller awaits it before closing the checkpoint) */
  readLinearHalfAsync?(name: string, out: Uint16Array): Promise<{ dtype: 'bf16' | 'f16'; data: Uint16Array } | null>;
  /** embed, final_norm, lm_head (or a block norm) as fp32 */
  weight(name: string): Float32Array;
  /** a norm or embedding as stored, for copying it to the output unchanged */
  stored(name: string): { dtype: PlainDType; data: () => ArrayBufferView };
  /** a digest of the weights (resume fingerprints): exact for small models, sampled for large ones */
  identity(): string;
}

function numel(s: readonly number[]): number {
  return s.reduce((a, b) => a * b, 1);
}

/** Weights up to this many bytes are hashed whole for identity(); larger ones by size, head and tail. */
const FULL_HASH_BYTES = 1 << 28;
const SAMPLE_BYTES = 1 << 16;

/** A BlockSource passed in by a caller (plain JS): its config and readers. */
export function needBlockSource(src: unknown, name = 'src'): asserts src is BlockSource {
  need.object(src, name);
  const o = src as Record<string, unknown>;
  needConfig(o.config, `${name}.config`);
  need.object(o.shape, `${name}.shape`);
  for (const f of ['readBlock', 'readBlockBf16', 'readLinear', 'weight', 'stored'] as const) need.func(o[f], `${name}.${f}`);
}

/** A Checkpoint read block by block: only the block being asked for is read, each tensor checked. */
export function checkpointBlocks(ck: Checkpoint): BlockSource {
  needCheckpoint(ck);
  const cfg = ck.config;
  const shape = shapeOfConfig(cfg);
  const lay = blockLayout(shape);
  const what = (name: string) => `${ck.path}: tensor '${name}'`;
  const source = (name: string) => {
    const s = ck.tensorSource?.(name) ?? null;
    return s && FLOAT_DTYPES.includes(s.tensor.dtype) ? s : null;
  };
  // a tensor whose size disagrees with the config is refused before anything reads it
  const check = (name: string, got: number) => {
    const want = weightShape(cfg, name);
    if (got !== numel(want))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${what(name)} holds ${got} values but the config implies [${want.join(', ')}] (${numel(want)})`);
  };
  // every tensor passes the one NaN/Inf check as it is read, in the dtype it was read as
  const finite = (name: string, data: Float32Array | Uint16Array, dtype: 'f32' | 'f16' | 'bf16' = 'f32') =>
    checkFinite(data, `${ck.path}: ${name}`, weightShape(cfg, name), dtype);
  const read = (name: string, out?: Float32Array): Float32Array => {
    const w = readUnchecked(name, out);
    finite(name, w);
    return w;
  };
  const readUnchecked = (name: string, out?: Float32Array): Float32Array => {
    const n = numel(weightShape(cfg, name));
    const s = source(name);
    if (s) {
      const [rows, cols] = rowsCols(s.tensor);
      check(name, rows * cols);
      return readTensor(s.tensor, { dstRow: s.dstRow, out: out ?? new Float32Array(n) });
    }
    const w = ck.weight(name);
    check(name, w.length);
    if (!out) return w;
    out.set(w);
    return out;
  };

  // a linear stored as BF16 / F16 in kernel row order: where its bytes go in `out`
  const half = (name: string, out: Uint16Array) => {
    const src = source(name);
    if (!src || src.dstRow || (src.tensor.dtype !== 'BF16' && src.tensor.dtype !== 'F16')) return null;
    const n = numel(src.tensor.shape);
    check(name, n);
    if (out.length < n) throw new QuantformError('QF_INTERNAL', `readLinearHalf: a buffer of ${out.length} for ${n} values of '${name}'`);
    const data = out.subarray(0, n);
    return { src: src.tensor, dtype: src.tensor.dtype === 'BF16' ? 'bf16' as const : 'f16' as const, data, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  };
  const blockNames = (l: number) => LAYER_WEIGHTS.map((w) => `layers.${l}.${w}`);
  const slotOf = (w: (typeof LAYER_WEIGHTS)[number]) =>
    w === 'attn_norm' ? lay.g1 : w === 'ffn_norm' ? lay.g2 : lay.linears[LINEARS.find((n) => RUNTIME_LINEAR[n] === w)!];
  const allBf16 = Array.from({ length: cfg.nLayers }, (_, l) => blockNames(l)).flat().every((n) => source(n)?.tensor.dtype === 'BF16');
  const halfLinears = Array.from({ length: cfg.nLayers }, (_, l) => LINEARS.map((n) => `layers.${l}.${RUNTIME_LINEAR[n]}`)).flat()
    .every((n) => { const t = source(n); return t !== null && !t.dstRow && (t.tensor.dtype === 'BF16' || t.tensor.dtype === 'F16'); });
  const checkLayer = (l: number) => {
    if (!Number.isInteger(l) || l < 0 || l >= cfg.nLayers)
      throw new QuantformError('QF_INVALID_ARGUMENT', `Expected a block index in [0, ${cfg.nLayers}) but received ${l}`);
  };
  return {
    config: cfg,
    shape,
    hfConfig: ck.hfConfig ?? hfConfigFromLlama(cfg),
    path: ck.path,
    exactFrozen: allBf16 ? 'bf16' : 'f32',
    halfLinears,
    readBlock(l, out) {
      checkLayer(l);
      const arena = out ?? new Float32Array(lay.total);
      for (const w of LAYER_WEIGHTS) {
        const s = slotOf(w), n = 'rows' in s ? s.rows * s.cols : shape.hidden;
        read(`layers.${l}.${w}`, arena.subarray(s.offset, s.offset + n));
      }
      return arena;
    },
    readBlockBf16(l, out) {
      checkLayer(l);
      const arena = out ?? new Uint16Array(lay.total);
      let wide: Float32Array | null = null;
      for (const w of LAYER_WEIGHTS) {
        const name = `layers.${l}.${w}`;
        const s = slotOf(w), n = 'rows' in s ? s.rows * s.cols : shape.hidden;
        const dst = arena.subarray(s.offset, s.offset + n);
        const src = source(name);
        if (src && src.tensor.dtype === 'BF16' && !src.dstRow) {
          check(name, numel(src.tensor.shape));
          src.tensor.file.readInto(src.tensor.offset, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength), `tensor '${src.tensor.name}'`);
          finite(name, dst, 'bf16');
          continue;
        }
        // widened once (the row permutation of RoPE layouts applies there), then rounded: exact for BF16 sources
        if (!wide || wide.length < n) wide = new Float32Array(n);
        const f = read(name, wide.subarray(0, n));
        try {
          native().io.convert(dst, 'bf16', f, 'f32');
        } catch (e) {
          throw fromNative(e);
        }
      }
      return arena;
    },
    readLinear: (name, out) => read(name, out),
    readLinearHalf(name, out) {
      const h = half(name, out);
      if (!h) return null;
      h.src.file.readInto(h.src.offset, h.bytes, `tensor '${h.src.name}'`);
      finite(name, h.data, h.dtype);
      return { dtype: h.dtype, data: h.data };
    },
    async readLinearHalfAsync(name, out) {
      const h = half(name, out);
      if (!h) return null;
      await h.src.file.readIntoAsync(h.src.offset, h.bytes, `tensor '${h.src.name}'`);
      finite(name, h.data, h.dtype);
      return { dtype: h.dtype, data: h.data };
    },
    weight: (name) => read(name),
    stored(name) {
      const s = source(name);
      if (s && !s.dstRow) {
        check(name, numel(s.tensor.shape));
        const t = s.tensor;
        return {
          dtype: t.dtype as PlainDType,
          data: () => {
            const raw = t.file.read(t.offset, t.nbytes, `tensor '${t.name}'`);
            // typed views need an aligned offset: small reads come from Buffer's shared pool
            const bytes = raw.byteOffset % 4 === 0 ? raw : new Uint8Array(raw);
            finite(name, t.dtype === 'F32' ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
              : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2), t.dtype === 'F32' ? 'f32' : t.dtype === 'F16' ? 'f16' : 'bf16');
            return raw;
          },
        };
      }
      return { dtype: 'F32', data: () => read(name) };
    },
    identity() {
      const h = createHash('sha256');
      h.update(JSON.stringify(cfg));
      const names = ['embed', 'final_norm', ...(cfg.tiedEmbeddings ? [] : ['lm_head']), ...Array.from({ length: cfg.nLayers }, (_, l) => blockNames(l)).flat()];
      const total = names.reduce((a, n) => a + numel(weightShape(cfg, n)) * 4, 0);
      for (const n of names) {
        const s = source(n);
        if (total <= FULL_HASH_BYTES || !s) {
          const w = read(n);
          h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
          continue;
        }
        const t = s.tensor;
        const k = Math.min(SAMPLE_BYTES, t.nbytes);
        h.update(`${n}:${t.dtype}:${t.nbytes}`);
        h.update(t.file.read(t.offset, k, `tensor '${t.name}'`));
        h.update(t.file.read(t.offset + t.nbytes - k, k, `tensor '${t.name}'`));
      }
      return h.digest('hex');
    },
  };
}

/** A TrainableLlama as a block source (its arenas are copied out, never modified). */
export function modelBlocks(m: TrainableLlama): BlockSource {
  need.instance(m, TrainableLlama, 'model');
  const lay = blockLayout(m.shape);
  const cfg = configOfModel(m);
  const plain = (name: string): Float32Array => {
    if (name === 'embed') return m.embed;
    if (name === 'final_norm') return m.finalNorm;
    if (name === 'lm_head') return m.lmHead;
    const p = /^layers\.(\d+)\.(attn_norm|ffn_norm)$/.exec(name);
    if (!p) throw new QuantformError('QF_INVALID_ARGUMENT', `Unknown plain weight name '${name}'`);
    return m.norm(Number(p[1]), p[2] === 'attn_norm' ? 'input' : 'post');
  };
  const linearOf = (name: string): Float32Array => {
    const p = /^layers\.(\d+)\.(\w+)$/.exec(name);
    const n = p ? LINEARS.find((x) => RUNTIME_LINEAR[x] === p[2]) : undefined;
    if (!p || !n) throw new QuantformError('QF_INVALID_ARGUMENT', `Unknown linear weight name '${name}'`);
    return m.linear(Number(p[1]), n);
  };
  return {
    config: cfg,
    shape: m.shape,
    hfConfig: m.hfConfig,
    path: 'memory',
    exactFrozen: 'f32',
    halfLinears: false,
    readBlock(l, out) {
      const arena = out ?? new Float32Array(lay.total);
      arena.set(m.blocks[l]);
      return arena;
    },
    resident: (l) => m.blocks[l],
    readBlockBf16(l, out) {
      const arena = out ?? new Uint16Array(lay.total);
      try {
        native().io.convert(arena, 'bf16', m.blocks[l], 'f32');
      } catch (e) {
        throw fromNative(e);
      }
      return arena;
    },
    readLinear(name, out) {
      const w = linearOf(name);
      if (!out) return w.slice();
      out.set(w);
      return out;
    },
    weight: plain,
    stored: (name) => ({ dtype: 'F32', data: () => plain(name) }),
    identity() {
      const h = createHash('sha256');
      h.update(JSON.stringify({ ...m.shape, invFreq: m.shape.invFreq ? Array.from(m.shape.invFreq) : null }));
      h.update(new Uint8Array(m.embed.buffer, m.embed.byteOffset, m.embed.byteLength));
      for (const b of m.blocks) h.update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
      return h.digest('hex');
    },
  };
}

/** Bytes of one block's fp32 arena. */
export function blockBytes(shape: LlamaShape): number {
  return blockLayout(shape).total * 4;
}
