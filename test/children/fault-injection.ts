// Child of test/fault-injection.test.ts, run with QUANTFORM_FAULT_ALLOC=0: for each
// op of every family, counts the native allocations one call makes, then fails
// each of them in turn (all of them, or an even sample for large ops) and checks
// that the call ends in a QuantformError QF_OUT_OF_MEMORY naming the op, and that
// the next call, with nothing failing, gives the reference result bit for bit.
// Prints one JSON line: a report per op.
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ByteTokenizer, Model, QuantformError, SyntheticCheckpoint, Tensor, TrainableLlama, calibrationFromText, dequantize, dequantizeAsync,
  fakeQuantize, fakeQuantizeAsync, fakeQuantizeBackward, fakeQuantizeBackwardAsync, matmul, matmulAsync, matmulF32,
  openCheckpoint, pack, packAsync, prepareMatmulWeight, quantize, quantizeAsync, quantizeModel, unpack, unpackAsync,
} from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { ggufBytes, writeHfDir } from '../helpers/writers.js';

interface Op {
  name: string;
  family: 'quant' | 'matmul' | 'model' | 'train' | 'loader';
  mode: 'sync' | 'async';
  run: () => unknown;
}

interface Report {
  name: string;
  family: string;
  mode: string;
  allocations: number;
  tried: number;
  /** injected failures that ended in QF_OUT_OF_MEMORY */
  cleanFailures: number;
  /** calls that succeeded although armed (the armed allocation did not happen) and matched the reference */
  unaffected: number;
  /** everything else: wrong error, wrong result after recovery, ... */
  bad: string[];
}

const faultAlloc = native().faultAlloc;
if (!faultAlloc) throw new Error('run with QUANTFORM_FAULT_ALLOC=0: the addon exports faultAlloc only then');

/** Every typed array reachable from a result, hashed in order. */
function digest(v: unknown): string {
  const h = createHash('sha256');
  const walk = (x: unknown): void => {
    if (x === null || x === undefined) { h.update('_'); return; }
    if (ArrayBuffer.isView(x)) { h.update(new Uint8Array(x.buffer, x.byteOffset, x.byteLength)); return; }
    if (x instanceof Map) { for (const [k, val] of [...x.entries()].sort()) { h.update(String(k)); walk(val); } return; }
    if (Array.isArray(x)) { x.forEach(walk); return; }
    if (typeof x === 'object') { for (const k of Object.keys(x).sort()) { h.update(k); walk((x as Record<string, unknown>)[k]); } return; }
    h.update(String(x));
  };
  walk(v);
  return h.digest('hex');
}

const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7 + seed) * (1 + (i % 7)));

function ops(tmp: string): Op[] {
  const N = 48, K = 160;
  const w = new Tensor(rand(N * K, 1), [N, K]);
  const wh = new Tensor(Uint16Array.from(rand(N * K, 2), (v) => 0x3c00 + (Math.abs(Math.round(v * 100)) % 0x300)), [N, K], 'f16');
  const q4 = quantize(w, { bits: 4, groupSize: 32 });
  const q3 = quantize(w, { bits: 3, groupSize: 20, symmetric: true });
  const codes8 = Uint8Array.from({ length: N * K }, (_, i) => (i * 7) % 16);
  const packed = pack(codes8, [N, K], 4);
  const params = { scales: q4.scales as Float32Array, zeros: q4.zeros as Float32Array };
  const g = new Tensor(rand(N * K, 3), [N, K]);
  const prep = prepareMatmulWeight(q4);
  const x1 = new Tensor(rand(K, 4), [1, K]), x9 = new Tensor(rand(9 * K, 5), [9, K]);
  const wf = new Tensor(rand(N * K, 6), [N, K]);

  const synth = { dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 64, maxSeq: 32, seed: 5 };
  const ck = new SyntheticCheckpoint(synth);
  const model = new Model(ck, new ByteTokenizer(64));
  const tokens = [[1, 5, 9, 13, 2, 7], [3, 4, 60, 61, 8, 8]];
  const trainable = TrainableLlama.fromCheckpoint(ck);
  const tok = Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 11 + 3) % 64);
  const text = Array.from({ length: 400 }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join('');
  const bt = new ByteTokenizer(64);
  const calibration = calibrationFromText(text, (d) => bt.encode(d), { samples: 4, seqLen: 16, seed: 1 });

  const hfDir = path.join(tmp, 'hf-f16');
  mkdirSync(hfDir);
  writeHfDir(hfDir, ck.config, (n) => ck.weight(n), 'F16');
  const gguf = path.join(tmp, 'model.gguf');
  writeFileSync(gguf, ggufBytes(ck.config, (n) => ck.weight(n), { dtype: 'F16' }));
  const logitsOf = (m: Model) => {
    try {
      return m.forward(tokens).logits;
    } finally {
      m.dispose();
    }
  };

  return [
    { name: 'quantize f32', family: 'quant', mode: 'sync', run: () => quantize(w, { bits: 4, groupSize: 32 }) },
    { name: 'quantize f16', family: 'quant', mode: 'async', run: () => quantizeAsync(wh, { bits: 3, groupSize: 24, paramDtype: 'f16' }) },
    { name: 'dequantize', family: 'quant', mode: 'sync', run: () => dequantize(q4) },
    { name: 'dequantize int3', family: 'quant', mode: 'async', run: () => dequantizeAsync(q3, 'bf16') },
    { name: 'pack', family: 'quant', mode: 'sync', run: () => pack(codes8, [N, K], 4) },
    { name: 'pack', family: 'quant', mode: 'async', run: () => packAsync(codes8, [N, K], 4) },
    { name: 'unpack', family: 'quant', mode: 'sync', run: () => unpack(packed, [N, K], 4) },
    { name: 'unpack', family: 'quant', mode: 'async', run: () => unpackAsync(packed, [N, K], 4) },
    { name: 'fakeQuantize', family: 'quant', mode: 'sync', run: () => fakeQuantize(w, { bits: 4, groupSize: 32 }, params) },
    { name: 'fakeQuantize', family: 'quant', mode: 'async', run: () => fakeQuantizeAsync(w, { bits: 4, groupSize: 32 }, params) },
    { name: 'fakeQuantizeBackward', family: 'quant', mode: 'sync', run: () => fakeQuantizeBackward(g, w, { bits: 4, groupSize: 32 }, params) },
    { name: 'fakeQuantizeBackward', family: 'quant', mode: 'async', run: () => fakeQuantizeBackwardAsync(g, w, { bits: 4, groupSize: 32 }, params) },
    { name: 'prepareMatmulWeight', family: 'matmul', mode: 'sync', run: () => { const p = prepareMatmulWeight(q4); p.dispose(); return 0; } },
    { name: 'matmul M=1 prepared', family: 'matmul', mode: 'sync', run: () => matmul(x1, prep) },
    { name: 'matmul M=9 prepared', family: 'matmul', mode: 'async', run: () => matmulAsync(x9, prep) },
    { name: 'matmul int8', family: 'matmul', mode: 'async', run: () => matmulAsync(x9, prep, { accuracy: 'int8' }) },
    { name: 'matmul canonical int4', family: 'matmul', mode: 'sync', run: () => matmul(x9, q4) },
    { name: 'matmul generic int3', family: 'matmul', mode: 'async', run: () => matmulAsync(x9, q3) },
    { name: 'matmulF32', family: 'matmul', mode: 'sync', run: () => matmulF32(x9, wf) },
    { name: 'Model.forward', family: 'model', mode: 'sync', run: () => model.forward(tokens).logits },
    { name: 'Model.forwardAsync', family: 'model', mode: 'async', run: async () => (await model.forwardAsync(tokens)).logits },
    { name: 'Model.forward lastOnly', family: 'model', mode: 'sync', run: () => model.forward(tokens, { lastOnly: true }).logits },
    { name: 'new Model (synthetic)', family: 'loader', mode: 'sync', run: () => logitsOf(new Model(new SyntheticCheckpoint(synth), bt)) },
    { name: 'openCheckpoint HF F16', family: 'loader', mode: 'sync', run: () => logitsOf(new Model(openCheckpoint(hfDir), bt)) },
    { name: 'openCheckpoint GGUF F16', family: 'loader', mode: 'sync', run: () => logitsOf(new Model(openCheckpoint(gguf), bt)) },
    { name: 'TrainableLlama.logits (block forward)', family: 'train', mode: 'async', run: () => trainable.logits(tok, 2, 16) },
    { name: 'TrainableLlama.logits fake-quant', family: 'train', mode: 'async', run: () => trainable.logits(tok, 2, 16, { bits: 4, groupSize: 16, symmetric: false }) },
    {
      name: 'quantizeModel teq e2e (block backward, lm head, AdamW)', family: 'train', mode: 'async',
      run: async () => (await quantizeModel(trainable, { method: 'teq', bits: 4, groupSize: 16, calibration, steps: 2, batchSize: 2 })).linears,
    },
    {
      name: 'quantizeModel teq block loss', family: 'train', mode: 'async',
      run: async () => (await quantizeModel(trainable, { method: 'teq', bits: 3, groupSize: 16, calibration, steps: 1, batchSize: 2, loss: 'block', extraScales: true })).linears,
    },
  ];
}

async function probe(op: Op, maxPoints: number): Promise<Report> {
  const fa = faultAlloc!;
  fa(0);
  const ref = digest(await op.run());
  const allocations = fa(0);
  const points: number[] = [];
  if (allocations <= maxPoints) for (let k = 1; k <= allocations; k++) points.push(k);
  else for (let i = 0; i < maxPoints; i++) points.push(1 + Math.floor((i * (allocations - 1)) / (maxPoints - 1)));
  const r: Report = { name: op.name, family: op.family, mode: op.mode, allocations, tried: points.length, cleanFailures: 0, unaffected: 0, bad: [] };
  for (const k of points) {
    fa(k);
    let failed: unknown = null, out: unknown;
    try {
      out = await op.run();
    } catch (e) {
      failed = e;
    }
    fa(0);
    if (failed === null) {
      if (digest(out) === ref) r.unaffected++;
      else r.bad.push(`allocation ${k}: succeeded with a different result`);
      continue;
    }
    const e = failed as Error;
    if (!(e instanceof QuantformError) || e.code !== 'QF_OUT_OF_MEMORY' || !/out of memory/.test(e.message)) {
      r.bad.push(`allocation ${k}: ${e instanceof QuantformError ? e.code : (e as Error)?.constructor?.name} ${String(e?.message).slice(0, 160)}`);
      continue;
    }
    // the process keeps working: the same call now gives the reference result
    let again: string;
    try {
      again = digest(await op.run());
    } catch (e2) {
      r.bad.push(`allocation ${k}: the call after the failure threw ${(e2 as Error).message}`);
      continue;
    }
    if (again !== ref) r.bad.push(`allocation ${k}: the call after the failure gave a different result`);
    else r.cleanFailures++;
  }
  return r;
}

async function main(): Promise<void> {
  // 'all': every allocation of every op; a number: at most that many, evenly spread
  const maxPoints = process.argv[2] === 'all' ? Infinity : Number(process.argv[2] ?? 80);
  const tmp = mkdtempSync(path.join(tmpdir(), 'qf-fault-'));
  try {
    const reports: Report[] = [];
    for (const op of ops(tmp)) reports.push(await probe(op, maxPoints));
    process.stdout.write(JSON.stringify({ reports }) + '\n');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
