// CUDA variants of engine kernels (quantform_cuda.node), when a GPU is present.
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
