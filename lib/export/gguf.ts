// Export to GGUF for llama.cpp / node-llama-cpp (architecture 'llama').
//
// Linear weights keep quantform's codes and scales wherever a GGUF block type can
// hold them (no requantization):
//   INT4 symmetric, group a multiple of 32   -> Q4_0   w = d*(q - 8), d = the f16 scale     exact
//   INT4 asymmetric, group a multiple of 32  -> Q4_1   w = d*q + m, m = f16(-d*z)           codes and d kept,
//                                                      m rounded once to f16 (|dw| <= ulp(m)/2, measured);
//                                             exact: Q5_0, w = d*(c - 16) with c = q - z + 16, bit-exact (+10 % size)
//   INT8 symmetric, group a multiple of 32   -> Q8_0   w = d*qs, qs = q - 128             exact
//   INT2 / INT3, group a multiple of 32      -> Q2_K / Q3_K re-encoded (compact) when rows are a multiple
//                                                      of 256, else (and always with exact) Q4_0 with
//                                                      c = q - z + 8 (fits: |q - z| <= 7), exact
// A scale group of 64 or 128 spans whole 32-blocks, which repeat its scale. Anything
// else (group sizes that are not a multiple of 32, INT8 asymmetric) is re-encoded
// into the nearest type (Q4_K, Q3_K, Q2_K for 4/3/2 bits on rows that are a
// multiple of 256, else Q4_0/Q4_1; Q8_0 for 8 bits) and the added error is measured
// per tensor; `exact` refuses these instead. Every tensor written is decoded again
// and compared with the source values, so the report's numbers are measured.
// An FFN dimension that is not a multiple of 32 (stories260K: 172) is padded with
// zero channels (gate/up rows of zeros, down_proj columns whose codes are the zero
// point), which changes no output; a row length that is still not a multiple of 32
// is stored unquantized (F32, the dequantized values, exact).
// q/k rows go back to llama.cpp's interleaved RoPE order; embeddings and an untied
// fp32 head as F32 (or F16), norms F32; Llama 3 rope_scaling as rope_freqs.weight.
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { invFreq, LINEAR_WEIGHTS, weightShape, type LlamaConfig } from '../model/config.js';
import { halfToInterleavedOrder, permuteHalfToInterleaved } from '../model/convert.js';
import { dequantize, QuantizedTensor, unpack } from '../ops/quant.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';
import { exactF16Scales, padZeros, permuteRows, scaleValues, zeroPoints } from './canonical.js';
import { ggmlType, putHalf, type GgmlType, type GgmlTypeName } from './ggml.js';
import { ggufName } from '../model/gguf.js';
import { gv, writeGguf, type GgufTensorData, type GgufValue } from './gguf-writer.js';
import { openExportSource } from './source.js';
import { checkVocab, needVocab, TOKEN_TYPE, vocabFromCheckpoint, type SpmVocab } from './vocab.js';

export interface GgufExportOptions {
  /** Refuse any tensor that would be re-encoded (default false: re-encode and report the error). */
  exact?: boolean;
  /** Type of embeddings, an untied fp32 head and fp32 linears (default 'F32'; 'F16' halves them). */
  floatType?: 'F32' | 'F16';
  /** The vocabulary to embed, instead of the checkpoint's (not checked against its tokenizer). */
  vocab?: SpmVocab;
  /** general.name (default: the source's file or directory name) */
  name?: string;
  onProgress?: (e: { done: number; total: number; tensor: string }) => void;
}

/** How faithfully a tensor was written: identical values, one f16 rounding of a derived parameter, or requantized. */
export type Fidelity = 'exact' | 'rounded' | 're-encoded';

export interface TensorExport {
  /** name in the exported file */
  name: string;
  /** what the source held, e.g. 'INT4 sym g32 (f16)' or 'f32' */
  source: string;
  /** type written */
  type: string;
  /** row-major shape written */
  shape: number[];
  fidelity: Fidelity;
  /** ||W_written - W_source|| / ||W_source|| */
  relError: number;
  /** max |W_written - W_source| */
  maxAbsError: number;
  note?: string;
}

export interface ExportReport {
  format: 'gguf' | 'onnx';
  /** file (GGUF) or directory (ONNX) written */
  out: string;
  bytes: number;
  seconds: number;
  /** what was exported, e.g. 'teq W4 g32 sym (GPTQ)' */
  source: string;
  /** where the vocabulary came from */
  vocab: string;
  /** FFN dimension padded to a block multiple */
  ffnPadded?: { from: number; to: number };
  tensors: TensorExport[];
}

const FTYPE: Partial<Record<GgmlTypeName, number>> = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7, Q2_K: 10, Q3_K: 11, Q4_K: 14, Q6_K: 18 };

export function quantLabel(q: QuantizedTensor): string {
  return `INT${q.bits} ${q.symmetric ? 'sym' : 'asym'} g${q.groupSize === q.shape[1] ? 'channel' : q.groupSize} (${q.paramDtype})`;
}

/** Relative and max error of `got` against `want`. */
export function compareValues(got: Float32Array, want: Float32Array): { relError: number; maxAbsError: number } {
  let e = 0, d = 0, mx = 0;
  for (let i = 0; i < want.length; i++) {
    const x = got[i] - want[i];
    e += x * x;
    d += want[i] * want[i];
    if (Math.abs(x) > mx) mx = Math.abs(x);
  }
  return { relError: d > 0 ? Math.sqrt(e / d) : Math.sqrt(e), maxAbsError: mx };
}

export type DirectType = 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q8_0';

/**
 * The codes and scales of q as blocks of a 32-value GGUF type, without
 * requantizing. Q4_0, Q5_0 and Q8_0 are symmetric (w = d*(c - c0), c0 = 8, 16, 0
 * for Q8_0's signed codes): they take c = q - z + c0, exact whenever q - z fits
 * their range (any symmetric code; INT2/INT3 asymmetric in Q4_0, INT4 asymmetric in
 * Q5_0). Q4_1 (w = d*q + m) keeps q and stores m = -d*z rounded once to f16. K and
 * the group size must be multiples of 32; zero points must be integers except for Q4_1.
 */
export function encodeDirect(q: QuantizedTensor, type: DirectType): Uint8Array {
  need.instance(q, QuantizedTensor, 'q');
  if (!is.oneOf(type, ['Q4_0', 'Q4_1', 'Q5_0', 'Q8_0'] as const)) throw invalidParameter("'Q4_0', 'Q4_1', 'Q5_0' or 'Q8_0'", 'type', type);
  const [N, K] = q.shape, G = q.numGroups, g = q.groupSize;
  if (K % 32 !== 0 || g % 32 !== 0) throw new QuantformError('QF_UNSUPPORTED', `${type} needs K and the group size to be multiples of 32 (K ${K}, group ${g})`);
  const c = unpack(q.codes, [N, K], q.bits);
  const scales = exactF16Scales(q) ?? Uint16Array.from(scaleValues(q), (s) => f32ToF16(s));
  const z = zeroPoints(q);
  const t = ggmlType(type), nb = K / 32;
  const c0 = type === 'Q4_0' ? 8 : type === 'Q5_0' ? 16 : 0;
  const [lo, hi] = type === 'Q4_0' ? [0, 15] : type === 'Q5_0' ? [0, 31] : type === 'Q8_0' ? [-128, 127] : [0, 15];
  const out = new Uint8Array(N * nb * t.typeSize);
  const v = new Int32Array(32);
  for (let n = 0; n < N; n++)
    for (let kb = 0; kb < nb; kb++) {
      const o = (n * nb + kb) * t.typeSize, k0 = n * K + kb * 32, grp = n * G + Math.floor((kb * 32) / g);
      const d16 = scales[grp], zg = z[grp];
      putHalf(out, o, d16);
      if (type === 'Q4_1') {
        const m = -f16ToF32(d16) * zg;
        putHalf(out, o + 2, f32ToF16(m === 0 ? 0 : m));  // +0 as ggml writes it, not -0
        for (let j = 0; j < 16; j++) out[o + 4 + j] = c[k0 + j] | (c[k0 + 16 + j] << 4);
        continue;
      }
      if (!Number.isInteger(zg)) throw new QuantformError('QF_INTERNAL', `${type} needs integer zero points; row ${n} has ${zg}`);
      for (let j = 0; j < 32; j++) {
        v[j] = c[k0 + j] - zg + c0;
        if (v[j] < lo || v[j] > hi) throw new QuantformError('QF_INTERNAL', `code ${c[k0 + j]} - zero ${zg} does not fit ${type} (row ${n})`);
      }
      if (type === 'Q8_0') for (let j = 0; j < 32; j++) out[o + 2 + j] = v[j] & 0xff;
      else if (type === 'Q4_0') for (let j = 0; j < 16; j++) out[o + 2 + j] = v[j] | (v[j + 16] << 4);
      else {
        let qh = 0;
        for (let j = 0; j < 32; j++) qh |= (v[j] >> 4) << j;
        out[o + 2] = qh & 0xff; out[o + 3] = (qh >>> 8) & 0xff; out[o + 4] = (qh >>> 16) & 0xff; out[o + 5] = (qh >>> 24) & 0xff;
        for (let j = 0; j < 16; j++) out[o + 6 + j] = (v[j] & 15) | ((v[j + 16] & 15) << 4);
      }
    }
  return out;
}

interface Encoded {
  type: GgmlType;
  data: Uint8Array;
  fidelity: Fidelity;
  note?: string;
}

/** The block type and bytes for one quantized linear (after padding and RoPE permutation). */
function encodeLinear(q: QuantizedTensor, exact: boolean, where: string): Encoded {
  const [, K] = q.shape;
  const { bits, groupSize: g, symmetric } = q;
  const label = quantLabel(q);
  if (K % 32 !== 0)
    return { type: ggmlType('F32'), data: ggmlType('F32').quantize(dequantize(q).data as Float32Array), fidelity: 'exact',
      note: `rows of ${K} values are not a multiple of 32: stored unquantized (F32)` };
  const integerZeros = symmetric || zeroPoints(q).every(Number.isInteger);
  let direct: DirectType | null = null;
  if (g % 32 === 0) {
    if (bits === 8) direct = symmetric ? 'Q8_0' : null;
    else if (bits === 4) direct = symmetric ? 'Q4_0' : exact && integerZeros ? 'Q5_0' : 'Q4_1';
    else direct = integerZeros ? 'Q4_0' : 'Q4_1';
  }
  const compact = (bits === 2 || bits === 3) && K % 256 === 0 && !exact;
  if (direct && !compact) {
    const notes: Partial<Record<DirectType, string>> = {
      Q4_1: 'm = -d*z rounded to f16 (exact: Q5_0)',
      Q5_0: 'INT4 asymmetric as q - z in Q5_0 (bit-exact; Q4_1 is smaller, its minimum rounded)',
    };
    const note = bits < 4 ? `INT${bits} codes held in ${direct}'s ${direct === 'Q5_0' ? 5 : 4}-bit codes` : notes[direct];
    return { type: ggmlType(direct), data: encodeDirect(q, direct), fidelity: 'exact', note };
  }
  const target: GgmlTypeName = bits === 8 ? 'Q8_0' : K % 256 === 0 ? (bits === 4 ? 'Q4_K' : bits === 3 ? 'Q3_K' : 'Q2_K') : symmetric ? 'Q4_0' : 'Q4_1';
  if (exact)
    throw new QuantformError('QF_UNSUPPORTED',
      `${where}: ${label} has no exact GGUF type (Q4_0/Q5_0/Q8_0 hold INT2-INT4 with groups of a multiple of 32 and INT8 symmetric); ` +
      `without exact it is re-encoded as ${target} and the added error reported`);
  const values = dequantize(q).data as Float32Array;
  const t = ggmlType(target);
  return { type: t, data: t.quantize(values), fidelity: 're-encoded', note: compact ? `compact ${target} instead of 4-bit codes (exact: Q4_0)` : undefined };
}

/** fp32 (rows, cols) row-major padded to (rows2, cols2) with zeros. */
function padF32(w: Float32Array, rows: number, cols: number, rows2: number, cols2: number): Float32Array {
  if (rows === rows2 && cols === cols2) return w;
  const out = new Float32Array(rows2 * cols2);
  for (let r = 0; r < rows; r++) out.set(w.subarray(r * cols, (r + 1) * cols), r * cols2);
  return out;
}

/** llama.cpp's rope_freqs: base frequency / scaled frequency per dimension pair (Llama 3 rope_scaling). */
function ropeFactors(cfg: LlamaConfig): Float32Array {
  const scaled = invFreq(cfg), half = cfg.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / cfg.headDim) / scaled[i];
  return out;
}

/** The vocabulary padded with unused tokens to the embedding's rows (llama.cpp needs one token per row). */
function fitVocab(v: SpmVocab, V: number): SpmVocab {
  if (v.tokens.length > V)
    throw new QuantformError('QF_SHAPE_MISMATCH', `${v.source}: the vocabulary has ${v.tokens.length} tokens but the model's embedding only ${V} rows`);
  if (v.tokens.length === V) return v;
  const n = V - v.tokens.length;
  return {
    ...v,
    tokens: [...v.tokens, ...Array.from({ length: n }, (_, i) => `[PAD${v.tokens.length + i}]`)],
    scores: Float32Array.from([...v.scores, ...new Array<number>(n).fill(-1e9)]),
    types: Uint8Array.from([...v.types, ...new Array<number>(n).fill(TOKEN_TYPE.UNUSED)]),
  };
}

function vocabMetadata(v: SpmVocab, md: Map<string, GgufValue>): void {
  md.set('tokenizer.ggml.model', gv.str('llama'));
  md.set('tokenizer.ggml.tokens', gv.strs(v.tokens));
  md.set('tokenizer.ggml.scores', gv.f32s(v.scores));
  md.set('tokenizer.ggml.token_type', gv.i32s(v.types));
  md.set('tokenizer.ggml.bos_token_id', gv.u32(v.bosId));
  md.set('tokenizer.ggml.eos_token_id', gv.u32(v.eosId));
  md.set('tokenizer.ggml.unknown_token_id', gv.u32(v.unkId));
  if (v.padId !== null) md.set('tokenizer.ggml.padding_token_id', gv.u32(v.padId));
  md.set('tokenizer.ggml.add_bos_token', gv.bool(v.addBos));
  md.set('tokenizer.ggml.add_eos_token', gv.bool(v.addEos));
  md.set('tokenizer.ggml.add_space_prefix', gv.bool(v.addSpacePrefix));
}

/**
 * Writes `model` (a directory or file quantform loads, or an open Checkpoint) as a
 * GGUF file at `out`, atomically; returns what was written, tensor by tensor.
 */
export async function exportGguf(model: string | Checkpoint, out: string, opts: GgufExportOptions = {}): Promise<ExportReport> {
  const t0 = performance.now();
  need.string(out, 'out');
  need.object(opts, 'options');
  if (opts.exact !== undefined) need.bool(opts.exact, 'options.exact');
  if (opts.floatType !== undefined && !is.oneOf(opts.floatType, ['F32', 'F16'] as const)) throw invalidParameter("'F32' or 'F16'", 'options.floatType', opts.floatType);
  if (opts.vocab !== undefined) needVocab(opts.vocab, 'options.vocab');
  if (opts.name !== undefined) need.string(opts.name, 'options.name');
  if (opts.onProgress !== undefined) need.func(opts.onProgress, 'options.onProgress');
  const src = openExportSource(model, 'GGUF');
  try {
    const ck = src.ck, cfg = ck.config;
    const floatType = ggmlType(opts.floatType ?? 'F32');
    if (floatType.name !== 'F32' && floatType.name !== 'F16') throw new QuantformError('QF_INVALID_ARGUMENT', `Expected 'F32' or 'F16' for floatType but received '${String(opts.floatType)}'`);
    let vocab = opts.vocab ?? vocabFromCheckpoint(ck);
    if (!opts.vocab) checkVocab(vocab, await ck.tokenizer());
    vocab = fitVocab(vocab, cfg.vocabSize);
    const exact = opts.exact === true;
    const gptqSource = src.hfConfig?.quantization_config !== undefined;
    const F = cfg.hiddenDim;
    const downQuantized = ck.quantizedWeight?.('layers.0.w_down') ?? null;
    const F2 = F % 32 !== 0 && downQuantized !== null ? Math.ceil(F / 32) * 32 : F;
    const tensors: TensorExport[] = [];
    const names = ['embed', 'final_norm', ...(cfg.tiedEmbeddings ? [] : ['lm_head'])];
    for (let l = 0; l < cfg.nLayers; l++) for (const w of ['attn_norm', 'ffn_norm', ...LINEAR_WEIGHTS]) names.push(`layers.${l}.${w}`);
    const total = names.length + (cfg.ropeScaling ? 1 : 0);
    const record = (name: string, shape: number[], source: string, e: Encoded, want: Float32Array) => {
      // F32 is the bytes themselves; anything else is decoded, and compared value by value only when not bit-identical
      const got = e.type.name === 'F32' ? new Float32Array(e.data.buffer, e.data.byteOffset, want.length) : e.type.dequantize(e.data, want.length);
      const same = Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength));
      const err = same ? { relError: 0, maxAbsError: 0 } : compareValues(got, want);
      const fidelity: Fidelity = e.fidelity === 're-encoded' ? 're-encoded' : err.maxAbsError === 0 ? 'exact' : 'rounded';
      tensors.push({ name, source, type: e.type.name, shape, fidelity, ...err, note: e.note });
      opts.onProgress?.({ done: tensors.length, total, tensor: name });
    };
    const produce = function* (): Generator<() => GgufTensorData> {
      if (cfg.ropeScaling) {
        yield () => {
          const f = ropeFactors(cfg);
          const e: Encoded = { type: ggmlType('F32'), data: ggmlType('F32').quantize(f), fidelity: 'exact', note: 'Llama 3 rope_scaling frequency factors' };
          record('rope_freqs.weight', [f.length], 'rope_scaling', e, f);
          return { name: 'rope_freqs.weight', ne: [f.length], type: e.type, data: e.data };
        };
      }
      for (const name of names) {
        yield () => {
          const gname = ggufName(name);
          const kind = name.split('.')[2];
          let [N, K] = weightShape(cfg, name);
          const isNorm = K === undefined;
          if (isNorm) {
            const w = ck.weight(name);
            const e: Encoded = { type: ggmlType('F32'), data: ggmlType('F32').quantize(w), fidelity: 'exact' };
            record(gname, [N], 'f32', e, w);
            return { name: gname, ne: [N], type: e.type, data: e.data };
          }
          const N2 = kind === 'w_gate' || kind === 'w_up' ? F2 : N, K2 = kind === 'w_down' ? F2 : K;
          const heads = kind === 'wq' ? cfg.nHeads : kind === 'wk' ? cfg.nKvHeads : 0;
          let q = name === 'embed' ? null : ck.quantizedWeight?.(name) ?? null;
          let e: Encoded, want: Float32Array, source: string;
          if (q) {
            source = quantLabel(q);
            q = padZeros(q, N2, K2);
            if (heads) q = permuteRows(q, halfToInterleavedOrder(heads, N2));
            want = dequantize(q).data as Float32Array;
            e = encodeLinear(q, exact, gname);
          } else {
            source = 'f32';
            let w = padF32(ck.weight(name), N, K, N2, K2);
            if (heads) w = permuteHalfToInterleaved(w, heads, K2);
            want = w;
            // a GPTQ linear that has no canonical form (act-order g_idx) arrives dequantized: say so
            const note = gptqSource && name !== 'embed' && name !== 'lm_head'
              ? 'GPTQ linear not in group order (act-order g_idx): written dequantized' : undefined;
            e = { type: floatType, data: floatType.quantize(w), fidelity: floatType.name === 'F32' ? 'exact' : 'rounded', note };
          }
          [N, K] = [N2, K2];
          record(gname, [N, K], source, e, want);
          return { name: gname, ne: [K, N], type: e.type, data: e.data };
        };
      }
    };
    const metadata = (): Map<string, GgufValue> => {
      const md = new Map<string, GgufValue>();
      const counts = new Map<string, number>();
      for (const t of tensors) if (t.shape.length === 2 && !t.name.startsWith('token_embd')) counts.set(t.type, (counts.get(t.type) ?? 0) + 1);
      const main = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] as GgmlTypeName | undefined;
      md.set('general.architecture', gv.str('llama'));
      md.set('general.name', gv.str(opts.name ?? ck.path.split(/[\\/]/).filter(Boolean).pop() ?? 'model'));
      md.set('general.file_type', gv.u32(FTYPE[main ?? 'F32'] ?? 0));
      if (tensors.some((t) => ggmlType(t.type as GgmlTypeName).quantized)) md.set('general.quantization_version', gv.u32(2));
      md.set('quantform.source', gv.str(src.description));
      md.set('llama.vocab_size', gv.u32(cfg.vocabSize));
      md.set('llama.context_length', gv.u32(cfg.maxSeq));
      md.set('llama.embedding_length', gv.u32(cfg.dim));
      md.set('llama.block_count', gv.u32(cfg.nLayers));
      md.set('llama.feed_forward_length', gv.u32(F2));
      md.set('llama.attention.head_count', gv.u32(cfg.nHeads));
      md.set('llama.attention.head_count_kv', gv.u32(cfg.nKvHeads));
      md.set('llama.attention.layer_norm_rms_epsilon', gv.f32(cfg.normEps));
      md.set('llama.rope.freq_base', gv.f32(cfg.ropeTheta));
      md.set('llama.rope.dimension_count', gv.u32(cfg.headDim));
      if (cfg.headDim * cfg.nHeads !== cfg.dim) {
        md.set('llama.attention.key_length', gv.u32(cfg.headDim));
        md.set('llama.attention.value_length', gv.u32(cfg.headDim));
      }
      vocabMetadata(vocab, md);
      return md;
    };
    const bytes = writeGguf(out, produce(), metadata);
    return {
      format: 'gguf', out, bytes, seconds: (performance.now() - t0) / 1000, source: src.description, vocab: vocab.source,
      ffnPadded: F2 !== F ? { from: F, to: F2 } : undefined, tensors,
    };
  } finally {
    src.close();
  }
}
