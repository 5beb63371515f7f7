// CUDA variants of engine kernels (quantform_cuda.node), when a GPU is present: the TEQ
// scale backward and the learned fake quant backward.
import { cudaBinding } from '../ops/cuda.js';
import { fromNative, QuantformError } from '../errors.js';

type TeqScaleBackward = (dalpha: Float32Array, dx: Float32Array | null, dxs: Float32Array, x: Float32Array, T: number,
  dws: Float32Array, W: Float32Array, N: number, alpha: Float32Array, K: number) => void;

/** The TEQ scale backward on the GPU (same contract as the CPU `engine.teqScaleBackward`). */
export function cudaTeqScaleBackward(dalpha: Float32Array, dx: Float32Array | null, dxs: Float32Array, x: Float32Array, T: number,
  dws: Float32Array, W: Float32Array, N: number, alpha: Float32Array, K: number): void {
  const b = cudaBinding();
  if (!b || typeof b.teqScaleBackward !== 'function') throw new QuantformError('QF_UNSUPPORTED', 'CUDA is not available (see cudaInfo().reason)');
  try {
    (b.teqScaleBackward as TeqScaleBackward)(dalpha, dx, dxs, x, T, dws, W, N, alpha, K);
  } catch (e) {
    throw fromNative(e);
  }
}

type LearnedFqBackward = (dw: Float32Array | null, ds: Float32Array | null, dz: Float32Array | null, g: Float32Array, w: Float32Array,
  scales: Float32Array, zeros: Float32Array | null, N: number, K: number, bits: number, groupSize: number, symmetric: boolean) => void;

/**
 * EfficientQAT's Block-AP weight-gradient path on the GPU (same contract as the CPU
 * `engine.learnedFqBackward`). Compiled in CI, not yet run on a GPU: see README.
 */
export function cudaLearnedFqBackward(dw: Float32Array | null, ds: Float32Array | null, dz: Float32Array | null, g: Float32Array, w: Float32Array,
  scales: Float32Array, zeros: Float32Array | null, N: number, K: number, bits: number, groupSize: number, symmetric: boolean): void {
  const b = cudaBinding();
  if (!b || typeof b.learnedFqBackward !== 'function') throw new QuantformError('QF_UNSUPPORTED', 'CUDA is not available (see cudaInfo().reason)');
  try {
    (b.learnedFqBackward as LearnedFqBackward)(dw, ds, dz, g, w, scales, zeros, N, K, bits, groupSize, symmetric);
  } catch (e) {
    throw fromNative(e);
  }
}

type AttentionForwardQ8 = (out: Float32Array, q: Float32Array, kq: Int8Array, vq: Int8Array, kscale: Float32Array, vscale: Float32Array,
  B: number, T: number, Hq: number, Hkv: number, hd: number, S: number, pos0: number) => void;

/**
 * FPTQuant's attention over an int8 KV cache on the GPU (same contract as the CPU
 * `engine.attentionForwardQ8`: out, q (B, T, Hq, hd); kq, vq (B, S, Hkv, hd) int8 codes with
 * static per-head scales kscale, vscale (Hkv); query t sees keys 0 .. pos0 + t).
 * Compiled in CI, not yet run on a GPU: see README.
 */
export function cudaAttentionForwardQ8(out: Float32Array, q: Float32Array, kq: Int8Array, vq: Int8Array, kscale: Float32Array,
  vscale: Float32Array, B: number, T: number, Hq: number, Hkv: number, hd: number, S: number, pos0: number): void {
  const b = cudaBinding();
  if (!b || typeof b.attentionForwardQ8 !== 'function') throw new QuantformError('QF_UNSUPPORTED', 'CUDA is not available (see cudaInfo().reason)');
  try {
    (b.attentionForwardQ8 as AttentionForwardQ8)(out, q, kq, vq, kscale, vscale, B, T, Hq, Hkv, hd, S, pos0);
  } catch (e) {
    throw fromNative(e);
  }
}
