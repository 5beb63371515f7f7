// Concurrency: many async calls in flight at once (libuv workers sharing the
// native pool) and the same ops in several worker_threads (each its own addon
// environment) give results bit-identical to the sequential sync calls. Disposing
// a prepared weight or a Model while an async call uses it is safe (the call keeps
// its reference and finishes with the right result); using it afterwards is a
// clear error.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import {
  ByteTokenizer, Model, QuantformError, SyntheticCheckpoint, Tensor, matmul, matmulAsync, prepareMatmulWeight, quantize,
} from '../lib/index.js';
import { bundleChild } from './helpers/child.js';
import { digest, opCases } from './helpers/op-set.js';

const VARIANTS = [0, 1, 2, 3];

async function sequential(variant: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const c of opCases(variant)) out[c.name] = digest(await c.sync());
  return out;
}

describe('concurrency', () => {
  it('64 async calls at once give the sequential results bit for bit', async () => {
    const ref = new Map<number, Record<string, string>>();
    for (const v of VARIANTS) ref.set(v, await sequential(v));
    const calls: Promise<[number, string, string]>[] = [];
    for (let round = 0; round < 3; round++)
      for (const v of VARIANTS)
        for (const c of opCases(v)) calls.push(c.async().then((r) => [v, c.name, digest(r)]));
    expect(calls.length).toBeGreaterThanOrEqual(64);
    const got = await Promise.all(calls);
    for (const [v, name, d] of got) expect(d, `variant ${v} ${name}`).toBe(ref.get(v)![name]);
  });

  it('three worker_threads running the op set give the main thread\'s results', async () => {
    const entry = bundleChild('test/children/worker-ops.ts');
    const ref = new Map<number, Record<string, string>>();
    for (const v of VARIANTS.slice(0, 3)) ref.set(v, await sequential(v));
    const results = await Promise.all(VARIANTS.slice(0, 3).map((variant) => new Promise<[number, Record<string, { sync: string; async: string }>]>((resolve, reject) => {
      const w = new Worker(entry, { workerData: { variant } });
      w.once('message', (m) => resolve([variant, m]));
      w.once('error', reject);
      w.once('exit', (code) => { if (code !== 0) reject(new Error(`worker exited with ${code}`)); });
    })));
    for (const [v, r] of results)
      for (const [name, d] of Object.entries(r)) {
        expect(d.sync, `worker ${v} ${name} sync`).toBe(ref.get(v)![name]);
        expect(d.async, `worker ${v} ${name} async`).toBe(ref.get(v)![name]);
      }
  });

  it('disposing a prepared weight during matmulAsync: the call finishes right, later use is an error', async () => {
    const N = 1024, K = 1024;
    const w = new Tensor(Float32Array.from({ length: N * K }, (_, i) => Math.sin(i * 0.01)), [N, K]);
    const q = quantize(w, { bits: 4, groupSize: 128 });
    const x = new Tensor(Float32Array.from({ length: 64 * K }, (_, i) => Math.cos(i * 0.003)), [64, K]);
    const pw = prepareMatmulWeight(q);
    const ref = matmul(x, pw).data;
    const pending = [matmulAsync(x, pw), matmulAsync(x, pw), matmulAsync(x, pw)];
    pw.dispose();
    for (const y of await Promise.all(pending)) expect(digest(y.data)).toBe(digest(ref));
    let e: unknown;
    try {
      matmul(x, pw);
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(QuantformError);
    expect((e as QuantformError).message).toMatch(/disposed/);
    await expect(matmulAsync(x, pw)).rejects.toThrow(/disposed/);
    pw.dispose();  // twice: harmless
  });

  it('disposing a Model during forwardAsync: the forward finishes right; a second forward while busy and later use are errors', async () => {
    const ck = new SyntheticCheckpoint({ dim: 64, hiddenDim: 96, nLayers: 4, nHeads: 4, vocabSize: 128, maxSeq: 256, seed: 9 });
    const tokens = Array.from({ length: 200 }, (_, i) => (i * 13) % 128);
    const ref = (() => {
      const m = new Model(ck, new ByteTokenizer(128));
      try {
        return m.forward(tokens).logits;
      } finally {
        m.dispose();
      }
    })();
    const m = new Model(ck, new ByteTokenizer(128));
    const pending = m.forwardAsync(tokens);
    // the KV cache is the model's: a second forward while one runs is refused, not raced
    await expect(m.forwardAsync(tokens)).rejects.toMatchObject({ code: 'QF_INVALID_ARGUMENT', message: expect.stringMatching(/busy/) });
    m.dispose();
    expect(digest((await pending).logits)).toBe(digest(ref));
    expect(() => m.forward(tokens)).toThrow(QuantformError);
    expect(() => m.forward(tokens)).toThrow(/disposed/);
    m.dispose();
  });
});
