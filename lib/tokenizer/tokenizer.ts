// What the runtime needs from a tokenizer, whichever format it came from.
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Token ids of `text`; with bos, BOS first (the dummy-prefix space is always added, as SentencePiece does). */
  encode(text: string, opts?: { bos?: boolean }): number[];
  /** Text of a whole id sequence (special tokens dropped). */
  decode(ids: readonly number[]): string;
}
