// Dequant-matmul: y = x · dequant(W)ᵀ for a quantized [N, K] weight W.
// The fast kernels read a repacked copy of W (prepareMatmulWeight, once at load
// time); the canonical QuantizedTensor stays the interchange format and the
// repacking is exactly invertible (unprepareMatmulWeight). Layout and the int8
// algorithm: native/include/quantform/matmul.h.
import { fromNative, invalidParameter, is, need, QuantformError } from '../errors.js';
import { cudaBinding, cudaInfo, type NativeCudaWeight } from './cuda.js';
import { native, type NativePreparedWeight } from '../native.js';
import { QuantizedTensor } from './quant.js';
import { checkBuffer, Tensor } from './tensor.js';

/**
 * 'fp32': weights are dequantized to fp32 and multiplied in fp32 (default).
 * 'int8': activations are quantized per row to int8 (scale max|x|/127) and
 * products accumulate exactly in int32 (AVX-512 VNNI when available, else a
 * scalar path with the same numerics): faster for large M at a small, measured
 * extra error (see `quantform bench matmul`).
 */
export type MatmulAccuracy = 'fp32' | 'int8';

export interface MatmulOptions {
  /** Default 'fp32'. */
  accuracy?: MatmulAccuracy;
}

/**
 * A weight ready for the matmul kernels. INT4 weights with groupSize a multiple
 * of 8 (or per-channel) are repacked natively; other formats keep the canonical
 * layout and take the generic path (correct, slower).
 */
export class PreparedMatmulWeight {
  /** @internal */
  constructor(
    readonly source: QuantizedTensor,
    /** @internal null when the format has no repacked layout */
    readonly handle: NativePreparedWeight | null,
  ) {
    need.instance(source, QuantizedTensor, 'source');
  }

  get shape(): readonly [number, number] {
    return this.source.shape;
  }

  /**
   * Frees the repacked copy now rather than when the garbage collector gets to it
   * (native finalizers run only on a later turn of the event loop). Later use
   * throws; a matmulAsync already running keeps its own reference.
   */
  dispose(): void {
    if (this.handle) native().matmulDispose(this.handle);
  }

  /** 'int4-tiled' (16 output rows x 8 k per 64-byte line) or 'canonical'. */
  get layout(): 'int4-tiled' | 'canonical' {
    return this.handle ? 'int4-tiled' : 'canonical';
  }
}

/**
 * An INT4 weight uploaded to the GPU (canonical packed layout, read directly by
 * the kernels). matmul with it runs on CUDA: M <= 8 rows with fp32 math, larger M
 * on tensor cores with x and W rounded to f16 (bf16 when x is bf16), fp32 accumulation.
 */
export class CudaMatmulWeight {
  /** @internal */
  constructor(
    readonly source: QuantizedTensor,
    /** @internal */
    readonly handle: NativeCudaWeight,
  ) {
    need.instance(source, QuantizedTensor, 'source');
  }

  get shape(): readonly [number, number] {
    return this.source.shape;
  }

  /** Frees the GPU memory now (the garbage collector does not see it); later use throws. */
  dispose(): void {
    cudaBinding()?.cudaMatmulDispose(this.handle);
  }
}

/** Uploads an INT4 weight to the GPU; throws QF_UNSUPPORTED (with the reason) when CUDA is unavailable. */
export function prepareMatmulWeightCuda(q: QuantizedTensor): CudaMatmulWeight {
  checkQuantized(q, 'weight');
  if (q.bits !== 4) throw invalidParameter('a 4-bit QuantizedTensor (CUDA matmul is INT4 only)', 'weight.bits', q.bits, 'QF_UNSUPPORTED_BITS');
  const b = cudaBinding();
  if (!b) throw new QuantformError('QF_UNSUPPORTED', `CUDA is not available: ${cudaInfo().reason ?? 'unknown reason'}`);
  const [N, K] = q.shape;
  const h = callSync(() => b.cudaMatmulPrepare(q.codes, q.scales, q.zeros, q.paramDtype, N, K, q.bits, q.groupSize, q.symmetric));
  return new CudaMatmulWeight(q, h);
}

/** True when `q` has a repacked kernel layout (INT4, groupSize % 8 == 0 or per-channel). */
export function hasFastLayout(q: QuantizedTensor): boolean {
  need.instance(q, QuantizedTensor, 'weight');
  return q.bits === 4 && (q.groupSize % 8 === 0 || q.groupSize >= q.shape[1]);
}

function checkQuantized(q: QuantizedTensor, name: string): void {
  if (!(q instanceof QuantizedTensor)) throw invalidParameter('QuantizedTensor, PreparedMatmulWeight or CudaMatmulWeight', name, q);
  checkBuffer(q.codes, `${name}.codes`);
  checkBuffer(q.scales, `${name}.scales`);
  if (q.zeros) checkBuffer(q.zeros, `${name}.zeros`);
}

function callSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

/** Repacks `q` once for the kernels; keep the result for every later matmul. */
export function prepareMatmulWeight(q: QuantizedTensor): PreparedMatmulWeight {
  checkQuantized(q, 'weight');
  if (!hasFastLayout(q)) return new PreparedMatmulWeight(q, null);
  const [N, K] = q.shape;
  const h = callSync(() => native().matmulPrepare(q.codes, q.scales, q.zeros, q.paramDtype, N, K, q.bits, q.groupSize, q.symmetric));
  return new PreparedMatmulWeight(q, h);
}

/** The canonical tensor rebuilt from the repacked copy (bit-exact inverse of prepareMatmulWeight). */
export function unprepareMatmulWeight(p: PreparedMatmulWeight): QuantizedTensor {
  if (!(p instanceof PreparedMatmulWeight)) throw invalidParameter('PreparedMatmulWeight', 'weight', p);
  const q = p.source;
  if (!p.handle) return q;
  const r = callSync(() => native().matmulUnprepare(p.handle as NativePreparedWeight));
  return new QuantizedTensor(r.codes, r.scales, r.zeros, q.shape, q.bits, q.groupSize, q.symmetric, q.paramDtype);
}

type Weight = QuantizedTensor | PreparedMatmulWeight | CudaMatmulWeight;

interface Args {
  x: Tensor;
  M: number;
  q: QuantizedTensor;
  cuda: CudaMatmulWeight | null;
  handle: NativePreparedWeight | null;
  accuracy: MatmulAccuracy;
  outShape: number[];
}

function matmulArgs(x: Tensor, w: Weight, opts: MatmulOptions): Args {
  if (!(x instanceof Tensor)) throw invalidParameter('Tensor', 'x', x);
  checkBuffer(x.data, 'x');
  const prepared = w instanceof PreparedMatmulWeight ? w : null;
  const cuda = w instanceof CudaMatmulWeight ? w : null;
  const q = prepared ? prepared.source : cuda ? cuda.source : (w as QuantizedTensor);
  checkQuantized(q, 'weight');
  const [N, K] = q.shape;
  const xK = x.shape[x.shape.length - 1];
  if (xK !== K)
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected x with last dimension K=${K} (weight [${N}, ${K}]) but received shape [${x.shape.join(', ')}]`);
  if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
  const accuracy = opts.accuracy ?? 'fp32';
  if (!is.oneOf(accuracy, ['fp32', 'int8'] as const)) throw invalidParameter("'fp32' or 'int8'", 'accuracy', accuracy);
  if (cuda && accuracy !== 'fp32') throw invalidParameter("'fp32' (the CUDA kernels have no int8 path)", 'accuracy', accuracy);
  return { x, M: x.size / K, q, cuda, handle: prepared?.handle ?? null, accuracy, outShape: [...x.shape.slice(0, -1), N] };
}

/**
 * y = x · dequant(W)ᵀ: x [..., K] (f32, f16 or bf16) and W [N, K] give y [..., N] in f32.
 * Pass a PreparedMatmulWeight for speed; a QuantizedTensor is repacked on every call.
 */
export function matmul(x: Tensor, w: Weight, opts: MatmulOptions = {}): Tensor {
  const a = matmulArgs(x, w, opts);
  const q = a.q;
  if (a.cuda) {
    const c = a.cuda;
    return new Tensor(callSync(() => cudaBinding()!.cudaMatmul(c.handle, a.x.data, a.x.dtype, a.M, false)), a.outShape, 'f32');
  }
  const y = callSync(() => native().matmul(a.x.data, a.x.dtype, a.M, a.handle, q.codes, q.scales, q.zeros, q.paramDtype,
    q.shape[0], q.shape[1], q.bits, q.groupSize, q.symmetric, a.accuracy, false));
  return new Tensor(y, a.outShape, 'f32');
}

/** matmul on a worker thread; inputs must not be modified until it settles. */
export async function matmulAsync(x: Tensor, w: Weight, opts: MatmulOptions = {}): Promise<Tensor> {
  const a = matmulArgs(x, w, opts);
  const q = a.q;
  try {
    if (a.cuda) return new Tensor(await cudaBinding()!.cudaMatmul(a.cuda.handle, a.x.data, a.x.dtype, a.M, true), a.outShape, 'f32');
    const y = await native().matmul(a.x.data, a.x.dtype, a.M, a.handle, q.codes, q.scales, q.zeros, q.paramDtype,
      q.shape[0], q.shape[1], q.bits, q.groupSize, q.symmetric, a.accuracy, true);
    return new Tensor(y, a.outShape, 'f32');
  } catch (e) {
    throw fromNative(e);
  }
}

/** Plain fp32 y = x · wᵀ with w [N, K] f32: the baseline the benchmark compares against. */
export function matmulF32(x: Tensor, w: Tensor): Tensor {
  if (!(x instanceof Tensor) || x.dtype !== 'f32') throw invalidParameter('f32 Tensor', 'x', x);
  if (!(w instanceof Tensor) || w.dtype !== 'f32' || w.shape.length !== 2) throw invalidParameter('2-D f32 Tensor', 'w', w);
  const [N, K] = w.shape;
  if (x.shape[x.shape.length - 1] !== K)
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected x with last dimension K=${K} but received shape [${x.shape.join(', ')}]`);
  const M = x.size / K;
  const y = callSync(() => native().sgemm(x.data as Float32Array, w.data as Float32Array, M, N, K, false));
  return new Tensor(y, [...x.shape.slice(0, -1), N], 'f32');
}
