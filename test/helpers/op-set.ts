// A fixed set of ops on deterministic inputs, run sync or async, each reduced to a
// digest of its output bytes: the concurrency tests compare digests across
// sync calls, many concurrent async calls and worker_threads.
import { createHash } from 'node:crypto';
import {
  ByteTokenizer, Model, SyntheticCheckpoint, Tensor, TrainableLlama, dequantize, dequantizeAsync, fakeQuantizeBackward,
  fakeQuantizeBackwardAsync, matmul, matmulAsync, prepareMatmulWeight, quantize, quantizeAsync,
} from '../../lib/index.js';

export function digest(v: unknown): string {
  const h = createHash('sha256');
  const walk = (x: unknown): void => {
    if (x === null || x === undefined) { h.update('_'); return; }
    if (ArrayBuffer.isView(x)) { h.update(new Uint8Array(x.buffer, x.byteOffset, x.byteLength)); return; }
    if (Array.isArray(x)) { x.forEach(walk); return; }
    if (typeof x === 'object') { for (const k of Object.keys(x).sort()) { h.update(k); walk((x as Record<string, unknown>)[k]); } return; }
    h.update(String(x));
  };
  walk(v);
  return h.digest('hex');
}

const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.61 + seed * 1.7) * (1 + ((i * seed) % 5)));

export interface OpCase {
  name: string;
  sync: () => unknown;
  async: () => Promise<unknown>;
}

/** `variant` changes the inputs, so concurrent calls do not all compute the same thing. */
export function opCases(variant: number): OpCase[] {
  const N = 96, K = 200 + 8 * variant;
  const w = new Tensor(rand(N * K, variant + 1), [N, K]);
  const q = quantize(w, { bits: 4, groupSize: 40, paramDtype: 'f16' });
  const pw = prepareMatmulWeight(q);
  const x = new Tensor(rand(5 * K, variant + 2), [5, K]);
  const g = new Tensor(rand(N * K, variant + 3), [N, K]);
  const params = { scales: quantize(w, { bits: 3, groupSize: 25 }).scales as Float32Array, zeros: quantize(w, { bits: 3, groupSize: 25 }).zeros as Float32Array };
  const ck = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 64, maxSeq: 32, seed: variant });
  const tokens = [[1, 2 + variant, 9, 13, 40, 7, 7, 3], [5, 6, 7, 8, 9, 10, 11, 12]];
  const trainable = TrainableLlama.fromCheckpoint(ck);
  const fq = { bits: 4 as const, groupSize: 16, symmetric: true };
  const ids = Int32Array.from({ length: 2 * 12 }, (_, i) => (i * 7 + variant) % 64);
  // each Model serves one call at a time: a fresh one per call
  const forward = async (a: boolean) => {
    const m = new Model(ck, new ByteTokenizer(64));
    try {
      return a ? (await m.forwardAsync(tokens)).logits : m.forward(tokens).logits;
    } finally {
      m.dispose();
    }
  };
  return [
    { name: 'quantize', sync: () => quantize(w, { bits: 3, groupSize: 24 }), async: () => quantizeAsync(w, { bits: 3, groupSize: 24 }) },
    { name: 'dequantize', sync: () => dequantize(q, 'bf16'), async: () => dequantizeAsync(q, 'bf16') },
    { name: 'fakeQuantizeBackward', sync: () => fakeQuantizeBackward(g, w, { bits: 3, groupSize: 25 }, params),
      async: () => fakeQuantizeBackwardAsync(g, w, { bits: 3, groupSize: 25 }, params) },
    { name: 'matmul prepared', sync: () => matmul(x, pw), async: () => matmulAsync(x, pw) },
    { name: 'matmul int8', sync: () => matmul(x, pw, { accuracy: 'int8' }), async: () => matmulAsync(x, pw, { accuracy: 'int8' }) },
    { name: 'Model.forward', sync: () => forward(false), async: () => forward(true) },
    // the training engine is async only: its sequential result is the reference
    { name: 'TrainableLlama.logits', sync: () => trainable.logits(ids, 2, 12, fq), async: () => trainable.logits(ids, 2, 12, fq) },
  ];
}
