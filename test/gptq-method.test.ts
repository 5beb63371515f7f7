// GPTQ as a model method on stories260K: the block-step adapter reads the right
// activations, GPTQ's objective is below RTN's on every linear of every block (with
// the true-sequential Hessians), quantizeModel keeps GPTQ's own codes, the result
// beats RTN on held-out text, and the 2/3/4-bit GPTQ checkpoints load back into the
// runtime (INT4 fast path, INT2/INT3 generic path) computing what was quantized.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrationFromFile } from '../lib/engine/calib.js';
import { blockLayout, HF_LINEAR, LINEARS, TrainableLlama } from '../lib/engine/llama.js';
import { evaluatePerplexity } from '../lib/eval/perplexity.js';
import { saveGptq } from '../lib/export/save.js';
import { BlockInputs, runGptq } from '../lib/methods/gptq.js';
import '../lib/methods/index.js';
import { dequantizedModel, quantizedCheckpoint, quantizeModel, type QuantizedModel } from '../lib/methods/quantize-model.js';
import { loadModel, Model, openCheckpoint } from '../lib/model/model.js';
import type { Tokenizer } from '../lib/tokenizer/tokenizer.js';
import { loadHfTokenizer } from '../lib/tokenizer/hf.js';
import { QuantizedLinear } from '../lib/model/linear.js';
import { native } from '../lib/native.js';
import { dequantize, type Bits } from '../lib/ops/quant.js';
import { nmse } from './helpers/oracle.js';

const shared = path.resolve(process.cwd(), '../shared');
const modelDir = path.join(shared, 'models/stories260K-hf');
const tsFile = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const evalFile = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const have = existsSync(modelDir) && existsSync(tsFile) && existsSync(evalFile);
if (!have) console.log(`gptq-method: ${shared} (stories260K, TinyStories) not found, tests skipped`);

/** the adapter's slots recombined through the block's own linears vs the block output */
const ADAPTER_NMSE = 1e-12;
/** runtime logits of a reloaded GPTQ checkpoint vs the training forward of the dequantized model */
const RELOAD_LOGITS_NMSE = 1e-9;

describe.skipIf(!have)('GPTQ method on stories260K', () => {
  const ck = have ? openCheckpoint(modelDir) : undefined;
  const model = have ? TrainableLlama.fromCheckpoint(ck!) : (undefined as unknown as TrainableLlama);
  const tok: Tokenizer | undefined = have ? loadHfTokenizer(modelDir, ck!.config) : undefined;
  const cal = have ? calibrationFromFile(tsFile, (d) => tok!.encode(d, { bos: true }), { samples: 24, seqLen: 128, seed: 0, skipDocuments: 200 }) : undefined;
  /** the one evaluator, on the kernels the saved checkpoint would run on */
  const ppl = async (q: QuantizedModel) => {
    const m = new Model(quantizedCheckpoint(q, tok!), tok!);
    try {
      return (await evaluatePerplexity(m, { ids: evalIds }, { ctx: 256, stride: 256 })).ppl;
    } finally {
      m.dispose();
    }
  };
  const evalIds: number[] = have ? JSON.parse(readFileSync(evalFile, 'utf8')).token_ids.slice(0, 20 * 256 + 1) : [];

  it('the block-step adapter hands out n1, att, n2 and the SwiGLU output', async () => {
    const nb = native().engine;
    const s = model.shape, D = s.hidden, S = 128, B = 3, T = B * S;
    const lay = blockLayout(s);
    const x = new Float32Array(T * D);
    nb.embeddingForward(x, cal!.tokens.subarray(0, T), model.embed, T, s.vocab, D);
    const bi = new BlockInputs(model, S, B);
    const out = new Float32Array(T * D);
    await bi.forward(model.blocks[0], x, out, B);
    const slot = (o: number, n: number) => model.blocks[0].subarray(o, o + n);
    const rms = (v: Float32Array, g: Float32Array) => {
      const r = new Float32Array(T * D);
      nb.rmsnormForward(r, new Float32Array(T), v, g, T, D, s.rmsEps);
      return r;
    };
    const lin = (inp: Float32Array, n: (typeof LINEARS)[number]) => {
      const L = lay.linears[n], y = new Float32Array(T * L.rows);
      nb.gemm(y, inp, model.linear(0, n), T, L.rows, L.cols, false, true, false);
      return y;
    };
    expect(nmse(bi.input('n1', B), rms(x, slot(lay.g1.offset, D)))).toBeLessThan(ADAPTER_NMSE);
    const n1 = bi.input('n1', B).slice();
    bi.inputNorm(model.blocks[0], x, B);
    expect(Array.from(bi.input('n1', B))).toEqual(Array.from(n1));  // the norm-only shortcut is the forward's n1, bit for bit
    const h = lin(bi.input('att', B), 'o_proj').map((v, i) => v + x[i]);
    expect(nmse(bi.input('n2', B), rms(h, slot(lay.g2.offset, D)))).toBeLessThan(ADAPTER_NMSE);
    const y = lin(bi.input('swiglu', B), 'down_proj').map((v, i) => v + h[i]);
    expect(nmse(out, y)).toBeLessThan(ADAPTER_NMSE);
  });

  it('GPTQ objective <= RTN objective on every linear of every block (W3 g32, true-sequential Hessians)', async () => {
    const run = await runGptq(model, cal!, { bits: 3, groupSize: 32, symmetric: false }, { objectives: true });
    expect(run.stats.length).toBe(model.shape.layers * LINEARS.length);
    for (const st of run.stats) {
      expect(st.objective, st.name).toBeLessThan(st.rtnObjective!);
      expect(Number.isFinite(st.loss)).toBe(true);
    }
  });

  it("quantizeModel keeps GPTQ's codes and scales (not re-RTN'd), and GPTQ beats RTN on held-out text", async () => {
    const quant = { bits: 3 as Bits, groupSize: 32, symmetric: false };
    const run = await runGptq(model, cal!, quant);
    const q = await quantizeModel(model, { method: 'gptq', ...quant, calibration: cal });
    for (const [name, t] of run.linears) {
      const got = q.linears.get(name)!;
      expect(Buffer.from(got.codes).equals(Buffer.from(t.codes)), name).toBe(true);
      expect(Array.from(got.scales)).toEqual(Array.from(t.scales));
    }
    const rtn = await quantizeModel(model, { method: 'rtn', ...quant });
    const pG = await ppl(q);
    const pR = await ppl(rtn);
    expect(pG).toBeLessThan(pR * 0.92);
    // the report measures the GPTQ tensors
    for (const r of q.report.linears) expect(r.errorAfter).toBeGreaterThan(0);
  });

  for (const [bits, gs, sym] of [[4, 32, false], [3, 32, true], [2, 64, false], [4, 1 << 20, false]] as const)
    it(`a ${bits}-bit GPTQ checkpoint (${gs > 172 ? 'per-channel' : `g${gs}`} ${sym ? 'sym' : 'asym'}) loads into the runtime on its packed kernels`, async () => {
      const q = await quantizeModel(model, { method: 'gptq', bits, groupSize: gs, symmetric: sym, calibration: cal });
      const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-gptq-m-'));
      try {
        const out = path.join(dir, 'm');
        saveGptq(q, out, { tokenizerDir: modelDir });
        const cfg = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
        expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits, group_size: gs > 172 ? -1 : gs, sym, desc_act: false });
        const m = await loadModel(out);
        try {
          for (let l = 0; l < model.shape.layers; l++)
            for (const n of LINEARS) {
              const lin = m.linear(`layers.${l}.${{ q_proj: 'wq', k_proj: 'wk', v_proj: 'wv', o_proj: 'wo', gate_proj: 'w_gate', up_proj: 'w_up', down_proj: 'w_down' }[n]}`);
              expect(lin).toBeInstanceOf(QuantizedLinear);
              const mine = q.linears.get(`model.layers.${l}.${HF_LINEAR[n]}`)!;
              expect(Buffer.from((lin as QuantizedLinear).weight.codes).equals(Buffer.from(mine.codes))).toBe(true);
            }
          const tokens = Int32Array.from(evalIds.slice(0, 64));
          const got = m.forward([Array.from(tokens)]).logits;
          const want = await dequantizedModel(q).logits(tokens, 1, 64);
          expect(nmse(got, want)).toBeLessThan(RELOAD_LOGITS_NMSE);
          // the reloaded training model dequantizes to exactly the GPTQ weights
          const back = TrainableLlama.fromCheckpoint(openCheckpoint(out));
          const w = dequantize(q.linears.get('model.layers.2.mlp.down_proj')!).data as Float32Array;
          expect(Array.from(back.linear(2, 'down_proj'))).toEqual(Array.from(w));
        } finally {
          m.dispose();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

  it("act-order (per output channel): layer 0's q/k/v (same inputs either way) and the model in all have a lower GPTQ objective; groups are refused", async () => {
    const q = { bits: 4 as Bits, groupSize: 1 << 20, symmetric: true };
    const plain = await runGptq(model, cal!, q, { objectives: true });
    const ordered = await runGptq(model, cal!, q, { objectives: true, actOrder: true });
    const sum = (r: typeof plain) => r.stats.reduce((a, st) => a + st.objective!, 0);
    for (const n of ['q_proj', 'k_proj', 'v_proj']) {
      const of = (r: typeof plain) => r.stats.find((st) => st.name === `model.layers.0.self_attn.${n}`)!.objective!;
      expect(of(ordered), n).toBeLessThan(of(plain));
    }
    expect(sum(ordered)).toBeLessThan(sum(plain));
    console.log(`act-order: GPTQ objective summed over the linears ${sum(ordered).toPrecision(4)} vs ${sum(plain).toPrecision(4)} in index order`);
    await expect(runGptq(model, cal!, { bits: 4, groupSize: 32, symmetric: true }, { actOrder: true }))
      .rejects.toThrow(/act-order needs weights per output channel \(a group size of at least 172\) but received group size 32/);
    await expect(runGptq(model, cal!, q, { actOrder: 'yes' as unknown as boolean })).rejects.toThrow(/Expected boolean for actOrder but received 'yes'/);
  });

  it('an aborted signal stops GPTQ with QF_ABORTED', async () => {
    const ac = new AbortController();
    let events = 0;
    const p = runGptq(model, cal!, { bits: 4, groupSize: 32, symmetric: false }, {}, { signal: ac.signal, onProgress: () => { if (++events === 2) ac.abort(); } });
    await expect(p).rejects.toMatchObject({ code: 'QF_ABORTED', message: expect.stringMatching(/stopped before layer 0 gate_proj\/up_proj/) });
  });

  it('bad input: no calibration, bad damp, bad paramsFrom', async () => {
    await expect(quantizeModel(model, { method: 'gptq', bits: 4 })).rejects.toThrow(/Method 'gptq' needs calibration data/);
    await expect(quantizeModel(model, { method: 'gptq', bits: 4, calibration: cal, gptq: { damp: -1 } })).rejects.toThrow(/Expected number >= 0 for damp but received -1 of type number/);
    await expect(quantizeModel(model, { method: 'gptq', bits: 4, calibration: cal, gptq: { paramsFrom: 'late' as 'updated' } })).rejects.toThrow(/Expected 'updated', 'batch-start' or 'best' for paramsFrom but received 'late'/);
  });
});
