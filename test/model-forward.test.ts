// The native forward on synthetic models: against an independent float64 forward
// written in TS from llama_model.h, KV-cache decoding against one full pass,
// batches against single sequences, tiers against each other, and the Linear hook.
import { describe, expect, it } from 'vitest';
import {
  Fp32Linear, QuantizedLinear, SyntheticCheckpoint, Tensor, backendInfo, dequantize, invFreq, loadModel, quantize, weightNames,
  type LlamaConfig,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { availableTiers, withTier } from './helpers/tiers.js';

// fp32 forward vs float64 oracle over a few layers: relative max error on logits.
const ORACLE_REL = 1e-4;
// same math per tier: the SIMD tiers accumulate in f32 (and use a polynomial exp), the
// reference in f64; max |difference| relative to max |logit|
const TIER_REL = 1.5e-4;
// KV cache vs full pass and batch vs single: the same kernels on the same rows;
// only GEMM blocking (M < 4 takes the dot-product path) may differ.
const CACHE_ABS = 1e-4;

function oracleForward(cfg: LlamaConfig, w: (n: string) => Float32Array, tokens: number[]): Float64Array[] {
  const C = cfg.dim, F = cfg.hiddenDim, NH = cfg.nHeads, NKV = cfg.nKvHeads, HS = cfg.headDim;
  const half = HS / 2, inv = invFreq(cfg);
  const mat = (x: Float64Array, W: Float32Array, out: number, inp: number) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) { let s = 0; for (let i = 0; i < inp; i++) s += W[o * inp + i] * x[i]; y[o] = s; }
    return y;
  };
  const norm = (x: Float64Array, g: Float32Array) => {
    let ss = 0; for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + cfg.normEps);
    return x.map((v, i) => v * r * g[i]);
  };
  const rope = (v: Float64Array, heads: number, pos: number) => {
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < half; i++) {
        const a = pos * inv[i], c = Math.cos(a), s = Math.sin(a), o = h * HS;
        const x0 = v[o + i], x1 = v[o + i + half];
        v[o + i] = x0 * c - x1 * s; v[o + i + half] = x0 * s + x1 * c;
      }
  };
  const emb = w('embed');
  let xs = tokens.map((t) => Float64Array.from(emb.subarray(t * C, (t + 1) * C)));
  for (let l = 0; l < cfg.nLayers; l++) {
    const p = (n: string) => w(`layers.${l}.${n}`);
    const ks: Float64Array[] = [], vs: Float64Array[] = [];
    const qs = xs.map((x, t) => {
      const h = norm(x, p('attn_norm'));
      const q = mat(h, p('wq'), NH * HS, C), k = mat(h, p('wk'), NKV * HS, C);
      rope(q, NH, t); rope(k, NKV, t);
      ks.push(k); vs.push(mat(h, p('wv'), NKV * HS, C));
      return q;
    });
    xs = xs.map((x, t) => {
      const att = new Float64Array(NH * HS);
      for (let h = 0; h < NH; h++) {
        const kv = Math.floor(h / (NH / NKV));
        const sc = [];
        for (let j = 0; j <= t; j++) { let s = 0; for (let i = 0; i < HS; i++) s += qs[t][h * HS + i] * ks[j][kv * HS + i]; sc.push(s / Math.sqrt(HS)); }
        const mx = Math.max(...sc), e = sc.map((s) => Math.exp(s - mx)), z = e.reduce((a, b) => a + b, 0);
        for (let i = 0; i < HS; i++) { let o = 0; for (let j = 0; j <= t; j++) o += (e[j] / z) * vs[j][kv * HS + i]; att[h * HS + i] = o; }
      }
      const x1 = x.map((v, i) => v + mat(att, p('wo'), C, NH * HS)[i]);
      const h2 = norm(x1, p('ffn_norm'));
      const g = mat(h2, p('w_gate'), F, C), u = mat(h2, p('w_up'), F, C);
      const a = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
      const d = mat(a, p('w_down'), C, F);
      return x1.map((v, i) => v + d[i]);
    });
  }
  const head = cfg.tiedEmbeddings ? emb : w('lm_head');
  return xs.map((x) => mat(norm(x, w('final_norm')), head, cfg.vocabSize, C));
}

const small = { dim: 48, hiddenDim: 100, nLayers: 2, nHeads: 6, nKvHeads: 2, vocabSize: 37, maxSeq: 64, seed: 7 };

describe('native forward vs float64 oracle', () => {
  for (const tied of [false, true])
    it(`synthetic GQA model, tied=${tied}`, async () => {
      const m = await loadModel({ synthetic: { ...small, tiedEmbeddings: tied } });
      const tokens = [1, 5, 9, 36, 0, 2, 17, 17, 3];
      const want = oracleForward(m.config, (n) => m.checkpoint.weight(n), tokens);
      const got = m.forward(tokens).logits;
      let maxErr = 0, maxAbs = 0;
      want.forEach((row, t) => row.forEach((v, i) => {
        maxErr = Math.max(maxErr, Math.abs(got[t * m.config.vocabSize + i] - v));
        maxAbs = Math.max(maxAbs, Math.abs(v));
      }));
      expect(maxErr / maxAbs).toBeLessThan(ORACLE_REL);
      m.dispose();
    });
});

describe('long sequences (attention runs in chunks of 128 queries)', () => {
  it('a batch of two 300-token sequences matches the oracle', async () => {
    const m = await loadModel({ synthetic: { ...small, maxSeq: 512 } });
    const rows = [0, 1].map((b) => Array.from({ length: 300 }, (_, t) => (t * (b + 3) + b) % 37));
    const got = m.forward(rows).logits;
    const V = m.config.vocabSize;
    const want = oracleForward(m.config, (n) => m.checkpoint.weight(n), rows[1]);
    let maxErr = 0, maxAbs = 0;
    want.forEach((row, t) => row.forEach((v, i) => {
      maxErr = Math.max(maxErr, Math.abs(got[(300 + t) * V + i] - v));
      maxAbs = Math.max(maxAbs, Math.abs(v));
    }));
    expect(maxErr / maxAbs).toBeLessThan(ORACLE_REL);
    m.dispose();
  });
});

describe('KV cache, batches and tiers', () => {
  it('decoding token by token from the cache equals one full pass', async () => {
    const m = await loadModel({ synthetic: small });
    const tokens = [1, 4, 8, 15, 16, 23, 30, 2, 11, 12];
    const full = m.forward(tokens).logits;
    const V = m.config.vocabSize;
    // prefill 4, then 1 token at a time, then 3 at once
    const parts: Float32Array[] = [m.forward(tokens.slice(0, 4)).logits];
    for (let t = 4; t < 7; t++) parts.push(m.forward([tokens[t]], { pos0: t }).logits);
    parts.push(m.forward(tokens.slice(7), { pos0: 7 }).logits);
    const inc = new Float32Array(full.length);
    let o = 0;
    for (const p of parts) { inc.set(p, o); o += p.length; }
    for (let i = 0; i < full.length; i++) expect(Math.abs(inc[i] - full[i])).toBeLessThan(CACHE_ABS);
    const last = m.forward(tokens, { lastOnly: true }).logits;
    const tail = full.subarray(full.length - V);
    for (let i = 0; i < V; i++) expect(Math.abs(last[i] - tail[i])).toBeLessThan(CACHE_ABS);
    m.dispose();
  });

  it('a batch of sequences equals each sequence alone', async () => {
    const m = await loadModel({ synthetic: small });
    const rows = [[1, 2, 3, 4, 5, 6], [1, 30, 29, 28, 27, 26], [1, 9, 9, 9, 9, 9]];
    const b = m.forward(rows).logits;
    rows.forEach((r, i) => {
      const s = m.forward(r).logits;
      for (let j = 0; j < s.length; j++) expect(Math.abs(b[i * s.length + j] - s[j])).toBeLessThan(CACHE_ABS);
    });
    // batched decode continues every sequence of the batch
    m.forward(rows);
    const next = m.forward([[7], [8], [9]], { pos0: 6, lastOnly: true }).logits;
    const alone = m.forward([...rows[1], 8], { lastOnly: true }).logits;
    for (let j = 0; j < alone.length; j++) expect(Math.abs(next[alone.length + j] - alone[j])).toBeLessThan(CACHE_ABS);
    m.dispose();
  });

  it('every kernel tier gives the same logits', async () => {
    const m = await loadModel({ synthetic: { ...small, outlierChannels: 3 } });
    const tokens = Array.from({ length: 40 }, (_, i) => (i * 7) % 37);
    const ref = withTier('ref', () => m.forward(tokens).logits);
    const scale = ref.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    for (const t of availableTiers()) {
      const got = withTier(t, () => m.forward(tokens).logits);
      let d = 0;
      for (let i = 0; i < ref.length; i++) d = Math.max(d, Math.abs(got[i] - ref[i]));
      expect(d / scale, t).toBeLessThan(TIER_REL);
    }
    m.dispose();
  });

  it('async forward equals sync forward; a failed async forward leaves the model usable', async () => {
    const m = await loadModel({ synthetic: small });
    const a = (await m.forwardAsync([1, 2, 3])).logits, b = m.forward([1, 2, 3]).logits;
    expect(Array.from(a)).toEqual(Array.from(b));
    await expect(m.forwardAsync([4], { pos0: 7 })).rejects.toThrow(/cached length 3/);
    expect(Array.from(m.forward([1, 2, 3]).logits)).toEqual(Array.from(b));
    m.dispose();
  });

  it('rejects a continuation that does not match the cache, bad ids and a disposed model', async () => {
    const m = await loadModel({ synthetic: small });
    m.forward([1, 2, 3]);
    expect(() => m.forward([4], { pos0: 5 })).toThrow(/cached length 3/);
    expect(() => m.forward([1, 37])).toThrow(/Expected token ids in \[0, 37\) for tokens\[1\] but received 37/);
    expect(() => m.forward(Array(65).fill(1))).toThrow(/maxSeq = 64/);
    m.dispose();
    expect(() => m.forward([1])).toThrow(/disposed/);
  });
});

describe('native LlamaModel argument checks', () => {
  it('rejects bad configs and weights with errors, not crashes', () => {
    const LM = native().LlamaModel;
    const good = { dim: 8, hiddenDim: 12, nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 4, vocabSize: 5, maxSeq: 4, normEps: 1e-5, invFreq: new Float32Array(2), tied: true };
    expect(() => new LM({ ...good, normEps: 'x' as unknown as number })).toThrow(/Expected number for config.normEps/);
    expect(() => new LM({ ...good, nKvHeads: 3 })).toThrow(/nKvHeads dividing nHeads/);
    expect(() => new LM({ ...good, invFreq: new Float32Array(3) })).toThrow(/headDim\/2 = 2 inverse frequencies but received 3/);
    expect(() => new LM({ ...good, dim: -1 })).toThrow(/non-negative integer for config.dim/);
    const m = new LM(good);
    expect(() => m.setWeight('layers.0.wq', new Float32Array(3))).toThrow(/Expected 64 elements \(8, 8\) for weight 'layers.0.wq' but received 3/);
    expect(() => m.setWeight('layers.1.wq', new Float32Array(64))).toThrow(/Unknown weight name 'layers.1.wq'/);
    expect(() => m.forward(Int32Array.from([1]), 1, 1, 0, false, false)).toThrow(/Model weight 'embed' was never set/);
    expect(m.missing()).toContain('layers.0.w_down');
    m.dispose();
    expect(() => m.missing()).toThrow(/disposed/);
  });
});

describe('Linear hook', () => {
  // The dequant-matmul kernels sum in another order than the fp32 GEMM over the
  // dequantized weight: equal up to float rounding.
  const KERNEL_VS_DEQUANT_NMSE = 1e-9;
  const nmseOf = (a: Float32Array, b: Float32Array) => {
    let num = 0, den = 0;
    for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
    return num / den;
  };
  for (const cfg of [
    { bits: 4, groupSize: 32, symmetric: true, paramDtype: 'f32' },   // repacked INT4 fast path
    { bits: 4, groupSize: 100, symmetric: false, paramDtype: 'f16' }, // per-channel INT4, f16 parameters
    { bits: 3, groupSize: 16, symmetric: false, paramDtype: 'f32' },  // generic path
  ] as const)
    it(`a QuantizedLinear (${cfg.bits}-bit g${cfg.groupSize} ${cfg.symmetric ? 'sym' : 'asym'} ${cfg.paramDtype}) runs on the kernels like its dequantized weight`, async () => {
      const m = await loadModel({ synthetic: small });
      const name = 'layers.1.w_down';
      const w = m.linear(name) as Fp32Linear;
      expect(w.kind).toBe('f32');
      const q = quantize(w.weight, cfg);
      const ql = new QuantizedLinear(q);
      const tokens = [1, 3, 5, 7];
      const before = m.forward(tokens).logits;
      m.setLinear(name, ql);
      expect(m.linear(name)).toBe(ql);
      const quantized = m.forward(tokens).logits;
      m.setLinear(name, new Fp32Linear(dequantize(q)));
      const viaFp32 = m.forward(tokens).logits;
      expect(nmseOf(quantized, viaFp32)).toBeLessThan(KERNEL_VS_DEQUANT_NMSE);
      expect(nmseOf(quantized, before)).toBeGreaterThan(1e-8); // quantization changed the model
      expect(m.linear(name)).toBeInstanceOf(Fp32Linear);
      expect(() => m.setLinear('layers.0.wq', ql)).toThrow(/Expected a \[48, 48\] linear for layers.0.wq but received \[48, 100\]/);
      expect(() => m.setLinear('layers.9.wq', ql)).toThrow(/linear names/);
      m.dispose();
    });

  it('accuracy bf16 / int8 runs the quantized linears on those paths: logits within their budgets of fp32', async () => {
    // per-row int8 activations (~1e-4 per matmul) and bf16 (~5e-6) compound over 2 layers and the head
    const BF16_MODEL_NMSE = 1e-4, INT8_MODEL_NMSE = 1e-2;
    const models = await Promise.all((['fp32', 'bf16', 'int8'] as const).map((accuracy) => loadModel({ synthetic: small }, { accuracy })));
    for (const m of models)
      for (const name of weightNames(m.config).filter((n) => /\.(wq|wk|wv|wo|w_gate|w_up|w_down)$/.test(n))) {
        const w = m.linear(name) as Fp32Linear;
        m.setLinear(name, new QuantizedLinear(quantize(w.weight, { bits: 4, groupSize: 'channel', symmetric: true })));
      }
    const tokens = Array.from({ length: 40 }, (_, i) => (i * 7) % 37);  // 40 rows: the prefill paths
    const [f, b, i8] = models.map((m) => m.forward(tokens).logits);
    const bf16 = backendInfo().features.avx512bf16 && backendInfo().tier === 'avx512';
    if (bf16) expect(nmseOf(b, f)).toBeGreaterThan(0);
    expect(nmseOf(b, f)).toBeLessThan(BF16_MODEL_NMSE);
    expect(nmseOf(i8, f)).toBeGreaterThan(0);
    expect(nmseOf(i8, f)).toBeLessThan(INT8_MODEL_NMSE);
    for (const m of models) m.dispose();
    await expect(loadModel({ synthetic: small }, { accuracy: 'fp16' as never })).rejects.toThrow(/Expected 'fp32', 'int8' or 'bf16' for accuracy but received 'fp16'/);
  });

  it('the native model re-checks a quantized weight it is handed', async () => {
    const m = await loadModel({ synthetic: small });
    const h = (m as unknown as { handle: { setQuantizedWeight: (...a: unknown[]) => void } }).handle;
    const q = quantize(new Tensor(new Float32Array(48 * 48).fill(0.5), [48, 48]), { bits: 4, groupSize: 16 });
    expect(() => h.setQuantizedWeight('layers.0.wq', q.codes.subarray(1), q.scales, q.zeros, 'f32', 48, 48, 4, 16, false)).toThrow(/^Expected 1152 elements for codes but received 1151$/);
    expect(() => h.setQuantizedWeight('layers.0.wq', q.codes, q.scales, q.zeros, 'f32', 48, 100, 4, 16, false)).toThrow(/Expected a \(48, 48\) quantized weight/);
    expect(() => h.setQuantizedWeight('layers.0.attn_norm', q.codes, q.scales, q.zeros, 'f32', 48, 48, 4, 16, false)).toThrow(/not a linear layer/);
    m.dispose();
  });
});

describe('synthetic Llama builder', () => {
  it('is deterministic per seed, differs across seeds, and injects outlier channels', () => {
    const a = new SyntheticCheckpoint({ ...small, outlierChannels: 4, outlierScale: 40 });
    const b = new SyntheticCheckpoint({ ...small, outlierChannels: 4, outlierScale: 40 });
    const c = new SyntheticCheckpoint({ ...small, seed: 8 });
    for (const n of weightNames(a.config)) expect(Array.from(a.weight(n))).toEqual(Array.from(b.weight(n)));
    expect(Array.from(a.weight('layers.0.wq'))).not.toEqual(Array.from(c.weight('layers.0.wq')));
    expect(a.outlierChannels.length).toBe(4);
    const g = a.weight('layers.0.attn_norm');
    for (let i = 0; i < g.length; i++) {
      if (a.outlierChannels.includes(i)) expect(g[i]).toBeGreaterThan(30);
      else expect(g[i]).toBeLessThan(1.3);
    }
    expect(new Tensor(a.weight('layers.0.w_down'), [48, 100]).shape).toEqual([48, 100]);
  });
});
