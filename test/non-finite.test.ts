// NaN and Inf weights are found where every format passes (the Checkpoint -> model
// paths, natively read weights, the trainer, quantizeModel, the streaming RTN) and reported with the tensor's name and first
// index; a perplexity that comes out non-finite is an error naming the window,
// never a `ppl NaN` result. The scan kernel: every tier against a plain-JS oracle.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ByteTokenizer, Model, QuantformError, SyntheticCheckpoint, TrainableLlama, evaluatePerplexity, loadModel, openCheckpoint, quantizeCheckpointRtn,
  quantizeModel,
} from '../lib/index.js';
import { firstNonFinite } from '../lib/ops/finite.js';
import { packageRoot } from '../lib/native.js';
import { availableTiers, withTier } from './helpers/tiers.js';
import { bf16Bits, f16Bits, ggufBytes, llama2cBytes, tokenizerBinBytes, writeHfDir } from './helpers/writers.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'qf-nonfinite-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;
const fresh = () => {
  const d = path.join(tmp, String(dirs++));
  mkdirSync(d);
  return d;
};

/** the oracle: the first index whose value is not finite */
const oracle = (a: ArrayLike<number>) => {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
};

function err(f: () => unknown): QuantformError {
  try {
    f();
  } catch (e) {
    return e as QuantformError;
  }
  throw new Error('expected a throw');
}
async function errAsync(f: () => Promise<unknown>): Promise<QuantformError> {
  try {
    await f();
  } catch (e) {
    return e as QuantformError;
  }
  throw new Error('expected a rejection');
}

describe('firstNonFinite: every tier against the oracle', () => {
  // lengths around the SIMD widths (8, 16, 32, 64) and across the pool's 1M-element chunks
  const lengths = [0, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 1000, (1 << 20) + 3, 3 * (1 << 20) + 17];
  const specials = [NaN, Infinity, -Infinity];
  for (const tier of availableTiers())
    it(tier, () => withTier(tier, () => {
      let checked = 0;
      for (const n of lengths) {
        const a = Float32Array.from({ length: n }, (_, i) => (i % 3 === 0 ? -0 : i % 5 === 0 ? 3.4e38 : i % 7 === 0 ? 1e-45 : Math.sin(i)));
        expect(firstNonFinite(a), `n=${n} all finite (incl. -0, max, denormals)`).toBe(-1);
        const positions = [...new Set([0, 1, n - 1, n >> 1, n - 17, 64, 65].filter((p) => p >= 0 && p < n))];
        for (const p of positions)
          for (const v of specials) {
            const b = a.slice();
            b[p] = v;
            if (p + 5 < n) b[p + 5] = NaN;  // a later hit must not win
            expect(firstNonFinite(b), `n=${n} ${v} at ${p}`).toBe(oracle(b));
            checked++;
          }
      }
      expect(checked).toBeGreaterThan(200);
    }));

  it('f16 and bf16 bits', () => {
    const n = 100;
    const h = Uint16Array.from({ length: n }, (_, i) => f16Bits(Math.sin(i))), bf = Uint16Array.from({ length: n }, (_, i) => bf16Bits(Math.cos(i)));
    expect(firstNonFinite(h, 'f16')).toBe(-1);
    expect(firstNonFinite(bf, 'bf16')).toBe(-1);
    h[37] = 0x7c00;  // +Inf
    bf[41] = 0xffc1;  // a NaN
    expect(firstNonFinite(h, 'f16')).toBe(37);
    expect(firstNonFinite(bf, 'bf16')).toBe(41);
    expect(firstNonFinite(Uint16Array.of(0x7bff, 0xfbff), 'f16')).toBe(-1);  // +-65504, the largest finite halves
  });
});

const synth = { dim: 16, hiddenDim: 24, nLayers: 2, nHeads: 2, nKvHeads: 1, vocabSize: 40, maxSeq: 32, seed: 2 };
const base = new SyntheticCheckpoint(synth);
const cfg = base.config;
/** the synthetic weights with one element replaced */
const poisoned = (tensor: string, index: number, value: number) => (n: string) => {
  const w = base.weight(n);
  if (n === tensor) w[index] = value;
  return w;
};

describe('loading refuses non-finite weights, naming the tensor and the first index', () => {
  it('HF safetensors: a NaN in the embedding (row 3, column 5)', () => {
    const d = fresh();
    writeHfDir(d, cfg, poisoned('embed', 3 * cfg.dim + 5, NaN), 'F32');
    const e = err(() => new Model(openCheckpoint(d), new ByteTokenizer(40)));
    expect(e).toBeInstanceOf(QuantformError);
    expect(e.code).toBe('QF_NON_FINITE');
    expect(e.message).toMatch(/embed holds NaN at \[3, 5\] \(flat index 53\)/);
  });

  it('HF BF16: an Inf in a norm, and the trainer refuses it too', () => {
    const d = fresh();
    writeHfDir(d, cfg, poisoned('layers.1.ffn_norm', 7, Infinity), 'BF16');
    expect(err(() => new Model(openCheckpoint(d), new ByteTokenizer(40))).message).toMatch(/layers\.1\.ffn_norm holds Infinity at index 7/);
    expect(err(() => TrainableLlama.fromCheckpoint(openCheckpoint(d))).message).toMatch(/layers\.1\.ffn_norm holds Infinity at index 7/);
    const f32 = fresh();
    writeHfDir(f32, cfg, poisoned('layers.0.attn_norm', 2, NaN), 'F32');
    expect(err(() => TrainableLlama.fromCheckpoint(openCheckpoint(f32))).message).toMatch(/layers\.0\.attn_norm holds NaN at index 2/);
  });

  it('HF F16, read natively into the model: the NaN of a linear is found there, with row and column', () => {
    const d = fresh();
    writeHfDir(d, cfg, poisoned('layers.1.w_down', 2 * cfg.hiddenDim + 3, NaN), 'F16');
    const e = err(() => new Model(openCheckpoint(d), new ByteTokenizer(40)));
    expect(e.code).toBe('QF_NON_FINITE');
    expect(e.message).toMatch(/layers\.1\.w_down holds NaN at \[2, 3\] \(flat index 51\): NaN and Inf weights cannot be run or quantized/);
  });

  it('GGUF and llama2.c: -Inf in the lm_head and a NaN in wv', async () => {
    const untied = { ...cfg, tiedEmbeddings: false };
    const g = path.join(fresh(), 'm.gguf');
    writeFileSync(g, ggufBytes(untied, poisoned('lm_head', 2 * cfg.dim, -Infinity), { vocab: Array.from({ length: 40 }, (_, i) => `t${i}`) }));
    const eg = await errAsync(() => loadModel(g));
    expect(eg.code).toBe('QF_NON_FINITE');
    expect(eg.message).toMatch(/lm_head holds -Infinity at \[2, 0\]/);
    const dir = fresh();
    writeFileSync(path.join(dir, 'model.bin'), llama2cBytes(cfg, poisoned('layers.0.wv', 9, NaN)));
    writeFileSync(path.join(dir, 'tokenizer.bin'), tokenizerBinBytes(Array.from({ length: 40 }, (_, i) => `t${i}`)));
    expect((await errAsync(() => loadModel(path.join(dir, 'model.bin')))).message).toMatch(/layers\.0\.wv holds NaN at \[0, 9\]/);
  });

  it('quantizeModel checks every tensor of the model it is given, not only the linears', async () => {
    const m = TrainableLlama.fromCheckpoint(base);
    m.finalNorm[4] = NaN;
    const e = await errAsync(() => quantizeModel(m, { method: 'rtn', bits: 4, groupSize: 8 }));
    expect(e.code).toBe('QF_NON_FINITE');
    expect(e.message).toMatch(/final_norm holds NaN at index 4/);
  });

  it('the streaming RTN (quantize --method rtn) checks linears, norms and embeddings as they stream, writing nothing', async () => {
    for (const [tensor, index, dtype, want] of [
      ['layers.0.wk', 5, 'BF16', /layers\.0\.wk holds NaN at \[0, 5\]/],
      ['layers.1.attn_norm', 3, 'F16', /layers\.1\.attn_norm holds 0x7c00 at index 3/],
      ['embed', 17, 'F32', /embed holds -Infinity at \[1, 1\]/],
    ] as const) {
      const d = fresh();
      writeHfDir(d, cfg, poisoned(tensor, index, tensor === 'embed' ? -Infinity : tensor === 'layers.0.wk' ? NaN : Infinity), dtype);
      const out = path.join(tmp, `rtn-${dirs}`);
      const ck = openCheckpoint(d);
      try {
        const e = await errAsync(() => quantizeCheckpointRtn(ck, out, { bits: 4, groupSize: 8 }));
        expect(e.code, tensor).toBe('QF_NON_FINITE');
        expect(e.message).toMatch(want);
      } finally {
        ck.close();
      }
      expect(existsSync(out)).toBe(false);
    }
  });
});

describe('a non-finite perplexity is an error naming the window', () => {
  // finite weights whose product overflows: the final norm gain 3e38 makes the logits infinite
  class Overflowing extends SyntheticCheckpoint {
    weight(name: string): Float32Array {
      const w = super.weight(name);
      if (name === 'final_norm') w.fill(3e38);
      return w;
    }
  }
  it('evaluatePerplexity', async () => {
    const m = new Model(new Overflowing(synth), new ByteTokenizer(40));
    try {
      const ids = Array.from({ length: 40 }, (_, i) => 3 + (i % 30));
      const e = await errAsync(() => evaluatePerplexity(m, { ids }, { ctx: 8 }));
      expect(e.code).toBe('QF_NON_FINITE');
      expect(e.message).toMatch(/^Window 0 \(ids 0\.\.8\) has a NaN negative log-likelihood/);
    } finally {
      m.dispose();
    }
  });

  const cli = path.join(packageRoot(), 'dist', 'cli.js');
  it.skipIf(!existsSync(cli))('quantform eval exits non-zero on a NaN embedding, with the tensor in the message', () => {
    const d = fresh();
    writeFileSync(path.join(d, 'model.bin'), llama2cBytes(cfg, poisoned('embed', 0, NaN)));
    writeFileSync(path.join(d, 'tokenizer.bin'), tokenizerBinBytes(Array.from({ length: 40 }, (_, i) => (i < 3 ? `<${i}>` : String.fromCharCode(60 + i)))));
    writeFileSync(path.join(tmp, 'text.txt'), 'Once upon a time there was a cat.');
    let status = 0, stderr = '';
    try {
      execFileSync(process.execPath, [cli, 'eval', '--model', path.join(d, 'model.bin'), '--text', path.join(tmp, 'text.txt')], { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      status = (e as { status: number }).status;
      stderr = (e as { stderr: string }).stderr;
    }
    expect(status).not.toBe(0);
    expect(stderr).toMatch(/QF_NON_FINITE|holds NaN at \[0, 0\]/);
    expect(stderr).not.toMatch(/ppl NaN/);
  });
});
