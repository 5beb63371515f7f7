// Independent scalar oracle for the quantization family, written from the spec
// (formats.h and lib/ops/quant.ts docs) in float64 with explicit float32 rounding
// (Math.fround) at every step the spec performs in f32. Tests compare the native
// reference against it, and every SIMD tier against the native reference.

const f = Math.fround;

/** Round half to even, as torch.round / rint. */
export function rint(x: number): number {
  const r = Math.round(x);
  // Math.round rounds .5 up; fix ties to even
  if (Math.abs(x % 1) === 0.5) return 2 * Math.round(x / 2);
  return r;
}

export interface OracleSpec {
  bits: number;
  groupSize: number;
  symmetric: boolean;
}

export interface OracleQuant {
  codes8: Uint8Array; // (N, K) unsigned codes
  scales: Float32Array; // (N, G)
  zeros: Float32Array | null; // (N, G)
}

export function oracleQuantize(w: Float32Array, N: number, K: number, s: OracleSpec): OracleQuant {
  const G = Math.ceil(K / s.groupSize);
  const codes8 = new Uint8Array(N * K);
  const scales = new Float32Array(N * G);
  const zeros = s.symmetric ? null : new Float32Array(N * G);
  const qmax = 2 ** s.bits - 1;
  for (let r = 0; r < N; r++) {
    for (let g = 0; g < G; g++) {
      const k0 = g * s.groupSize;
      const k1 = Math.min(K, k0 + s.groupSize);
      let lo = 0;
      let hi = 0;
      for (let k = k0; k < k1; k++) {
        lo = Math.min(lo, w[r * K + k]);
        hi = Math.max(hi, w[r * K + k]);
      }
      let scale: number;
      let zero: number;
      if (s.symmetric) {
        scale = f(Math.max(-lo, hi) / (2 ** (s.bits - 1) - 1));
        zero = 2 ** (s.bits - 1);
      } else {
        scale = f(f(hi - lo) / qmax);
        zero = scale === 0 ? 0 : Math.min(qmax, Math.max(0, rint(f(-lo / scale))));
      }
      scales[r * G + g] = scale;
      if (zeros) zeros[r * G + g] = zero;
      for (let k = k0; k < k1; k++) {
        let q = scale === 0 ? zero : rint(f(w[r * K + k] / scale)) + zero;
        q = Math.min(qmax, Math.max(0, q));
        codes8[r * K + k] = q;
      }
    }
  }
  return { codes8, scales, zeros };
}

/** Packs one-code-per-byte rows following formats.h, bit by bit. */
export function oraclePack(codes8: Uint8Array, N: number, K: number, bits: number): Uint8Array {
  const rowBits = bits === 3 ? Math.ceil(K / 8) * 24 : Math.ceil((K * bits) / 8) * 8;
  const rb = rowBits / 8;
  const out = new Uint8Array(N * rb);
  for (let r = 0; r < N; r++)
    for (let k = 0; k < K; k++) {
      const q = codes8[r * K + k];
      // code k occupies bits [k*bits, k*bits + bits) of the row's little-endian bit stream
      for (let b = 0; b < bits; b++) {
        const bit = k * bits + b;
        if ((q >> b) & 1) out[r * rb + (bit >> 3)] |= 1 << (bit & 7);
      }
    }
  return out;
}

export function oracleDequantize(q: OracleQuant, N: number, K: number, s: OracleSpec): Float32Array {
  const G = Math.ceil(K / s.groupSize);
  const out = new Float32Array(N * K);
  for (let r = 0; r < N; r++)
    for (let k = 0; k < K; k++) {
      const g = Math.floor(k / s.groupSize);
      const z = s.symmetric ? 2 ** (s.bits - 1) : q.zeros![r * G + g];
      out[r * K + k] = f((q.codes8[r * K + k] - z) * q.scales[r * G + g]);
    }
  return out;
}

/** Deterministic pseudo-random weights with a heavy tail (LLM-like outliers). */
export function randomWeights(n: number, seed: number, outlierEvery = 97): Float32Array {
  let x = seed >>> 0 || 1;
  const next = () => {
    // xorshift32
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = next() - 0.5;
    out[i] = (i % outlierEvery === 3 ? 8 : 1) * u * 0.2;
  }
  return out;
}

export { nmse } from './numeric.js';
