// The protocol buffers wire format (developers.google.com/protocol-buffers/docs/encoding),
// as much of it as quantform needs: writing ONNX ModelProto messages and reading
// SentencePiece ModelProto files (tokenizer.model). Hand-written because the only
// messages involved are a dozen fixed ONNX/SentencePiece ones: a schema compiler
// (protobufjs, google-protobuf) would add a runtime dependency and generated code
// for ~150 lines of varints and length prefixes.
import { QuantformError } from '../errors.js';

const WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5;

/** Builds one message; nested messages are written into their own ProtoWriter and embedded. */
export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private cur = new Uint8Array(256);
  private pos = 0;
  private flushed = 0;

  private room(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.flush();
    if (n > this.cur.length) this.cur = new Uint8Array(Math.max(n, this.cur.length * 2));
  }

  private flush(): void {
    if (this.pos === 0) return;
    this.chunks.push(this.cur.slice(0, this.pos));
    this.flushed += this.pos;
    this.pos = 0;
  }

  get length(): number {
    return this.flushed + this.pos;
  }

  private rawVarint(v: number | bigint): void {
    this.room(10);
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.cur[this.pos++] = Number(x & 0x7fn) | 0x80;
      x >>= 7n;
    }
    this.cur[this.pos++] = Number(x);
  }

  private key(field: number, wire: number): void {
    this.rawVarint((field << 3) | wire);
  }

  /** int32/int64/uint64/bool/enum fields (negative values as 10-byte two's complement, as protobuf does) */
  varint(field: number, v: number | bigint | boolean): this {
    this.key(field, WIRE_VARINT);
    this.rawVarint(typeof v === 'boolean' ? (v ? 1 : 0) : v);
    return this;
  }

  float(field: number, v: number): this {
    this.key(field, WIRE_I32);
    this.room(4);
    new DataView(this.cur.buffer, this.cur.byteOffset + this.pos, 4).setFloat32(0, v, true);
    this.pos += 4;
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.key(field, WIRE_LEN);
    this.rawVarint(b.length);
    this.flush();
    this.chunks.push(b);
    this.flushed += b.length;
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, Buffer.from(s, 'utf8'));
  }

  message(field: number, m: ProtoWriter): this {
    this.key(field, WIRE_LEN);
    this.rawVarint(m.length);
    m.flush();
    this.flush();
    for (const c of m.chunks) this.chunks.push(c);
    this.flushed += m.length;
    return this;
  }

  /** packed repeated int64 */
  packedVarints(field: number, values: ArrayLike<number | bigint>): this {
    const inner = new ProtoWriter();
    for (let i = 0; i < values.length; i++) inner.rawVarint(values[i]);
    this.key(field, WIRE_LEN);
    this.rawVarint(inner.length);
    inner.flush();
    this.flush();
    for (const c of inner.chunks) this.chunks.push(c);
    this.flushed += inner.length;
    return this;
  }

  /** The message's bytes as one buffer. */
  finish(): Buffer {
    this.flush();
    return Buffer.concat(this.chunks);
  }

  /** The message's bytes as chunks, for streaming large messages to a file without one big copy. */
  parts(): Uint8Array[] {
    this.flush();
    return this.chunks;
  }
}

export interface ProtoField {
  field: number;
  wire: number;
  /** varint fields */
  int?: bigint;
  /** length-delimited fields */
  bytes?: Uint8Array;
  /** fixed32 / fixed64 fields, raw */
  fixed?: Uint8Array;
}

/** Decodes one message into its fields in order (nested messages stay bytes: decode them again). */
export function readProto(buf: Uint8Array, what: string): ProtoField[] {
  const out: ProtoField[] = [];
  let p = 0;
  const fail = (msg: string) => new QuantformError('QF_CORRUPT_FILE', `${what}: ${msg} at byte ${p}`);
  const varint = (): bigint => {
    let v = 0n, shift = 0n;
    for (;;) {
      if (p >= buf.length) throw fail('truncated varint');
      const b = buf[p++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
      if (shift > 63n) throw fail('varint longer than 10 bytes');
    }
  };
  while (p < buf.length) {
    const k = Number(varint());
    const field = k >>> 3, wire = k & 7;
    if (field === 0) throw fail('field number 0');
    if (wire === WIRE_VARINT) out.push({ field, wire, int: varint() });
    else if (wire === WIRE_LEN) {
      const n = Number(varint());
      if (n > buf.length - p) throw fail(`length ${n} runs past the end (${buf.length - p} bytes left)`);
      out.push({ field, wire, bytes: buf.subarray(p, p + n) });
      p += n;
    } else if (wire === WIRE_I32 || wire === WIRE_I64) {
      const n = wire === WIRE_I32 ? 4 : 8;
      if (n > buf.length - p) throw fail('truncated fixed-width field');
      out.push({ field, wire, fixed: buf.subarray(p, p + n) });
      p += n;
    } else throw fail(`unsupported wire type ${wire}`);
  }
  return out;
}

export function fixedFloat(f: ProtoField): number {
  const b = f.fixed!;
  return new DataView(b.buffer, b.byteOffset, 4).getFloat32(0, true);
}
