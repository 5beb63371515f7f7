// SentencePiece-style BPE over a scored vocabulary, as llama2.c's run.c encodes:
// dummy-prefix space, one piece per UTF-8 code point (byte fallback <0xXX> = id
// byte + 3 otherwise), then repeatedly merge the adjacent pair whose merged piece
// has the highest score (leftmost on ties). A heap with lazy invalidation makes it
// O(n log n) instead of run.c's O(n^2), with the same merge order.
// Vocabularies come from llama2.c tokenizer.bin files or GGUF metadata.
import { QuantformError, invalidParameter, is } from '../errors.js';
import { CheckpointFile, FileCursor } from '../io/file.js';
import type { Tokenizer } from './tokenizer.js';

export class SentencePieceBpe implements Tokenizer {
  readonly vocabSize: number;
  /** pieces as latin1 strings of their UTF-8 bytes */
  private readonly pieces: string[];
  private readonly lookup = new Map<string, number>();
  private readonly byteBase: number;

  constructor(pieces: Buffer[], private readonly scores: Float32Array, readonly bosId = 1, readonly eosId = 2) {
    if (!Array.isArray(pieces) || pieces.length === 0 || !pieces.every((p) => p instanceof Uint8Array))
      throw invalidParameter('non-empty array of Buffers (UTF-8 pieces)', 'pieces', pieces);
    if (!(scores instanceof Float32Array) || scores.length !== pieces.length)
      throw invalidParameter(`Float32Array of ${pieces.length} scores`, 'scores', scores, 'QF_SHAPE_MISMATCH');
    for (const [k, v] of [['bosId', bosId], ['eosId', eosId]] as const)
      if (!Number.isInteger(v) || v < -1 || v >= pieces.length) throw invalidParameter(`integer in [-1, ${pieces.length})`, k, v);
    this.vocabSize = pieces.length;
    this.pieces = pieces.map((p) => p.toString('latin1'));
    // the first id of a piece wins, as run.c's sorted lookup finds one of equal strings
    this.pieces.forEach((p, i) => {
      if (!this.lookup.has(p)) this.lookup.set(p, i);
    });
    const b0 = this.pieces.indexOf('<0x00>');
    this.byteBase = b0 >= 0 ? b0 : 3;
  }

  /** The scored pieces (UTF-8 bytes, ' ' for spaces), for exporters that write the vocabulary out. */
  vocabulary(): { pieces: Buffer[]; scores: Float32Array } {
    return { pieces: this.pieces.map((p) => Buffer.from(p, 'latin1')), scores: this.scores.slice() };
  }

  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    if (!is.string(text)) throw invalidParameter('string', 'text', text);
    const ids: number[] = [];
    if (opts.bos !== false) ids.push(this.bosId);
    if (text.length === 0) return ids;
    const bytes = Buffer.from(text, 'utf8');
    // symbols as (piece string, id); merges operate on a doubly linked list
    const sym: string[] = [], tok: number[] = [];
    const space = this.lookup.get(' ');
    if (space !== undefined) { sym.push(' '); tok.push(space); }
    for (let i = 0; i < bytes.length; ) {
      let j = i + 1;
      while (j < bytes.length && j - i < 4 && (bytes[j] & 0xc0) === 0x80) j++;
      const cp = bytes.toString('latin1', i, j);
      const id = this.lookup.get(cp);
      if (id !== undefined) { sym.push(cp); tok.push(id); }
      else for (let k = i; k < j; k++) { sym.push(String.fromCharCode(bytes[k])); tok.push(bytes[k] + this.byteBase); }
      i = j;
    }
    const n = sym.length;
    const next = new Int32Array(n), prev = new Int32Array(n), ver = new Int32Array(n);
    for (let i = 0; i < n; i++) { next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; }
    const alive = new Uint8Array(n).fill(1);
    const heap = new PairHeap();
    const push = (l: number): void => {
      const r = next[l];
      if (r < 0) return;
      const id = this.lookup.get(sym[l] + sym[r]);
      if (id !== undefined) heap.push(this.scores[id], l, ver[l], ver[r], r, id);
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    for (;;) {
      const top = heap.pop();
      if (!top) break;
      const { left: l, right: r, vl, vr, id } = top;
      if (!alive[l] || !alive[r] || ver[l] !== vl || ver[r] !== vr || next[l] !== r) continue;
      sym[l] = sym[l] + sym[r];
      tok[l] = id;
      ver[l]++;
      alive[r] = 0;
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      if (prev[l] >= 0) push(prev[l]);
      push(l);
    }
    for (let i = 0; i >= 0 && i < n; i = next[i]) ids.push(tok[i]);
    return ids;
  }

  /** Text of one token following `prev` (run.c decode: BOS strips the next leading space, <0xXX> is a raw byte). */
  pieceBytes(prev: number, id: number): Buffer {
    if (id === this.bosId || id === this.eosId) return Buffer.alloc(0);
    let p = this.pieces[id] ?? '';
    if (prev === this.bosId && p.startsWith(' ')) p = p.slice(1);
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p);
    if (m) return Buffer.from([parseInt(m[1], 16)]);
    return Buffer.from(p, 'latin1');
  }

  /** The vocabulary as a llama2.c tokenizer.bin (loadLlama2cTokenizer reads it back), for checkpoints written without tokenizer.json. */
  toLlama2cBytes(): Buffer {
    const bytes = this.pieces.map((p) => Buffer.from(p, 'latin1'));
    const head = Buffer.alloc(4);
    head.writeInt32LE(Math.max(1, ...bytes.map((b) => b.length)));
    const parts: Buffer[] = [head];
    bytes.forEach((b, i) => {
      const e = Buffer.alloc(8);
      e.writeFloatLE(this.scores[i], 0);
      e.writeInt32LE(b.length, 4);
      parts.push(e, b);
    });
    return Buffer.concat(parts);
  }

  decode(ids: readonly number[]): string {
    if (!Array.isArray(ids) || !ids.every((i) => Number.isInteger(i))) throw invalidParameter('array of integer token ids', 'ids', ids);
    const parts: Buffer[] = [];
    let prev = -1;
    for (const id of ids) {
      parts.push(this.pieceBytes(prev, id));
      prev = id;
    }
    return Buffer.concat(parts).toString('utf8');
  }
}

/** Max-heap on (score, -left): the best-scoring pair, leftmost first. */
class PairHeap {
  private score: number[] = [];
  private left: number[] = [];
  private vl: number[] = [];
  private vr: number[] = [];
  private right: number[] = [];
  private id: number[] = [];

  private better(a: number, b: number): boolean {
    return this.score[a] > this.score[b] || (this.score[a] === this.score[b] && this.left[a] < this.left[b]);
  }

  private swap(a: number, b: number): void {
    for (const arr of [this.score, this.left, this.vl, this.vr, this.right, this.id]) {
      const t = arr[a]; arr[a] = arr[b]; arr[b] = t;
    }
  }

  push(score: number, left: number, vl: number, vr: number, right: number, id: number): void {
    let i = this.score.length;
    this.score.push(score); this.left.push(left); this.vl.push(vl); this.vr.push(vr); this.right.push(right); this.id.push(id);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.better(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): { left: number; right: number; vl: number; vr: number; id: number } | undefined {
    const n = this.score.length;
    if (n === 0) return undefined;
    const out = { left: this.left[0], right: this.right[0], vl: this.vl[0], vr: this.vr[0], id: this.id[0] };
    this.swap(0, n - 1);
    for (const arr of [this.score, this.left, this.vl, this.vr, this.right, this.id]) arr.pop();
    let i = 0;
    const m = n - 1;
    for (;;) {
      const a = 2 * i + 1, b = a + 1;
      let best = i;
      if (a < m && this.better(a, best)) best = a;
      if (b < m && this.better(b, best)) best = b;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
    return out;
  }
}

/** llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes. */
export function loadLlama2cTokenizer(file: string, vocabSize: number): SentencePieceBpe {
  if (!is.string(file) || file.length === 0) throw invalidParameter('path of a tokenizer.bin file', 'file', file);
  // the file does not record its vocabulary size: it comes from the model's header
  if (!is.positiveInteger(vocabSize)) throw invalidParameter('positive integer (the model\'s vocabulary size)', 'vocabSize', vocabSize);
  const f = new CheckpointFile(file);
  try {
    const c = new FileCursor(f);
    const maxLen = c.i32('max_token_length');
    if (maxLen <= 0 || maxLen > 1 << 16) throw new QuantformError('QF_CORRUPT_FILE', `${file}: max_token_length ${maxLen} is implausible`);
    // each entry is at least 8 bytes: a vocabulary the file cannot hold is refused before allocating
    if (vocabSize * 8 > f.size - 4) throw new QuantformError('QF_CORRUPT_FILE', `${file}: ${f.size} bytes cannot hold ${vocabSize} tokens (truncated?)`);
    const pieces: Buffer[] = [];
    const scores = new Float32Array(vocabSize);
    for (let i = 0; i < vocabSize; i++) {
      scores[i] = c.f32(`score of token ${i}`);
      const len = c.i32(`length of token ${i}`);
      if (len < 0 || len > maxLen) throw new QuantformError('QF_CORRUPT_FILE', `${file}: token ${i} has length ${len} outside [0, ${maxLen}]`);
      pieces.push(Buffer.from(c.bytes(len, `token ${i}`)));
    }
    return new SentencePieceBpe(pieces, scores);
  } finally {
    f.close();
  }
}
