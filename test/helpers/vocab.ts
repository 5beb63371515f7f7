// A SentencePiece vocabulary for synthetic models (which have a byte tokenizer, not a vocabulary an exporter can write).
import { TOKEN_TYPE, type SpmVocab } from '../../lib/index.js';

/** V tokens: <unk>, <s>, </s>, the 256 byte tokens, then filler pieces. */
export function testVocab(V: number): SpmVocab {
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, '0')}>`)];
  while (tokens.length < V) tokens.push(`\u2581w${tokens.length}`);
  const types = Uint8Array.from(tokens, (_, i) => (i === 0 ? TOKEN_TYPE.UNKNOWN : i < 3 ? TOKEN_TYPE.CONTROL : i < 259 ? TOKEN_TYPE.BYTE : TOKEN_TYPE.NORMAL));
  return { tokens, scores: Float32Array.from(tokens, (_, i) => -i), types, bosId: 1, eosId: 2, unkId: 0, padId: null, addBos: true, addEos: false, addSpacePrefix: true, source: 'test vocabulary' };
}
