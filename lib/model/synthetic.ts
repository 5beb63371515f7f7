// A deterministic synthetic Llama: any dims, a seed, and optional outlier input
// channels (a few hidden dimensions with activations tens of times larger than
// the rest, as real LLMs have, which is what makes low-bit quantization hard).
// Used by tests, by benchmarks at real model shapes, and as the CLI's default model.
import { invalidParameter, is } from '../errors.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint } from './checkpoint.js';
import { validateConfig, weightShape, type LlamaConfig } from './config.js';

export interface SyntheticOptions {
  dim?: number;
  hiddenDim?: number;
  nLayers?: number;
  nHeads?: number;
  nKvHeads?: number;
  vocabSize?: number;
  maxSeq?: number;
  seed?: number;
  ropeTheta?: number;
  tiedEmbeddings?: boolean;
  /** number of hidden channels whose RMSNorm gain is multiplied by outlierScale (default 0) */
  outlierChannels?: number;
  outlierScale?: number;
}

/** Llama-2-7B dims (one block of it is a realistic benchmark shape). */
export const LLAMA2_7B: Required<Pick<SyntheticOptions, 'dim' | 'hiddenDim' | 'nHeads' | 'nKvHeads' | 'vocabSize' | 'maxSeq'>> = {
  dim: 4096, hiddenDim: 11008, nHeads: 32, nKvHeads: 32, vocabSize: 32000, maxSeq: 4096,
};

function hashString(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** mulberry32: small, fast, and the same numbers on every platform. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(out: Float32Array, std: number, seed: number): void {
  const r = rng(seed);
  for (let i = 0; i < out.length; i += 2) {
    const u = Math.max(r(), 1e-12), v = r();
    const m = std * Math.sqrt(-2 * Math.log(u));
    out[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < out.length) out[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
}

/** Bytes as tokens: 0 <unk>, 1 <s>, 2 </s>, byte b -> 3 + b mod (V - 3). */
export class ByteTokenizer implements Tokenizer {
  readonly bosId = 1;
  readonly eosId = 2;
  constructor(readonly vocabSize: number) {
    if (!is.positiveInteger(vocabSize) || vocabSize < 4) throw invalidParameter('integer >= 4', 'vocabSize', vocabSize);
  }
  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    const ids = opts.bos === false ? [] : [this.bosId];
    for (const b of Buffer.from(text, 'utf8')) ids.push(3 + (b % (this.vocabSize - 3)));
    return ids;
  }
  decode(ids: readonly number[]): string {
    return Buffer.from(ids.filter((i) => i >= 3).map((i) => (i - 3) & 0xff)).toString('utf8');
  }
}

export class SyntheticCheckpoint implements Checkpoint {
  readonly format = 'synthetic' as const;
  readonly config: LlamaConfig;
  readonly path: string;
  private readonly seed: number;
  private readonly outliers: number[];
  private readonly outlierScale: number;

  constructor(opts: SyntheticOptions = {}) {
    const o = { dim: 64, hiddenDim: 172, nLayers: 2, nHeads: 8, vocabSize: 512, maxSeq: 512, seed: 0, ...opts };
    for (const k of ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'vocabSize', 'maxSeq'] as const)
      if (!is.positiveInteger(o[k])) throw invalidParameter('positive integer', k, o[k]);
    if (!is.nonNegativeInteger(o.seed)) throw invalidParameter('non-negative integer', 'seed', o.seed);
    if (o.vocabSize < 4) throw invalidParameter('integer >= 4', 'vocabSize', o.vocabSize);
    const nKv = opts.nKvHeads ?? o.nHeads;
    this.config = {
      architecture: 'synthetic', dim: o.dim, hiddenDim: o.hiddenDim, nLayers: o.nLayers, nHeads: o.nHeads, nKvHeads: nKv,
      headDim: o.dim / o.nHeads, vocabSize: o.vocabSize, maxSeq: o.maxSeq, normEps: 1e-5, ropeTheta: o.ropeTheta ?? 10000,
      ropeScaling: null, tiedEmbeddings: o.tiedEmbeddings ?? false, bosId: 1, eosId: 2,
    };
    validateConfig(this.config, 'synthetic model');
    this.seed = o.seed;
    const count = o.outlierChannels ?? 0;
    if (!is.nonNegativeInteger(count) || count > o.dim) throw invalidParameter(`integer in [0, ${o.dim}]`, 'outlierChannels', count);
    const pick = rng(hashString('outliers', o.seed));
    const set = new Set<number>();
    while (set.size < count) set.add(Math.floor(pick() * o.dim));
    this.outliers = [...set].sort((a, b) => a - b);
    this.outlierScale = o.outlierScale ?? 50;
    this.path = `synthetic:${o.seed}`;
  }

  /** Hidden channels carrying outliers. */
  get outlierChannels(): readonly number[] {
    return this.outliers;
  }

  weight(name: string): Float32Array {
    const shape = weightShape(this.config, name);
    const n = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    const kind = name.split('.')[2] ?? name;
    if (kind === 'attn_norm' || kind === 'ffn_norm' || kind === 'final_norm') {
      const r = rng(hashString(name, this.seed));
      for (let i = 0; i < n; i++) out[i] = 0.8 + 0.4 * r();
      if (kind !== 'final_norm') for (const c of this.outliers) out[c] *= this.outlierScale;
      return out;
    }
    // embeddings ~ N(0, 1); linears scaled so activations keep unit variance
    normal(out, kind === 'embed' ? 1 : 1 / Math.sqrt(shape[1]), hashString(name, this.seed));
    return out;
  }

  async tokenizer(): Promise<Tokenizer> {
    return new ByteTokenizer(this.config.vocabSize);
  }

  close(): void {}
}
