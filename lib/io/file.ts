// Positional reads from a checkpoint file: nothing is read that the caller did
// not ask for by offset, so a model larger than memory can be fetched tensor by
// tensor, and a lying header cannot make us allocate what the file does not hold.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { QuantformError, need } from '../errors.js';

export class CheckpointFile {
  readonly path: string;
  readonly size: number;
  private handle: number | null;

  constructor(path: string) {
    need.string(path, 'path');
    this.path = path;
    let st;
    try {
      this.handle = openSync(path, 'r');
      st = fstatSync(this.handle);
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
    this.size = st.size;
    if (!st.isFile()) {
      closeSync(this.handle);
      this.handle = null;
      throw new QuantformError('QF_IO', `Cannot read ${path}: not a regular file`);
    }
  }

  /** The OS file descriptor, for native positional reads (valid until close()). */
  get fd(): number {
    if (this.handle === null) throw new QuantformError('QF_IO', `${this.path} was closed`);
    return this.handle;
  }

  /** Bytes [offset, offset + length); `what` names the thing read, for the error message. */
  read(offset: number, length: number, what: string): Buffer {
    if (this.handle === null) throw new QuantformError('QF_IO', `${this.path} was closed before reading ${what}`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size)
      throw new QuantformError(
        'QF_CORRUPT_FILE',
        `${this.path}: ${what} spans bytes [${offset}, ${offset + length}) but the file has ${this.size} bytes (truncated or corrupt)`,
      );
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = readSync(this.handle, buf, done, length - done, offset + done);
      } catch (e) {
        throw new QuantformError('QF_IO', `${this.path}: reading ${what} failed: ${(e as Error).message}`, { cause: e });
      }
      if (n === 0) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: unexpected end of file reading ${what}`);
      done += n;
    }
    return buf;
  }

  close(): void {
    if (this.handle !== null) closeSync(this.handle);
    this.handle = null;
  }
}

/** Sequential little-endian reads over a CheckpointFile, fetched in chunks. */
export class FileCursor {
  private buf: Buffer = Buffer.alloc(0);
  private bufStart = 0;
  pos: number;

  constructor(readonly file: CheckpointFile, start = 0, private readonly chunk = 1 << 20) {
    this.pos = start;
  }

  get remaining(): number {
    return this.file.size - this.pos;
  }

  bytes(n: number, what: string): Buffer {
    if (n > this.remaining)
      throw new QuantformError('QF_CORRUPT_FILE', `${this.file.path}: ${what} needs ${n} bytes at offset ${this.pos} but only ${this.remaining} remain (truncated or corrupt)`);
    const rel = this.pos - this.bufStart;
    if (rel < 0 || rel + n > this.buf.length) {
      this.bufStart = this.pos;
      this.buf = this.file.read(this.pos, Math.min(Math.max(n, this.chunk), this.remaining), what);
    }
    const r = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(r, r + n);
  }

  u8(what: string): number { return this.bytes(1, what).readUInt8(0); }
  i8(what: string): number { return this.bytes(1, what).readInt8(0); }
  u16(what: string): number { return this.bytes(2, what).readUInt16LE(0); }
  i16(what: string): number { return this.bytes(2, what).readInt16LE(0); }
  u32(what: string): number { return this.bytes(4, what).readUInt32LE(0); }
  i32(what: string): number { return this.bytes(4, what).readInt32LE(0); }
  f32(what: string): number { return this.bytes(4, what).readFloatLE(0); }
  f64(what: string): number { return this.bytes(8, what).readDoubleLE(0); }
  /** u64 as a safe integer; larger values are an error (no file of ours is 2^53 bytes). */
  u64(what: string): number {
    const v = this.bytes(8, what).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER))
      throw new QuantformError('QF_CORRUPT_FILE', `${this.file.path}: ${what} is ${v}, beyond any plausible size`);
    return Number(v);
  }
  i64(what: string): number {
    const v = this.bytes(8, what).readBigInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER))
      throw new QuantformError('QF_CORRUPT_FILE', `${this.file.path}: ${what} is ${v}, out of range`);
    return Number(v);
  }
}
