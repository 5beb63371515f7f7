// ONNX messages (onnx/onnx.proto, IR version 8) on the protobuf writer: tensors
// (inline or in an external data file), value infos, attributes, nodes, the graph
// and the model. Field numbers are those of onnx.proto.
import { ProtoWriter } from '../io/protobuf.js';

/** TensorProto.DataType */
export const ONNX_DTYPE = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10 } as const;
export type OnnxDType = (typeof ONNX_DTYPE)[keyof typeof ONNX_DTYPE];

/** IR version 8 pairs with opset 17 (onnxruntime 1.30 accepts IR <= 13). */
export const ONNX_IR_VERSION = 8;
export const ONNX_OPSET = 17;

export interface ExternalRef {
  location: string;
  offset: number;
  length: number;
}

/** A TensorProto: raw little-endian bytes inline, or a reference into an external data file. */
export function tensorProto(name: string, dtype: OnnxDType, dims: readonly number[], raw: Uint8Array | null, external?: ExternalRef): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of dims) w.varint(1, d);
  w.varint(2, dtype).string(8, name);
  if (external) {
    const kv = (k: string, v: string) => new ProtoWriter().string(1, k).string(2, v);
    w.message(13, kv('location', external.location)).message(13, kv('offset', String(external.offset))).message(13, kv('length', String(external.length)));
    w.varint(14, 1);  // data_location = EXTERNAL
  } else if (raw) w.bytes(9, raw);
  return w;
}

/** ValueInfoProto of a tensor; dims are sizes or symbolic names ('batch', 'past_sequence_length'). */
export function valueInfo(name: string, dtype: OnnxDType, dims: readonly (number | string)[]): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of dims) shape.message(1, typeof d === 'number' ? new ProtoWriter().varint(1, d) : new ProtoWriter().string(2, d));
  const tensorType = new ProtoWriter().varint(1, dtype).message(2, shape);
  return new ProtoWriter().string(1, name).message(2, new ProtoWriter().message(1, tensorType));
}

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | { tensor: ProtoWriter };

/** AttributeProto: integers (and integer lists) unless wrapped as { float } / { floats }. */
export function attribute(name: string, v: AttrValue): ProtoWriter {
  const w = new ProtoWriter().string(1, name);
  if (typeof v === 'number') return w.varint(3, v).varint(20, 2);
  if (typeof v === 'string') return w.string(4, v).varint(20, 3);
  if (Array.isArray(v)) {
    for (const x of v) w.varint(8, x);
    return w.varint(20, 7);
  }
  if ('float' in v) return w.float(2, v.float).varint(20, 1);
  if ('floats' in v) {
    for (const x of v.floats) w.float(7, x);
    return w.varint(20, 6);
  }
  return w.message(5, v.tensor).varint(20, 4);
}

export function nodeProto(op: string, inputs: readonly string[], outputs: readonly string[], name: string,
  attrs: Record<string, AttrValue> = {}, domain = ''): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of inputs) w.string(1, i);
  for (const o of outputs) w.string(2, o);
  w.string(3, name).string(4, op);
  for (const [k, v] of Object.entries(attrs)) w.message(5, attribute(k, v));
  if (domain) w.string(7, domain);
  return w;
}

export interface GraphParts {
  name: string;
  nodes: ProtoWriter[];
  initializers: ProtoWriter[];
  inputs: ProtoWriter[];
  outputs: ProtoWriter[];
}

export function modelProto(g: GraphParts, opts: { producerVersion: string; docString?: string; metadata?: Record<string, string> }): ProtoWriter {
  const graph = new ProtoWriter();
  for (const n of g.nodes) graph.message(1, n);
  graph.string(2, g.name);
  for (const t of g.initializers) graph.message(5, t);
  for (const i of g.inputs) graph.message(11, i);
  for (const o of g.outputs) graph.message(12, o);
  const m = new ProtoWriter()
    .varint(1, ONNX_IR_VERSION)
    .string(2, 'quantform')
    .string(3, opts.producerVersion);
  if (opts.docString) m.string(6, opts.docString);
  m.message(7, graph)
    .message(8, new ProtoWriter().string(1, '').varint(2, ONNX_OPSET))
    .message(8, new ProtoWriter().string(1, 'com.microsoft').varint(2, 1));
  for (const [k, v] of Object.entries(opts.metadata ?? {})) m.message(14, new ProtoWriter().string(1, k).string(2, v));
  return m;
}
