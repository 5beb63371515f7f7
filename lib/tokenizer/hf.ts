// Hugging Face tokenizer.json through @huggingface/tokenizers (tokenizers.js, the
// tokenizer of Transformers.js): a maintained implementation of every HF model
// type, normalizer and decoder, rather than a hand-written subset.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { parseJsonObject } from '../io/json.js';
import type { LlamaConfig } from '../model/config.js';
import type { Tokenizer } from './tokenizer.js';
import { loadSentencePieceTokenizer } from './sentencepiece-model.js';

class HfTokenizerAdapter implements Tokenizer {
  constructor(
    private readonly tok: HfTokenizer,
    readonly vocabSize: number,
    readonly bosId: number,
    readonly eosId: number,
    private readonly file: string,
  ) {}

  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    if (!is.string(text)) throw invalidParameter('string', 'text', text);
    const ids = this.guard(() => this.tok.encode(text, { add_special_tokens: false }).ids);
    return opts?.bos === false ? ids : [this.bosId, ...ids];
  }

  decode(ids: readonly number[]): string {
    if (!Array.isArray(ids) || !ids.every((i) => Number.isInteger(i))) throw invalidParameter('array of integer token ids', 'ids', ids);
    return this.guard(() => this.tok.decode([...ids], { skip_special_tokens: true }));
  }

  private guard<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw new QuantformError('QF_CORRUPT_FILE', `${this.file}: the tokenizer failed (${(e as Error)?.message ?? String(e)})`, { cause: e });
    }
  }
}

export function loadHfTokenizer(dir: string, cfg: LlamaConfig): Tokenizer {
  need.string(dir, 'dir');
  need.object(cfg, 'config');
  for (const k of ['vocabSize', 'bosId', 'eosId'] as const) need.nonNegativeInteger(cfg[k], `config.${k}`);
  const file = path.join(dir, 'tokenizer.json');
  // older Llama/Mistral repositories ship only the SentencePiece model
  if (!existsSync(file) && existsSync(path.join(dir, 'tokenizer.model'))) return loadSentencePieceTokenizer(path.join(dir, 'tokenizer.model'));
  let text: string, config: Record<string, unknown> = {};
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  const json = parseJsonObject(text, file);
  try {
    config = parseJsonObject(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'), path.join(dir, 'tokenizer_config.json'));
  } catch {
    // optional: tokenizer.json alone is enough for Llama-style tokenizers
  }
  // the library trusts the document's structure; what it throws (or throws on first
  // use) for a malformed one is this file's fault, so it is raised here, at load
  let adapter: HfTokenizerAdapter;
  try {
    adapter = new HfTokenizerAdapter(new HfTokenizer(json, config), cfg.vocabSize, cfg.bosId, cfg.eosId, file);
    adapter.decode(adapter.encode('a b'));
  } catch (e) {
    if (e instanceof QuantformError) throw e;
    throw new QuantformError('QF_CORRUPT_FILE', `${file} is not a usable tokenizer: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  }
  return adapter;
}
