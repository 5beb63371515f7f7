// The quantization family on an NVIDIA GPU (quantform_cuda.node). Same results
// as the CPU kernels: codes bit for bit, gradients within float rounding.
// Validation is shared with the CPU path (lib/ops/quant.ts).
import { cudaBinding, cudaInfo } from './cuda.js';
import { fromNative, invalidParameter, QuantformError } from '../errors.js';
import type { NativeFakeQuantGrads, NativeQuantized } from '../native.js';
import {
  checkQuantized, fakeQuantArgs, matrix, QuantizedTensor, resolveQuantOptions, type FakeQuantGrads, type FakeQuantParams,
  type QuantOptions,
} from './quant.js';
import { Tensor } from './tensor.js';

interface CudaQuantBinding {
  quantize(w: Float32Array, N: number, K: number, bits: number, gs: number, sym: boolean, async: false): NativeQuantized;
  dequantize(codes: Uint8Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number, bits: number,
    gs: number, sym: boolean, async: false): Float32Array;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number, bits: number,
    gs: number, sym: boolean, async: false): Float32Array;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number,
    K: number, bits: number, gs: number, sym: boolean, async: false): NativeFakeQuantGrads;
}

function gpu(): CudaQuantBinding {
  const b = cudaBinding();
  if (!b) throw new QuantformError('QF_UNSUPPORTED', `CUDA is not available: ${cudaInfo().reason}`);
  return b as unknown as CudaQuantBinding;
}

function run<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

/** RTN quantize on the GPU (f32 weights and f32 scales). */
export function cudaQuantize(w: Tensor, opts: QuantOptions): QuantizedTensor {
  const [N, K] = matrix(w, 'weights');
  if (w.dtype !== 'f32') throw invalidParameter('f32 tensor', 'weights', w.dtype, 'QF_DTYPE_MISMATCH');
  const o = resolveQuantOptions({ ...opts, paramDtype: 'f32' }, K);
  const r = run(() => gpu().quantize(w.data as Float32Array, N, K, o.bits, o.groupSize, o.symmetric, false));
  return new QuantizedTensor(r.codes, r.scales, r.zeros, [N, K], o.bits, o.groupSize, o.symmetric, 'f32');
}

export function cudaDequantize(q: QuantizedTensor): Tensor {
  checkQuantized(q);
  if (q.paramDtype !== 'f32') throw invalidParameter("'f32' scales", 'paramDtype', q.paramDtype, 'QF_DTYPE_MISMATCH');
  const [N, K] = q.shape;
  const out = run(() => gpu().dequantize(q.codes, q.scales as Float32Array, q.zeros as Float32Array | null, N, K, q.bits, q.groupSize, q.symmetric, false));
  return new Tensor(out, [N, K], 'f32');
}

export function cudaFakeQuantize(w: Tensor, opts: QuantOptions, params: FakeQuantParams): Tensor {
  const a = fakeQuantArgs(w, opts, params);
  const out = run(() => gpu().fakeQuantForward(w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, false));
  return new Tensor(out, [a.N, a.K], 'f32');
}

export function cudaFakeQuantizeBackward(gradOut: Tensor, w: Tensor, opts: QuantOptions, params: FakeQuantParams): FakeQuantGrads {
  const a = fakeQuantArgs(w, opts, params);
  if (!(gradOut instanceof Tensor) || gradOut.dtype !== 'f32' || gradOut.size !== a.N * a.K)
    throw invalidParameter(`f32 Tensor of ${a.N * a.K} elements`, 'gradOut', gradOut, 'QF_SHAPE_MISMATCH');
  return run(() => gpu().fakeQuantBackward(gradOut.data as Float32Array, w.data as Float32Array, a.scales, a.zeros, a.N, a.K, a.o.bits, a.o.groupSize, a.o.symmetric, false));
}
