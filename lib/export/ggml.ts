// ggml's tensor types (ggml.h GGML_TYPE_*, block layouts of ggml-common.h), read and
// written in TS: one trait per type drives the GGUF loader, the GGUF exporter and
// the tests (a type added here is tested by every table-driven test).
//
// A row of ne0 values is ne0 / blockSize blocks of typeSize bytes. Layouts, with
// y[i] the i-th value of a block and f16 fields little-endian binary16:
//   Q4_0 (32, 18 B):  d f16 | qs[16]; y[j] = d*((qs[j] & 15) - 8), y[j+16] = d*((qs[j] >> 4) - 8)
//                     (the first 16 values are the low nibbles, NOT low-nibble-first along k)
//   Q4_1 (32, 20 B):  d f16 | m f16 | qs[16]; y = d*q + m, same nibble order
//   Q5_0 (32, 22 B):  d | qh u32 | qs[16]; q = nibble | (bit j of qh) << 4; y = d*(q - 16)
//   Q5_1 (32, 24 B):  d | m | qh u32 | qs[16]; y = d*q + m
//   Q8_0 (32, 34 B):  d f16 | qs int8[32]; y = d*qs
//   Q2_K (256, 84 B): scales[16] (low nibble scale, high nibble min) | qs[64] | d | dmin;
//                     16 sub-blocks of 16: y = d*sc*q - dmin*m, q in [0, 3]
//   Q3_K (256, 110 B): hmask[32] | qs[64] | scales[12] (16 x 6 bits, offset 32) | d;
//                     y = d*(sc - 32)*q, q in [-4, 3] (low 2 bits in qs, bit 2 in hmask)
//   Q4_K (256, 144 B): d | dmin | scales[12] (8 x (6-bit scale, 6-bit min)) | qs[128];
//                     8 sub-blocks of 32: y = d*sc*q - dmin*m, q in [0, 15]
//   Q5_K (256, 176 B): d | dmin | scales[12] | qh[32] | qs[128]; as Q4_K with q in [0, 31]
//   Q6_K (256, 210 B): ql[128] | qh[64] | scales int8[16] | d; y = d*sc*q, q in [-32, 31]
// In the 2- and 3-bit K-quants value e = 128h + 32j + l (h < 2, j < 4, l < 32) sits at
// bits 2j of byte 32h + l; in Q4_K/Q5_K value 64c + l (l < 32) is the low nibble and
// 64c + 32 + l the high nibble of byte 32c + l; in Q6_K value 128h + 32k + l takes its
// low nibble from ql[64h + 32(k & 1) + l] (k >= 2: high nibble) and 2 bits of qh[32h + l].
// Dequantization rounds each float operation as ggml's C reference does (no FMA), so
// values are bit-identical to llama.cpp's dequantize_row_*.
import { QuantformError, invalidParameter, need } from '../errors.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';

export type GgmlTypeName = 'F32' | 'F16' | 'BF16' | 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q5_1' | 'Q8_0' | 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K';

export interface GgmlType {
  readonly name: GgmlTypeName;
  /** GGML_TYPE_* id stored in GGUF tensor infos */
  readonly id: number;
  /** values per block */
  readonly blockSize: number;
  /** bytes per block */
  readonly typeSize: number;
  /** true for the block-quantized types */
  readonly quantized: boolean;
  /** n values (a multiple of blockSize) from their blocks */
  dequantize(src: Uint8Array, n: number): Float32Array;
  /** blocks of n values (a multiple of blockSize): ggml-compatible, error-minimising, deterministic */
  quantize(x: Float32Array): Uint8Array;
  /**
   * The blocks of an (N, K) matrix in quantform's canonical form (formats.h), value
   * for value: null for float types and where a block cannot be written as
   * s * (q - z) (a zero scale with a non-zero minimum).
   */
  toCanonical?(src: Uint8Array, N: number, K: number): CanonicalParts | null;
}

/** A quantized matrix in canonical terms, codes one per byte (packed by the caller). */
export interface CanonicalParts {
  bits: 2 | 4 | 8;
  groupSize: number;
  symmetric: boolean;
  paramDtype: 'f32' | 'f16';
  /** (N, K) unsigned codes */
  codes8: Uint8Array;
  /** (N, K / groupSize): f16 bits (Uint16Array) or f32 */
  scales: Uint16Array | Float32Array;
  /** (N, K / groupSize) f32, null when symmetric */
  zeros: Float32Array | null;
}

const f = Math.fround;
const QK = 256;

function half(b: Uint8Array, o: number): number {
  return f16ToF32(b[o] | (b[o + 1] << 8));
}

/** binary16 bits at b[o], little-endian. */
export function putHalf(b: Uint8Array, o: number, bits: number): void {
  b[o] = bits & 0xff;
  b[o + 1] = bits >> 8;
}

/** A value stored as f16 and read back, as the decoder will see it. */
function viaHalf(v: number): number {
  return f16ToF32(f32ToF16(v));
}

function checkLength(t: { name: string; blockSize: number; typeSize: number }, src: Uint8Array, n: number): number {
  if (n % t.blockSize !== 0) throw new QuantformError('QF_SHAPE_MISMATCH', `${t.name}: ${n} values are not a multiple of the block size ${t.blockSize}`);
  const nb = n / t.blockSize;
  if (src.length < nb * t.typeSize)
    throw new QuantformError('QF_SHAPE_MISMATCH', `${t.name}: ${n} values need ${nb * t.typeSize} bytes but ${src.length} were given`);
  return nb;
}

function blocksOf(t: { name: string; blockSize: number }, x: Float32Array): number {
  if (x.length % t.blockSize !== 0) throw new QuantformError('QF_SHAPE_MISMATCH', `${t.name}: ${x.length} values are not a multiple of the block size ${t.blockSize}`);
  return x.length / t.blockSize;
}

/** Round half away from zero, as C's roundf (ggml's nearest_int differs only on exact halves of large values). */
function roundf(v: number): number {
  return v < 0 ? -Math.round(-v) : Math.round(v);
}

function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

// ---------------------------------------------------------------------------------
// Scale fitting shared by the encoders: x ≈ s*q + b (affine, q in [0, nmax]) or
// x ≈ s*q (symmetric, q in [qmin, qmax]), the error minimised over a small grid of
// candidate scales followed by a least-squares refit for the chosen codes.

interface AffineFit {
  scale: number;
  /** x ≈ scale*q - min, min >= 0 (ggml's K-quant convention) */
  min: number;
}

function affineFit(x: Float32Array, o: number, n: number, nmax: number): AffineFit {
  let lo = 0, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[o + i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (hi < 0) hi = 0;
  if (hi === lo) return { scale: 0, min: -lo };
  let best = { scale: (hi - lo) / nmax, min: -lo }, bestErr = Infinity;
  const q = new Uint8Array(n);
  for (let step = -8; step <= 8; step++) {
    const iscale = (nmax + 0.1 * step) / (hi - lo);
    if (iscale <= 0) continue;
    for (let i = 0; i < n; i++) q[i] = clamp(Math.round((x[o + i] - lo) * iscale), 0, nmax);
    // least squares for x = s*q + b given q, with b <= 0 (min >= 0)
    let sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (let i = 0; i < n; i++) { sq += q[i]; sqq += q[i] * q[i]; sx += x[o + i]; sqx += q[i] * x[o + i]; }
    const det = n * sqq - sq * sq;
    let s: number, b: number;
    if (det > 0) {
      s = (n * sqx - sq * sx) / det;
      b = (sx - s * sq) / n;
    } else {
      s = 1 / iscale;
      b = lo;
    }
    if (b > 0) {
      b = 0;
      s = sqq > 0 ? sqx / sqq : 0;
    }
    if (s < 0) continue;
    let err = 0;
    for (let i = 0; i < n; i++) {
      const qi = s > 0 ? clamp(Math.round((x[o + i] - b) / s), 0, nmax) : 0;
      const d = s * qi + b - x[o + i];
      err += d * d;
    }
    if (err < bestErr) {
      bestErr = err;
      best = { scale: s, min: -b };
    }
  }
  return best;
}

/** Signed scale s with x ≈ s*q, q in [qmin, qmax] (qmin = -qmax - 1: the extra level goes to the larger magnitude). */
function symmetricFit(x: Float32Array, o: number, n: number, qmax: number): number {
  let amax = 0, max = 0;
  for (let i = 0; i < n; i++) {
    const v = x[o + i];
    if (Math.abs(v) > amax) { amax = Math.abs(v); max = v; }
  }
  if (amax === 0) return 0;
  const qmin = -qmax - 1;
  let best = 0, bestErr = Infinity;
  // candidates: the largest magnitude on the extra negative level (ggml's choice) or on +-qmax, and nearby
  for (let step = -6; step <= 6; step++) {
    for (const base of [-max / (qmax + 1), max / qmax]) {
      const s0 = base * (1 + 0.02 * step);
      if (s0 === 0) continue;
      let sqq = 0, sqx = 0;
      for (let i = 0; i < n; i++) {
        const qi = clamp(Math.round(x[o + i] / s0), qmin, qmax);
        sqq += qi * qi;
        sqx += qi * x[o + i];
      }
      const s = sqq > 0 ? sqx / sqq : s0;
      let err = 0;
      for (let i = 0; i < n; i++) {
        const qi = clamp(Math.round(x[o + i] / s), qmin, qmax);
        const d = s * qi - x[o + i];
        err += d * d;
      }
      if (err < bestErr) { bestErr = err; best = s; }
    }
  }
  return best;
}

/** w = s*q - min as s * (q - z): z = min / s; false when s = 0 but min is not. */
function affineParams(scales: Float32Array, zeros: Float32Array, g: number, s: number, min: number): boolean {
  if (s === 0 && min !== 0) return false;
  scales[g] = s;
  zeros[g] = s === 0 ? 0 : min / s;
  return true;
}

// ---------------------------------------------------------------------------------
// Block-32 types

const Q4_0: GgmlType = {
  name: 'Q4_0', id: 2, blockSize: 32, typeSize: 18, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 18, d = half(src, o);
      for (let j = 0; j < 16; j++) {
        const v = src[o + 2 + j];
        y[b * 32 + j] = f(((v & 15) - 8) * d);
        y[b * 32 + j + 16] = f(((v >> 4) - 8) * d);
      }
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 18);
    for (let b = 0; b < nb; b++) {
      const s = viaHalf(symmetricFit(x, b * 32, 32, 7));
      putHalf(out, b * 18, f32ToF16(s));
      const q = (i: number) => (s === 0 ? 8 : clamp(Math.round(x[b * 32 + i] / s), -8, 7) + 8);
      for (let j = 0; j < 16; j++) out[b * 18 + 2 + j] = q(j) | (q(j + 16) << 4);
    }
    return out;
  },
  // w = d * (q - 8): INT4 symmetric (zero point 8), group 32, the f16 scale as stored
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Uint16Array(nb);
    for (let b = 0; b < nb; b++) {
      const o = b * 18;
      scales[b] = src[o] | (src[o + 1] << 8);
      for (let j = 0; j < 16; j++) {
        codes8[b * 32 + j] = src[o + 2 + j] & 15;
        codes8[b * 32 + j + 16] = src[o + 2 + j] >> 4;
      }
    }
    return { bits: 4, groupSize: 32, symmetric: true, paramDtype: 'f16', codes8, scales, zeros: null };
  },
};

const Q4_1: GgmlType = {
  name: 'Q4_1', id: 3, blockSize: 32, typeSize: 20, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 20, d = half(src, o), m = half(src, o + 2);
      for (let j = 0; j < 16; j++) {
        const v = src[o + 4 + j];
        y[b * 32 + j] = f(f((v & 15) * d) + m);
        y[b * 32 + j + 16] = f(f((v >> 4) * d) + m);
      }
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 20);
    for (let b = 0; b < nb; b++) {
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < 32; i++) { lo = Math.min(lo, x[b * 32 + i]); hi = Math.max(hi, x[b * 32 + i]); }
      const d = viaHalf((hi - lo) / 15), m = viaHalf(lo);
      putHalf(out, b * 20, f32ToF16(d));
      putHalf(out, b * 20 + 2, f32ToF16(m));
      const q = (i: number) => (d === 0 ? 0 : clamp(Math.round((x[b * 32 + i] - m) / d), 0, 15));
      for (let j = 0; j < 16; j++) out[b * 20 + 4 + j] = q(j) | (q(j + 16) << 4);
    }
    return out;
  },
  // w = d*q + m = d * (q - z) with z = -m/d: INT4 asymmetric, group 32, f32 parameters
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Float32Array(nb), zeros = new Float32Array(nb);
    for (let b = 0; b < nb; b++) {
      const o = b * 20;
      if (!affineParams(scales, zeros, b, half(src, o), -half(src, o + 2))) return null;
      for (let j = 0; j < 16; j++) {
        codes8[b * 32 + j] = src[o + 4 + j] & 15;
        codes8[b * 32 + j + 16] = src[o + 4 + j] >> 4;
      }
    }
    return { bits: 4, groupSize: 32, symmetric: false, paramDtype: 'f32', codes8, scales, zeros };
  },
};

function q5Dequant(src: Uint8Array, n: number, t: GgmlType, affine: boolean): Float32Array {
  const nb = checkLength(t, src, n);
  const y = new Float32Array(n);
  const hdr = affine ? 4 : 2;
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize, d = half(src, o), m = affine ? half(src, o + 2) : 0;
    const qh = (src[o + hdr] | (src[o + hdr + 1] << 8) | (src[o + hdr + 2] << 16) | (src[o + hdr + 3] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const v = src[o + hdr + 4 + j];
      const q0 = (v & 15) | (((qh >>> j) & 1) << 4), q1 = (v >> 4) | (((qh >>> (j + 16)) & 1) << 4);
      y[b * 32 + j] = affine ? f(f(q0 * d) + m) : f((q0 - 16) * d);
      y[b * 32 + j + 16] = affine ? f(f(q1 * d) + m) : f((q1 - 16) * d);
    }
  }
  return y;
}

function q5Quant(x: Float32Array, t: GgmlType, affine: boolean): Uint8Array {
  const nb = blocksOf(t, x);
  const out = new Uint8Array(nb * t.typeSize);
  const hdr = affine ? 4 : 2;
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize;
    const q = new Uint8Array(32);
    if (affine) {
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < 32; i++) { lo = Math.min(lo, x[b * 32 + i]); hi = Math.max(hi, x[b * 32 + i]); }
      const d = viaHalf((hi - lo) / 31), m = viaHalf(lo);
      putHalf(out, o, f32ToF16(d));
      putHalf(out, o + 2, f32ToF16(m));
      for (let i = 0; i < 32; i++) q[i] = d === 0 ? 0 : clamp(Math.round((x[b * 32 + i] - m) / d), 0, 31);
    } else {
      const s = viaHalf(symmetricFit(x, b * 32, 32, 15));
      putHalf(out, o, f32ToF16(s));
      for (let i = 0; i < 32; i++) q[i] = s === 0 ? 16 : clamp(Math.round(x[b * 32 + i] / s), -16, 15) + 16;
    }
    let qh = 0;
    for (let i = 0; i < 32; i++) qh |= ((q[i] >> 4) & 1) << i;
    out[o + hdr] = qh & 0xff; out[o + hdr + 1] = (qh >>> 8) & 0xff; out[o + hdr + 2] = (qh >>> 16) & 0xff; out[o + hdr + 3] = (qh >>> 24) & 0xff;
    for (let j = 0; j < 16; j++) out[o + hdr + 4 + j] = (q[j] & 15) | ((q[j + 16] & 15) << 4);
  }
  return out;
}

// 5-bit codes fit quantform's INT8: Q5_0 as symmetric (zero point 128 = 16 + 112), Q5_1 as asymmetric
function q5Canonical(src: Uint8Array, N: number, K: number, t: GgmlType, affine: boolean): CanonicalParts | null {
  const nb = checkLength(t, src, N * K);
  const hdr = affine ? 4 : 2;
  const codes8 = new Uint8Array(N * K);
  const f16Scales = new Uint16Array(affine ? 0 : nb), scales = new Float32Array(affine ? nb : 0), zeros = new Float32Array(affine ? nb : 0);
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize;
    if (affine) {
      if (!affineParams(scales, zeros, b, half(src, o), -half(src, o + 2))) return null;
    } else f16Scales[b] = src[o] | (src[o + 1] << 8);
    const qh = (src[o + hdr] | (src[o + hdr + 1] << 8) | (src[o + hdr + 2] << 16) | (src[o + hdr + 3] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const v = src[o + hdr + 4 + j];
      const q0 = (v & 15) | (((qh >>> j) & 1) << 4), q1 = (v >> 4) | (((qh >>> (j + 16)) & 1) << 4);
      codes8[b * 32 + j] = affine ? q0 : q0 + 112;
      codes8[b * 32 + j + 16] = affine ? q1 : q1 + 112;
    }
  }
  return affine
    ? { bits: 8, groupSize: 32, symmetric: false, paramDtype: 'f32', codes8, scales, zeros }
    : { bits: 8, groupSize: 32, symmetric: true, paramDtype: 'f16', codes8, scales: f16Scales, zeros: null };
}

const Q5_0: GgmlType = {
  name: 'Q5_0', id: 6, blockSize: 32, typeSize: 22, quantized: true,
  dequantize(src, n) { return q5Dequant(src, n, this, false); },
  quantize(x) { return q5Quant(x, this, false); },
  toCanonical(src, N, K) { return q5Canonical(src, N, K, this, false); },
};

const Q5_1: GgmlType = {
  name: 'Q5_1', id: 7, blockSize: 32, typeSize: 24, quantized: true,
  dequantize(src, n) { return q5Dequant(src, n, this, true); },
  quantize(x) { return q5Quant(x, this, true); },
  toCanonical(src, N, K) { return q5Canonical(src, N, K, this, true); },
};

const Q8_0: GgmlType = {
  name: 'Q8_0', id: 8, blockSize: 32, typeSize: 34, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 34, d = half(src, o);
      for (let j = 0; j < 32; j++) y[b * 32 + j] = f(((src[o + 2 + j] << 24) >> 24) * d);
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 34);
    for (let b = 0; b < nb; b++) {
      let amax = 0;
      for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[b * 32 + i]));
      const d = viaHalf(amax / 127);
      putHalf(out, b * 34, f32ToF16(d));
      for (let i = 0; i < 32; i++) out[b * 34 + 2 + i] = (d === 0 ? 0 : clamp(roundf(x[b * 32 + i] / d), -127, 127)) & 0xff;
    }
    return out;
  },
  // w = d * qs: INT8 symmetric (zero point 128), group 32, the f16 scale as stored
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Uint16Array(nb);
    for (let b = 0; b < nb; b++) {
      const o = b * 34;
      scales[b] = src[o] | (src[o + 1] << 8);
      for (let j = 0; j < 32; j++) codes8[b * 32 + j] = src[o + 2 + j] ^ 0x80;
    }
    return { bits: 8, groupSize: 32, symmetric: true, paramDtype: 'f16', codes8, scales, zeros: null };
  },
};

// ---------------------------------------------------------------------------------
// K-quants (super-blocks of 256)

/** 6-bit (scale, min) pairs of Q4_K/Q5_K: 8 of each in 12 bytes (get_scale_min_k4). */
function scaleMinK4(s: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [s[o + j] & 63, s[o + j + 4] & 63];
  return [(s[o + j + 4] & 15) | ((s[o + j - 4] >> 6) << 4), (s[o + j + 4] >> 4) | ((s[o + j] >> 6) << 4)];
}

function putScaleMinK4(s: Uint8Array, o: number, sc: Uint8Array, m: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    s[o + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
    s[o + j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
    s[o + j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
  }
}

/** The 16 6-bit Q3_K scales (stored with offset 32). */
function scalesQ3K(s: Uint8Array, o: number): Int8Array {
  const out = new Int8Array(16);
  for (let i = 0; i < 16; i++) {
    const low = i < 8 ? s[o + i] & 15 : s[o + i - 8] >> 4;
    const high = (s[o + 8 + (i % 4)] >> (2 * Math.floor(i / 4))) & 3;
    out[i] = (low | (high << 4)) - 32;
  }
  return out;
}

function putScalesQ3K(s: Uint8Array, o: number, sc: Uint8Array): void {
  for (let j = 0; j < 8; j++) s[o + j] = (sc[j] & 15) | ((sc[j + 8] & 15) << 4);
  for (let i = 0; i < 4; i++)
    s[o + 8 + i] = ((sc[i] >> 4) & 3) | (((sc[i + 4] >> 4) & 3) << 2) | (((sc[i + 8] >> 4) & 3) << 4) | (((sc[i + 12] >> 4) & 3) << 6);
}

/**
 * Affine super-block (Q2_K, Q4_K, Q5_K): per sub-block (scale, min) fitted to x,
 * quantized to `sbits` bits against the super-block scales d and dmin (f16), then
 * the codes recomputed with the scales the decoder will use.
 */
function affineSuperBlock(x: Float32Array, o: number, sub: number, nmax: number, sbits: number) {
  const ns = QK / sub, smax = (1 << sbits) - 1;
  const fits: AffineFit[] = [];
  let maxScale = 0, maxMin = 0;
  for (let j = 0; j < ns; j++) {
    const fit = affineFit(x, o + j * sub, sub, nmax);
    fits.push(fit);
    maxScale = Math.max(maxScale, fit.scale);
    maxMin = Math.max(maxMin, fit.min);
  }
  const d = viaHalf(maxScale / smax), dmin = viaHalf(maxMin / smax);
  const sc = new Uint8Array(ns), m = new Uint8Array(ns), q = new Uint8Array(QK);
  for (let j = 0; j < ns; j++) {
    sc[j] = d > 0 ? clamp(Math.round(fits[j].scale / d), 0, smax) : 0;
    m[j] = dmin > 0 ? clamp(Math.round(fits[j].min / dmin), 0, smax) : 0;
    const ds = f(d * sc[j]), dm = f(dmin * m[j]);
    for (let i = 0; i < sub; i++) q[j * sub + i] = ds > 0 ? clamp(Math.round((x[o + j * sub + i] + dm) / ds), 0, nmax) : 0;
  }
  return { d, dmin, sc, m, q };
}

/** Symmetric super-block (Q3_K, Q6_K): signed per-sub-block scales against d. */
function symmetricSuperBlock(x: Float32Array, o: number, sub: number, qmax: number, scMax: number) {
  const ns = QK / sub;
  const scales = new Float64Array(ns);
  let maxAbs = 0, maxScale = 0;
  for (let j = 0; j < ns; j++) {
    scales[j] = symmetricFit(x, o + j * sub, sub, qmax);
    if (Math.abs(scales[j]) > maxAbs) { maxAbs = Math.abs(scales[j]); maxScale = scales[j]; }
  }
  // the largest scale lands on the extra negative level -(scMax + 1), as ggml does
  const d = viaHalf(maxScale / -(scMax + 1));
  const sc = new Int8Array(ns), q = new Int8Array(QK);
  for (let j = 0; j < ns; j++) {
    sc[j] = d !== 0 ? clamp(Math.round(scales[j] / d), -(scMax + 1), scMax) : 0;
    const ds = f(d * sc[j]);
    for (let i = 0; i < sub; i++) q[j * sub + i] = ds !== 0 ? clamp(Math.round(x[o + j * sub + i] / ds), -qmax - 1, qmax) : 0;
  }
  return { d, sc, q };
}

const Q2_K: GgmlType = {
  name: 'Q2_K', id: 10, blockSize: QK, typeSize: 84, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 84, d = half(src, o + 80), dmin = half(src, o + 82);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, j = (e >> 5) & 3, l = e & 31;
        const sc = src[o + (e >> 4)];
        const q = (src[o + 16 + 32 * h + l] >> (2 * j)) & 3;
        y[b * QK + e] = f(f(f(d * (sc & 15)) * q) - f(dmin * (sc >> 4)));
      }
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 84);
    for (let b = 0; b < nb; b++) {
      const o = b * 84;
      const r = affineSuperBlock(x, b * QK, 16, 3, 4);
      for (let j = 0; j < 16; j++) out[o + j] = r.sc[j] | (r.m[j] << 4);
      for (let e = 0; e < QK; e++) out[o + 16 + 32 * (e >> 7) + (e & 31)] |= r.q[e] << (2 * ((e >> 5) & 3));
      putHalf(out, o + 80, f32ToF16(r.d));
      putHalf(out, o + 82, f32ToF16(r.dmin));
    }
    return out;
  },
  // sub-block j: w = (d*sc)*q - dmin*m: INT2 asymmetric, group 16, f32 parameters
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Float32Array(nb * 16), zeros = new Float32Array(nb * 16);
    for (let b = 0; b < nb; b++) {
      const o = b * 84, d = half(src, o + 80), dmin = half(src, o + 82);
      for (let j = 0; j < 16; j++)
        if (!affineParams(scales, zeros, b * 16 + j, f(d * (src[o + j] & 15)), f(dmin * (src[o + j] >> 4)))) return null;
      for (let e = 0; e < QK; e++) codes8[b * QK + e] = (src[o + 16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
    }
    return { bits: 2, groupSize: 16, symmetric: false, paramDtype: 'f32', codes8, scales, zeros };
  },
};

const Q3_K: GgmlType = {
  name: 'Q3_K', id: 11, blockSize: QK, typeSize: 110, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 110, d = half(src, o + 108);
      const sc = scalesQ3K(src, o + 96);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, j = (e >> 5) & 3, l = e & 31;
        const low = (src[o + 32 + 32 * h + l] >> (2 * j)) & 3;
        const hi = (src[o + l] >> (4 * h + j)) & 1;
        y[b * QK + e] = f(f(d * sc[e >> 4]) * (low - (hi ? 0 : 4)));
      }
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 110);
    for (let b = 0; b < nb; b++) {
      const o = b * 110;
      const r = symmetricSuperBlock(x, b * QK, 16, 3, 31);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, j = (e >> 5) & 3, l = e & 31, u = r.q[e] + 4;
        out[o + 32 + 32 * h + l] |= (u & 3) << (2 * j);
        if (u & 4) out[o + l] |= 1 << (4 * h + j);
      }
      putScalesQ3K(out, o + 96, Uint8Array.from(r.sc, (s) => s + 32));
      putHalf(out, o + 108, f32ToF16(r.d));
    }
    return out;
  },
  // sub-block j: w = (d*(sc - 32)) * q with q in [-4, 3]: INT4 symmetric (code q + 8), group 16, f32 scales
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Float32Array(nb * 16);
    for (let b = 0; b < nb; b++) {
      const o = b * 110, d = half(src, o + 108);
      const sc = scalesQ3K(src, o + 96);
      for (let j = 0; j < 16; j++) scales[b * 16 + j] = f(d * sc[j]);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, j = (e >> 5) & 3, l = e & 31;
        const low = (src[o + 32 + 32 * h + l] >> (2 * j)) & 3;
        const hi = (src[o + l] >> (4 * h + j)) & 1;
        codes8[b * QK + e] = low - (hi ? 0 : 4) + 8;
      }
    }
    return { bits: 4, groupSize: 16, symmetric: true, paramDtype: 'f32', codes8, scales, zeros: null };
  },
};

function k4k5Dequant(src: Uint8Array, n: number, t: GgmlType, fifth: boolean): Float32Array {
  const nb = checkLength(t, src, n);
  const y = new Float32Array(n);
  const qs = fifth ? 48 : 16;
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize, d = half(src, o), dmin = half(src, o + 2);
    for (let c = 0; c < 4; c++)
      for (let hiNib = 0; hiNib < 2; hiNib++) {
        const [sc, m] = scaleMinK4(src, o + 4, 2 * c + hiNib);
        const d1 = f(d * sc), m1 = f(dmin * m);
        for (let l = 0; l < 32; l++) {
          const v = src[o + qs + 32 * c + l];
          let q = hiNib ? v >> 4 : v & 15;
          if (fifth && (src[o + 16 + l] >> (2 * c + hiNib)) & 1) q += 16;
          y[b * QK + 64 * c + 32 * hiNib + l] = f(f(d1 * q) - m1);
        }
      }
  }
  return y;
}

function k4k5Quant(x: Float32Array, t: GgmlType, fifth: boolean): Uint8Array {
  const nb = blocksOf(t, x);
  const out = new Uint8Array(nb * t.typeSize);
  const qs = fifth ? 48 : 16;
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize;
    const r = affineSuperBlock(x, b * QK, 32, fifth ? 31 : 15, 6);
    putHalf(out, o, f32ToF16(r.d));
    putHalf(out, o + 2, f32ToF16(r.dmin));
    putScaleMinK4(out, o + 4, r.sc, r.m);
    for (let c = 0; c < 4; c++)
      for (let l = 0; l < 32; l++) {
        const q0 = r.q[64 * c + l], q1 = r.q[64 * c + 32 + l];
        out[o + qs + 32 * c + l] = (q0 & 15) | ((q1 & 15) << 4);
        if (fifth) out[o + 16 + l] |= ((q0 >> 4) << (2 * c)) | ((q1 >> 4) << (2 * c + 1));
      }
  }
  return out;
}

// sub-block j of 32: w = (d*sc)*q - dmin*m: INT4 (Q4_K) or INT8 (Q5_K, 5-bit codes) asymmetric, group 32
function k4k5Canonical(src: Uint8Array, N: number, K: number, t: GgmlType, fifth: boolean): CanonicalParts | null {
  const nb = checkLength(t, src, N * K);
  const qs = fifth ? 48 : 16;
  const codes8 = new Uint8Array(N * K), scales = new Float32Array(nb * 8), zeros = new Float32Array(nb * 8);
  for (let b = 0; b < nb; b++) {
    const o = b * t.typeSize, d = half(src, o), dmin = half(src, o + 2);
    for (let c = 0; c < 4; c++)
      for (let hiNib = 0; hiNib < 2; hiNib++) {
        const [sc, m] = scaleMinK4(src, o + 4, 2 * c + hiNib);
        if (!affineParams(scales, zeros, b * 8 + 2 * c + hiNib, f(d * sc), f(dmin * m))) return null;
        for (let l = 0; l < 32; l++) {
          const v = src[o + qs + 32 * c + l];
          let q = hiNib ? v >> 4 : v & 15;
          if (fifth && (src[o + 16 + l] >> (2 * c + hiNib)) & 1) q += 16;
          codes8[b * QK + 64 * c + 32 * hiNib + l] = q;
        }
      }
  }
  return { bits: fifth ? 8 : 4, groupSize: 32, symmetric: false, paramDtype: 'f32', codes8, scales, zeros };
}

const Q4_K: GgmlType = {
  name: 'Q4_K', id: 12, blockSize: QK, typeSize: 144, quantized: true,
  dequantize(src, n) { return k4k5Dequant(src, n, this, false); },
  quantize(x) { return k4k5Quant(x, this, false); },
  toCanonical(src, N, K) { return k4k5Canonical(src, N, K, this, false); },
};

const Q5_K: GgmlType = {
  name: 'Q5_K', id: 13, blockSize: QK, typeSize: 176, quantized: true,
  dequantize(src, n) { return k4k5Dequant(src, n, this, true); },
  quantize(x) { return k4k5Quant(x, this, true); },
  toCanonical(src, N, K) { return k4k5Canonical(src, N, K, this, true); },
};

const Q6_K: GgmlType = {
  name: 'Q6_K', id: 14, blockSize: QK, typeSize: 210, quantized: true,
  dequantize(src, n) {
    const nb = checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let b = 0; b < nb; b++) {
      const o = b * 210, d = half(src, o + 208);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const v = src[o + 64 * h + 32 * (k & 1) + l];
        const low = k >= 2 ? v >> 4 : v & 15;
        const hi = (src[o + 128 + 32 * h + l] >> (2 * k)) & 3;
        const sc = (src[o + 192 + (e >> 4)] << 24) >> 24;
        y[b * QK + e] = f(f(d * sc) * ((low | (hi << 4)) - 32));
      }
    }
    return y;
  },
  quantize(x) {
    const nb = blocksOf(this, x);
    const out = new Uint8Array(nb * 210);
    for (let b = 0; b < nb; b++) {
      const o = b * 210;
      const r = symmetricSuperBlock(x, b * QK, 16, 31, 127);
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, k = (e >> 5) & 3, l = e & 31, u = r.q[e] + 32;
        out[o + 64 * h + 32 * (k & 1) + l] |= (u & 15) << (k >= 2 ? 4 : 0);
        out[o + 128 + 32 * h + l] |= (u >> 4) << (2 * k);
      }
      for (let j = 0; j < 16; j++) out[o + 192 + j] = r.sc[j] & 0xff;
      putHalf(out, o + 208, f32ToF16(r.d));
    }
    return out;
  },
  // sub-block j of 16: w = (d*sc) * q with q in [-32, 31]: INT8 symmetric (code q + 128), group 16, f32 scales
  toCanonical(src, N, K) {
    const nb = checkLength(this, src, N * K);
    const codes8 = new Uint8Array(N * K), scales = new Float32Array(nb * 16);
    for (let b = 0; b < nb; b++) {
      const o = b * 210, d = half(src, o + 208);
      for (let j = 0; j < 16; j++) scales[b * 16 + j] = f(d * ((src[o + 192 + j] << 24) >> 24));
      for (let e = 0; e < QK; e++) {
        const h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const v = src[o + 64 * h + 32 * (k & 1) + l];
        const low = k >= 2 ? v >> 4 : v & 15;
        const hi = (src[o + 128 + 32 * h + l] >> (2 * k)) & 3;
        codes8[b * QK + e] = (low | (hi << 4)) - 32 + 128;
      }
    }
    return { bits: 8, groupSize: 16, symmetric: true, paramDtype: 'f32', codes8, scales, zeros: null };
  },
};

// ---------------------------------------------------------------------------------
// Float types

const F32: GgmlType = {
  name: 'F32', id: 0, blockSize: 1, typeSize: 4, quantized: false,
  dequantize(src, n) {
    checkLength(this, src, n);
    const y = new Float32Array(n);
    new Uint8Array(y.buffer).set(src.subarray(0, n * 4));
    return y;
  },
  quantize(x) {
    return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  },
};

const F16: GgmlType = {
  name: 'F16', id: 1, blockSize: 1, typeSize: 2, quantized: false,
  dequantize(src, n) {
    checkLength(this, src, n);
    const y = new Float32Array(n);
    for (let i = 0; i < n; i++) y[i] = half(src, 2 * i);
    return y;
  },
  quantize(x) {
    const out = new Uint8Array(x.length * 2);
    for (let i = 0; i < x.length; i++) putHalf(out, 2 * i, f32ToF16(x[i]));
    return out;
  },
};

const BF16: GgmlType = {
  name: 'BF16', id: 30, blockSize: 1, typeSize: 2, quantized: false,
  dequantize(src, n) {
    checkLength(this, src, n);
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = ((src[2 * i] | (src[2 * i + 1] << 8)) << 16) >>> 0;
    return new Float32Array(u.buffer);
  },
  quantize(x) {
    const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const out = new Uint8Array(x.length * 2);
    for (let i = 0; i < x.length; i++) {
      // round to nearest even; NaN stays a quiet NaN (ggml_compute_fp32_to_bf16)
      const v = u[i];
      const h = (v & 0x7fffffff) > 0x7f800000 ? ((v >>> 16) | 64) : (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
      putHalf(out, 2 * i, h & 0xffff);
    }
    return out;
  },
};

export const GGML_TYPES: readonly GgmlType[] = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K];
const BY_ID = new Map(GGML_TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map(GGML_TYPES.map((t) => [t.name, t]));

/** Names of ggml types quantform does not read, for error messages. */
const KNOWN_UNSUPPORTED: Record<number, string> = {
  9: 'Q8_1', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S', 20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S',
  23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64', 29: 'IQ1_M', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
  40: 'NVFP4', 41: 'Q1_0', 42: 'Q2_0',
};

export function ggmlTypeById(id: number): GgmlType | undefined {
  need.nonNegativeInteger(id, 'id');
  return BY_ID.get(id);
}

export function ggmlType(name: GgmlTypeName): GgmlType {
  const t = BY_NAME.get(name);
  if (!t) throw invalidParameter(`a ggml type quantform writes (${[...BY_NAME.keys()].join(', ')})`, 'name', name, 'QF_UNSUPPORTED');
  return t;
}

/** 'Q4_0 (2)' or 'IQ2_XS (17)' or 'unknown (99)', for messages. */
export function ggmlTypeLabel(id: number): string {
  return `${BY_ID.get(id)?.name ?? KNOWN_UNSUPPORTED[id] ?? 'unknown'} (${id})`;
}

/** Bytes of a tensor of `count` values (count a multiple of blockSize). */
export function ggmlBytes(t: GgmlType, count: number): number {
  return (count / t.blockSize) * t.typeSize;
}
