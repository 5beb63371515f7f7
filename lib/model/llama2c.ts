// llama2.c legacy (version 0) checkpoints: 7 int32 header (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
// an unshared classifier follows), then fp32 weights in a fixed order. The
// tokenizer is a separate tokenizer.bin (found next to the checkpoint, or given).
// RoPE: llama2.c rotates interleaved pairs; q/k rows are permuted while they are read.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { QuantformError } from '../errors.js';
import { loadLlama2cTokenizer } from '../tokenizer/sentencepiece.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint, TensorSource } from './checkpoint.js';
import { validateConfig, type LlamaConfig } from './config.js';
import { interleavedToHalfRows } from './convert.js';
import { CheckpointFile } from '../io/file.js';
import { readTensor, validateLayout, type StoredTensor } from '../io/tensors.js';

export class Llama2cCheckpoint implements Checkpoint {
  readonly format = 'llama2c' as const;
  readonly config: LlamaConfig;
  private readonly file: CheckpointFile;
  private readonly byName = new Map<string, StoredTensor>();

  constructor(readonly path: string, private readonly tokenizerPath?: string) {
    this.file = new CheckpointFile(path);
    try {
      const f = this.file;
      if (f.size < 28) throw new QuantformError('QF_CORRUPT_FILE', `${path}: ${f.size} bytes is too short for the 28-byte llama2.c header`);
      const h = f.read(0, 28, 'header');
      const [dim, hidden, nLayers, nHeads, nKv, vocabSigned, seqLen] = [0, 1, 2, 3, 4, 5, 6].map((i) => h.readInt32LE(4 * i));
      const shared = vocabSigned > 0;
      const vocab = Math.abs(vocabSigned);
      this.config = {
        architecture: 'llama2.c', dim, hiddenDim: hidden, nLayers, nHeads, nKvHeads: nKv, headDim: nHeads > 0 ? dim / nHeads : 0,
        vocabSize: vocab, maxSeq: seqLen, normEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tiedEmbeddings: shared, bosId: 1, eosId: 2,
      };
      validateConfig(this.config, path);
      const C = dim, F = hidden, L = nLayers, Q = nHeads * this.config.headDim, KV = nKv * this.config.headDim;
      // layout: name, per-layer?, shape of one
      const plan: [string, boolean, number[]][] = [
        ['embed', false, [vocab, C]], ['attn_norm', true, [C]], ['wq', true, [Q, C]], ['wk', true, [KV, C]], ['wv', true, [KV, C]],
        ['wo', true, [C, Q]], ['ffn_norm', true, [C]], ['w_gate', true, [F, C]], ['w_down', true, [C, F]], ['w_up', true, [F, C]],
        ['final_norm', false, [C]], ['freq_cis', false, [seqLen, this.config.headDim]],
      ];
      if (!shared) plan.push(['lm_head', false, [vocab, C]]);
      let off = 28;
      const tensors: StoredTensor[] = [];
      for (const [name, perLayer, shape] of plan) {
        const n = shape.reduce((a, b) => a * b, 1);
        for (let l = 0; l < (perLayer ? L : 1); l++) {
          const full = perLayer ? `layers.${l}.${name}` : name;
          const t: StoredTensor = { name: full, shape, dtype: 'F32', file: f, offset: off, nbytes: n * 4 };
          if (off + n * 4 > f.size)
            throw new QuantformError('QF_CORRUPT_FILE', `${path}: tensor '${full}' spans bytes [${off}, ${off + n * 4}) past the end of the file (${f.size} bytes; truncated, or the header does not match the weights)`);
          tensors.push(t);
          this.byName.set(full, t);
          off += n * 4;
        }
      }
      if (off !== f.size)
        throw new QuantformError('QF_CORRUPT_FILE', `${path}: the header implies ${off} bytes but the file has ${f.size}`);
      validateLayout(tensors);
    } catch (e) {
      this.file.close();
      throw e;
    }
  }

  tensorSource(name: string): TensorSource {
    const t = this.byName.get(name);
    if (!t || name === 'freq_cis') throw new QuantformError('QF_INVALID_ARGUMENT', `${this.path}: no weight '${name}'`);
    const kind = name.split('.')[2];
    const heads = kind === 'wq' ? this.config.nHeads : kind === 'wk' ? this.config.nKvHeads : 0;
    return { tensor: t, dstRow: heads ? interleavedToHalfRows(heads, t.shape[0]) : null };
  }

  weight(name: string): Float32Array {
    const s = this.tensorSource(name);
    return readTensor(s.tensor, { dstRow: s.dstRow });
  }

  async tokenizer(): Promise<Tokenizer> {
    const dir = path.dirname(this.path);
    const candidates = this.tokenizerPath ? [this.tokenizerPath] : [path.join(dir, 'tokenizer.bin'), path.join(dir, `tok${this.config.vocabSize}.bin`)];
    const found = candidates.find((p) => existsSync(p));
    if (!found)
      throw new QuantformError('QF_IO', `${this.path}: no llama2.c tokenizer found (looked for ${candidates.join(', ')}); pass tokenizer: '/path/tokenizer.bin'`);
    return loadLlama2cTokenizer(found, this.config.vocabSize);
  }

  close(): void {
    this.file.close();
  }
}
