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
  ActivationStore, ByteTokenizer, GptqHessian, Model, QuantformError, SafetensorsCheckpointFiles, SyntheticCheckpoint, Tensor, TrainableLlama,
  calibrationFromText, dequantize, dequantizeAsync, fakeQuantize, fakeQuantizeAsync, fakeQuantizeBackward, fakeQuantizeBackwardAsync,
  gptqQuantize, gptqQuantizeAsync, matmul, matmulAsync, matmulF32, openCheckpoint, pack, packAsync, prepareMatmulWeight, quantLinearBackward,
  quantLinearBackwardAsync, quantize, quantizeAsync, quantizeCheckpointRtn, quantizeModel, readTensor, unpack, unpackAsync,
} from '../../lib/index.js';
import { fromNative } from '../../lib/errors.js';
import { engineOp, native } from '../../lib/native.js';
import { ggufBytes, writeHfDir } from '../helpers/writers.js';

interface Op {
  name: string;
  family: 'quant' | 'matmul' | 'model' | 'train' | 'loader' | 'engine' | 'gptq' | 'qlinear' | 'io';
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
  const bfDir = path.join(tmp, 'hf-bf16');
  mkdirSync(bfDir);
  writeHfDir(bfDir, ck.config, (n) => ck.weight(n), 'BF16');
  const bfFiles = SafetensorsCheckpointFiles.dir(bfDir);
  const embedStored = bfFiles.get('model.embed_tokens.weight')!;
  let rtnRuns = 0;
  const rtnOut = () => path.join(tmp, `rtn-${rtnRuns++}`);

  // engine ops on their own (the block step's pieces), with the scratch they allocate;
  // called on the binding as lib/engine does, their errors mapped as lib maps them
  const viaLib = <T>(f: () => T) => (): T => {
    try {
      const r = f();
      return (r instanceof Promise ? r.catch((e: unknown) => { throw fromNative(e); }) : r) as T;
    } catch (e) {
      throw fromNative(e);
    }
  };
  const B = 2, T = 24, Hq = 4, Hkv = 2, hd = 8, Dq = Hq * hd, Dkv = Hkv * hd, V = 64, D = 32;
  const q = rand(B * T * Dq, 7), kv = rand(B * T * Dkv, 8), vv = rand(B * T * Dkv, 9);
  const fwd = () => {
    const out = new Float32Array(B * T * Dq), probs = new Float32Array(B * Hq * T * T);
    engineOp('attentionForward')(out, probs, q, kv, vv, B, T, Hq, Hkv, hd, T, 0);
    return { out, probs };
  };
  const saved = fwd();
  const attnBackward = (a: boolean) => {
    const dq = new Float32Array(B * T * Dq), dk = new Float32Array(B * T * Dkv), dv = new Float32Array(B * T * Dkv);
    const r = engineOp('attentionBackward')(dq, dk, dv, rand(B * T * Dq, 10), saved.probs, q, kv, vv, B, T, Hq, Hkv, hd, ...(a ? [true] : []));
    return r ? r.then(() => [dq, dk, dv]) : [dq, dk, dv];
  };
  const gemm = () => {
    const C = new Float32Array(37 * 45);
    engineOp('gemm')(C, rand(37 * 301, 11), rand(301 * 45, 12), 37, 45, 301, false, false, false);
    return C;
  };
  const lmHead = async () => {
    const nll = new Float32Array(B * T), dx = new Float32Array(B * T * D), dn = new Float32Array(D), dh = new Float32Array(V * D);
    await native().engine.lmHeadLoss(nll, dx, dn, dh, rand(B * T * D, 13), rand(D, 14), rand(V * D, 15), Int32Array.from({ length: B * T }, (_, i) => (i * 5) % V),
      B * T, D, V, 1e-5, 1, true);
    return [nll, dx, dn, dh];
  };
  const blk = trainable.blockConfig(2, 16, { bits: 4, groupSize: 16, symmetric: false }, true, true);
  const sizes = native().engine.blockSizes(blk);
  const alpha = Float32Array.from({ length: sizes.alpha }, (_, i) => 1 + (i % 5) / 10);
  const xin = rand(2 * 16 * synth.dim, 16);
  const blockStep = async () => {
    const out = new Float32Array(xin.length), sv = new Float32Array(sizes.saved);
    await native().engine.blockForward(blk, out, sv, xin, trainable.blocks[0], alpha, true);
    const dx = new Float32Array(xin.length), grads = new Float32Array(sizes.params), dalpha = new Float32Array(sizes.alpha);
    await native().engine.blockBackward(blk, dx, grads, dalpha, rand(xin.length, 17), sv, trainable.blocks[0], alpha, true);
    return [out, dx, grads, dalpha];
  };

  // GPTQ and the quantized-linear backward
  const Kg = 96, Ng = 40;
  const wg = new Tensor(rand(Ng * Kg, 18), [Ng, Kg]);
  const calibRows = rand(64 * Kg, 19);
  const hessian = () => {
    const h = new GptqHessian(Kg);
    h.add(calibRows);
    return h;
  };
  const Hg = hessian();
  const qg = quantize(wg, { bits: 4, groupSize: 32, paramDtype: 'f32' });
  const gy = rand(5 * Ng, 20), gx = rand(5 * Kg, 21);
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
    { name: 'openCheckpoint HF BF16 + io.readTensor', family: 'io', mode: 'sync', run: () => readTensor(embedStored) },
    { name: 'ActivationStore write/read (SpillBuffer)', family: 'io', mode: 'sync', run: () => {
      const st = new ActivationStore({ samples: 4, tokens: 16, hidden: 24, dtype: 'bf16', maxMemoryBytes: 2 * 16 * 24 * 2, tmpDir: tmp });
      try {
        for (let s = 0; s < 4; s++) st.write(s, rand(16 * 24, 30 + s));
        return st.read(0, 4);
      } finally {
        st.dispose();
      }
    } },
    { name: 'engine.gemm (packing scratch)', family: 'engine', mode: 'sync', run: viaLib(gemm) },
    { name: 'engine.attentionForward', family: 'engine', mode: 'sync', run: viaLib(fwd) },
    { name: 'engine.attentionBackward', family: 'engine', mode: 'sync', run: viaLib(() => attnBackward(false)) },
    { name: 'engine.attentionBackward', family: 'engine', mode: 'async', run: viaLib(() => attnBackward(true)) },
    { name: 'engine.lmHeadLoss', family: 'engine', mode: 'async', run: viaLib(lmHead) },
    { name: 'engine.blockForward + blockBackward (TEQ extra, fake quant)', family: 'engine', mode: 'async', run: viaLib(blockStep) },
    { name: 'GptqHessian.add', family: 'gptq', mode: 'sync', run: () => hessian().H },
    { name: 'gptqQuantize', family: 'gptq', mode: 'sync', run: () => gptqQuantize(wg, Hg, { bits: 4, groupSize: 32 }) },
    { name: 'gptqQuantizeAsync batch-start', family: 'gptq', mode: 'async', run: () => gptqQuantizeAsync(wg, Hg, { bits: 3, groupSize: 24, blockSize: 16, paramsFrom: 'batch-start' }) },
    { name: 'quantLinearBackward', family: 'qlinear', mode: 'sync', run: () => quantLinearBackward(gy, gx, qg) },
    { name: 'quantLinearBackwardAsync', family: 'qlinear', mode: 'async', run: () => quantLinearBackwardAsync(gy, gx, qg) },
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
    {
      name: 'quantizeModel gptq (Hessians, factor, quantize)', family: 'gptq', mode: 'async',
      run: async () => (await quantizeModel(trainable, { method: 'gptq', bits: 4, groupSize: 16, calibration })).linears,
    },
    {
      name: 'quantizeCheckpointRtn (streamed, HF F16 -> GPTQ dir)', family: 'loader', mode: 'async',
      run: async () => {
        const c = openCheckpoint(hfDir);
        try {
          const r = await quantizeCheckpointRtn(c, rtnOut(), { bits: 4, groupSize: 16 });
          return r.linears.map((l) => l.errorAfter);
        } finally {
          c.close();
        }
      },
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
