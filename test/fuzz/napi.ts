// The N-API boundary fuzzed: every function the addon exports, found at run time
// (top level, the engine and io objects, the classes LlamaModel and SpillBuffer
// and their methods), is called with random
// shapes, lengths, dtypes, detached and SharedArrayBuffer-backed views, wrong
// argument counts and types. Functions lib/native.ts describes start from a valid
// call that is then mutated (so the length checks behind the type checks are
// reached); functions added later without a template get random arguments. The
// native side must reject every inconsistent call with a coded error: a crash or a
// hang fails the case in the parent, an error without a QF_ code (a check that did
// not happen in our code, e.g. V8 refusing an allocation sized by an argument) is
// 'uncoded'.
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../../lib/native.js';
import { Rng } from './mutate.js';
import type { CaseResult } from './protocol.js';

type Args = unknown[];
type Fn = (...a: unknown[]) => unknown;

const f32 = (n: number, s = 1) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + s));
const u16 = (n: number) => Uint16Array.from({ length: n }, (_, i) => 0x3c00 + (i % 64));
const u8 = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7) % 256);
const i32 = (n: number, mod: number) => Int32Array.from({ length: n }, (_, i) => (i * 5) % mod);

const pos = (n: number) => f32(n).map((v) => 1 + Math.abs(v));
const eye = (K: number) => Float32Array.from({ length: K * K }, (_, i) => (i % (K + 1) === 0 ? 1 + i / (K * K) : 0));

const blockCfg = () => ({ B: 1, T: 4, D: 8, F: 12, Hq: 2, Hkv: 1, hd: 4, eps: 1e-5, invFreq: f32(2).map(Math.abs),
  bits: 4, groupSize: 4, symmetric: false, teq: true, teqExtra: false });
// FPTQuant's step on the same block: every transform, S_n, the online Hadamard (F = 12: blocks of 4), A8KV8
const fptCfg = () => ({ ...blockCfg(), bits: 0, teq: false,
  fpt: { qk: true, v: true, mlp: true, residualScaling: true, hadamardBlock: 4, actBits: 8, kvBits: 8 } });
const fptParams = () => f32(native().engine.fptLayout(fptCfg()).total).map((v) => 0.1 * v);
const llamaCfg = () => ({ dim: 8, hiddenDim: 12, nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 4, vocabSize: 16, maxSeq: 8, normEps: 1e-5,
  invFreq: f32(2), tied: true });
const gptqCfg = () => ({ rows: 6, cols: 16, bits: 4, groupSize: 8, symmetric: false, paramDtype: 'f32', damp: 0.01, blockSize: 8, paramsFrom: 'updated' });

// a file of 16 x 8 f32 (the tiny model's embedding), open for the whole child: the
// positional readers (io.readTensor, LlamaModel#setWeightsFromFile) get its fd
let dataFd = -1;
function fd(): number {
  if (dataFd < 0) {
    const dir = mkdtempSync(path.join(tmpdir(), 'qf-napi-'));
    const file = path.join(dir, 'data.bin');
    writeFileSync(file, Buffer.from(f32(16 * 8).buffer));
    dataFd = openSync(file, 'r');
    rmSync(dir, { recursive: true, force: true });  // the open fd keeps the data
  }
  return dataFd;
}

/** Valid calls, from lib/native.ts's contracts (N=6, K=16 matrices unless noted). */
export const TEMPLATES: Record<string, () => Args> = {
  backendInfo: () => [],
  setKernelPolicy: () => ['auto'],
  setThreads: () => [2],
  setAmx: () => [true],
  quantize: () => [f32(96), 'f32', 6, 16, 4, 8, false, 'f32', false],
  pack: () => [u8(96).map((v) => v % 16), 6, 16, 4, false],
  unpack: () => [u8(48), 6, 16, 4, false],
  dequantize: () => [u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false, 'f32', false, null],
  fakeQuantForward: () => [f32(96), f32(12).map(Math.abs), f32(12), 6, 16, 4, 8, false, false],
  fakeQuantBackward: () => [f32(96), f32(96), f32(12).map(Math.abs), f32(12), 6, 16, 4, 8, false, false],
  matmulPrepare: () => [u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false],
  sgemm: () => [f32(48), f32(96), 3, 6, 16, false],
  measureMachine: () => [1 << 20, 1, 0.001, 1, false],
  // (N = 8, K = 16) INT4 g8: qweight (K / 8, N), qzeros (G, N / 8), scalesOut (G, N); codes packed (N, K / 2); f16 scales, zeros (N, G)
  gptqPack: () => [new Int32Array(16), new Int32Array(2), new Uint16Array(16), u8(64), u16(16), u16(16).map(() => 0x4800), 8, 16, 4, 8, false, false, false],
  matmulUnprepare: () => [native().matmulPrepare(u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false)],
  matmulDispose: () => [native().matmulPrepare(u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false)],
  matmul: () => [f32(48), 'f32', 3, null, u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false, 'fp32', 'auto', false],
  matmulPath: () => [3, null, u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false, 'fp32'],
  faultAlloc: () => [0],
  firstNonFinite: () => [f32(40), 'f32'],
  gptqHessianAccumulate: () => [f32(256), f32(4 * 16), 4, 16, 0, false],
  gptqInverseFactor: () => [f32(256), eye(16), 16, 0.01],
  gptqQuantize: () => [f32(96), eye(16), gptqCfg(), false],
  // (M=3, N=6, K=16) INT4 g8: gradInput (M, K), gradScales (N, G), gradOutput (M, N), x (M, K)
  quantLinearBackward: () => [f32(48), f32(12), f32(18), f32(48), 3, u8(48), pos(12), f32(12), 6, 16, 4, 8, false, false],
  // the engine's op list (engine.h QF_ENGINE_OPS), each with a valid small call
  'engine.ops': () => [],
  'engine.kernels': () => [],
  'engine.gemm': () => [f32(18), f32(48), f32(96), 3, 6, 16, false, true, false],
  'engine.embeddingForward': () => [f32(3 * 8), i32(3, 16), f32(16 * 8), 3, 16, 8],
  'engine.embeddingBackward': () => [f32(16 * 8), f32(3 * 8), i32(3, 16), 3, 16, 8],
  'engine.rmsnormForward': () => [f32(24), f32(3), f32(24), f32(8), 3, 8, 1e-5],
  'engine.rmsnormBackward': () => [f32(24), f32(8), f32(24), f32(24), f32(8), pos(3), 3, 8],
  'engine.ropeTables': () => [f32(16), f32(16), f32(2).map(Math.abs), 8, 4],
  'engine.ropeForward': () => [f32(3 * 2 * 4), i32(3, 8), f32(16), f32(16), 3, 2, 4],
  'engine.ropeBackward': () => [f32(3 * 2 * 4), i32(3, 8), f32(16), f32(16), 3, 2, 4],
  // B=1, T=2, Hq=2, Hkv=1, hd=4, cache S=8 at pos0=2: probs (B, Hq, T, pos0 + T)
  'engine.attentionForward': () => [f32(16), f32(16), f32(16), f32(32), f32(32), 1, 2, 2, 1, 4, 8, 2],
  'engine.attentionBackward': () => [f32(32), f32(16), f32(16), f32(32), pos(32).map((v) => v / 8), f32(32), f32(16), f32(16), 1, 4, 2, 1, 4],
  'engine.swigluForward': () => [f32(12), f32(12), f32(12), 3, 4],
  'engine.swigluBackward': () => [f32(12), f32(12), f32(12), f32(12), f32(12), 3, 4],
  'engine.residualForward': () => [f32(10), f32(10), f32(10), 10],
  'engine.crossEntropyForward': () => [f32(3), f32(3 * 16), i32(3, 16), 3, 16],
  'engine.crossEntropyBackward': () => [f32(3 * 16).map((v) => Math.abs(v) / 16), i32(3, 16), 3, 16, 1],
  'engine.teqScaleBackward': () => [f32(16), f32(3 * 16), f32(3 * 16), f32(3 * 16), 3, f32(6 * 16), f32(6 * 16), 6, pos(16), 16],
  'engine.teqExpandVScales': () => [f32(8), pos(4), 2, 1, 4],
  'engine.rtnFakeQuantBackward': () => [f32(96), f32(96), pos(16), 6, 16, 4, 8, false],
  'engine.adamw': () => [f32(40), 10, 0, 10, 1, 1e-3, 0.9, 0.999, 1e-8, 0, -Infinity],
  // EfficientQAT's quantizer: w (6, 16) INT4 g8 asymmetric, scales / zeros (6, 2)
  'engine.learnedFqInit': () => [f32(12), f32(12), f32(96), 6, 16, 4, 8, false],
  'engine.learnedFqBackward': () => [f32(96), f32(12), f32(12), f32(96), f32(96), pos(12).map((v) => v / 4), f32(12).map((v) => 8 + 4 * v), 6, 16, 4, 8, false],
  'engine.learnedFqCodes': () => [f32(96), f32(96), pos(12).map((v) => v / 4), f32(12).map((v) => 8 + 4 * v), 6, 16, 4, 8, false],
  // FPTQuant's ops, on 3 rows: D = K = 20 (KP = 24, groups of 8: 3 group sums), F = 12 (Hadamard blocks of 4),
  // Hq = 2, Hkv = 1, hd = 4; int8 buffers are Int8Arrays
  'engine.rmsnormScaledForward': () => [f32(24), f32(3), f32(24), pos(8), pos(3), 3, 8, 1e-5],
  'engine.rmsnormScaledBackward': () => {
    const rstd = new Float32Array(3), x = f32(24), w = pos(8), c = pos(3);
    native().engine.rmsnormScaledForward(f32(24), rstd, x, w, c, 3, 8, 1e-5);
    return [f32(24), f32(3), f32(24), x, w, rstd, c, f32(3), 3, 8, 1e-5];
  },
  'engine.residualScaledForward': () => [f32(24), f32(24), pos(3), f32(24), 3, 8],
  // x (3, 2, 4) with one scale per head (inner 4)
  'engine.actFakeQuantForward': () => [f32(24), f32(24), pos(2).map((v) => v / 100), 24, 2, 4, 8],
  'engine.actFakeQuantBackward': () => [f32(24), f32(2), f32(24), f32(24), pos(2).map((v) => v / 100), 24, 2, 4, 4],
  'engine.actQuantError': () => [f32(3), f32(24), pos(3).map((v) => v / 50), 24, 8, 4],
  'engine.fwht': () => [f32(36), 3, 12, 4],
  'engine.actQuantRows': () => [new Int8Array(3 * 24), f32(9), f32(60), pos(3), 0.02, 3, 20, 24, 8, 8],
  'engine.rmsnormQuant': () => [new Int8Array(3 * 24), f32(9), f32(3), f32(60), pos(20), pos(3), 0.02, 3, 20, 24, 8, 8, 1e-5],
  'engine.swigluQuant': () => [new Int8Array(3 * 16), f32(6), f32(36), f32(36), pos(3), 0.02, 3, 12, 16, 8, 4, 4],
  'engine.quantHeads': () => [new Int8Array(24), f32(24), pos(2).map((v) => v / 100), 3, 2, 4, 8],
  // B = 1, T = 2, Hq = 2, Hkv = 1, hd = 4, cache S = 8 at pos0 = 2
  'engine.attentionForwardQ8': () => [f32(16), f32(16), new Int8Array(32).map((_, i) => (i * 37) % 255 - 127), new Int8Array(32).map((_, i) => (i * 11) % 255 - 127),
    pos(1).map((v) => v / 100), pos(1).map((v) => v / 100), 1, 2, 2, 1, 4, 8, 2],
  'engine.jsdForwardBackward': () => [f32(3), f32(3 * 16), f32(3 * 16).map((v) => (1 + v) / 32), 3, 16, 1],
  'engine.lpRatio': () => [f32(1), f32(24), f32(24), 24, 8, 4, 1],
  'engine.fptRotateRows': () => [f32(16 * 8), pos(8), eye(8), 16, 8],
  'engine.lmHeadJsd': () => [f32(3), f32(24), f32(3), f32(24), pos(3), pos(8), f32(16 * 8), f32(3 * 16).map((v) => (1 + v) / 32), 3, 8, 16, 1e-5, 1],
  'engine.blockSizes': () => [blockCfg()],
  'engine.blockLayout': () => [blockCfg()],
  'engine.blockSavedLayout': () => [blockCfg()],
  'engine.blockForward': () => {
    const c = blockCfg(), s = native().engine.blockSizes(c);
    return [c, f32(4 * 8), f32(s.saved), f32(4 * 8), f32(s.params), pos(s.alpha), false];
  },
  'engine.blockBackward': () => {
    const c = blockCfg(), s = native().engine.blockSizes(c);
    const saved = f32(s.saved);
    native().engine.blockForward(c, f32(32), saved, f32(32), f32(s.params), pos(s.alpha), false);
    return [c, f32(32), f32(s.params), f32(s.alpha), f32(32), saved, f32(s.params), pos(s.alpha), false];
  },
  'engine.blockMergeScales': () => {
    const c = blockCfg(), s = native().engine.blockSizes(c);
    return [c, f32(s.params), pos(s.alpha)];
  },
  'engine.fptLayout': () => [fptCfg()],
  'engine.fptBlockForward': () => {
    const c = fptCfg(), s = native().engine.blockSizes(c);
    return [c, f32(32), f32(s.saved), f32(32), f32(s.params), fptParams(), pos(4), f32(4), f32(1), false];
  },
  'engine.fptBlockBackward': () => {
    const c = fptCfg(), s = native().engine.blockSizes(c), saved = f32(s.saved), fp = fptParams();
    native().engine.fptBlockForward(c, f32(32), saved, f32(32), f32(s.params), fp, pos(4), f32(4), null, false);
    return [c, f32(32), f32(fp.length), f32(4), f32(32), saved, f32(s.params), fp, false];
  },
  'engine.fptMerge': () => [{ ...fptCfg(), fpt: { qk: true, v: true, mlp: true } }, f32(native().engine.blockSizes(fptCfg()).params), fptParams(), null],
  'engine.fptCheck': () => [fptCfg(), fptParams()],
  'engine.fptMergeBackward': () => {
    const c = { ...fptCfg(), fpt: { qk: true, v: true, mlp: true } }, P = native().engine.blockSizes(c).params;
    return [c, f32(fptParams().length), f32(P), f32(P), fptParams()];
  },
  'engine.lmHeadLoss': () => [f32(3), f32(24), f32(8), f32(16 * 8), f32(24), f32(8), f32(16 * 8), i32(3, 16), 3, 8, 16, 1e-5, 1, false],
  'io.readTensor': () => [fd(), 0, 'f32', 16, 8, null, new Float32Array(128), 'fuzz tensor', false],
  'io.convert': () => [new Uint16Array(24), 'bf16', f32(24), 'f32'],
  'new io.SpillBuffer': () => [64, 'f32', 32, tmpdir()],
  'io.SpillBuffer#write': () => [8, f32(16)],
  'io.SpillBuffer#read': () => [40, new Float32Array(24)],
  'io.SpillBuffer#info': () => [],
  'io.SpillBuffer#dispose': () => [],
  'new LlamaModel': () => [llamaCfg()],
  'LlamaModel#setWeight': () => ['embed', f32(16 * 8)],
  'LlamaModel#setWeightsFromFile': () => [[{ name: 'embed', what: 'fuzz embed', fd: fd(), offset: 0, dtype: 'f32', rows: 16, cols: 8, dstRow: null }]],
  'LlamaModel#setQuantizedWeight': () => ['layers.0.wq', u8(8 * 4), f32(8), f32(8), 'f32', 8, 8, 4, 8, false],
  'LlamaModel#setFpt': () => [{ residualScaling: true, hadamardBlock: 4, actBits: 8, kvBits: 8 }, [fptParams()]],
  'LlamaModel#missing': () => [],
  'LlamaModel#forward': () => [i32(4, 16), 1, 4, 0, false, false],
  'LlamaModel#dispose': () => [],
};

/** Constructors of the binding's classes, and a live instance of each. */
const CLASSES: Record<string, () => object> = {
  LlamaModel: () => {
    const C = native().LlamaModel as unknown as new (c: unknown) => Record<string, Fn>;
    const m = new C(llamaCfg());
    // a complete model, so that forward reaches the compute (the tiny weights: random, finite)
    for (const n of m.missing() as string[]) m.setWeight(n, f32(n === 'embed' ? 16 * 8 : n.endsWith('norm') ? 8 : /w_gate|w_up/.test(n) ? 12 * 8
      : /w_down/.test(n) ? 8 * 12 : /wk|wv/.test(n) ? 4 * 8 : 8 * 8));
    return m;
  },
  'io.SpillBuffer': () => {
    const S = native().io.SpillBuffer;
    return new S(64, 'f32', 32, tmpdir());
  },
};

/** Thrown by the fuzzer's own getters: native code must let it through to the caller. */
class FuzzGetterError extends Error {}

/** A value of some kind that a native argument might be mistaken for. */
function randomValue(rng: Rng, like?: unknown): unknown {
  const len = (n: number) => rng.pick([0, 1, 2, 3, n - 1, n, n + 1, 2 * n, 7, 64].filter((x) => x >= 0));
  const n = ArrayBuffer.isView(like) && 'length' in like ? (like as unknown as { length: number }).length : 16;
  const kinds: (() => unknown)[] = [
    () => rng.pick([0, -1, 1, 2, 3, 4, 8, 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), 1.5, -0.5, NaN, Infinity, -Infinity, 1e308, -0]),
    () => rng.pick(['', 'f32', 'f16', 'bf16', 'fp32', 'int8', 'auto', 'ref', 'avx512', 'embed', 'layers.0.wq', 'x'.repeat(300), '\u0000']),
    () => rng.chance(0.5),
    () => null,
    () => undefined,
    () => ({}),
    () => [1, 2, 3],
    () => 10n,
    () => Symbol('s'),
    () => () => 1,
    () => new Float32Array(len(n)),
    () => new Uint16Array(len(n)),
    () => new Uint8Array(len(n)),
    () => new Int32Array(len(n)).fill(rng.pick([0, 1, -1, 2 ** 31 - 1, 1000])),
    () => new Float64Array(len(n)),
    () => new Int8Array(len(n)),
    () => new DataView(new ArrayBuffer(len(n) * 4)),
    () => new ArrayBuffer(len(n) * 4),
    () => new Float32Array(new SharedArrayBuffer(4 * Math.max(1, n))),
    () => new Uint8Array(new SharedArrayBuffer(Math.max(1, n))),
    () => detached(rng.pick([Float32Array, Uint16Array, Uint8Array, Int32Array] as const), n),
    () => new Float32Array(new ArrayBuffer(4 * (n + 2)), 4, n),  // offset view
    () => new Float32Array(new ArrayBuffer(4 * n + 2), 0, n),
    () => ({ valueOf: () => 4 }),
    () => new Proxy({}, { get: () => { throw new FuzzGetterError(); } }),
  ];
  return rng.pick(kinds)();
}

function detached(T: Float32ArrayConstructor | Uint16ArrayConstructor | Uint8ArrayConstructor | Int32ArrayConstructor, n: number): unknown {
  const a = new T(Math.max(1, n));
  structuredClone(a.buffer, { transfer: [a.buffer] });
  return a;
}

/** Mutates one field of a config object: a wrong type, an extreme number, a throwing getter, a missing key. */
function mutateConfig(rng: Rng, o: Record<string, unknown>): Record<string, unknown> {
  const keys = Object.keys(o);
  const c: Record<string, unknown> = { ...o };
  const k = rng.pick(keys);
  const m = rng.int(5);
  if (m === 0) delete c[k];
  else if (m === 1) Object.defineProperty(c, k, { get: () => { throw new FuzzGetterError(); }, enumerable: true });
  else if (m === 2) c[k] = rng.pick([0, -1, 2 ** 31, 2 ** 53, 1e300, NaN, 0.5, 7, 3, 64]);
  else c[k] = randomValue(rng, o[k]);
  return c;
}

function mutateArgs(rng: Rng, args: Args): { args: Args; what: string } {
  const a = [...args];
  const what: string[] = [];
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const m = rng.int(10);
    if (m === 0 && a.length > 0) { a.length = rng.int(a.length); what.push(`only ${a.length} arguments`); continue; }
    if (m === 1) { a.push(randomValue(rng)); what.push('an extra argument'); continue; }
    if (a.length === 0) continue;
    const i = rng.int(a.length);
    const v = a[i];
    if (v && typeof v === 'object' && !ArrayBuffer.isView(v) && !Array.isArray(v) && rng.chance(0.7)) {
      a[i] = mutateConfig(rng, v as Record<string, unknown>);
      what.push(`arg ${i}: config field`);
    } else if (Array.isArray(v) && v.length > 0 && typeof v[0] === 'object' && rng.chance(0.7)) {
      const j = rng.int(v.length);
      a[i] = v.map((e, k) => (k === j ? mutateConfig(rng, e as Record<string, unknown>) : e));
      what.push(`arg ${i}: field of entry ${j}`);
    } else if (ArrayBuffer.isView(v) && !(v instanceof DataView) && rng.chance(0.6)) {
      const T = v.constructor as Float32ArrayConstructor;
      const n = (v as Float32Array).length;
      const to = rng.pick([0, 1, n - 1, n + 1, n * 2, Math.floor(n / 2)].filter((x) => x >= 0));
      a[i] = rng.chance(0.2) ? new T(new SharedArrayBuffer(Math.max(1, to) * T.BYTES_PER_ELEMENT)) : new T(to);
      what.push(`arg ${i}: length ${n} -> ${to}`);
    } else if (typeof v === 'number' && rng.chance(0.7)) {
      a[i] = rng.pick([0, -1, v + 1, v - 1, v * 2, v * 1024, 2 ** 31, 2 ** 40, 2 ** 53, NaN, 1.5]);
      what.push(`arg ${i}: ${v} -> ${a[i]}`);
    } else {
      a[i] = randomValue(rng, v);
      what.push(`arg ${i}: ${describe(v)} -> ${describe(a[i])}`);
    }
  }
  return { args: a, what: what.join('; ') };
}

function describe(v: unknown): string {
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as { length?: number }).length ?? v.byteLength})`;
  if (typeof v === 'bigint' || typeof v === 'symbol') return typeof v;
  if (typeof v === 'function') return 'function';
  try {
    return JSON.stringify(v)?.slice(0, 30) ?? String(v);
  } catch {
    return typeof v;
  }
}

/** A constructor made by DefineClass: its prototype has methods besides `constructor`. */
function isClass(v: unknown): v is { prototype: object } {
  return typeof v === 'function' && Object.getOwnPropertyNames((v as { prototype?: object }).prototype ?? {}).length > 1;
}

/** Every function of the binding, found at run time: top level, nested objects (engine, io), classes and their methods. */
export function napiTargets(): string[] {
  const b = native() as unknown as Record<string, unknown>;
  const out: string[] = [];
  const add = (name: string, v: unknown) => {
    if (isClass(v)) {
      out.push(`new ${name}`);
      for (const m of Object.getOwnPropertyNames(v.prototype)) if (m !== 'constructor') out.push(`${name}#${m}`);
    } else if (typeof v === 'function') out.push(name);
  };
  for (const [k, v] of Object.entries(b)) {
    if (typeof v === 'function') add(k, v);
    else if (v && typeof v === 'object') for (const [k2, v2] of Object.entries(v)) add(`${k}.${k2}`, v2);
  }
  return out.sort();
}

function lookup(name: string): unknown {
  const b = native() as unknown as Record<string, unknown>;
  const [a, c] = name.split('.');
  return c ? (b[a] as Record<string, unknown>)[c] : b[a];
}

function resolve(target: string): { fn: Fn; self: unknown } {
  if (target.startsWith('new ')) {
    const C = lookup(target.slice(4)) as new (...a: unknown[]) => unknown;
    return { fn: (...a: unknown[]) => new C(...a), self: undefined };
  }
  const hash = target.indexOf('#');
  if (hash > 0) {
    const cls = target.slice(0, hash);
    const make = CLASSES[cls];
    if (!make) throw new Error(`fuzz: no live instance for class ${cls}: add it to CLASSES`);
    const self = make() as Record<string, Fn>;
    return { fn: self[target.slice(hash + 1)], self };
  }
  const [a, c] = target.split('.');
  const b = native() as unknown as Record<string, unknown>;
  if (c) { const o = b[a] as Record<string, Fn>; return { fn: o[c], self: o }; }
  return { fn: b[a] as Fn, self: b };
}

function templateFor(target: string): Args | null {
  const t = TEMPLATES[target];
  return t ? t() : null;
}

/** Targets without a valid-call template (they still get random calls); the suite lists them. */
export function untemplated(): string[] {
  return napiTargets().filter((t) => !TEMPLATES[t]);
}

/** one N-API fuzz case: a target, a call, an outcome */
export async function napiCase(seed: number): Promise<Pick<CaseResult, 'outcome' | 'code' | 'detail' | 'mutation'>> {
  const rng = new Rng(seed);
  // QF_FUZZ_TARGETS=engine.actQuantRows,engine.quantHeads (or a prefix: engine.): a soak run on a few targets
  const only = process.env.QF_FUZZ_TARGETS?.split(',').filter(Boolean);
  const targets = napiTargets().filter((t) => !only || only.some((o) => t.startsWith(o)));
  if (targets.length === 0) throw new Error(`fuzz: QF_FUZZ_TARGETS=${process.env.QF_FUZZ_TARGETS} matches no target`);
  const target = rng.pick(targets);
  let args: Args, what: string;
  const template = templateFor(target);
  if (template && rng.chance(0.9)) {
    if (rng.chance(0.08)) { args = template; what = 'the valid call'; }
    else {
      try {
        ({ args, what } = mutateArgs(rng, template));
      } catch (e) {
        // a throwing proxy from an earlier round met the mutator itself
        if (!(e instanceof FuzzGetterError)) throw e;
        args = template;
        what = 'the valid call';
      }
    }
  } else {
    args = Array.from({ length: rng.int(16) }, () => randomValue(rng));
    what = `${args.length} random arguments`;
  }
  // matmul's prepared-weight slot: a live handle, a disposed one, or a foreign object
  if (target === 'matmul' || target === 'matmulPath' || target === 'matmulUnprepare' || target === 'matmulDispose') {
    const slot = target === 'matmul' ? 3 : target === 'matmulPath' ? 1 : 0;
    const h = native().matmulPrepare(u8(48), f32(12), f32(12), 'f32', 6, 16, 4, 8, false);
    const pick = rng.int(4);
    if (pick === 1) native().matmulDispose(h);
    if (pick < 3 && args.length > slot) args[slot] = h;
  }
  const mutation = `${target}: ${what}`;
  const { fn, self } = resolve(target);
  // measureMachine's time budget is an argument: keep it short so a valid call is not a hang
  if (target === 'measureMachine' && typeof args[2] === 'number' && args[2] > 0.01) args[2] = 0.001;
  if (target === 'measureMachine' && typeof args[0] === 'number' && args[0] > 1 << 26) args[0] = 1 << 20;
  if (target === 'setThreads' && typeof args[0] === 'number' && args[0] > 64) args[0] = 64;
  if (target === 'faultAlloc') args = [0];  // arming it here would fail the harness, not the code under test
  // SpillBuffer's directory is where its temp file goes: never a random path (it would create files there)
  if (target === 'new io.SpillBuffer' && args.length > 3) args[3] = tmpdir();
  try {
    const r = fn.apply(self, args);
    if (r instanceof Promise) await r;
    return { outcome: 'ok', mutation };
  } catch (e) {
    const err = e as { code?: unknown; message?: unknown };
    if (!(e instanceof Error)) return { outcome: 'uncoded', code: typeof e, detail: String(e), mutation };
    if (e instanceof FuzzGetterError) return { outcome: 'error', code: 'getter', mutation };
    if (typeof err.code === 'string' && err.code.startsWith('QF_') && err.code !== 'QF_INTERNAL') return { outcome: 'error', code: err.code, mutation };
    // a JS TypeError from calling the class without new, or from our own template (not native)
    if (target.startsWith('LlamaModel#') && e instanceof TypeError && /Illegal invocation/.test(String(err.message))) return { outcome: 'error', code: 'TypeError', mutation };
    return { outcome: 'uncoded', code: String(err.code ?? e.constructor.name), detail: String(err.message).slice(0, 300), mutation };
  } finally {
    // global state a case may have changed
    if (target === 'setThreads') native().setThreads(2);
    if (target === 'setKernelPolicy') native().setKernelPolicy('auto');
  }
}
