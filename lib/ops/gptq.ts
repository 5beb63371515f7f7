// GPTQ primitives (Frantar et al. 2022): the Hessian of a linear's calibration
// inputs, accumulated batch by batch, and the quantization of its weight against
// it. The output is the canonical QuantizedTensor (formats.h), so every consumer of
// RTN output (dequantize, matmul, saveGptq) takes it unchanged. Algorithm, damping,
// dead inputs and the two readings of group parameters: native/include/quantform/gptq.h.
import { fromNative, invalidParameter, is, QuantformError } from '../errors.js';
import { native, type NativeGptqConfig } from '../native.js';
import { dequantize, matrix, pack, QuantizedTensor, resolveQuantOptions, unpack, type Bits, type QuantOptions } from './quant.js';
import { checkBuffer, Tensor } from './tensor.js';

export interface GptqOptions extends QuantOptions {
  /** Fraction of the mean diagonal of H added to its diagonal. Default 0.01 (the reference's percdamp). */
  damp?: number;
  /** Columns per lazy batch, 1..512. Default 128. Results do not depend on it with paramsFrom 'updated'. */
  blockSize?: number;
  /**
   * Where a group's scale and zero point are read from when the column loop reaches
   * the group: 'updated' (default) from the weights with every earlier column's error
   * applied; 'batch-start' from the weights as they were at the start of the current
   * lazy batch, as IST-DASLab/gptq, AutoGPTQ and GPTQModel compute them.
   */
  paramsFrom?: 'updated' | 'batch-start';
  /**
   * The clipping search of the GPTQ reference's --mse (IST-DASLab/gptq quant.py): each group's range
   * shrunk by 1 - i/100 (i < 80) to the one minimising sum |dequant(quant(w)) - w|^clipNorm over the
   * group, when its parameters are chosen. 0 (default): min/max ranges; the reference uses 2.4.
   * Costs 80 quantizations of every weight (pow unless clipNorm is 2).
   */
  clipNorm?: number;
  /**
   * GPTQ's act-order (the reference's --act-order, desc_act): columns quantized in order of
   * decreasing H[c, c], so the inputs with the most energy are rounded while the most columns remain
   * to absorb their error; the codes come back in the original column order. Only with one group per
   * row (per output channel): there the order changes no parameter and the checkpoint stays
   * canonical (g_idx = 0); with groups it would need a permuted g_idx. Costs a permuted copy of W
   * and H (H is not modified). Default false.
   */
  actOrder?: boolean;
}

export interface GptqResult {
  q: QuantizedTensor;
  /** GPTQ's own error sum, Σ e² / 2 with e = (w - ŵ) / U[c, c] (the reference prints it as 'error'). */
  loss: number;
}

/**
 * H = 2/n Σ xᵀx over every row x of the calibration inputs of one linear (n rows
 * so far), fed batch by batch so the inputs never need to be held at once.
 */
export class GptqHessian {
  /** (K, K) row-major, symmetric */
  readonly H: Float32Array;
  private n = 0;

  constructor(readonly K: number) {
    if (!is.positiveInteger(K)) throw invalidParameter('positive integer', 'K', K);
    this.H = new Float32Array(K * K);
  }

  /** Rows accumulated so far. */
  get rows(): number {
    return this.n;
  }

  private check(x: Float32Array): number {
    if (!(x instanceof Float32Array) || x.length % this.K !== 0)
      throw invalidParameter(`Float32Array with a multiple of ${this.K} elements`, 'x', x, 'QF_SHAPE_MISMATCH');
    checkBuffer(x, 'x');
    return x.length / this.K;
  }

  /** Adds the rows of x (T, K). */
  add(x: Float32Array): void {
    const T = this.check(x);
    try {
      native().gptqHessianAccumulate(this.H, x, T, this.K, this.n, false);
    } catch (e) {
      throw fromNative(e);
    }
    this.n += T;
  }

  async addAsync(x: Float32Array): Promise<void> {
    const T = this.check(x);
    try {
      await native().gptqHessianAccumulate(this.H, x, T, this.K, this.n, true);
    } catch (e) {
      throw fromNative(e);
    }
    this.n += T;
  }
}

function gptqArgs(w: Tensor, H: Float32Array | GptqHessian, opts: GptqOptions) {
  const [N, K] = matrix(w, 'weights');
  if (w.dtype !== 'f32') throw invalidParameter('f32 tensor', 'weights', w.dtype, 'QF_DTYPE_MISMATCH');
  const o = resolveQuantOptions({ ...opts, paramDtype: opts.paramDtype ?? 'f16' }, K);
  const h = H instanceof GptqHessian ? H.H : H;
  if (H instanceof GptqHessian && H.rows === 0) throw new QuantformError('QF_INVALID_ARGUMENT', 'The Hessian holds no calibration rows yet');
  if (!(h instanceof Float32Array) || h.length !== K * K)
    throw invalidParameter(`Float32Array of ${K * K} elements (K x K)`, 'H', h, 'QF_SHAPE_MISMATCH');
  checkBuffer(h, 'H');
  const damp = opts.damp ?? 0.01;
  if (!is.finiteNumber(damp) || damp < 0) throw invalidParameter('number >= 0', 'damp', damp);
  const blockSize = opts.blockSize ?? 128;
  if (!is.positiveInteger(blockSize) || blockSize > 512) throw invalidParameter('integer in [1, 512]', 'blockSize', blockSize);
  const paramsFrom = opts.paramsFrom ?? 'updated';
  if (!is.oneOf(paramsFrom, ['updated', 'batch-start'] as const)) throw invalidParameter("'updated' or 'batch-start'", 'paramsFrom', paramsFrom);
  const clipNorm = opts.clipNorm ?? 0;
  if (!is.finiteNumber(clipNorm) || clipNorm < 0 || clipNorm > 16) throw invalidParameter('number in [0, 16]', 'clipNorm', clipNorm);
  const actOrder = opts.actOrder ?? false;
  if (!is.bool(actOrder)) throw invalidParameter('boolean', 'actOrder', actOrder);
  if (actOrder && o.groupSize < K)
    throw new QuantformError('QF_INVALID_ARGUMENT', `actOrder needs one group per row (groupSize >= ${K}, per output channel) but received groupSize ${o.groupSize}: ` +
      'groups in act order would need a permuted g_idx');
  const config: NativeGptqConfig = {
    rows: N, cols: K, bits: o.bits, groupSize: o.groupSize, symmetric: o.symmetric, paramDtype: o.paramDtype, damp, blockSize, paramsFrom, clipNorm,
  };
  return { N, K, o, h, config, actOrder };
}

/** GPTQ-quantizes w (N, K) f32 against the Hessian of its inputs (not modified). */
export function gptqQuantize(w: Tensor, H: Float32Array | GptqHessian, opts: GptqOptions): GptqResult {
  const a = gptqArgs(w, H, opts);
  const ord = a.actOrder ? actOrderInputs(w.data as Float32Array, a.h, a.N, a.K) : null;
  let r;
  try {
    r = native().gptqQuantize(ord?.w ?? (w.data as Float32Array), ord?.h ?? a.h, a.config, false);
  } catch (e) {
    throw fromNative(e);
  }
  const codes = ord ? unpermuteCodes(r.codes, ord.perm, a.N, a.K, a.o.bits) : r.codes;
  return { q: new QuantizedTensor(codes, r.scales, r.zeros, [a.N, a.K], a.o.bits, a.o.groupSize, a.o.symmetric, a.o.paramDtype), loss: r.loss };
}

/**
 * Columns by decreasing H[c, c] (ties: lower index first), and W and H permuted to that order. A
 * dead input (H[c, c] = 0) sorts as H[c, c] = 1, as in the reference, which sets it so before sorting.
 */
function actOrderInputs(w: Float32Array, h: Float32Array, N: number, K: number): { perm: Int32Array; w: Float32Array; h: Float32Array } {
  const d = Float64Array.from({ length: K }, (_, c) => h[c * K + c] === 0 ? 1 : h[c * K + c]);
  const perm = Int32Array.from({ length: K }, (_, i) => i).sort((x, y) => d[y] - d[x] || x - y);
  const wp = new Float32Array(N * K), hp = new Float32Array(K * K);
  for (let n = 0; n < N; n++)
    for (let j = 0; j < K; j++) wp[n * K + j] = w[n * K + perm[j]];
  for (let i = 0; i < K; i++)
    for (let j = 0; j < K; j++) hp[i * K + j] = h[perm[i] * K + perm[j]];
  return { perm, w: wp, h: hp };
}

/** Packed codes of permuted columns (column j is original column perm[j]) back in the original order. */
function unpermuteCodes(codes: Uint8Array, perm: Int32Array, N: number, K: number, bits: Bits): Uint8Array {
  const cp = unpack(codes, [N, K], bits), c = new Uint8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let j = 0; j < K; j++) c[n * K + perm[j]] = cp[n * K + j];
  return pack(c, [N, K], bits);
}

export async function gptqQuantizeAsync(w: Tensor, H: Float32Array | GptqHessian, opts: GptqOptions): Promise<GptqResult> {
  const a = gptqArgs(w, H, opts);
  const ord = a.actOrder ? actOrderInputs(w.data as Float32Array, a.h, a.N, a.K) : null;
  let r;
  try {
    r = await native().gptqQuantize(ord?.w ?? (w.data as Float32Array), ord?.h ?? a.h, a.config, true);
  } catch (e) {
    throw fromNative(e);
  }
  const codes = ord ? unpermuteCodes(r.codes, ord.perm, a.N, a.K, a.o.bits) : r.codes;
  return { q: new QuantizedTensor(codes, r.scales, r.zeros, [a.N, a.K], a.o.bits, a.o.groupSize, a.o.symmetric, a.o.paramDtype), loss: r.loss };
}

/**
 * GPTQ's objective, tr((W - Ŵ) H (W - Ŵ)ᵀ), for w (N, K) and its quantized (or any
 * fp32 (N, K)) approximation: the output error on the calibration inputs, times 2/n.
 */
export function gptqObjective(w: Tensor, approx: QuantizedTensor | Float32Array, H: Float32Array | GptqHessian): number {
  const [N, K] = matrix(w, 'weights');
  const h = H instanceof GptqHessian ? H.H : H;
  if (!(h instanceof Float32Array) || h.length !== K * K) throw invalidParameter(`Float32Array of ${K * K} elements`, 'H', h, 'QF_SHAPE_MISMATCH');
  const wh = approx instanceof QuantizedTensor ? (dequantize(approx).data as Float32Array) : approx;
  if (!(wh instanceof Float32Array) || wh.length !== N * K) throw invalidParameter(`Float32Array of ${N * K} elements`, 'approx', wh, 'QF_SHAPE_MISMATCH');
  const wd = w.data as Float32Array;
  const E = new Float32Array(N * K);
  for (let i = 0; i < E.length; i++) E[i] = wd[i] - wh[i];
  const EH = new Float32Array(N * K);
  try {
    native().engine.gemm(EH, E, h, N, K, K, false, false, false);
  } catch (e) {
    throw fromNative(e);
  }
  let s = 0;
  for (let i = 0; i < E.length; i++) s += EH[i] * E[i];
  return s;
}
