// SentencePiece tokenizer.model files (protobuf ModelProto, sentencepiece_model.proto)
// read without a protobuf dependency: only the fields a BPE vocabulary needs
// (pieces with score and type, trainer_spec model_type and special ids), every
// length checked against the bytes that remain before it is used. Llama 1/2 and
// Mistral ship their tokenizer this way; llama2.c's tokenizer.bin is exported from
// the same pieces and scores, so both encode through SentencePieceBpe identically.
import { readFileSync } from 'node:fs';
import { QuantformError, invalidParameter, is } from '../errors.js';
import { SentencePieceBpe } from './sentencepiece.js';

/** sentencepiece_model.proto TrainerSpec.ModelType */
const MODEL_TYPES: Record<number, string> = { 1: 'UNIGRAM', 2: 'BPE', 3: 'WORD', 4: 'CHAR' };

class Reader {
  pos: number;
  constructor(private readonly buf: Buffer, private readonly file: string, start: number, readonly end: number) {
    this.pos = start;
  }

  corrupt(what: string): QuantformError {
    return new QuantformError('QF_CORRUPT_FILE', `${this.file}: ${what} at byte ${this.pos} (not a SentencePiece model, or truncated)`);
  }

  /** varint as a safe integer (tags, lengths, enums, int32 ids); at most 10 bytes */
  varint(what: string): number {
    let v = 0n, shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw this.corrupt(`${what} runs past the end`);
      const b = this.buf[this.pos++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) {
        // int32 fields are sign-extended to 64 bits on the wire
        const s = BigInt.asIntN(64, v);
        if (s > BigInt(Number.MAX_SAFE_INTEGER) || s < BigInt(Number.MIN_SAFE_INTEGER)) throw this.corrupt(`${what} ${s} is out of range`);
        return Number(s);
      }
      shift += 7n;
    }
    throw this.corrupt(`${what} is a varint longer than 10 bytes`);
  }

  /** a length-delimited field: [start, end) after checking it fits */
  span(what: string): [number, number] {
    const n = this.varint(`${what} length`);
    if (n < 0 || n > this.end - this.pos) throw this.corrupt(`${what} length ${n} exceeds the ${this.end - this.pos} bytes left`);
    const s = this.pos;
    this.pos += n;
    return [s, s + n];
  }

  fixed32(what: string): number {
    if (this.end - this.pos < 4) throw this.corrupt(`${what} runs past the end`);
    const v = this.buf.readFloatLE(this.pos);
    this.pos += 4;
    return v;
  }

  skip(wire: number, what: string): void {
    switch (wire) {
      case 0: this.varint(what); return;
      case 1: if (this.end - this.pos < 8) throw this.corrupt(`${what} runs past the end`); this.pos += 8; return;
      case 2: this.span(what); return;
      case 5: if (this.end - this.pos < 4) throw this.corrupt(`${what} runs past the end`); this.pos += 4; return;
      default: throw this.corrupt(`${what} has wire type ${wire}`);
    }
  }

  sub(start: number, end: number): Reader {
    return new Reader(this.buf, this.file, start, end);
  }
}

export interface SentencePieceModel {
  pieces: string[];
  scores: Float32Array;
  /** SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte */
  types: Uint8Array;
  modelType: string;
  unkId: number;
  bosId: number;
  eosId: number;
}

/** Parses the vocabulary of a tokenizer.model (no normalizer rules: Llama-style BPE models need none beyond the dummy prefix). */
export function readSentencePieceModel(file: string): SentencePieceModel {
  if (!is.string(file) || file.length === 0) throw invalidParameter('path of a tokenizer.model file', 'file', file);
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  const top = new Reader(buf, file, 0, buf.length);
  const pieces: string[] = [], scores: number[] = [], types: number[] = [];
  let modelType = 1, unkId = 0, bosId = 1, eosId = 2;
  while (top.pos < top.end) {
    const tag = top.varint('field tag');
    const field = Math.floor(tag / 8), wire = tag % 8;
    if (field === 1 && wire === 2) {
      const [s, e] = top.span(`piece ${pieces.length}`);
      const r = top.sub(s, e);
      let piece: string | null = null, score = 0, type = 1;
      while (r.pos < r.end) {
        const t = r.varint('piece field tag');
        const f = Math.floor(t / 8), w = t % 8;
        if (f === 1 && w === 2) {
          const [a, b] = r.span('piece string');
          piece = buf.toString('utf8', a, b);
        } else if (f === 2 && w === 5) score = r.fixed32('piece score');
        else if (f === 3 && w === 0) type = r.varint('piece type');
        else r.skip(w, `piece field ${f}`);
      }
      if (piece === null) throw top.corrupt(`piece ${pieces.length} has no string`);
      if (type < 1 || type > 6) throw top.corrupt(`piece ${pieces.length} has type ${type}`);
      pieces.push(piece);
      scores.push(score);
      types.push(type);
    } else if (field === 2 && wire === 2) {
      const [s, e] = top.span('trainer_spec');
      const r = top.sub(s, e);
      while (r.pos < r.end) {
        const t = r.varint('trainer_spec field tag');
        const f = Math.floor(t / 8), w = t % 8;
        if (w === 0 && (f === 3 || f === 40 || f === 41 || f === 42)) {
          const v = r.varint(`trainer_spec field ${f}`);
          if (f === 3) modelType = v;
          else if (f === 40) unkId = v;
          else if (f === 41) bosId = v;
          else eosId = v;
        } else r.skip(w, `trainer_spec field ${f}`);
      }
    } else top.skip(wire, `field ${field}`);
  }
  if (pieces.length === 0) throw new QuantformError('QF_CORRUPT_FILE', `${file}: no pieces (not a SentencePiece model)`);
  const n = pieces.length;
  for (const [name, id] of [['unk_id', unkId], ['bos_id', bosId], ['eos_id', eosId]] as const)
    if (!(id === -1 || (id >= 0 && id < n)))
      throw new QuantformError('QF_CORRUPT_FILE', `${file}: trainer_spec ${name} ${id} is outside the ${n} pieces`);
  return {
    pieces, scores: Float32Array.from(scores), types: Uint8Array.from(types), modelType: MODEL_TYPES[modelType] ?? `type ${modelType}`,
    unkId, bosId, eosId,
  };
}

/** A tokenizer.model (BPE, as Llama 1/2 and Mistral ship) as the SentencePiece BPE tokenizer. */
export function loadSentencePieceTokenizer(file: string): SentencePieceBpe {
  const m = readSentencePieceModel(file);
  if (m.modelType !== 'BPE')
    throw new QuantformError('QF_UNSUPPORTED', `${file}: SentencePiece model_type ${m.modelType} is not supported (BPE only)`);
  // '▁' marks a space in SentencePiece pieces; SentencePieceBpe works on plain spaces, as llama2.c's export does
  const pieces = m.pieces.map((p) => Buffer.from(p.replace(/\u2581/g, ' '), 'utf8'));
  return new SentencePieceBpe(pieces, m.scores, m.bosId, m.eosId);
}
