// A one-node ONNX model (com.microsoft MatMulNBits), the benchmark's peer, written
// with the exporter's ONNX message builders (lib/export/onnx-proto.ts).
import { modelProto, nodeProto, ONNX_DTYPE, tensorProto, valueInfo } from '../export/onnx-proto.js';

export interface MatMulNBitsSpec {
  N: number;
  K: number;
  blockSize: number;
  accuracyLevel: number;
  /** (N, ceil(K / blockSize), blockSize / 2): INT4 codes, low nibble first (our canonical rows when K % blockSize == 0). */
  codes: Uint8Array;
  /** (N, ceil(K / blockSize)) */
  scales: Float32Array;
  /** (N, ceil(ceil(K / blockSize) / 2)) packed 4-bit zero points, or null for the default 8 (symmetric). */
  zeroPoints: Uint8Array | null;
}

/** Y [M, N] = A [M, K] · dequant(B)ᵀ, with B, scales and zero points as initializers (so they are prepacked). */
export function matMulNBitsModel(s: MatMulNBitsSpec): Uint8Array {
  const nBlocks = Math.ceil(s.K / s.blockSize);
  const inputs = ['A', 'B', 'scales', ...(s.zeroPoints ? ['zero_points'] : [])];
  const node = nodeProto('MatMulNBits', inputs, ['Y'], 'matmul',
    { K: s.K, N: s.N, bits: 4, block_size: s.blockSize, accuracy_level: s.accuracyLevel }, 'com.microsoft');
  const initializers = [
    tensorProto('B', ONNX_DTYPE.UINT8, [s.N, nBlocks, s.blockSize / 2], s.codes),
    tensorProto('scales', ONNX_DTYPE.FLOAT, [s.N * nBlocks], new Uint8Array(s.scales.buffer, s.scales.byteOffset, s.scales.byteLength)),
  ];
  if (s.zeroPoints) initializers.push(tensorProto('zero_points', ONNX_DTYPE.UINT8, [s.N * Math.ceil(nBlocks / 2)], s.zeroPoints));
  return modelProto({
    name: 'matmulnbits', nodes: [node], initializers,
    inputs: [valueInfo('A', ONNX_DTYPE.FLOAT, ['M', s.K])], outputs: [valueInfo('Y', ONNX_DTYPE.FLOAT, ['M', s.N])],
  }, { producerVersion: 'bench' }).finish();
}
