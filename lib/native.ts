// Loads the CPU addon and describes its contract. Nothing else in lib/ touches
// the untyped binding: every call goes through the NativeBinding interface below.
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QuantformError } from './errors.js';

export type NativeDType = 'f32' | 'f16' | 'bf16';
export type FloatArray = Float32Array | Uint16Array;

export interface NativeBackendInfo {
  tier: 'ref' | 'avx2' | 'avx512';
  bestTier: 'ref' | 'avx2' | 'avx512';
  threads: number;
  vendor: string;
  cpu: string;
  features: Record<string, boolean>;
  envPolicy: string | null;
}

export interface NativeQuantized {
  codes: Uint8Array;
  scales: FloatArray;
  zeros: FloatArray | null;
}

export interface NativeFakeQuantGrads {
  gradW: Float32Array;
  gradScales: Float32Array;
  gradZeros: Float32Array | null;
}

export interface NativeLlamaConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxSeq: number;
  normEps: number;
  /** (headDim / 2) RoPE inverse frequencies */
  invFreq: Float32Array;
  tied: boolean;
}

/** native/addon/llama.cpp LlamaModel: weights and KV cache in native memory. */
export interface NativeLlamaModel {
  /** name: embed | final_norm | lm_head | layers.<l>.<attn_norm|ffn_norm|wq|wk|wv|wo|w_gate|w_up|w_down> */
  setWeight(name: string, data: Float32Array): void;
  /** A packed quantized linear (formats.h); INT4 runs on the dequant-matmul kernels. */
  setQuantizedWeight(name: string, codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean): void;
  missing(): string[];
  /** tokens (B*T) at positions pos0.. -> logits (B, T, V), or (B, V) when lastOnly */
  forward(tokens: Int32Array, B: number, T: number, pos0: number, lastOnly: boolean, async: false): Float32Array;
  forward(tokens: Int32Array, B: number, T: number, pos0: number, lastOnly: boolean, async: true): Promise<Float32Array>;
  dispose(): void;
}

/** Shapes and quantization of one Llama block step (native/include/quantform/train_ops.h). */
export interface NativeBlockConfig {
  batch: number;
  seq: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  rmsEps: number;
  ropeTheta: number;
  /** 0: linears stay fp32; else RTN fake-quant of every linear with these bits. */
  bits: number;
  groupSize: number;
  symmetric: boolean;
  /** TEQ scales alpha (2, hidden) present. */
  teq: boolean;
  /** With teq: also v-channel scales on o_proj's input and intermediate scales on down_proj's input. */
  teqExtra?: boolean;
}

/** The training family (native/addon/train.cpp): caller-owned outputs, lengths re-checked natively. */
export interface NativeTrainBinding {
  trainGemm(C: Float32Array, A: Float32Array, B: Float32Array, M: number, N: number, K: number, transA: boolean,
    transB: boolean, accumulate: boolean): void;
  rmsnormForward(out: Float32Array, rstd: Float32Array, x: Float32Array, w: Float32Array, T: number, D: number, eps: number): void;
  rmsnormBackward(dx: Float32Array, dw: Float32Array, dout: Float32Array, x: Float32Array, w: Float32Array,
    rstd: Float32Array, T: number, D: number): void;
  swigluForward(h: Float32Array, g: Float32Array, u: Float32Array, T: number, F: number): void;
  swigluBackward(dg: Float32Array, du: Float32Array, dh: Float32Array, g: Float32Array, u: Float32Array, T: number, F: number): void;
  rope(x: Float32Array, T: number, seq: number, heads: number, headDim: number, theta: number, inverse: boolean): void;
  attentionForward(out: Float32Array, probs: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array,
    batch: number, seq: number, heads: number, kvHeads: number, headDim: number): void;
  attentionBackward(dq: Float32Array, dk: Float32Array, dv: Float32Array, dout: Float32Array, probs: Float32Array,
    q: Float32Array, k: Float32Array, v: Float32Array, batch: number, seq: number, heads: number, kvHeads: number,
    headDim: number): void;
  crossEntropyForward(loss: Float32Array, logits: Float32Array, targets: Int32Array, T: number, V: number): void;
  crossEntropyBackward(probs: Float32Array, targets: Int32Array, T: number, V: number, scale: number): void;
  embeddingForward(out: Float32Array, ids: Int32Array, table: Float32Array, T: number, V: number, D: number): void;
  embeddingBackward(dtable: Float32Array, dout: Float32Array, ids: Int32Array, T: number, V: number, D: number): void;
  teqScaleBackward(dalpha: Float32Array, dx: Float32Array | null, dxs: Float32Array, x: Float32Array, T: number,
    dws: Float32Array, W: Float32Array, N: number, alpha: Float32Array, K: number): void;
  /** TEQ weight side: g (N, K) w.r.t. Q(W diag(alpha)) becomes the gradient w.r.t. W diag(alpha) (f16 RTN parameters). */
  rtnFakeQuantBackward(g: Float32Array, W: Float32Array, alpha: Float32Array, N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean): void;
  adamwStep(arena: Float32Array, P: number, step: number, lr: number, beta1: number, beta2: number, eps: number,
    weightDecay: number, minValue: number, async: false): void;
  adamwStep(arena: Float32Array, P: number, step: number, lr: number, beta1: number, beta2: number, eps: number,
    weightDecay: number, minValue: number, async: true): Promise<void>;
  blockSizes(config: NativeBlockConfig): { params: number; activations: number; alpha: number };
  blockForward(config: NativeBlockConfig, out: Float32Array, activations: Float32Array, x: Float32Array,
    params: Float32Array, alpha: Float32Array | null, async: boolean): Promise<void> | void;
  blockBackward(config: NativeBlockConfig, dx: Float32Array, grads: Float32Array | null, dalpha: Float32Array | null,
    dout: Float32Array, activations: Float32Array, params: Float32Array, alpha: Float32Array | null,
    async: boolean): Promise<void> | void;
  lmHeadLoss(nll: Float32Array, dx: Float32Array | null, dnorm: Float32Array | null, dhead: Float32Array | null,
    x: Float32Array, normWeight: Float32Array, head: Float32Array, targets: Int32Array, T: number, D: number,
    V: number, eps: number, lossScale: number, async: boolean): Promise<void> | void;
}

/** A repacked weight owned by native code (native/include/quantform/matmul_ops.h). */
export interface NativePreparedWeight {
  readonly __brand: 'NativePreparedWeight';
}

export interface NativeMachineLimits {
  readGBps: number;
  readBytes: number;
  copyGBps: number;
  fmaGflops: number;
  vnniGops: number | null;
  threads: number;
}

/** The CPU addon's functions (native/addon). Arguments are validated in TS first. */
export interface NativeBinding {
  train: NativeTrainBinding;
  abiVersion: number;
  backendInfo(): NativeBackendInfo;
  setKernelPolicy(policy: string): string;
  setThreads(n: number): number;
  quantize(w: FloatArray, dtype: NativeDType, N: number, K: number, bits: number, groupSize: number,
    symmetric: boolean, paramDtype: 'f32' | 'f16', async: false): NativeQuantized;
  quantize(w: FloatArray, dtype: NativeDType, N: number, K: number, bits: number, groupSize: number,
    symmetric: boolean, paramDtype: 'f32' | 'f16', async: true): Promise<NativeQuantized>;
  pack(codes8: Uint8Array, N: number, K: number, bits: number, async: false): Uint8Array;
  pack(codes8: Uint8Array, N: number, K: number, bits: number, async: true): Promise<Uint8Array>;
  unpack(codes: Uint8Array, N: number, K: number, bits: number, async: false): Uint8Array;
  unpack(codes: Uint8Array, N: number, K: number, bits: number, async: true): Promise<Uint8Array>;
  dequantize(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, outDtype: NativeDType,
    async: false, out?: FloatArray | null): FloatArray;
  dequantize(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, outDtype: NativeDType,
    async: true, out?: FloatArray | null): Promise<FloatArray>;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: false): Float32Array;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: true): Promise<Float32Array>;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: false): NativeFakeQuantGrads;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: true): Promise<NativeFakeQuantGrads>;
  // Llama forward ops (native/include/quantform/llama_ops.h for layouts)
  embeddingForward(tokens: Int32Array, wte: Float32Array, C: number): Float32Array;
  rmsnormForward(inp: Float32Array, weight: Float32Array, C: number, eps: number): { out: Float32Array; rstd: Float32Array };
  matmulForward(inp: Float32Array, weight: Float32Array, bias: Float32Array | null, M: number, N: number, K: number, async: false): Float32Array;
  matmulForward(inp: Float32Array, weight: Float32Array, bias: Float32Array | null, M: number, N: number, K: number, async: true): Promise<Float32Array>;
  ropeForward(x: Float32Array, pos: Int32Array, cos: Float32Array, sin: Float32Array, H: number, HS: number): Float32Array;
  attentionForward(q: Float32Array, kcache: Float32Array, vcache: Float32Array, B: number, T: number, NH: number, NKV: number,
    HS: number, S: number, pos0: number): { out: Float32Array; att: Float32Array };
  swigluForward(gate: Float32Array, up: Float32Array): Float32Array;
  residualForward(a: Float32Array, b: Float32Array): Float32Array;
  LlamaModel: new (config: NativeLlamaConfig) => NativeLlamaModel;
  matmulPrepare(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number,
    K: number, bits: number, groupSize: number, symmetric: boolean): NativePreparedWeight;
  matmulUnprepare(handle: NativePreparedWeight): NativeQuantized;
  matmulDispose(handle: NativePreparedWeight): void;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8', async: false): Float32Array;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8', async: true): Promise<Float32Array>;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: false): Float32Array;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: true): Promise<Float32Array>;
  /** Index of the first NaN/Inf of `data` (f16/bf16 as Uint16Array bits), or -1. */
  firstNonFinite(data: FloatArray, dtype: NativeDType): number;
  /**
   * Tests only, present when QUANTFORM_FAULT_ALLOC is set at load (native/addon/fault_alloc.cpp):
   * returns the addon's allocations since the previous call, then fails the n-th from now (0: none).
   */
  faultAlloc?(n: number): number;
  measureMachine(bytes: number, reps: number, seconds: number, parts: number, async: false): NativeMachineLimits;
  measureMachine(bytes: number, reps: number, seconds: number, parts: number, async: true): Promise<NativeMachineLimits>;
}

/** The package root (holds package.json, build/ and prebuilds/), from src or dist. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const pj = path.join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'quantform') return dir;
      } catch {
        // not our package.json: keep walking up
      }
    }
    dir = path.dirname(dir);
  }
  throw new QuantformError('QF_NATIVE_LOAD', 'Cannot find the quantform package root (package.json) above ' + fileURLToPath(import.meta.url));
}

let cached: NativeBinding | undefined;

/**
 * The CPU addon. QUANTFORM_ADDON=/path/to/quantform.node loads a specific build
 * (CI uses it to test the node-gyp build); otherwise node-gyp-build looks in
 * build/Release, then prebuilds/<platform>-<arch>.
 */
export function native(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const explicit = process.env.QUANTFORM_ADDON;
  try {
    if (explicit) {
      cached = require(path.resolve(explicit)) as NativeBinding;
    } else {
      const load = require('node-gyp-build') as (dir: string) => unknown;
      cached = load(packageRoot()) as NativeBinding;
    }
  } catch (e) {
    const why = (e as Error).message;
    throw new QuantformError(
      'QF_NATIVE_LOAD',
      `quantform could not load its native addon (${why}). ` +
        (process.platform !== 'linux' || process.arch !== 'x64'
          ? `Prebuilt binaries exist for linux-x64 only; this is ${process.platform}-${process.arch}. `
          : '') +
        'Build it from source with `npm run build:native` (needs cmake and a C++17 compiler), ' +
        'or set QUANTFORM_ADDON to the path of a quantform.node.',
      { cause: e },
    );
  }
  if (cached.abiVersion !== 2) {
    const v = cached.abiVersion;
    cached = undefined;
    throw new QuantformError('QF_NATIVE_LOAD', `quantform's native addon has ABI version ${v}, expected 2: rebuild it with \`npm run build:native\``);
  }
  return cached;
}
