// Hugging Face tokenizer.json through @huggingface/tokenizers (tokenizers.js, the
// tokenizer of Transformers.js): a maintained implementation of every HF model
// type, normalizer and decoder, rather than a hand-written subset.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { QuantformError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import type { Tokenizer } from './tokenizer.js';

class HfTokenizerAdapter implements Tokenizer {
  constructor(
    private readonly tok: HfTokenizer,
    readonly vocabSize: number,
    readonly bosId: number,
    readonly eosId: number,
  ) {}

  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    return opts.bos === false ? ids : [this.bosId, ...ids];
  }

  decode(ids: readonly number[]): string {
    return this.tok.decode([...ids], { skip_special_tokens: true });
  }
}

export function loadHfTokenizer(dir: string, cfg: LlamaConfig): Tokenizer {
  const file = path.join(dir, 'tokenizer.json');
  let json: Record<string, unknown>, config: Record<string, unknown> = {};
  try {
    json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  try {
    config = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    // optional: tokenizer.json alone is enough for Llama-style tokenizers
  }
  const tok = new HfTokenizer(json, config);
  return new HfTokenizerAdapter(tok, cfg.vocabSize, cfg.bosId, cfg.eosId);
}
