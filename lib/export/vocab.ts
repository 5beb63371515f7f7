// The SentencePiece-style vocabulary GGUF stores (tokenizer.ggml.model 'llama':
// pieces with '▁' for spaces, scores, token types, special ids) and llama.cpp's
// SPM tokenizer reads: repeatedly merge the adjacent pair whose merged piece has the
// highest score. Built from whatever the source checkpoint carries:
//   tokenizer.model  the SentencePiece protobuf (scores and types as trained)
//   tokenizer.json   a Hugging Face BPE with byte fallback: the score of a piece is
//                    minus the rank of the first merge that forms it, which orders
//                    SPM's merges as the BPE ranks do (exact for tokenizer.json files
//                    converted from SentencePiece: Llama 1/2, Mistral, TinyLlama)
//   tokenizer.bin    llama2.c's scored vocabulary
//   GGUF metadata    as stored
// Whatever the source, the vocabulary is checked before export: quantform's
// SentencePieceBpe (which follows llama.cpp's SPM algorithm) must encode a probe
// text exactly as the model's own tokenizer does, or the export is refused.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { parseJsonObject } from '../io/json.js';
import { isHfDirectory, needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import type { GgufCheckpoint } from '../model/gguf.js';
import { loadLlama2cTokenizer, SentencePieceBpe } from '../tokenizer/sentencepiece.js';
import { parseSentencePieceModel } from '../tokenizer/sentencepiece-model.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';

/** GGUF / SentencePiece token types. */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface SpmVocab {
  /** pieces, '▁' (U+2581) for spaces */
  tokens: string[];
  scores: Float32Array;
  /** TOKEN_TYPE per token */
  types: Uint8Array;
  bosId: number;
  eosId: number;
  unkId: number;
  padId: number | null;
  addBos: boolean;
  addEos: boolean;
  /** SentencePiece's dummy prefix: a space before the text */
  addSpacePrefix: boolean;
  /** where it came from, for reports and errors */
  source: string;
}

/** An SpmVocab passed in by a caller (plain JS): parallel tokens, scores and types, ids inside them. */
export function needVocab(v: unknown, name = 'vocab'): asserts v is SpmVocab {
  need.object(v, name);
  const o = v as Record<string, unknown>;
  if (!Array.isArray(o.tokens) || o.tokens.length === 0 || !o.tokens.every((t) => typeof t === 'string'))
    throw invalidParameter('non-empty array of strings', `${name}.tokens`, o.tokens);
  const n = o.tokens.length;
  if (!(o.scores instanceof Float32Array) || o.scores.length !== n) throw invalidParameter(`Float32Array of ${n} scores`, `${name}.scores`, o.scores, 'QF_SHAPE_MISMATCH');
  if (!(o.types instanceof Uint8Array) || o.types.length !== n) throw invalidParameter(`Uint8Array of ${n} token types`, `${name}.types`, o.types, 'QF_SHAPE_MISMATCH');
  for (const k of ['bosId', 'eosId', 'unkId'] as const)
    if (!(is.nonNegativeInteger(o[k]) && (o[k] as number) < n)) throw invalidParameter(`token id in [0, ${n})`, `${name}.${k}`, o[k]);
  if (o.padId !== null && !(is.nonNegativeInteger(o.padId) && o.padId < n)) throw invalidParameter(`null or a token id in [0, ${n})`, `${name}.padId`, o.padId);
  for (const k of ['addBos', 'addEos', 'addSpacePrefix'] as const) need.bool(o[k], `${name}.${k}`);
  need.string(o.source, `${name}.source`);
}

const SPACE = '\u2581';
const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

function unsupported(source: string, why: string): QuantformError {
  return new QuantformError('QF_UNSUPPORTED', `${source}: GGUF cannot represent this tokenizer: ${why}`);
}

/** SentencePiece ModelProto (sentencepiece_model.proto): pieces = 1, trainer_spec = 2, normalizer_spec = 3. */
export function vocabFromSentencePiece(buf: Uint8Array, source: string, ids: { bos?: number; eos?: number } = {}): SpmVocab {
  need.instance(buf, Uint8Array, 'buf');
  need.string(source, 'source');
  need.object(ids, 'ids');
  const m = parseSentencePieceModel(buf, source);
  if (m.modelType !== 'BPE') throw unsupported(source, `SentencePiece model_type ${m.modelType}; llama.cpp's 'llama' vocabulary is BPE (2)`);
  if (m.removeExtraWhitespaces) throw unsupported(source, 'normalizer_spec.remove_extra_whitespaces is set (Llama tokenizers keep whitespace)');
  return {
    tokens: m.pieces, scores: m.scores, types: m.types,
    bosId: ids.bos ?? m.bosId, eosId: ids.eos ?? m.eosId, unkId: Math.max(0, m.unkId), padId: m.padId >= 0 ? m.padId : null,
    addBos: true, addEos: false, addSpacePrefix: m.addDummyPrefix, source,
  };
}

type Json = Record<string, unknown>;

function tokenContent(t: unknown): string | null {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof (t as Json).content === 'string') return (t as Json).content as string;
  return null;
}

/** Hugging Face tokenizer.json (+ tokenizer_config.json) of a SentencePiece-style BPE. */
export function vocabFromTokenizerJson(json: Json, config: Json, source: string, ids: { bos?: number; eos?: number } = {}): SpmVocab {
  need.object(json, 'json');
  need.object(config, 'config');
  need.string(source, 'source');
  need.object(ids, 'ids');
  const model = json.model as Json | undefined;
  if (!model || model.type !== 'BPE')
    throw unsupported(source, `model type '${String(model?.type)}' (only SentencePiece-style BPE: Llama 1/2, Mistral)`);
  if (model.byte_fallback !== true)
    throw unsupported(source, 'byte-level BPE without byte_fallback (GPT-2 / Llama 3 style) needs a llama.cpp pre-tokenizer, which quantform does not write');
  const vocab = model.vocab as Record<string, number>;
  const added = (Array.isArray(json.added_tokens) ? json.added_tokens : []) as Json[];
  let n = 0;
  for (const id of Object.values(vocab)) n = Math.max(n, id + 1);
  for (const a of added) n = Math.max(n, Number(a.id) + 1);
  const tokens = new Array<string | undefined>(n);
  for (const [piece, id] of Object.entries(vocab)) tokens[id] = piece;
  const special = new Set<number>();
  for (const a of added) {
    tokens[Number(a.id)] = String(a.content);
    if (a.special === true) special.add(Number(a.id));
  }
  const missing = tokens.findIndex((t) => t === undefined);
  if (missing >= 0) throw new QuantformError('QF_CORRUPT_FILE', `${source}: token id ${missing} has no piece (ids must be 0..${n - 1})`);
  const pieces = tokens as string[];
  const byPiece = new Map<string, number>();
  pieces.forEach((p, i) => { if (!byPiece.has(p)) byPiece.set(p, i); });
  const merges = (Array.isArray(model.merges) ? model.merges : []) as (string | string[])[];
  const scores = new Float32Array(n).fill(NaN);
  merges.forEach((m, rank) => {
    const [a, b] = typeof m === 'string' ? m.split(' ') : m;
    const id = byPiece.get(a + b);
    if (id !== undefined && Number.isNaN(scores[id])) scores[id] = -rank;
  });
  // pieces no merge forms (characters, bytes, specials) rank after every merge
  for (let i = 0; i < n; i++) if (Number.isNaN(scores[i])) scores[i] = -merges.length - i;
  const unkPiece = typeof model.unk_token === 'string' ? model.unk_token : null;
  const find = (key: string, fallback: number | undefined): number => {
    const c = tokenContent(config[key]);
    const id = c !== null ? byPiece.get(c) : undefined;
    return id ?? fallback ?? -1;
  };
  const unkId = unkPiece !== null ? byPiece.get(unkPiece) ?? 0 : 0;
  const types = new Uint8Array(n);
  for (let i = 0; i < n; i++)
    types[i] = i === unkId ? TOKEN_TYPE.UNKNOWN : special.has(i) ? TOKEN_TYPE.CONTROL : BYTE_PIECE.test(pieces[i]) ? TOKEN_TYPE.BYTE
      : added.some((a) => Number(a.id) === i) ? TOKEN_TYPE.USER_DEFINED : TOKEN_TYPE.NORMAL;
  const norm = json.normalizer as Json | null;
  const pre = json.pre_tokenizer as Json | null;
  const normalizers = norm ? (norm.type === 'Sequence' ? (norm.normalizers as Json[]) : [norm]) : [];
  const prepends = normalizers.some((x) => x.type === 'Prepend' && x.prepend === SPACE);
  const metaspace = pre && pre.type === 'Metaspace' ? pre : null;
  const addSpacePrefix = prepends || (metaspace !== null && (metaspace.prepend_scheme === 'first' || metaspace.prepend_scheme === 'always' || metaspace.add_prefix_space === true));
  const pad = find('pad_token', undefined);
  return {
    tokens: pieces, scores, types,
    bosId: find('bos_token', ids.bos ?? 1), eosId: find('eos_token', ids.eos ?? 2), unkId, padId: pad >= 0 ? pad : null,
    addBos: config.add_bos_token !== false, addEos: config.add_eos_token === true, addSpacePrefix, source,
  };
}

/** llama2.c pieces (' ' for spaces) and scores, as SentencePieceBpe holds them. */
export function vocabFromPieces(pieces: readonly Buffer[], scores: Float32Array, bosId: number, eosId: number, source: string): SpmVocab {
  // llama2.c writes BOS/EOS as '\n<s>\n' / '\n</s>\n'; SentencePiece's names are '<s>' / '</s>'
  const tokens = pieces.map((p, i) => (i === bosId || i === eosId ? p.toString('utf8').trim() : p.toString('utf8').replace(/ /g, SPACE)));
  const types = new Uint8Array(tokens.length);
  tokens.forEach((t, i) => {
    types[i] = i === 0 && t === '<unk>' ? TOKEN_TYPE.UNKNOWN : i === bosId || i === eosId ? TOKEN_TYPE.CONTROL
      : BYTE_PIECE.test(t) ? TOKEN_TYPE.BYTE : TOKEN_TYPE.NORMAL;
  });
  return { tokens, scores, types, bosId, eosId, unkId: 0, padId: null, addBos: true, addEos: false, addSpacePrefix: true, source };
}

function readJson(file: string): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parseJsonObject(text, file);
}

/** The vocabulary of a checkpoint, from the tokenizer files it carries. */
export function vocabFromCheckpoint(ck: Checkpoint): SpmVocab {
  needCheckpoint(ck);
  const ids = { bos: ck.config.bosId, eos: ck.config.eosId };
  if (ck.format === 'gguf') return vocabFromGgufMetadata(ck as GgufCheckpoint);
  if (isHfDirectory(ck)) {
    const spm = path.join(ck.path, 'tokenizer.model'), tj = path.join(ck.path, 'tokenizer.json');
    if (existsSync(spm)) {
      const v = vocabFromSentencePiece(readFileSync(spm), spm, ids);
      if (existsSync(path.join(ck.path, 'tokenizer_config.json'))) {
        const c = readJson(path.join(ck.path, 'tokenizer_config.json'));
        v.addBos = c.add_bos_token !== false;
        v.addEos = c.add_eos_token === true;
      }
      return v;
    }
    if (existsSync(tj)) {
      const cfgFile = path.join(ck.path, 'tokenizer_config.json');
      return vocabFromTokenizerJson(readJson(tj), existsSync(cfgFile) ? readJson(cfgFile) : {}, tj, ids);
    }
    throw new QuantformError('QF_IO', `${ck.path}: no tokenizer.model or tokenizer.json to build the GGUF vocabulary from`);
  }
  if (ck.format === 'llama2c') {
    const dir = path.dirname(ck.path);
    const file = [path.join(dir, 'tokenizer.bin'), path.join(dir, `tok${ck.config.vocabSize}.bin`)].find((p) => existsSync(p));
    if (!file) throw new QuantformError('QF_IO', `${ck.path}: no tokenizer.bin or tok${ck.config.vocabSize}.bin next to the checkpoint`);
    return vocabFromLlama2c(file, ck.config.vocabSize, ids.bos, ids.eos);
  }
  throw unsupported(ck.path, `a ${ck.format} model has no SentencePiece vocabulary (pass one explicitly)`);
}

function vocabFromLlama2c(file: string, vocabSize: number, bos: number, eos: number): SpmVocab {
  const { pieces, scores } = loadLlama2cTokenizer(file, vocabSize).vocabulary();
  return vocabFromPieces(pieces, scores, bos, eos, file);
}

function vocabFromGgufMetadata(ck: GgufCheckpoint): SpmVocab {
  const md = ck.header.metadata;
  const model = md.get('tokenizer.ggml.model');
  if (model !== undefined && model !== 'llama') throw unsupported(ck.path, `tokenizer.ggml.model '${String(model)}' (only 'llama' is re-exported)`);
  const tokens = md.get('tokenizer.ggml.tokens'), scores = md.get('tokenizer.ggml.scores'), types = md.get('tokenizer.ggml.token_type');
  if (!Array.isArray(tokens) || !Array.isArray(scores) || tokens.length !== scores.length)
    throw new QuantformError('QF_CORRUPT_FILE', `${ck.path}: no embedded vocabulary (tokenizer.ggml.tokens / scores)`);
  const pieces = (tokens as Buffer[]).map((b) => b.toString('utf8'));
  const t = Array.isArray(types) && types.length === pieces.length ? Uint8Array.from(types as number[])
    : vocabFromPieces(pieces.map((p) => Buffer.from(p.replace(/\u2581/g, ' '))), Float32Array.from(scores as number[]), ck.config.bosId, ck.config.eosId, ck.path).types;
  const num = (k: string, d: number) => (md.has(k) ? Number(md.get(k)) : d);
  const bool = (k: string, d: boolean) => (md.has(k) ? md.get(k) === true : d);
  const pad = md.get('tokenizer.ggml.padding_token_id');
  return {
    tokens: pieces, scores: Float32Array.from(scores as number[]), types: t,
    bosId: ck.config.bosId, eosId: ck.config.eosId, unkId: num('tokenizer.ggml.unknown_token_id', 0), padId: pad === undefined ? null : Number(pad),
    addBos: bool('tokenizer.ggml.add_bos_token', true), addEos: bool('tokenizer.ggml.add_eos_token', false),
    addSpacePrefix: bool('tokenizer.ggml.add_space_prefix', true), source: ck.path,
  };
}

/** Texts the vocabulary check encodes: prose, whitespace runs, digits, symbols, accents, CJK, emoji, control characters. */
export const VOCAB_PROBE = [
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the sun!',
  '"Can I have one?" asked Tom. Mom said, "Yes, but only one."\n\nThe end.',
  '  two leading spaces, double  spaces, a trailing space ',
  'Numbers 0123456789 and 3.14159; symbols #$%^&*()[]{}<>~`|\\/ @ + = _ -',
  'Accents: café, naïve, Ærøskøbing, Ελληνικά, русский; CJK: 東京タワー; emoji: 🦙🚀',
  'tabs\tand\r\nwindows line ends\u0000nul',
];

/**
 * Proves the vocabulary tokenizes like the model's tokenizer: SentencePieceBpe over
 * it (llama.cpp's SPM algorithm) against `tok` on VOCAB_PROBE; throws the first
 * difference.
 */
export function checkVocab(v: SpmVocab, tok: Tokenizer, probe: readonly string[] = VOCAB_PROBE): void {
  needVocab(v);
  need.object(tok, 'tok');
  need.func(tok.encode, 'tok.encode');
  if (!Array.isArray(probe) || !probe.every((t) => typeof t === 'string')) throw invalidParameter('array of strings', 'probe', probe);
  const spm = spmTokenizer(v);
  for (const text of probe) {
    const want = tok.encode(text, { bos: false }), got = spm.encode(text, { bos: false });
    if (want.length !== got.length || want.some((id, i) => id !== got[i])) {
      const at = want.findIndex((id, i) => id !== got[i]);
      throw unsupported(v.source,
        `its SentencePiece form tokenizes ${JSON.stringify(text)} differently from the model's tokenizer ` +
        `(first difference at token ${at < 0 ? Math.min(want.length, got.length) : at}: [${want.slice(0, 24).join(', ')}] vs [${got.slice(0, 24).join(', ')}])`);
    }
  }
}

/** quantform's SPM tokenizer over a vocabulary, as the GGUF loader builds it. */
export function spmTokenizer(v: SpmVocab): SentencePieceBpe {
  needVocab(v);
  const pieces = v.tokens.map((t) => Buffer.from(t.replace(/\u2581/g, ' '), 'utf8'));
  return new SentencePieceBpe(pieces, v.scores, v.bosId, v.eosId);
}

/**
 * A Hugging Face tokenizer.json for a vocabulary (Transformers.js reads it next to
 * an ONNX model): BPE with byte fallback whose merges are every split of each
 * multi-symbol piece into two pieces, ranked by the piece's score; the Llama
 * normalizer (prepend '▁', spaces to '▁') and decoder.
 */
export function tokenizerJsonFromVocab(v: SpmVocab): Json {
  needVocab(v);
  const vocab: Record<string, number> = {};
  v.tokens.forEach((t, i) => { if (!(t in vocab)) vocab[t] = i; });
  const ranked: { a: string; b: string; score: number; id: number }[] = [];
  v.tokens.forEach((t, id) => {
    if (v.types[id] !== TOKEN_TYPE.NORMAL && v.types[id] !== TOKEN_TYPE.USER_DEFINED) return;
    const cps = [...t];
    for (let i = 1; i < cps.length; i++) {
      const a = cps.slice(0, i).join(''), b = cps.slice(i).join('');
      if (a in vocab && b in vocab) ranked.push({ a, b, score: v.scores[id], id });
    }
  });
  ranked.sort((x, y) => y.score - x.score || x.id - y.id);
  const specials = v.tokens.map((t, id) => ({ t, id })).filter((x) => v.types[x.id] === TOKEN_TYPE.CONTROL || v.types[x.id] === TOKEN_TYPE.UNKNOWN);
  const bos = v.tokens[v.bosId];
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: specials.map(({ t, id }) => ({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: v.addSpacePrefix
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPACE }, { type: 'Replace', pattern: { String: ' ' }, content: SPACE }] }
      : { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
    pre_tokenizer: null,
    post_processor: v.addBos
      ? { type: 'TemplateProcessing', single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [v.bosId], tokens: [bos] } } }
      : null,
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: SPACE }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
      ...(v.addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [])] },
    model: { type: 'BPE', dropout: null, unk_token: v.tokens[v.unkId], continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: ranked.map((m) => [m.a, m.b]) },
  };
}
