// GPTQ checkpoint layout (AutoGPTQ / GPTQModel / transformers' GPTQ integration).
// For a linear with weight (N out, K in), group size G, b bits:
//   qweight int32 (ceil(K b / 32), N): along K, column n is a little-endian bit
//           stream with code k at bits b*k .. b*k + b-1 (4-bit: low nibble first,
//           8 codes per word; 3-bit: 32 codes per 3 words, codes straddle words).
//   qzeros  int32 (ceil(K / G), ceil(N b / 32)): the same stream along N, one row per
//           group. checkpoint_format 'gptq' (v1) stores z - 1, 'gptq_v2' stores z.
//   scales  fp16 (ceil(K / G), N)
//   g_idx   int32 (K) = k / G (desc_act false)
// Dequantization: w[n, k] = scales[g, n] * (q[k, n] - z[g, n]), g = g_idx[k].
// quantform's own layout (formats.h) is row-major over N; this module converts.
//
// The 3-bit layout written out (AutoGPTQ / GPTQModel pack(); their torch
// dequantizer reads it with the `wf` shift table): 32 codes per 3 int32 words,
//   word 0: codes 0-9 at bits 3j .. 3j+2, code 10's bits 0-1 at bits 30-31
//   word 1: code 10's bit 2 at bit 0, codes 11-20 at bits 3(j-11)+1 .., code 21's bit 0 at bit 31
//   word 2: code 21's bits 1-2 at bits 0-1, codes 22-31 at bits 3(j-22)+2 ..
// which is exactly code k at bit 3k of one little-endian stream, the layout of
// every other width too (2/4/8: code k at bit b*k, never straddling). qzeros use
// the same stream along N. GPTQ tools need K % 32 == 0 (qweight has K/32*b rows)
// and N % 32 == 0 for qzeros; quantform pads other shapes with zero bits to whole
// words and reads them back (stories260K's K = 172), but only quantform loads
// those. Checked against an independent re-implementation of the tools' pack and
// unpack logic: scripts/gptq_pack_oracle.py, test/gptq-pack.test.ts.
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { pack, QuantizedTensor, unpack, type Bits } from '../ops/quant.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';

export type GptqFormat = 'gptq' | 'gptq_v2';

export interface GptqLinear {
  qweight: Int32Array;
  qzeros: Int32Array;
  scales: Uint16Array;
  gIdx: Int32Array;
  /** shapes: qweight [rows, N], qzeros [G, cols], scales [G, N], gIdx [K] */
  qweightShape: [number, number];
  qzerosShape: [number, number];
  scalesShape: [number, number];
}

function setBits(words: Int32Array, base: number, stride: number, bitPos: number, value: number, bits: number): void {
  // bit stream position bitPos within a column/row addressed as words[base + w * stride]
  let v = value, pos = bitPos, left = bits;
  while (left > 0) {
    const w = Math.floor(pos / 32), o = pos % 32;
    const take = Math.min(left, 32 - o);
    words[base + w * stride] |= (v & ((1 << take) - 1)) << o;
    v >>>= take;
    pos += take;
    left -= take;
  }
}

function getBits(words: Int32Array, base: number, stride: number, bitPos: number, bits: number): number {
  let v = 0, pos = bitPos, got = 0;
  while (got < bits) {
    const w = Math.floor(pos / 32), o = pos % 32;
    const take = Math.min(bits - got, 32 - o);
    v |= ((words[base + w * stride] >>> o) & ((1 << take) - 1)) << got;
    pos += take;
    got += take;
  }
  return v;
}

/** Checks the sizes and format every GPTQ conversion takes. */
function needGptqArgs(N: number, K: number, bits: Bits, format: GptqFormat): void {
  need.positiveInteger(N, 'N');
  need.positiveInteger(K, 'K');
  if (!is.oneOf(bits, [2, 3, 4, 8] as const)) throw invalidParameter('one of 2, 3, 4, 8', 'bits', bits, 'QF_UNSUPPORTED_BITS');
  if (!is.oneOf(format, ['gptq', 'gptq_v2'] as const)) throw invalidParameter("'gptq' or 'gptq_v2'", 'format', format);
}

function needGptqTensors(l: unknown): void {
  need.object(l, 'gptq tensors');
  const o = l as Record<string, unknown>;
  need.instance(o.qweight, Int32Array, 'qweight');
  need.instance(o.qzeros, Int32Array, 'qzeros');
  need.instance(o.scales, Uint16Array, 'scales');
  need.instance(o.gIdx, Int32Array, 'gIdx');
}

/** qzeros (G, ceil(N b / 32)), scales (G, N) and g_idx (K) from zeros (N, G) integer zero points and scales (N, G) f16 bits. */
function packGptqParams(zeros: Float32Array, scalesF16: Uint16Array, N: number, K: number, bits: Bits, groupSize: number, format: GptqFormat):
  Omit<GptqLinear, 'qweight' | 'qweightShape'> {
  const G = Math.ceil(K / groupSize);
  const zcols = Math.ceil((N * bits) / 32);
  const qzeros = new Int32Array(G * zcols);
  const mask = (1 << bits) - 1;
  const scales = new Uint16Array(G * N);
  for (let g = 0; g < G; g++)
    for (let n = 0; n < N; n++) {
      const z = zeros[n * G + g];
      // v1 stores z - 1; z = 0 wraps to 2^b - 1 (the v1 overflow callers avoid with gptq_v2)
      const stored = format === 'gptq' ? (z - 1) & mask : z;
      setBits(qzeros, g * zcols, 1, n * bits, stored, bits);
      scales[g * N + n] = scalesF16[n * G + g];
    }
  const gIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / groupSize));
  return { qzeros, scales, gIdx, qzerosShape: [G, zcols], scalesShape: [G, N] };
}

/** codes8 (N, K) one code per byte, zeros (N, G) integer zero points, scales (N, G) f16 bits -> GPTQ tensors. */
export function packGptq(codes8: Uint8Array, zeros: Float32Array, scalesF16: Uint16Array, N: number, K: number,
  bits: Bits, groupSize: number, format: GptqFormat): GptqLinear {
  needGptqArgs(N, K, bits, format);
  need.positiveInteger(groupSize, 'groupSize');
  const G = Math.ceil(K / groupSize);
  if (!(codes8 instanceof Uint8Array) || codes8.length !== N * K) throw invalidParameter(`Uint8Array of ${N * K} codes`, 'codes8', codes8, 'QF_SHAPE_MISMATCH');
  if (!(zeros instanceof Float32Array) || zeros.length !== N * G) throw invalidParameter(`Float32Array of ${N * G} zero points`, 'zeros', zeros, 'QF_SHAPE_MISMATCH');
  if (!(scalesF16 instanceof Uint16Array) || scalesF16.length !== N * G) throw invalidParameter(`Uint16Array of ${N * G} f16 scales`, 'scalesF16', scalesF16, 'QF_SHAPE_MISMATCH');
  const rows = Math.ceil((K * bits) / 32);
  const qweight = new Int32Array(rows * N);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) setBits(qweight, n, N, k * bits, codes8[n * K + k], bits);
  return { qweight, qweightShape: [rows, N], ...packGptqParams(zeros, scalesF16, N, K, bits, groupSize, format) };
}

/**
 * dst (C, R) = src (R, C) transposed, 32-bit words, in 64 x 64 tiles (a plain
 * loop misses the cache on every store at Llama widths).
 */
function transposeWords(dst: Int32Array, src: Int32Array, R: number, C: number): void {
  const T = 64;
  for (let r0 = 0; r0 < R; r0 += T) {
    const r1 = Math.min(R, r0 + T);
    for (let c0 = 0; c0 < C; c0 += T) {
      const c1 = Math.min(C, c0 + T);
      for (let r = r0; r < r1; r++) {
        const row = r * C;
        for (let c = c0; c < c1; c++) dst[c * R + r] = src[row + c];
      }
    }
  }
}

/**
 * The codes of formats.h as 32-bit words (N, K b / 32) when every row is a whole
 * number of words: then a row's words are exactly its GPTQ qweight column, and
 * packing is a transpose instead of a loop over every code. Null otherwise.
 */
function rowWords(codes: Uint8Array, N: number, K: number, bits: Bits): Int32Array | null {
  if ((K * bits) % 32 !== 0 || codes.length !== (N * K * bits) / 8) return null;
  if (codes.byteOffset % 4 === 0) return new Int32Array(codes.buffer, codes.byteOffset, codes.length / 4);
  const copy = new Uint8Array(codes.length);
  copy.set(codes);
  return new Int32Array(copy.buffer);
}

/** GPTQ tensors -> fp32 weight (N, K). */
export function dequantizeGptq(l: { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array; gIdx: Int32Array },
  N: number, K: number, bits: Bits, format: GptqFormat): Float32Array {
  needGptqArgs(N, K, bits, format);
  needGptqTensors(l);
  const zcols = Math.ceil((N * bits) / 32);
  const rows = Math.ceil((K * bits) / 32);
  if (l.qweight.length !== rows * N || l.gIdx.length !== K)
    throw new QuantformError('QF_SHAPE_MISMATCH', `GPTQ tensors do not match a (${N}, ${K}) ${bits}-bit linear`);
  // g_idx values index qzeros and scales: every one must name an existing group
  const groups = Math.min(l.scales.length / N, l.qzeros.length / zcols);
  for (let k = 0; k < K; k++)
    if (!(l.gIdx[k] >= 0 && l.gIdx[k] < groups))
      throw new QuantformError('QF_CORRUPT_FILE', `GPTQ g_idx[${k}] = ${l.gIdx[k]} is outside the ${Math.floor(groups)} groups of scales and qzeros`);
  const w = new Float32Array(N * K);
  for (let k = 0; k < K; k++) {
    const g = l.gIdx[k];
    for (let n = 0; n < N; n++) {
      const q = getBits(l.qweight, n, N, k * bits, bits);
      const zs = getBits(l.qzeros, g * zcols, 1, n * bits, bits);
      const z = format === 'gptq' ? zs + 1 : zs;
      w[n * K + k] = f16ToF32(l.scales[g * N + n]) * (q - z);
    }
  }
  return w;
}

/**
 * GPTQ tensors -> a QuantizedTensor (f16 parameters) that the dequant-matmul
 * kernels run directly; the inverse of toGptq. Null where the checkpoint does not
 * fit the canonical format: a g_idx that is not k / groupSize (act-order), or a
 * zero point outside [0, 2^bits - 1] (the v1 overflow).
 */
export function fromGptq(l: { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array; gIdx: Int32Array },
  N: number, K: number, bits: Bits, format: GptqFormat): QuantizedTensor | null {
  needGptqArgs(N, K, bits, format);
  needGptqTensors(l);
  const rows = Math.ceil((K * bits) / 32);
  const zcols = Math.ceil((N * bits) / 32);
  if (l.qweight.length !== rows * N || l.gIdx.length !== K)
    throw new QuantformError('QF_SHAPE_MISMATCH', `GPTQ tensors do not match a (${N}, ${K}) ${bits}-bit linear`);
  let groupSize = 0;
  while (groupSize < K && l.gIdx[groupSize] === 0) groupSize++;
  if (groupSize === 0) return null;
  for (let k = 0; k < K; k++) if (l.gIdx[k] !== Math.floor(k / groupSize)) return null;
  const G = Math.ceil(K / groupSize);
  if (l.scales.length !== G * N || l.qzeros.length !== G * zcols)
    throw new QuantformError('QF_SHAPE_MISMATCH', `GPTQ scales/qzeros do not match ${G} groups of a (${N}, ${K}) linear`);
  const qmax = 2 ** bits - 1;
  let codes: Uint8Array;
  if ((K * bits) % 32 === 0) {
    // whole words per row: the rows of formats.h are the qweight columns (see rowWords)
    const W = (K * bits) / 32;
    const words = new Int32Array(N * W);
    transposeWords(words, l.qweight, W, N);
    codes = new Uint8Array(words.buffer);
  } else {
    const codes8 = new Uint8Array(N * K);
    for (let n = 0; n < N; n++)
      for (let k = 0; k < K; k++) codes8[n * K + k] = getBits(l.qweight, n, N, k * bits, bits);
    codes = pack(codes8, [N, K], bits);
  }
  const scales = new Uint16Array(N * G);
  const zeros = new Uint16Array(N * G);
  let symmetric = true;
  for (let g = 0; g < G; g++)
    for (let n = 0; n < N; n++) {
      const stored = getBits(l.qzeros, g * zcols, 1, n * bits, bits);
      const z = format === 'gptq' ? stored + 1 : stored;
      if (z > qmax) return null;
      if (z !== 2 ** (bits - 1)) symmetric = false;
      scales[n * G + g] = l.scales[g * N + n];
      zeros[n * G + g] = f32ToF16(z);
    }
  return new QuantizedTensor(codes, scales, symmetric ? null : zeros, [N, K], bits, groupSize, symmetric, 'f16');
}

/** A quantform QuantizedTensor with f16 parameters -> GPTQ tensors. */
export function toGptq(q: QuantizedTensor, format: GptqFormat): GptqLinear {
  need.instance(q, QuantizedTensor, 'q');
  if (!is.oneOf(format, ['gptq', 'gptq_v2'] as const)) throw invalidParameter("'gptq' or 'gptq_v2'", 'format', format);
  if (q.paramDtype !== 'f16') throw new QuantformError('QF_DTYPE_MISMATCH', 'GPTQ export needs f16 scales: quantize with paramDtype f16');
  if (q.bits === 8 && format === 'gptq') throw new QuantformError('QF_UNSUPPORTED', '8-bit v1 zero points overflow: use gptq_v2');
  const [N, K] = q.shape;
  const G = q.numGroups;
  const zeros = new Float32Array(N * G);
  if (q.symmetric) zeros.fill(2 ** (q.bits - 1));
  else for (let i = 0; i < N * G; i++) zeros[i] = f16ToF32((q.zeros as Uint16Array)[i]);
  const words = rowWords(q.codes, N, K, q.bits);
  if (!words) return packGptq(unpack(q.codes, [N, K], q.bits), zeros, q.scales as Uint16Array, N, K, q.bits, q.groupSize, format);
  const W = (K * q.bits) / 32;
  const qweight = new Int32Array(W * N);
  transposeWords(qweight, words, N, W);
  return { qweight, qweightShape: [W, N], ...packGptqParams(zeros, q.scales as Uint16Array, N, K, q.bits, q.groupSize, format) };
}

