// quantform's public API.
export { QuantformError, type ErrorCode } from './errors.js';
export { Tensor, type DType } from './tensor.js';
export { backendInfo, setKernelPolicy, setThreads, type BackendInfo, type KernelPolicy } from './backend.js';
export { cudaInfo, type CudaInfo } from './cuda.js';
export {
  QuantizedTensor, quantize, quantizeAsync, dequantize, dequantizeAsync, pack, packAsync, unpack, unpackAsync,
  fakeQuantize, fakeQuantizeAsync, fakeQuantizeBackward, fakeQuantizeBackwardAsync, packedRowBytes, numGroups,
  SUPPORTED_BITS, type Bits, type QuantOptions, type FakeQuantParams, type FakeQuantGrads, type DequantizeOptions,
} from './quant.js';
export { cudaQuantize, cudaDequantize, cudaFakeQuantize, cudaFakeQuantizeBackward } from './cuda-quant.js';
export {
  matmul, matmulAsync, matmulF32, prepareMatmulWeight, unprepareMatmulWeight, hasFastLayout, PreparedMatmulWeight,
  prepareMatmulWeightCuda, CudaMatmulWeight,
  type MatmulAccuracy, type MatmulOptions,
} from './matmul.js';
export { measureMachine, type MachineLimits, type MeasureOptions } from './bench/machine.js';
