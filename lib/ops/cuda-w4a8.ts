// W4A8 / W4A4 on the GPU with static activation scales (FPTQuant's integer path,
// native/cuda/w4a8_cuda.h): activations quantized to int8 (or 4-bit) codes with a fixed
// per-tensor scale, exact int32 sums per weight group against the INT4 weight, the weight
// scale and the activation scale applied once. Same integer sums and the same float
// epilogue order as the CPU VNNI kernel, so the results match it bit for bit.
// Compiled in CI, not yet run on a GPU: see README.
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { cudaBinding, cudaInfo, type CudaBinding, type NativeCudaWeight } from './cuda.js';
import { CudaMatmulWeight } from './matmul.js';
import { checkBuffer, Tensor } from './tensor.js';

/**
 * The kernel the CUDA int8 matmul runs: 'dp4a-gemv' (M <= 8), 'mma-s8' (int8 tensor cores,
 * mma m16n8k32), 'mma-s4' (4-bit activations on sm_80..sm_89, int4 tensor cores, weight
 * groupSize a multiple of 64 or per channel). Hopper (sm_90) has no int4 tensor-core rate:
 * 4-bit activations run 'mma-s8' there.
 */
export type CudaInt8Kernel = 'dp4a-gemv' | 'mma-s8' | 'mma-s4';

export interface StaticActivationOptions {
  /** The static activation scale: codes are clamp(rint(x / scale), -qmax, qmax). */
  scale: number;
  /** Activation bits, 8 (qmax 127, default) or 4 (qmax 7). */
  bits?: 4 | 8;
  /** Per-row multipliers applied before quantizing (FPTQuant's S_n), length M; default none. */
  rowScale?: Float32Array | null;
}

/** Activation codes in the CPU int8 matmul's layout (native/include/quantform/matmul.h). */
export interface QuantizedActivations {
  /** (rows, KP) int8, KP = ceil(K / 8) * 8, each chunk of 8 permuted x0 x2 x4 x6 x1 x3 x5 x7, padding 0 */
  codes: Int8Array;
  /** (rows, ceil(K / groupSize)) sums of the codes per group */
  groupSums: Float32Array;
  rows: number;
  K: number;
  groupSize: number;
  bits: 4 | 8;
}

type ActQuantRows = (xq: Int8Array, xsumq: Float32Array, x: Float32Array, m: Float32Array | null, scale: number, rows: number,
  K: number, KP: number, groupSize: number, bits: number) => void;
type MatmulInt8 = (h: NativeCudaWeight, xq: Int8Array, xs: Float32Array, M: number, bits: number, async: boolean) => Float32Array | Promise<Float32Array>;
type MatmulStatic = (h: NativeCudaWeight, x: Float32Array, m: Float32Array | null, scale: number, M: number, bits: number,
  async: boolean) => Float32Array | Promise<Float32Array>;
type Int8KernelOf = (h: NativeCudaWeight, M: number, bits: number) => CudaInt8Kernel;

function binding(op: string): CudaBinding {
  const b = cudaBinding();
  if (!b) throw new QuantformError('QF_UNSUPPORTED', `CUDA is not available: ${cudaInfo().reason ?? 'unknown reason'}`);
  if (typeof b[op] !== 'function') throw new QuantformError('QF_UNSUPPORTED', `the loaded quantform_cuda.node has no ${op}: rebuild it`);
  return b;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

function actBits(bits: unknown): 4 | 8 {
  if (bits !== 4 && bits !== 8) throw invalidParameter('4 or 8', 'bits', bits, 'QF_UNSUPPORTED_BITS');
  return bits;
}

function checkWeight(w: unknown): CudaMatmulWeight {
  if (!(w instanceof CudaMatmulWeight)) throw invalidParameter('CudaMatmulWeight (from prepareMatmulWeightCuda)', 'weight', w);
  return w;
}

function staticArgs(x: Tensor, w: CudaMatmulWeight, opts: StaticActivationOptions) {
  if (!(x instanceof Tensor)) throw invalidParameter('Tensor', 'x', x);
  checkWeight(w);
  if (x.dtype !== 'f32') throw invalidParameter("an 'f32' Tensor", 'x.dtype', x.dtype, 'QF_DTYPE_MISMATCH');
  checkBuffer(x.data, 'x');
  need.object(opts, 'options');
  const [N, K] = w.shape;
  if (x.shape[x.shape.length - 1] !== K)
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected x with last dimension K=${K} (weight [${N}, ${K}]) but received shape [${x.shape.join(', ')}]`);
  if (!is.finiteNumber(opts.scale) || opts.scale <= 0) throw invalidParameter('positive finite number', 'scale', opts.scale);
  const bits = actBits(opts.bits ?? 8);
  const M = x.size / K;
  const m = opts.rowScale ?? null;
  if (m !== null) {
    if (!(m instanceof Float32Array)) throw invalidParameter('Float32Array or null', 'rowScale', m);
    checkBuffer(m, 'rowScale');
    if (m.length !== M) throw new QuantformError('QF_SHAPE_MISMATCH', `Expected ${M} elements for rowScale (one per row of x) but received ${m.length}`);
  }
  return { x: x.data as Float32Array, m, scale: opts.scale, bits, M, outShape: [...x.shape.slice(0, -1), N] };
}

/**
 * Quantizes x (rows, K) with a static scale on the GPU: the CPU FPTQuant quantizer's codes
 * (engine actQuantRows), bit for bit, and their sums per group of `groupSize`
 * (the weight's group size; a multiple of 8 or at least K). x and rowScale must be finite.
 */
export function cudaQuantizeActivations(x: Float32Array, rows: number, K: number, groupSize: number,
  opts: StaticActivationOptions): QuantizedActivations {
  if (!(x instanceof Float32Array)) throw invalidParameter('Float32Array', 'x', x);
  need.positiveInteger(rows, 'rows');
  need.positiveInteger(K, 'K');
  need.positiveInteger(groupSize, 'groupSize');
  need.object(opts, 'options');
  const bits = actBits(opts.bits ?? 8);
  const gs = Math.min(groupSize, K);
  const KP = Math.ceil(K / 8) * 8;
  const codes = new Int8Array(rows * KP), groupSums = new Float32Array(rows * Math.ceil(K / gs));
  const b = binding('cudaActQuantRows');
  call(() => (b.cudaActQuantRows as ActQuantRows)(codes, groupSums, x, opts.rowScale ?? null, opts.scale, rows, K, KP, groupSize, bits));
  return { codes, groupSums, rows, K, groupSize, bits };
}

/**
 * y [M, N] = the int8 matmul of codes quantized by the caller (`a.codes`, the CPU int8
 * layout, e.g. from cudaQuantizeActivations or the CPU quantizer) times `xs`: one
 * activation scale (per tensor) or one per row. Group sums are formed on the GPU from
 * the codes; 4-bit codes must lie in [-8, 7]. The weight's groupSize must be a multiple
 * of 32 or per channel.
 */
export function cudaMatmulInt8(a: Pick<QuantizedActivations, 'codes' | 'rows' | 'bits'>, w: CudaMatmulWeight, xs: number | Float32Array): Tensor {
  checkWeight(w);
  need.object(a, 'activations');
  if (!(a.codes instanceof Int8Array)) throw invalidParameter('Int8Array', 'activations.codes', a.codes);
  need.positiveInteger(a.rows, 'activations.rows');
  const bits = actBits(a.bits);
  const scales = typeof xs === 'number' ? new Float32Array([xs]) : xs;
  if (!(scales instanceof Float32Array)) throw invalidParameter('number or Float32Array', 'xs', xs);
  const b = binding('cudaMatmulInt8');
  const y = call(() => (b.cudaMatmulInt8 as MatmulInt8)(w.handle, a.codes, scales, a.rows, bits, false)) as Float32Array;
  return new Tensor(y, [a.rows, w.shape[0]], 'f32');
}

/**
 * y = x · dequant(W)ᵀ with x quantized on the GPU by a static scale (W4A8, or W4A4 with
 * bits 4): x [..., K] f32 gives y [..., N] f32. See cudaInt8Kernel for what runs.
 */
export function cudaMatmulStatic(x: Tensor, w: CudaMatmulWeight, opts: StaticActivationOptions): Tensor {
  const a = staticArgs(x, w, opts);
  const b = binding('cudaMatmulStatic');
  const y = call(() => (b.cudaMatmulStatic as MatmulStatic)(w.handle, a.x, a.m, a.scale, a.M, a.bits, false)) as Float32Array;
  return new Tensor(y, a.outShape, 'f32');
}

/** cudaMatmulStatic on a worker thread; inputs must not be modified until it settles. */
export async function cudaMatmulStaticAsync(x: Tensor, w: CudaMatmulWeight, opts: StaticActivationOptions): Promise<Tensor> {
  const a = staticArgs(x, w, opts);
  const b = binding('cudaMatmulStatic');
  try {
    const y = await (b.cudaMatmulStatic as MatmulStatic)(w.handle, a.x, a.m, a.scale, a.M, a.bits, true);
    return new Tensor(y, a.outShape, 'f32');
  } catch (e) {
    throw fromNative(e);
  }
}

/** The kernel cudaMatmulInt8 / cudaMatmulStatic run for M rows of `bits`-bit activations on this GPU. */
export function cudaInt8Kernel(w: CudaMatmulWeight, M: number, bits: 4 | 8 = 8): CudaInt8Kernel {
  checkWeight(w);
  need.positiveInteger(M, 'M');
  const bb = actBits(bits);
  const b = binding('cudaMatmulInt8Kernel');
  return call(() => (b.cudaMatmulInt8Kernel as Int8KernelOf)(w.handle, M, bb));
}
