// SentencePiece tokenizer.model files (protobuf ModelProto, sentencepiece_model.proto)
// read without a protobuf dependency (lib/io/protobuf.ts readProto checks every
// length against the bytes that remain): only the fields a BPE vocabulary needs
// (pieces with score and type, trainer_spec model_type and special ids, the
// normalizer's flags). Llama 1/2 and
// Mistral ship their tokenizer this way; llama2.c's tokenizer.bin is exported from
// the same pieces and scores, so both encode through SentencePieceBpe identically.
import { readFileSync } from 'node:fs';
import { QuantformError, invalidParameter, is } from '../errors.js';
import { fixedFloat, readProto } from '../io/protobuf.js';
import { SentencePieceBpe } from './sentencepiece.js';

/** sentencepiece_model.proto TrainerSpec.ModelType */
const MODEL_TYPES: Record<number, string> = { 1: 'UNIGRAM', 2: 'BPE', 3: 'WORD', 4: 'CHAR' };

export interface SentencePieceModel {
  pieces: string[];
  scores: Float32Array;
  /** SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte */
  types: Uint8Array;
  modelType: string;
  unkId: number;
  bosId: number;
  eosId: number;
  /** -1: none */
  padId: number;
  /** normalizer_spec: a space before the text (SentencePiece's dummy prefix) */
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
}

/** an int32 field as protobuf carries it (sign-extended to 64 bits on the wire) */
const int32 = (v: bigint) => Number(BigInt.asIntN(32, v));

/**
 * The one tokenizer.model parser (the loader's and the GGUF exporter's): pieces,
 * trainer_spec model type and special ids, normalizer flags. `source` names the
 * bytes in errors.
 */
export function parseSentencePieceModel(buf: Uint8Array, source: string): SentencePieceModel {
  const pieces: string[] = [], scores: number[] = [], types: number[] = [];
  let modelType = 1, unkId = 0, bosId = 1, eosId = 2, padId = -1, addDummyPrefix = true, removeExtraWhitespaces = true;
  const corrupt = (why: string) => new QuantformError('QF_CORRUPT_FILE', `${source}: ${why} (not a SentencePiece model, or truncated)`);
  for (const f of readProto(buf, source)) {
    if (f.field === 1 && f.bytes) {
      let piece: string | null = null, score = 0, type = 1;
      for (const g of readProto(f.bytes, `${source} piece ${pieces.length}`)) {
        if (g.field === 1 && g.bytes) piece = Buffer.from(g.bytes).toString('utf8');
        else if (g.field === 2 && g.fixed?.length === 4) score = fixedFloat(g);
        else if (g.field === 3 && g.int !== undefined) type = int32(g.int);
      }
      if (piece === null) throw corrupt(`piece ${pieces.length} has no string`);
      if (type < 1 || type > 6) throw corrupt(`piece ${pieces.length} has type ${type}`);
      pieces.push(piece);
      scores.push(score);
      types.push(type);
    } else if (f.field === 2 && f.bytes) {
      for (const g of readProto(f.bytes, `${source} trainer_spec`)) {
        if (g.int === undefined) continue;
        const v = int32(g.int);
        if (g.field === 3) modelType = v;
        else if (g.field === 40) unkId = v;
        else if (g.field === 41) bosId = v;
        else if (g.field === 42) eosId = v;
        else if (g.field === 43) padId = v;
      }
    } else if (f.field === 3 && f.bytes) {
      for (const g of readProto(f.bytes, `${source} normalizer_spec`)) {
        if (g.field === 3 && g.int !== undefined) addDummyPrefix = g.int !== 0n;
        if (g.field === 4 && g.int !== undefined) removeExtraWhitespaces = g.int !== 0n;
      }
    }
  }
  if (pieces.length === 0) throw new QuantformError('QF_CORRUPT_FILE', `${source}: no pieces (not a SentencePiece model)`);
  const n = pieces.length;
  for (const [name, id] of [['unk_id', unkId], ['bos_id', bosId], ['eos_id', eosId], ['pad_id', padId]] as const)
    if (!(id === -1 || (id >= 0 && id < n)))
      throw new QuantformError('QF_CORRUPT_FILE', `${source}: trainer_spec ${name} ${id} is outside the ${n} pieces`);
  return {
    pieces, scores: Float32Array.from(scores), types: Uint8Array.from(types), modelType: MODEL_TYPES[modelType] ?? `type ${modelType}`,
    unkId, bosId, eosId, padId, addDummyPrefix, removeExtraWhitespaces,
  };
}

/** Parses the vocabulary of a tokenizer.model file (parseSentencePieceModel). */
export function readSentencePieceModel(file: string): SentencePieceModel {
  if (!is.string(file) || file.length === 0) throw invalidParameter('path of a tokenizer.model file', 'file', file);
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parseSentencePieceModel(buf, file);
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
