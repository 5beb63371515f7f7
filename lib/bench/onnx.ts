// A one-node ONNX model (com.microsoft MatMulNBits) written as protobuf bytes by
// a tiny encoder: the benchmark's peer needs only a handful of fields, which is
// less code than a protobuf dependency plus the ONNX schema.
// Field numbers: onnx/onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto...).

class Writer {
  private chunks: Uint8Array[] = [];
  private size = 0;

  private push(b: Uint8Array): void {
    this.chunks.push(b);
    this.size += b.length;
  }

  private varint(v: number | bigint): void {
    let x = BigInt.asUintN(64, BigInt(v));
    const out: number[] = [];
    while (x >= 0x80n) {
      out.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    out.push(Number(x));
    this.push(Uint8Array.from(out));
  }

  int(field: number, v: number): this {
    this.varint(field << 3);
    this.varint(v);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.varint((field << 3) | 2);
    this.varint(b.length);
    this.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, w: Writer): this {
    return this.bytes(field, w.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

const FLOAT = 1;
const UINT8 = 2;
const ATTR_INT = 2;

function tensor(name: string, dataType: number, dims: number[], raw: Uint8Array): Writer {
  const w = new Writer();
  for (const d of dims) w.int(1, d);
  return w.int(2, dataType).string(8, name).bytes(9, raw);
}

function valueInfo(name: string, dims: (number | string)[]): Writer {
  const shape = new Writer();
  for (const d of dims) shape.message(1, typeof d === 'number' ? new Writer().int(1, d) : new Writer().string(2, d));
  const tensorType = new Writer().int(1, FLOAT).message(2, shape);
  return new Writer().string(1, name).message(2, new Writer().message(1, tensorType));
}

function intAttr(name: string, v: number): Writer {
  return new Writer().string(1, name).int(3, v).int(20, ATTR_INT);
}

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
  const node = new Writer().string(1, 'A').string(1, 'B').string(1, 'scales');
  if (s.zeroPoints) node.string(1, 'zero_points');
  node.string(2, 'Y').string(3, 'matmul').string(4, 'MatMulNBits').string(7, 'com.microsoft');
  node.message(5, intAttr('K', s.K)).message(5, intAttr('N', s.N)).message(5, intAttr('bits', 4))
    .message(5, intAttr('block_size', s.blockSize)).message(5, intAttr('accuracy_level', s.accuracyLevel));
  const graph = new Writer().message(1, node).string(2, 'matmulnbits');
  graph.message(5, tensor('B', UINT8, [s.N, nBlocks, s.blockSize / 2], s.codes));
  graph.message(5, tensor('scales', FLOAT, [s.N * nBlocks], new Uint8Array(s.scales.buffer, s.scales.byteOffset, s.scales.byteLength)));
  if (s.zeroPoints) graph.message(5, tensor('zero_points', UINT8, [s.N * Math.ceil(nBlocks / 2)], s.zeroPoints));
  graph.message(11, valueInfo('A', ['M', s.K])).message(12, valueInfo('Y', ['M', s.N]));
  return new Writer()
    .int(1, 8) // ir_version
    .string(2, 'quantform-bench')
    .message(7, graph)
    .message(8, new Writer().string(1, '').int(2, 17))
    .message(8, new Writer().string(1, 'com.microsoft').int(2, 1))
    .finish();
}
