// Deterministic GPTQ test layers, generated identically by scripts/gptq_oracle.py
// (every f32 operation is spelled out with Math.fround there as np.float32 here),
// so the oracle's fixture and the tests see bit-identical inputs.
import { randomWeights } from './oracle.js';

const f = Math.fround;

/** xorshift32 uniform in [0, 1), the generator of oracle.ts randomWeights. */
export function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

/**
 * (T, K) calibration-like inputs: a component shared by all columns (so H is far
 * from diagonal, as for real activations), outlier columns (k % 13 == 5, x6) and
 * optionally one dead column (all zero: diag H = 0).
 */
export function gptqInputs(T: number, K: number, seed: number, deadCol = -1): Float32Array {
  const u = xorshift(seed);
  const X = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const common = f(u() - 0.5);
    for (let k = 0; k < K; k++) {
      let v = f(u() - 0.5);
      v = f(v + f(common * f((k % 5) * 0.25)));
      if (k % 13 === 5) v = f(v * 6);
      X[t * K + k] = k === deadCol ? 0 : v;
    }
  }
  return X;
}

/** (N, K) weights: oracle.ts's heavy-tailed generator. */
export function gptqWeights(N: number, K: number, seed: number): Float32Array {
  return randomWeights(N * K, seed);
}

/** 2/T XᵀX in double, rounded to f32: an independent Hessian. */
export function hessianOracle(X: Float32Array, T: number, K: number): Float32Array {
  const H = new Float32Array(K * K);
  for (let i = 0; i < K; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += X[t * K + i] * X[t * K + j];
      H[i * K + j] = H[j * K + i] = (2 * s) / T;
    }
  return H;
}
