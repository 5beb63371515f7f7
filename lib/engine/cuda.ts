// CUDA variants of engine kernels (quantform_cuda.node), when a GPU is present: the TEQ
// scale backward, the learned fake quant backward, FPTQuant's training ops (S_n, LSQ, JSD, the merge backward) and its int8-KV attention.
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

/** A CUDA binding function of the engine family, or QF_UNSUPPORTED without a GPU module. */
function cudaEngineFn(name: string): (...args: unknown[]) => void {
  const b = cudaBinding();
  const f = b ? (b as Record<string, unknown>)[name] : undefined;
  if (typeof f !== 'function') throw new QuantformError('QF_UNSUPPORTED', 'CUDA is not available (see cudaInfo().reason)');
  return (...args: unknown[]) => {
    try {
      (f as (...a: unknown[]) => void)(...args);
    } catch (e) {
      throw fromNative(e);
    }
  };
}

/**
 * FPTQuant's S_n RMSNorm backward on the GPU (same contract as the CPU `engine.rmsnormScaledBackward`):
 * dx (BT, D) written, dc (BT) accumulated. Compiled in CI, not yet run on a GPU: see README.
 */
export function cudaRmsnormScaledBackward(dx: Float32Array, dc: Float32Array | null, dout: Float32Array, x: Float32Array, w: Float32Array,
  rstd: Float32Array, c: Float32Array | null, drstd: Float32Array | null, BT: number, D: number, eps: number): void {
  cudaEngineFn('rmsnormScaledBackward')(dx, dc, dout, x, w, rstd, c, drstd, BT, D, eps);
}

/**
 * The static activation quantizer's LSQ backward on the GPU (same contract as the CPU
 * `engine.actFakeQuantBackward`): dx (n) written, dscale (nscale) accumulated. Compiled in CI, not yet run on a GPU.
 */
export function cudaActFakeQuantBackward(dx: Float32Array, dscale: Float32Array, dout: Float32Array, x: Float32Array, scale: Float32Array,
  n: number, nscale: number, inner: number, bits: number): void {
  cudaEngineFn('actFakeQuantBackward')(dx, dscale, dout, x, scale, n, nscale, inner, bits);
}

/**
 * FPTQuant's end-to-end loss on the GPU (same contract as the CPU `engine.jsdForwardBackward`): loss (BT)
 * written, logits (BT, V) replaced by scale * dJSD/dlogits. Compiled in CI, not yet run on a GPU.
 */
export function cudaJsdForwardBackward(loss: Float32Array, logits: Float32Array, tprobs: Float32Array, BT: number, V: number, scale: number): void {
  cudaEngineFn('jsdForwardBackward')(loss, logits, tprobs, BT, V, scale);
}

/**
 * FPTQuant's attention over an int8 KV cache on the GPU (same contract as the CPU
 * `engine.attentionForwardQ8`: out, q (B, T, Hq, hd); kq, vq (B, S, Hkv, hd) int8 codes with
 * static per-head scales kscale, vscale (Hkv); query t sees keys 0 .. pos0 + t).
 * Compiled in CI, not yet run on a GPU: see README.
 */
export function cudaAttentionForwardQ8(out: Float32Array, q: Float32Array, kq: Int8Array, vq: Int8Array, kscale: Float32Array,
  vscale: Float32Array, B: number, T: number, Hq: number, Hkv: number, hd: number, S: number, pos0: number): void {
  cudaEngineFn('attentionForwardQ8')(out, q, kq, vq, kscale, vscale, B, T, Hq, Hkv, hd, S, pos0);
}

/** A block's shape and its mergeable FPTQuant transforms, for {@link cudaFptMergeBackward}. */
export interface CudaFptMergeConfig {
  D: number; F: number; Hq: number; Hkv: number; hd: number;
  qk?: boolean; v?: boolean; vHadamard?: boolean; mlp?: boolean; hadamardBlock?: number;
}

/**
 * The merge backward of T_k, T_v and T_u (same contract as the CPU `engine.fptMergeBackward`:
 * dFpt += the gradient of <deff, merge(arena)> w.r.t. the FPTQuant parameters): the contractions
 * of each weight with its gradient on the GPU, the small per-head algebra on the CPU. Compiled in
 * CI, not yet run on a GPU.
 */
export function cudaFptMergeBackward(dFpt: Float32Array, deff: Float32Array, arena: Float32Array, fptParams: Float32Array,
  c: CudaFptMergeConfig): void {
  cudaEngineFn('fptMergeBackward')(dFpt, deff, arena, fptParams, c.D, c.F, c.Hq, c.Hkv, c.hd, c.qk ?? false, c.v ?? false,
    c.vHadamard ?? false, c.mlp ?? false, c.hadamardBlock ?? 0);
}
