// Text generation: prefill the prompt in one forward call, then one token per call
// from the KV cache. temperature 0 is greedy (argmax, lowest id on ties, as run.c);
// otherwise softmax(logits / temperature) with optional top-p (nucleus) sampling,
// drawn with run.c's xorshift64* generator so a seed reproduces a sequence.
import { invalidParameter, is, need } from '../errors.js';
import { Model } from '../model/model.js';

export interface GenerateOptions {
  /** tokens to generate (default 256) */
  maxTokens?: number;
  /** 0 = greedy (default 0) */
  temperature?: number;
  /** nucleus threshold in (0, 1]; 1 disables (default 0.9) */
  topP?: number;
  seed?: number;
  /** stop at EOS or BOS (default true) */
  stopAtEos?: boolean;
}

export interface GeneratedToken {
  id: number;
  /** text this token adds to the output */
  text: string;
}

/** run.c's RNG: xorshift64* on a 64-bit state, top 32 bits -> float in [0, 1). */
class XorShift {
  private state: bigint;
  constructor(seed: number) {
    this.state = BigInt(seed) & 0xffffffffffffffffn;
    if (this.state === 0n) this.state = 1n;
  }
  nextU32(): number {
    let s = this.state;
    s ^= s >> 12n;
    s ^= (s << 25n) & 0xffffffffffffffffn;
    s ^= s >> 27n;
    this.state = s;
    return Number(((s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 32n);
  }
  nextF32(): number {
    return Math.fround((this.nextU32() >>> 8) / 16777216.0);
  }
}

function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

const f = Math.fround;

// run.c's sampler in its float32 arithmetic (every step rounded with Math.fround), so a
// seed gives the same tokens as `run -t T -p P -s SEED`.
function sample(logits: Float32Array, temperature: number, topP: number, rng: XorShift): number {
  const V = logits.length;
  const p = new Float32Array(V);
  const t = f(temperature);
  for (let i = 0; i < V; i++) p[i] = f(logits[i] / t);
  let mx = p[0];
  for (let i = 1; i < V; i++) if (p[i] > mx) mx = p[i];
  let sum = 0;
  for (let i = 0; i < V; i++) {
    p[i] = f(Math.exp(f(p[i] - mx)));
    sum = f(sum + p[i]);
  }
  for (let i = 0; i < V; i++) p[i] = f(p[i] / sum);
  const coin = rng.nextF32();
  if (topP <= 0 || topP >= 1) {
    let cdf = 0;
    for (let i = 0; i < V; i++) {
      cdf = f(cdf + p[i]);
      if (coin < cdf) return i;
    }
    return V - 1;
  }
  // nucleus: candidates with p >= (1 - topP) / (V - 1) (run.c's cutoff), by descending probability
  const cutoff = f(f(1 - f(topP)) / (V - 1));
  const idx: number[] = [];
  for (let i = 0; i < V; i++) if (p[i] >= cutoff) idx.push(i);
  idx.sort((a, b) => p[b] - p[a] || a - b);
  let cum = 0, last = idx.length - 1;
  for (let i = 0; i < idx.length; i++) {
    cum = f(cum + p[idx[i]]);
    if (cum > f(topP)) { last = i; break; }
  }
  const r = f(coin * cum);
  let cdf = 0;
  for (let i = 0; i <= last; i++) {
    cdf = f(cdf + p[idx[i]]);
    if (r < cdf) return idx[i];
  }
  return idx[last];
}

/**
 * Streams generated tokens: `for await (const t of generate(model, 'Once upon'))`.
 * Arguments are checked at the call, not at the first iteration.
 */
export function generate(model: Model, prompt: string | readonly number[], opts: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
  need.instance(model, Model, 'model');
  if (!is.string(prompt) && !(Array.isArray(prompt) && prompt.every((i) => Number.isInteger(i))))
    throw invalidParameter('string or array of token ids', 'prompt', prompt);
  need.object(opts, 'options');
  return run(model, prompt, opts);
}

async function* run(model: Model, prompt: string | readonly number[], opts: GenerateOptions): AsyncGenerator<GeneratedToken> {
  const maxTokens = opts.maxTokens ?? 256;
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 0.9;
  const seed = opts.seed ?? Date.now();
  if (!is.positiveInteger(maxTokens)) throw invalidParameter('positive integer', 'maxTokens', maxTokens);
  if (!is.finiteNumber(temperature) || temperature < 0) throw invalidParameter('number >= 0', 'temperature', temperature);
  if (!is.finiteNumber(topP) || topP <= 0 || topP > 1) throw invalidParameter('number in (0, 1]', 'topP', topP);
  if (!is.nonNegativeInteger(seed)) throw invalidParameter('non-negative integer', 'seed', seed);
  const tok = model.tokenizer;
  const ids = typeof prompt === 'string' ? tok.encode(prompt, { bos: true }) : [...prompt];
  if (ids.length === 0) throw invalidParameter('non-empty prompt', 'prompt', prompt);
  const steps = Math.min(maxTokens, model.maxSeq - ids.length);
  const rng = new XorShift(seed);
  let { logits } = await model.forwardAsync(ids, { lastOnly: true });
  let pos = ids.length;
  const all = [...ids];
  let text = tok.decode(all);
  for (let s = 0; s < steps; s++) {
    const next = temperature === 0 ? argmax(logits) : sample(logits, temperature, topP, rng);
    if (opts.stopAtEos !== false && (next === tok.eosId || next === tok.bosId)) return;
    all.push(next);
    const full = tok.decode(all);
    // a token that ends inside a multi-byte character adds its text with the next one
    const add = full.endsWith('\uFFFD') ? '' : full.slice(text.length);
    if (add.length > 0 || !full.endsWith('\uFFFD')) text = full;
    yield { id: next, text: add };
    if (s + 1 < steps) {
      ({ logits } = await model.forwardAsync([next], { pos0: pos, lastOnly: true }));
      pos++;
    }
  }
}
