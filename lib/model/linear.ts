// Every linear layer of a model goes through this interface, so a quantized
// weight plugs in where an fp32 one was. The native model runs an Fp32Linear on
// its fp32 GEMM and a QuantizedLinear on the dequant-matmul kernels (packed codes
// read directly; INT4 with a supported group size takes the repacked fast path).
import { QuantformError, need } from '../errors.js';
import { dequantize, QuantizedTensor } from '../ops/quant.js';
import { Tensor } from '../ops/tensor.js';

export interface Linear {
  readonly kind: 'f32' | 'quantized';
  /** rows of the weight (out features) */
  readonly outFeatures: number;
  /** columns of the weight (in features) */
  readonly inFeatures: number;
  /** The weight as fp32 (out, in) row-major (dequantized for a quantized linear). */
  toFloat32(): Float32Array;
}

export class Fp32Linear implements Linear {
  readonly kind = 'f32' as const;
  readonly outFeatures: number;
  readonly inFeatures: number;

  constructor(readonly weight: Tensor) {
    need.instance(weight, Tensor, 'weight');
    if (weight.dtype !== 'f32' || weight.shape.length !== 2)
      throw new QuantformError('QF_SHAPE_MISMATCH', `Expected an f32 matrix [out, in] for a linear weight but received ${weight.dtype} [${weight.shape.join(', ')}]`);
    [this.outFeatures, this.inFeatures] = weight.shape as [number, number];
  }

  toFloat32(): Float32Array {
    return this.weight.data as Float32Array;
  }
}

export class QuantizedLinear implements Linear {
  readonly kind = 'quantized' as const;
  readonly outFeatures: number;
  readonly inFeatures: number;

  constructor(readonly weight: QuantizedTensor) {
    need.instance(weight, QuantizedTensor, 'weight');
    [this.outFeatures, this.inFeatures] = weight.shape;
  }

  toFloat32(): Float32Array {
    return dequantize(this.weight, 'f32').data as Float32Array;
  }
}
