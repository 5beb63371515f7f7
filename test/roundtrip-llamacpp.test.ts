// The GGUF round trip proven with llama.cpp itself (node-llama-cpp's prebuilt CPU
// binary, test/peers): stories260K quantized by quantform (RTN and TEQ, W4 g32 sym
// and asym), exported to GGUF, evaluated by llama.cpp on the shared TinyStories
// protocol (per-token probabilities) and by quantform's own eval of the same
// quantized model: perplexities within 0.5 %, greedy generations identical for 64
// tokens, and llama.cpp tokenizes the texts exactly as quantform does. Then the other
// way: files llama.cpp's own quantizer wrote (llama_model_quantize through the
// fixture script, needs python) load into quantform and score as in llama.cpp, and
// quantform's K-quant encodings read in llama.cpp as in quantform.
// TEQ trains QUANTFORM_TEQ_STEPS steps (default 200, a fifth of the default run: CI time).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  calibrationFromFile, evaluatePerplexity, exportGguf, generate, openCheckpoint, loadModel, Model, quantize, quantizeModel, saveGptq,
  SyntheticCheckpoint, Tensor, TrainableLlama, vocabFromCheckpoint, dequantize, weightShape, type Checkpoint, type QuantizedTensor,
} from '../lib/index.js';
import { llamaLibDir, nodeLlamaCpp, python, ROOT, type Llama, type LlamaModel } from './helpers/peers.js';
import { sharedDir } from './helpers/tiers.js';

const shared = sharedDir();
const HF = path.join(shared, 'models/stories260K-hf');
const REF = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const TINY = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const WIKI = path.join(shared, 'data/wikitext-2-raw/wiki.test.raw');
const haveShared = [HF, REF, TINY, WIKI].every((p) => existsSync(p));
const peer = await nodeLlamaCpp();
const skip = !haveShared ? `shared models/data not found under ${shared}` : !peer.ok ? peer.reason : null;
if (skip) console.warn(`roundtrip-llamacpp: skipped: ${skip}`);
const py = python();
const libDir = llamaLibDir();
const quantSkip = !py.ok ? py.reason : !libDir ? 'node-llama-cpp\'s libllama is not in test/peers' : null;
if (!skip && quantSkip) console.warn(`roundtrip-llamacpp: llama.cpp-quantized files skipped: ${quantSkip}`);

const PPL_REL_TOL = 0.005;
// one llama.cpp thread: its spinning thread pool on 2 shared cores is 5-9x slower than one thread for this model
const LLAMA_THREADS = 1;
const GEN_TOKENS = 64;
/** Two candidates this close in log-probability (nats) are a tie under llama.cpp's 8-bit activation rounding. */
const TIE_NATS = 0.1;
/** Near-ties allowed in 64 teacher-forced steps. */
const MAX_TIES = 2;
const TEQ_STEPS = Number(process.env.QUANTFORM_TEQ_STEPS ?? 200);
const PROMPT = 'Once upon a time';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-llamacpp-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Protocol { token_ids: number[]; window: number }
const protocol = (): Protocol => {
  const j = JSON.parse(readFileSync(REF, 'utf8')) as { token_ids: number[]; window?: number };
  return { token_ids: j.token_ids, window: j.window ?? 256 };
};

/** llama.cpp's perplexity on the protocol: windows from an empty cache, NLL of every next token from its probabilities. */
async function llamaPerplexity(m: LlamaModel, p: Protocol, maxWindows = Infinity): Promise<number> {
  const ctx = await m.createContext({ contextSize: 512, batchSize: 512, threads: LLAMA_THREADS, sequences: 1, flashAttention: false,
    experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
  try {
    const seq = ctx.getSequence();
    const W = p.window, nW = Math.min(maxWindows, Math.floor((p.token_ids.length - 1) / W));
    let sum = 0;
    for (let w = 0; w < nW; w++) {
      await seq.clearHistory();
      const win = p.token_ids.slice(w * W, w * W + W + 1);
      const res = await seq.controlledEvaluate(win.slice(0, W).map((t) => [t, { generateNext: { probabilities: true } }] as [number, { generateNext: { probabilities: true } }]));
      for (let i = 0; i < W; i++) sum -= Math.log(res[i]!.next.probabilities!.get(win[i + 1])!);
    }
    return Math.exp(sum / (nW * W));
  } finally {
    await ctx.dispose();
  }
}

async function llamaGreedy(m: LlamaModel, prompt: number[], n: number): Promise<number[]> {
  const ctx = await m.createContext({ contextSize: 512, threads: LLAMA_THREADS, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
  try {
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt, { temperature: 0 })) {
      out.push(t);
      if (out.length >= n) break;
    }
    return out;
  } finally {
    await ctx.dispose();
  }
}

/**
 * llama.cpp's next-token choice at every position of `seq` (teacher-forced on
 * quantform's greedy tokens) and its log-probability of each choice and of ours.
 */
async function llamaTeacherForced(m: LlamaModel, prompt: number[], seq: number[]): Promise<{ pick: number; lpPick: number; lpOurs: number }[]> {
  const ctx = await m.createContext({ contextSize: 512, threads: LLAMA_THREADS, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
  try {
    const inp = [...prompt, ...seq.slice(0, -1)];
    const res = await ctx.getSequence().controlledEvaluate(inp.map((t, i) => (i >= prompt.length - 1
      ? [t, { generateNext: { probabilities: true } }] : t) as [number, { generateNext: { probabilities: true } }]));
    return seq.map((ours, i) => {
      const probs = res[prompt.length - 1 + i]!.next.probabilities!;
      let pick = -1, best = -1;
      for (const [tok, pr] of probs) if (pr > best) { best = pr; pick = tok; }
      return { pick, lpPick: Math.log(best), lpOurs: Math.log(probs.get(ours) ?? 1e-30) };
    });
  } finally {
    await ctx.dispose();
  }
}

async function greedy(m: Model, prompt: number[], n: number): Promise<number[]> {
  const out: number[] = [];
  for await (const t of generate(m, prompt, { maxTokens: n, temperature: 0, stopAtEos: false })) out.push(t.id);
  return out;
}

async function quantformPerplexity(m: Model, p: Protocol, maxWindows = Infinity): Promise<number> {
  const n = Math.min(maxWindows * p.window, p.token_ids.length - 1);
  return (await evaluatePerplexity(m, { ids: p.token_ids.slice(0, n + 1) }, { ctx: p.window })).ppl;
}

describe.skipIf(skip !== null)('GGUF round trip through llama.cpp (node-llama-cpp)', () => {
  const llama = peer.ok ? peer.value : (null as unknown as Llama);
  const p = haveShared ? protocol() : { token_ids: [], window: 256 };
  const rows: string[] = [];
  afterAll(() => { if (rows.length) console.log(['round trip (stories260K, TinyStories protocol, 20480 predictions):', ...rows].join('\n  ')); });

  const configs = [
    { method: 'rtn', symmetric: true }, { method: 'rtn', symmetric: false },
    { method: 'teq', symmetric: true }, { method: 'teq', symmetric: false },
  ] as const;
  for (const c of configs) {
    it(`${c.method} W4 g32 ${c.symmetric ? 'sym' : 'asym'}: llama.cpp's perplexity within 0.5 %, greedy identical for ${GEN_TOKENS} tokens but for near-ties`, async () => {
      const model = TrainableLlama.fromCheckpoint(openCheckpoint(HF));
      const tok = await openCheckpoint(HF).tokenizer();
      const calibration = c.method === 'teq' ? calibrationFromFile(TINY, (d) => tok.encode(d, { bos: true }), { samples: 128, seqLen: 256, seed: 0, skipDocuments: 200 }) : undefined;
      const t0 = performance.now();
      const q = await quantizeModel(model, { method: c.method, bits: 4, groupSize: 32, symmetric: c.symmetric, steps: TEQ_STEPS, calibration });
      const tq = (performance.now() - t0) / 1000;
      const dir = path.join(tmp, `${c.method}-${c.symmetric ? 'sym' : 'asym'}`);
      saveGptq(q, dir, { tokenizerDir: HF });
      const file = `${dir}.gguf`;
      const r = await exportGguf(dir, file);
      const qm = await loadModel(dir);
      const lm = await llama.loadModel({ modelPath: file });
      try {
        const ppl = await quantformPerplexity(qm, p);
        const lppl = await llamaPerplexity(lm, p);
        const prompt = qm.tokenizer.encode(PROMPT, { bos: true });
        expect([1, ...lm.tokenize(PROMPT)]).toEqual(prompt);
        const a = await greedy(qm, prompt, GEN_TOKENS), b = await llamaGreedy(lm, prompt, GEN_TOKENS);
        const types = [...new Set(r.tensors.filter((t) => t.shape.length === 2 && t.source !== 'f32').map((t) => `${t.type} ${t.fidelity}`))].join(', ');
        rows.push(`${c.method} ${c.symmetric ? 'sym ' : 'asym'}: quantform ${ppl.toFixed(4)}, llama.cpp ${lppl.toFixed(4)} (${(100 * (lppl / ppl - 1)).toFixed(3)} %), ` +
          `greedy ${a.findIndex((x, i) => x !== b[i]) < 0 ? 'identical' : 'differs'} (${GEN_TOKENS} tokens); ${types}; export ${r.seconds.toFixed(2)} s, ${(r.bytes / 1e3).toFixed(0)} kB` +
          (c.method === 'teq' ? `; TEQ ${TEQ_STEPS} steps ${tq.toFixed(1)} s` : ''));
        expect(Math.abs(lppl - ppl) / ppl).toBeLessThan(PPL_REL_TOL);
        // Free-running greedy text must match unless a step is a near-tie: llama.cpp's
        // CPU matmuls round activations to 8 bits per 32-block (quantform keeps fp32),
        // which moves logits by a few hundredths here, so two candidates closer than
        // TIE_NATS may swap and the continuations then part. Teacher-forced on our
        // tokens, llama.cpp must make the same choice at every step that is not such a
        // tie, in both models' eyes.
        if (a.some((x, i) => x !== b[i])) {
          const tf = await llamaTeacherForced(lm, prompt, a);
          const { logits } = qm.forward([...prompt, ...a.slice(0, -1)]);
          const V = qm.config.vocabSize, off = (prompt.length - 1) * V;
          const disagreements = tf.flatMap((t, i) => (t.pick === a[i] ? [] : [{
            i, ours: a[i], theirs: t.pick, llamaMargin: t.lpPick - t.lpOurs, quantformMargin: logits[off + i * V + a[i]] - logits[off + i * V + t.pick],
          }]));
          rows.push(`  ${c.method} ${c.symmetric ? 'sym' : 'asym'} near-ties: ${JSON.stringify(disagreements)}`);
          for (const d of disagreements) {
            expect(d.llamaMargin).toBeLessThan(TIE_NATS);
            expect(d.quantformMargin).toBeLessThan(TIE_NATS);
          }
          expect(disagreements.length).toBeLessThanOrEqual(MAX_TIES);
        }
      } finally {
        qm.dispose();
        await lm.dispose();
      }
    });
  }

  it('llama.cpp tokenizes 300 stories and 300 WikiText lines exactly as quantform (same ids)', async () => {
    const file = path.join(tmp, 'fp32.gguf');
    await exportGguf(HF, file);
    const qm = await loadModel(HF);
    const lm = await llama.loadModel({ modelPath: file });
    try {
      const stories = readFileSync(TINY, 'utf8').split('<|endoftext|>').map((s) => s.trim()).filter(Boolean).slice(0, 300);
      const wiki = readFileSync(WIKI, 'utf8').replace(/\r\n/g, '\n').split('\n').slice(0, 300);
      let tokens = 0;
      const bad: string[] = [];
      for (const text of [...stories, ...wiki]) {
        const a = qm.tokenizer.encode(text, { bos: false }), b = [...lm.tokenize(text)];
        tokens += a.length;
        if (a.join() !== b.join()) bad.push(text.slice(0, 60));
      }
      console.log(`tokenization: ${stories.length + wiki.length} texts, ${tokens} tokens, ${bad.length} differences`);
      expect(bad).toEqual([]);
      // and the fp32 model scores the reference windows in llama.cpp too (the first 20 of 80)
      const win = (JSON.parse(readFileSync(REF, 'utf8')) as { results: { stories260K: { per_window_mean_nll: number[] } } }).results.stories260K.per_window_mean_nll;
      const want = Math.exp(win.slice(0, 20).reduce((a, b) => a + b, 0) / 20);
      expect(Math.abs((await llamaPerplexity(lm, p, 20)) - want) / want).toBeLessThan(1e-4);
    } finally {
      qm.dispose();
      await lm.dispose();
    }
  });

  describe.skipIf(quantSkip !== null)('files llama.cpp\'s own quantizer wrote (llama_model_quantize)', () => {
    const f32 = path.join(tmp, 'llamacpp-src-f32.gguf');
    beforeAll(async () => { if (!existsSync(f32)) await exportGguf(HF, f32); });
    const quantizeWithLlamaCpp = (ftype: string) => {
      const out = path.join(tmp, `llamacpp-${ftype}.gguf`);
      execFileSync(py.ok ? py.value : 'python3', [path.join(ROOT, 'test/fixtures/ggml/make_fixtures.py'), 'quantize', f32, out, ftype],
        { env: { ...process.env, QUANTFORM_LLAMA_LIB_DIR: libDir ?? '' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
      return out;
    };
    for (const ftype of ['Q4_0', 'Q4_1', 'Q8_0']) {
      it(`${ftype}: quantform loads it packed and scores it as llama.cpp does`, async () => {
        const file = quantizeWithLlamaCpp(ftype);
        const qm = await loadModel(file);
        const lm = await llama.loadModel({ modelPath: file });
        try {
          expect(qm.linear('layers.0.wq').kind).toBe('quantized');
          const ppl = await quantformPerplexity(qm, p, 10), lppl = await llamaPerplexity(lm, p, 10);
          rows.push(`llama.cpp-written ${ftype}: quantform ${ppl.toFixed(4)}, llama.cpp ${lppl.toFixed(4)} (${(100 * (lppl / ppl - 1)).toFixed(3)} %, 10 windows)`);
          expect(Math.abs(lppl - ppl) / ppl).toBeLessThan(PPL_REL_TOL);
        } finally {
          qm.dispose();
          await lm.dispose();
        }
      });
    }
  });

  // K-quants need rows of 256: a random model of that width with stories260K's vocabulary
  describe('K-quants both ways on a 256-wide model', () => {
    const syn = new SyntheticCheckpoint({ dim: 256, hiddenDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 512, maxSeq: 256, seed: 11 });
    const seqIds = (): number[] => [1, ...p.token_ids.slice(1, 128)];
    /** max |p_llama - p_quantform| over the next-token distributions of a 128-token sequence */
    const probDiff = async (file: string) => {
      const qm = await loadModel(file);
      const lm = await llama.loadModel({ modelPath: file });
      try {
        const ids = seqIds();
        const { logits, V } = qm.forward(ids);
        const ctx = await lm.createContext({ contextSize: 256, threads: LLAMA_THREADS, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
        const res = await ctx.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }] as [number, { generateNext: { probabilities: true } }]));
        await ctx.dispose();
        let worst = 0;
        for (let t = 0; t < ids.length; t++) {
          let mx = -Infinity, s = 0;
          for (let v = 0; v < V; v++) mx = Math.max(mx, logits[t * V + v]);
          for (let v = 0; v < V; v++) s += Math.exp(logits[t * V + v] - mx);
          for (const [v, pr] of res[t]!.next.probabilities!) worst = Math.max(worst, Math.abs(pr - Math.exp(logits[t * V + v] - mx) / s));
        }
        return worst;
      } finally {
        qm.dispose();
        await lm.dispose();
      }
    };
    // llama.cpp quantizes activations to 8 bits for its K-quant dot products; quantform computes in fp32
    const PROB_ABS_TOL = 0.02;

    it('quantform\'s INT2/INT3/INT4 g16 re-encodings (Q2_K, Q3_K, Q4_K) read the same in llama.cpp', async () => {
      const vocab = vocabFromCheckpoint((await loadModel(HF)).checkpoint);
      const cache = new Map<string, QuantizedTensor>();
      const bitsOf = (name: string) => (name.endsWith('w_up') || name.endsWith('w_gate') ? 2 : name.endsWith('w_down') ? 3 : 4) as 2 | 3 | 4;
      const ck: Checkpoint = {
        format: 'synthetic', path: syn.path, config: syn.config, tokenizer: () => syn.tokenizer(), close: () => undefined,
        quantizedWeight: (name: string) => {
          if (name === 'embed' || name === 'lm_head' || weightShape(syn.config, name).length < 2) return null;
          if (!cache.has(name)) cache.set(name, quantize(new Tensor(syn.weight(name), weightShape(syn.config, name) as [number, number]),
            { bits: bitsOf(name), groupSize: bitsOf(name) === 4 ? 16 : 32, symmetric: bitsOf(name) === 3, paramDtype: 'f16' }));
          return cache.get(name)!;
        },
        weight: (name: string) => (ck.quantizedWeight!(name) ? (dequantize(ck.quantizedWeight!(name)!).data as Float32Array) : syn.weight(name)),
      };
      const file = path.join(tmp, 'kquants.gguf');
      const r = await exportGguf(ck, file, { vocab });
      const types = new Set(r.tensors.map((t) => t.type));
      for (const t of ['Q2_K', 'Q3_K', 'Q4_K']) expect(types.has(t)).toBe(true);
      const d = await probDiff(file);
      rows.push(`quantform Q2_K/Q3_K/Q4_K (256-wide random model): max |p_llama.cpp - p_quantform| ${d.toExponential(2)}`);
      expect(d).toBeLessThan(PROB_ABS_TOL);
    });

    it('Llama 3 rope_scaling written as rope_freqs.weight: llama.cpp gives the scaled model\'s probabilities', async () => {
      const vocab = vocabFromCheckpoint((await loadModel(HF)).checkpoint);
      // original_max_position_embeddings 16 puts most frequencies in the scaled bands at these positions
      const ropeScaling = { ropeType: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16 };
      const scaled: Checkpoint = { format: 'synthetic', path: 'synthetic-rope3', config: { ...syn.config, ropeScaling }, tokenizer: () => syn.tokenizer(),
        close: () => undefined, weight: (n: string) => syn.weight(n) };
      const file = path.join(tmp, 'rope3.gguf');
      const r = await exportGguf(scaled, file, { vocab });
      expect(r.tensors.map((t) => t.name)).toContain('rope_freqs.weight');
      const lm = await llama.loadModel({ modelPath: file });
      const m = new Model(scaled, await syn.tokenizer());
      const plain = new Model(syn, await syn.tokenizer());
      try {
        const ids = seqIds();
        const ctx = await lm.createContext({ contextSize: 256, threads: LLAMA_THREADS, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
        const res = await ctx.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }] as [number, { generateNext: { probabilities: true } }]));
        await ctx.dispose();
        const worst = (logits: Float32Array) => {
          let w = 0;
          for (let t = 0; t < ids.length; t++) {
            let mx = -Infinity, s = 0;
            for (let v = 0; v < 512; v++) mx = Math.max(mx, logits[t * 512 + v]);
            for (let v = 0; v < 512; v++) s += Math.exp(logits[t * 512 + v] - mx);
            for (const [v, pr] of res[t]!.next.probabilities!) w = Math.max(w, Math.abs(pr - Math.exp(logits[t * 512 + v] - mx) / s));
          }
          return w;
        };
        const withScaling = worst(m.forward(ids).logits), without = worst(plain.forward(ids).logits);
        rows.push(`Llama 3 rope_scaling via rope_freqs (256-wide random model): max |dp| ${withScaling.toExponential(2)} (unscaled model: ${without.toExponential(2)})`);
        // fp32 weights on both sides: only summation order differs; an unscaled RoPE is visibly different
        expect(withScaling).toBeLessThan(1e-4);
        expect(without).toBeGreaterThan(100 * withScaling);
      } finally {
        m.dispose();
        plain.dispose();
        await lm.dispose();
      }
    });

    it.skipIf(quantSkip !== null)('llama.cpp\'s own Q4_K_M / Q3_K_M / Q2_K files read the same in quantform', async () => {
      const vocab = vocabFromCheckpoint((await loadModel(HF)).checkpoint);
      const f32 = path.join(tmp, 'syn-f32.gguf');
      await exportGguf(syn, f32, { vocab });
      for (const ftype of ['Q4_K_M', 'Q3_K_M', 'Q2_K']) {
        const out = path.join(tmp, `syn-${ftype}.gguf`);
        execFileSync(py.ok ? py.value : 'python3', [path.join(ROOT, 'test/fixtures/ggml/make_fixtures.py'), 'quantize', f32, out, ftype],
          { env: { ...process.env, QUANTFORM_LLAMA_LIB_DIR: libDir ?? '' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
        const qm = await loadModel(out);
        const kinds = new Set(qm.linearNames().map((n) => qm.linear(n).kind));
        qm.dispose();
        expect(kinds.has('quantized')).toBe(true);
        const d = await probDiff(out);
        rows.push(`llama.cpp-written ${ftype} (256-wide random model): max |p_llama.cpp - p_quantform| ${d.toExponential(2)}`);
        expect(d).toBeLessThan(PROB_ABS_TOL);
      }
    });
  });
});
