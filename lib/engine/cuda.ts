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
