// Backward of a quantized linear y = x · Ŵᵀ with frozen integer codes and zero
// points and trainable step sizes (EfficientQAT's E2E-QP phase), computed from the
// packed codes without materialising the fp32 weight:
//   gradInput  (M, K) = gradOutput (M, N) · Ŵ
//   gradScales (N, G) = Σ_{k ∈ g} (q[n, k] − z[n, g]) · (gradOutputᵀ x)[n, k]
// Kernels and tiling: native/include/quantform/qlinear.h.
import { fromNative, invalidParameter, QuantformError } from '../errors.js';
import { f16ToF32 } from '../io/half.js';
import { native, type FloatArray } from '../native.js';
import { cudaBinding } from './cuda.js';
import { checkQuantized, numGroups, type QuantizedTensor } from './quant.js';
import { checkBuffer } from './tensor.js';

export interface QuantLinearBackwardOptions {
  /** Step sizes (N, G) f32 to differentiate at (the trained ones). Default: the weight's own scales in f32. */
  scales?: Float32Array;
  /** Zero points (N, G) f32 (asymmetric). Default: the weight's own in f32. */
  zeros?: Float32Array;
  /** false: skip gradInput. A Float32Array of M*K: written into (reused across steps). Default: a new array. */
  gradInput?: Float32Array | false;
  /** false: skip gradScales. A Float32Array of N*G: accumulated into. Default: a new zeroed array. */
  gradScales?: Float32Array | false;
}

export interface QuantLinearGrads {
  /** (M, K), or null when skipped */
  gradInput: Float32Array | null;
  /** (N, G), or null when skipped */
  gradScales: Float32Array | null;
}

function toF32(a: FloatArray, dtype: 'f32' | 'f16'): Float32Array {
  return dtype === 'f32' ? (a as Float32Array) : Float32Array.from(a, (h) => f16ToF32(h));
}

function args(gradOutput: Float32Array, x: Float32Array | null, w: QuantizedTensor, o: QuantLinearBackwardOptions) {
  checkQuantized(w);
  const [N, K] = w.shape;
  const G = numGroups(K, w.groupSize);
  if (!(gradOutput instanceof Float32Array) || gradOutput.length === 0 || gradOutput.length % N !== 0)
    throw invalidParameter(`Float32Array with a positive multiple of ${N} elements (M, N)`, 'gradOutput', gradOutput, 'QF_SHAPE_MISMATCH');
  checkBuffer(gradOutput, 'gradOutput');
  const M = gradOutput.length / N;
  const wantScales = o.gradScales !== false;
  if (wantScales || x !== null) {
    if (!(x instanceof Float32Array) || x.length !== M * K)
      throw invalidParameter(`Float32Array of ${M * K} elements (M, K)`, 'x', x, 'QF_SHAPE_MISMATCH');
    checkBuffer(x, 'x');
  }
  const scales = o.scales ?? toF32(w.scales, w.paramDtype);
  if (!(scales instanceof Float32Array) || scales.length !== N * G)
    throw invalidParameter(`Float32Array of ${N * G} elements (N, G)`, 'scales', scales, 'QF_SHAPE_MISMATCH');
  checkBuffer(scales, 'scales');
  let zeros: Float32Array | null = null;
  if (!w.symmetric) {
    zeros = o.zeros ?? toF32(w.zeros!, w.paramDtype);
    if (!(zeros instanceof Float32Array) || zeros.length !== N * G)
      throw invalidParameter(`Float32Array of ${N * G} elements (N, G)`, 'zeros', zeros, 'QF_SHAPE_MISMATCH');
    checkBuffer(zeros, 'zeros');
  }
  let gi: Float32Array | null = null;
  if (o.gradInput !== false) {
    gi = o.gradInput ?? new Float32Array(M * K);
    if (!(gi instanceof Float32Array) || gi.length !== M * K)
      throw invalidParameter(`Float32Array of ${M * K} elements (M, K)`, 'gradInput', gi, 'QF_SHAPE_MISMATCH');
    checkBuffer(gi, 'gradInput');
  }
  let gs: Float32Array | null = null;
  if (wantScales) {
    gs = (o.gradScales as Float32Array | undefined) ?? new Float32Array(N * G);
    if (!(gs instanceof Float32Array) || gs.length !== N * G)
      throw invalidParameter(`Float32Array of ${N * G} elements (N, G)`, 'gradScales', gs, 'QF_SHAPE_MISMATCH');
    checkBuffer(gs, 'gradScales');
  }
  return { M, N, K, scales, zeros, gi, gs };
}

/** Gradients of a quantized linear w.r.t. its input and its step sizes (see the top of this file). */
export function quantLinearBackward(gradOutput: Float32Array, x: Float32Array | null, w: QuantizedTensor,
  opts: QuantLinearBackwardOptions = {}): QuantLinearGrads {
  const a = args(gradOutput, x, w, opts);
  try {
    native().quantLinearBackward(a.gi, a.gs, gradOutput, x, a.M, w.codes, a.scales, a.zeros, a.N, a.K, w.bits, w.groupSize, w.symmetric, false);
  } catch (e) {
    throw fromNative(e);
  }
  return { gradInput: a.gi, gradScales: a.gs };
}

export async function quantLinearBackwardAsync(gradOutput: Float32Array, x: Float32Array | null, w: QuantizedTensor,
  opts: QuantLinearBackwardOptions = {}): Promise<QuantLinearGrads> {
  const a = args(gradOutput, x, w, opts);
  try {
    await native().quantLinearBackward(a.gi, a.gs, gradOutput, x, a.M, w.codes, a.scales, a.zeros, a.N, a.K, w.bits, w.groupSize, w.symmetric, true);
  } catch (e) {
    throw fromNative(e);
  }
  return { gradInput: a.gi, gradScales: a.gs };
}

type CudaQuantLinearBackward = (gradInput: Float32Array | null, gradScales: Float32Array | null, gradOutput: Float32Array,
  x: Float32Array | null, M: number, codes: Uint8Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
  bits: number, groupSize: number, symmetric: boolean) => void;

/**
 * quantLinearBackward on the GPU (quantform_cuda.node; same contract, host arrays in
 * and out). Compiled in CI, not yet run on a GPU: see README.
 */
export function cudaQuantLinearBackward(gradOutput: Float32Array, x: Float32Array | null, w: QuantizedTensor,
  opts: QuantLinearBackwardOptions = {}): QuantLinearGrads {
  const a = args(gradOutput, x, w, opts);
  const b = cudaBinding();
  if (!b || typeof b.quantLinearBackward !== 'function') throw new QuantformError('QF_UNSUPPORTED', 'CUDA is not available (see cudaInfo().reason)');
  try {
    (b.quantLinearBackward as CudaQuantLinearBackward)(a.gi, a.gs, gradOutput, x, a.M, w.codes, a.scales, a.zeros, a.N, a.K, w.bits, w.groupSize, w.symmetric);
  } catch (e) {
    throw fromNative(e);
  }
  return { gradInput: a.gi, gradScales: a.gs };
}
