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
  /** whether the bf16 matmul runs on AMX tiles, and why not (CPU, OS permission, policy, setAmx(false)) */
  amx: { active: boolean; reason: string | null };
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
  /** the quantized linears' matmul accuracy (default 'fp32') */
  accuracy?: 'fp32' | 'int8' | 'bf16';
}

/** A weight stored in an open file: (rows, cols) of `dtype` at byte `offset`; source row s goes to row dstRow[s]. */
export interface NativeStoredWeight {
  name: string;
  /** names the tensor (and its file) in errors: a failed read, a NaN/Inf found once read */
  what: string;
  fd: number;
  offset: number;
  dtype: NativeDType;
  rows: number;
  cols: number;
  dstRow: Int32Array | null;
}

/** native/addon/llama.cpp LlamaModel: weights and KV cache in native memory. */
export interface NativeLlamaModel {
  /** name: embed | final_norm | lm_head | layers.<l>.<attn_norm|ffn_norm|wq|wk|wv|wo|w_gate|w_up|w_down> */
  setWeight(name: string, data: Float32Array): void;
  /** A packed quantized linear (formats.h); INT4 runs on the dequant-matmul kernels. */
  setQuantizedWeight(name: string, codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean): void;
  missing(): string[];
  /** FPTQuant's run-time quantizers and transforms (native llama_model.h FptRuntime); null turns them off. */
  setFpt(opts: NativeFptRuntime | null, params?: Float32Array[]): void;
  /**
   * Stored f32/f16/bf16 tensors read and widened straight into the model (native/include/quantform/convert.h
   * read_tensor_f32), their storage first touched in parallel; all or nothing.
   */
  setWeightsFromFile(entries: NativeStoredWeight[]): void;
  /** tokens (B*T) at positions pos0.. -> logits (B, T, V), or (B, V) when lastOnly */
  forward(tokens: Int32Array, B: number, T: number, pos0: number, lastOnly: boolean, async: false): Float32Array;
  forward(tokens: Int32Array, B: number, T: number, pos0: number, lastOnly: boolean, async: true): Promise<Float32Array>;
  dispose(): void;
}

/**
 * One Llama block step (native/include/quantform/engine.h, BlockDesc). Shape names are
 * the engine's: B sequences of T positions, hidden D, intermediate F, Hq query heads,
 * Hkv key/value heads of size hd.
 */
export interface NativeBlockConfig {
  B: number;
  T: number;
  D: number;
  F: number;
  Hq: number;
  Hkv: number;
  hd: number;
  /** RMSNorm epsilon */
  eps: number;
  /** (hd / 2) RoPE inverse frequencies, rope_theta and any rope_scaling applied (lib/model/config.ts invFreq) */
  invFreq: Float32Array;
  /** 0: linears stay fp32; else RTN fake quant of every linear with these bits, recomputed per call. */
  bits: number;
  groupSize: number;
  symmetric: boolean;
  /** TEQ scales alpha (2, D) present. */
  teq: boolean;
  /** With teq: also v-channel scales on o_proj's input and intermediate scales on down_proj's input. */
  teqExtra?: boolean;
  /** FPTQuant's transforms and quantizers (its own entry points: fptBlockForward / fptBlockBackward). */
  fpt?: NativeFptConfig | null;
  /**
   * EfficientQAT's quantizer (engine.h LearnedFakeQuant; group size capped at each linear's K). The
   * method state is then { scales, zeros } (NativeFqState). packed: E2E-QP, params is a packed block
   * whose step sizes train; else Block-AP, every linear with scales is fake-quantized from the arena.
   */
  fq?: { bits: number; groupSize: number; symmetric: boolean; packed?: boolean } | null;
}

/** EfficientQAT's per-linear state (or its gradients), arena order wq wk wv wo w_gate w_up w_down: (N, G) each, null = none. */
export interface NativeFqState {
  scales: (Float32Array | null)[];
  zeros: (Float32Array | null)[];
}

/** A block whose linears stay packed (E2E-QP): norms (D) and the codes of each linear (N, packedRowBytes). */
export interface NativePackedBlock {
  attnNorm: Float32Array;
  ffnNorm: Float32Array;
  codes: Uint8Array[];
}

/**
 * FPTQuant's weights on packed codes (config.fq.packed; E2E-QP of the merged model): the block, the
 * step sizes (and zero points) of each linear, and for the backward their gradients (accumulated).
 */
export interface NativeFptPackedBlock extends NativePackedBlock, NativeFqState {
  grads?: NativeFqState;
}

/** FPTQuant's part of a block config (native/include/quantform/engine.h FptTransforms). */
export interface NativeFptConfig {
  /** T_k (pre-RoPE q/k scale + rotation), T_v (per-kv-head value matrices), T_u (MLP scales): applied to unmerged weights */
  qk?: boolean;
  v?: boolean;
  mlp?: boolean;
  /** T_v starts from the Hadamard matrix of size hd (A = H L U) */
  vHadamard?: boolean;
  /** the weights already hold the transforms (inference): only quantizers, S_n and the Hadamard run */
  merged?: boolean;
  /** S_n, the per-token residual carry */
  residualScaling?: boolean;
  /** online Hadamard block before down_proj (0: off) */
  hadamardBlock?: number;
  /** 0 (fp), 4 or 8 */
  actBits?: number;
  /** per input (qkv, o_proj, gate_up, down_proj): 4 or 8 overriding actBits, 0 keeps it */
  inputBits?: number[];
  kvBits?: number;
  /** local-stage outlier penalty weights and its p (default 4) */
  lpAct?: number;
  lpWeight?: number;
  lpP?: number;
}

/** FPTQuant at run time (LlamaModel.setFpt). */
export interface NativeFptRuntime {
  residualScaling: boolean;
  hadamardBlock: number;
  actBits: number;
  /** NativeFptConfig.inputBits */
  inputBits?: number[];
  kvBits: number;
}

/** Offsets (floats) of FPTQuant's per-block parameters (engine.h fpt_layout). */
export interface NativeFptLayout {
  /** (Hkv, hd/2) */ qkLogScale: number;
  /** (Hkv, hd/2) */ qkAngle: number;
  /** (Hkv, hd, hd) L | log diag | U */ vLu: number;
  /** (F) */ mlpLogScale: number;
  /** (4) qkv, o, gate/up, down */ actLogScale: number;
  /** (2, Hkv) keys, values */ kvLogScale: number;
  total: number;
}

/** Offsets of one block tensor in the parameter arena (floats). */
export interface NativeTensorSlot {
  offset: number;
  rows: number;
  cols: number;
}

/** The arena layout, computed natively: attn_norm | wq | wk | wv | wo | ffn_norm | w_gate | w_up | w_down. */
export interface NativeBlockLayout {
  total: number;
  attn_norm: NativeTensorSlot;
  wq: NativeTensorSlot;
  wk: NativeTensorSlot;
  wv: NativeTensorSlot;
  wo: NativeTensorSlot;
  ffn_norm: NativeTensorSlot;
  w_gate: NativeTensorSlot;
  w_up: NativeTensorSlot;
  w_down: NativeTensorSlot;
}

/** Offsets (floats) of a training forward's saved activations (engine.h, BlockSavedLayout); aliases share offsets. */
export interface NativeBlockSavedLayout {
  total: number;
  /** (BT, D) the block input */ x: number;
  rstd1: number;
  /** (BT, D) rmsnorm(x) * attn_norm */ xn1: number;
  /** (BT, D) the q/k/v input */ xs1: number;
  q: number;
  k: number;
  v: number;
  /** (B, Hq, T, T) */ probs: number;
  /** (BT, Dq) attention output */ att: number;
  /** (BT, Dq) the o_proj input */ atts: number;
  h: number;
  rstd2: number;
  xn2: number;
  /** (BT, D) the gate/up input */ xs2: number;
  g: number;
  u: number;
  /** (BT, F) silu(g) * u */ a: number;
  /** (BT, F) the down_proj input */ as: number;
  eff: number;
  /** FPTQuant: (BT) S_n carry in; K, V before their quantizer; o_proj / down_proj inputs before theirs */
  c: number;
  kr: number;
  vr: number;
  ao: number;
  ah: number;
}

/** Which tier's code runs an engine kernel under each policy (engine.kernels()). */
export interface NativeKernelImpl {
  name: string;
  ref: 'ref';
  avx2: 'ref' | 'avx2';
  avx512: 'ref' | 'avx512';
  active: 'ref' | 'avx2' | 'avx512';
}

/** An argument of a single engine op: buffers (null = absent optional buffer), ids, dims, flags. */
export type EngineOpArg = Float32Array | Int32Array | Int8Array | number | boolean | null;

/**
 * The engine (native/addon/engine.cpp). Every op of QF_ENGINE_OPS is bound as
 * engine.<camelCase name>(...args[, async]) with caller-owned outputs; the ones lib/
 * calls are typed here, every op is reachable through `op()` in tests.
 */
export interface NativeEngine {
  /** camelCase names of every op in the native op list */
  ops(): string[];
  kernels(): NativeKernelImpl[];
  gemm(C: Float32Array, A: Float32Array, B: Float32Array, M: number, N: number, K: number, transA: boolean,
    transB: boolean, accumulate: boolean): void;
  embeddingForward(out: Float32Array, ids: Int32Array, table: Float32Array, BT: number, V: number, D: number): void;
  rmsnormForward(out: Float32Array, rstd: Float32Array | null, x: Float32Array, w: Float32Array, BT: number, D: number, eps: number): void;
  teqExpandVScales(out: Float32Array, av: Float32Array, Hq: number, Hkv: number, hd: number): void;
  adamw(arena: Float32Array, P: number, begin: number, end: number, step: number, lr: number, beta1: number, beta2: number,
    eps: number, weightDecay: number, minValue: number, async: true): Promise<void>;
  learnedFqInit(scales: Float32Array, zeros: Float32Array | null, w: Float32Array, N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean): void;
  learnedFqBackward(dw: Float32Array | null, ds: Float32Array | null, dz: Float32Array | null, g: Float32Array, w: Float32Array,
    scales: Float32Array, zeros: Float32Array | null, N: number, K: number, bits: number, groupSize: number, symmetric: boolean): void;
  learnedFqCodes(codes: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean): void;
  blockSizes(config: NativeBlockConfig): { params: number; saved: number; alpha: number; fpt: number };
  fptLayout(config: NativeBlockConfig): NativeFptLayout;
  /** FPTQuant's block step: out (BT, D); cOut (BT) with S_n; lpOut (1) the local penalty of a training forward */
  fptBlockForward(config: NativeBlockConfig, out: Float32Array, saved: Float32Array | null, x: Float32Array,
    params: Float32Array | Uint16Array | NativeFptPackedBlock, fptParams: Float32Array, cIn: Float32Array | null, cOut: Float32Array | null,
    lpOut: Float32Array | null, async: boolean): Promise<void> | void;
  /** dFpt accumulated; dc (BT): dL/dc_out in, dL/dc_in out (S_n) */
  fptBlockBackward(config: NativeBlockConfig, dx: Float32Array, dFpt: Float32Array, dc: Float32Array | null,
    dout: Float32Array, saved: Float32Array, params: Float32Array | Uint16Array | NativeFptPackedBlock, fptParams: Float32Array,
    async: boolean): Promise<void> | void;
  /** The enabled transforms (and a residual rotation (D, D)) merged into one f32 arena, in place */
  fptMerge(config: NativeBlockConfig, params: Float32Array, fptParams: Float32Array, rotation: Float32Array | null): void;
  /** Throws QF_NON_FINITE when fptParams give no valid step (non-finite, or a T_v past its condition limit) */
  fptCheck(config: NativeBlockConfig, fptParams: Float32Array): void;
  fptMergeBackward(config: NativeBlockConfig, dFpt: Float32Array, deff: Float32Array, params: Float32Array, fptParams: Float32Array): void;
  fptRotateRows(table: Float32Array, norm: Float32Array | null, rotation: Float32Array, rows: number, D: number): void;
  actQuantError(err: Float32Array, x: Float32Array, candidates: Float32Array, n: number, bits: number, p: number): void;
  rmsnormScaledForward(out: Float32Array, rstd: Float32Array | null, x: Float32Array, w: Float32Array, c: Float32Array | null,
    BT: number, D: number, eps: number): void;
  fwht(x: Float32Array, rows: number, F: number, block: number): void;
  /** logits (BT, V) become probabilities; loss (BT) = logsumexp - logit[target] (targets < 0: 0) */
  crossEntropyForward(loss: Float32Array, logits: Float32Array, targets: Int32Array, BT: number, V: number): void;
  lmHeadJsd(loss: Float32Array, dx: Float32Array | null, dc: Float32Array | null, x: Float32Array, c: Float32Array | null,
    normWeight: Float32Array, head: Float32Array, tprobs: Float32Array, BT: number, D: number, V: number, eps: number,
    scale: number, async: true): Promise<void>;
  blockLayout(config: NativeBlockConfig): NativeBlockLayout;
  blockSavedLayout(config: NativeBlockConfig): NativeBlockSavedLayout;
  /**
   * out (BT, D); saved (blockSizes().saved) for a backward, or null (evaluation). params: an f32/bf16
   * arena, or a packed block (config.fq.packed); method: TEQ's alpha, EfficientQAT's state, or null.
   */
  blockForward(config: NativeBlockConfig, out: Float32Array, saved: Float32Array | null, x: Float32Array,
    params: Float32Array | Uint16Array | NativePackedBlock, method: Float32Array | NativeFqState | null, async: boolean): Promise<void> | void;
  /** methodGrads: TEQ's dalpha or EfficientQAT's { scales, zeros } gradients, accumulated (null entries skipped). */
  blockBackward(config: NativeBlockConfig, dx: Float32Array, grads: Float32Array | null, methodGrads: Float32Array | NativeFqState | null,
    dout: Float32Array, saved: Float32Array, params: Float32Array | Uint16Array | NativePackedBlock,
    method: Float32Array | NativeFqState | null, async: boolean): Promise<void> | void;
  /** TEQ's merge of alpha (blockSizes().alpha) into one f32 arena, in place */
  blockMergeScales(config: NativeBlockConfig, params: Float32Array, alpha: Float32Array): void;
  lmHeadLoss(nll: Float32Array, dx: Float32Array | null, dnorm: Float32Array | null, dhead: Float32Array | null,
    x: Float32Array, normWeight: Float32Array, head: Float32Array, targets: Int32Array, BT: number, D: number,
    V: number, eps: number, lossScale: number, async: boolean): Promise<void> | void;
}

/** A single engine op by its camelCase name (tests enumerate them). */
export function engineOp(name: string): (...args: EngineOpArg[]) => void | Promise<void> {
  const fn = (native().engine as unknown as Record<string, unknown>)[name];
  if (typeof fn !== 'function') throw new QuantformError('QF_INVALID_ARGUMENT', `No engine op named '${name}'`);
  return fn as (...args: EngineOpArg[]) => void | Promise<void>;
}

/** Scalars of one GPTQ call (native/include/quantform/gptq.h). */
export interface NativeGptqConfig {
  rows: number;
  cols: number;
  bits: number;
  groupSize: number;
  symmetric: boolean;
  paramDtype: 'f32' | 'f16';
  /** fraction of mean(diag H) added to the diagonal */
  damp: number;
  /** columns per lazy batch, 1..512 */
  blockSize: number;
  paramsFrom: 'updated' | 'batch-start';
  /** clipping search's norm p (0: min/max ranges) */
  clipNorm?: number;
}

export interface NativeGptqResult extends NativeQuantized {
  /** sum over rows and columns of e^2 / 2, e = (w - ŵ) / U[c, c] */
  loss: number;
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
  amxInt8Gops: number | null;
  threads: number;
}

/** native/include/quantform/spill_buffer.h: f32/bf16 storage in RAM up to a budget, the rest in an unlinked mmap'd temp file. */
export interface NativeSpillBuffer {
  /** elements [offset, offset + src.length) <- src */
  write(offset: number, src: Float32Array): void;
  /** dst <- elements [offset, offset + dst.length) */
  read(offset: number, dst: Float32Array): void;
  info(): { elements: number; memoryElements: number; file: string | null };
  dispose(): void;
}

/** Checkpoint I/O (native/addon/io.cpp). */
export interface NativeIoBinding {
  /** A (rows, cols) tensor at byte `offset` of `fd` -> out (rows * cols) f32; source row s to row dstRow[s]. */
  readTensor(fd: number, offset: number, dtype: NativeDType, rows: number, cols: number, dstRow: Int32Array | null,
    out: Float32Array, what: string, async: false): void;
  readTensor(fd: number, offset: number, dtype: NativeDType, rows: number, cols: number, dstRow: Int32Array | null,
    out: Float32Array, what: string, async: true): Promise<void>;
  /** f32 -> bf16, f16 -> f32 or bf16 -> f32 on the active kernel tier. */
  convert(dst: FloatArray, dstDtype: NativeDType, src: FloatArray, srcDtype: NativeDType): void;
  SpillBuffer: new (elements: number, dtype: 'f32' | 'bf16', memoryElements: number, dir: string) => NativeSpillBuffer;
}

/** The CPU addon's functions (native/addon). Arguments are validated in TS first. */
/** Kernel families of the dequant-matmul (native/include/quantform/matmul_ops.h MatmulPath). */
export type NativeMatmulPath = 'auto' | 'fp32' | 'split' | 'int8' | 'bf16' | 'generic' | 'reference';

export interface NativeBinding {
  engine: NativeEngine;
  io: NativeIoBinding;
  abiVersion: number;
  backendInfo(): NativeBackendInfo;
  setKernelPolicy(policy: string): string;
  setThreads(n: number): number;
  setAmx(enabled: boolean): boolean;
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
  /** canonical codes + f16 (N, G) params -> GPTQ qweight, qzeros, scales (G, N) into caller-owned arrays */
  gptqPack(qweight: Int32Array, qzeros: Int32Array, scalesOut: Uint16Array, codes: Uint8Array, scales: Uint16Array, zeros: Uint16Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, v1: boolean, async: false): void;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: false): Float32Array;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: true): Promise<Float32Array>;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: false): NativeFakeQuantGrads;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: true): Promise<NativeFakeQuantGrads>;
  LlamaModel: new (config: NativeLlamaConfig) => NativeLlamaModel;
  matmulPrepare(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number,
    K: number, bits: number, groupSize: number, symmetric: boolean): NativePreparedWeight;
  matmulUnprepare(handle: NativePreparedWeight): NativeQuantized;
  matmulDispose(handle: NativePreparedWeight): void;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8' | 'bf16', path: NativeMatmulPath, async: false): Float32Array;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8' | 'bf16', path: NativeMatmulPath, async: true): Promise<Float32Array>;
  matmulPath(M: number, handle: NativePreparedWeight | null, codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null,
    paramDtype: 'f32' | 'f16', N: number, K: number, bits: number, groupSize: number, symmetric: boolean,
    accuracy: 'fp32' | 'int8' | 'bf16'): Exclude<NativeMatmulPath, 'auto'>;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: false): Float32Array;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: true): Promise<Float32Array>;
  // GPTQ (native/include/quantform/gptq.h)
  /** H (K, K) = H n/(n + T) + 2/(n + T) xᵀx for x (T, K), n = rowsBefore (0 overwrites H). */
  gptqHessianAccumulate(H: Float32Array, x: Float32Array, T: number, K: number, rowsBefore: number, async: false): void;
  gptqHessianAccumulate(H: Float32Array, x: Float32Array, T: number, K: number, rowsBefore: number, async: true): Promise<void>;
  /** U (K, K) = upper Cholesky factor of (H + damp mean(diag H) I)^-1 (dead inputs' diagonal set to 1). */
  gptqInverseFactor(U: Float32Array, H: Float32Array, K: number, damp: number): void;
  gptqQuantize(w: Float32Array, H: Float32Array, config: NativeGptqConfig, async: false): NativeGptqResult;
  gptqQuantize(w: Float32Array, H: Float32Array, config: NativeGptqConfig, async: true): Promise<NativeGptqResult>;
  /**
   * Quantized-linear backward (native/include/quantform/qlinear.h): gradInput (M, K) = gradOutput (M, N) · Ŵ,
   * overwritten; gradScales (N, G) += Σ_{k ∈ g} (q - z) (gradOutputᵀ x)[n, k]. Either output may be null.
   */
  quantLinearBackward(gradInput: Float32Array | null, gradScales: Float32Array | null, gradOutput: Float32Array,
    x: Float32Array | null, M: number, codes: Uint8Array, scales: Float32Array, zeros: Float32Array | null, N: number,
    K: number, bits: number, groupSize: number, symmetric: boolean, async: false): void;
  quantLinearBackward(gradInput: Float32Array | null, gradScales: Float32Array | null, gradOutput: Float32Array,
    x: Float32Array | null, M: number, codes: Uint8Array, scales: Float32Array, zeros: Float32Array | null, N: number,
    K: number, bits: number, groupSize: number, symmetric: boolean, async: true): Promise<void>;
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
  if (cached.abiVersion !== 3) {
    const v = cached.abiVersion;
    cached = undefined;
    throw new QuantformError('QF_NATIVE_LOAD', `quantform's native addon has ABI version ${v}, expected 3: rebuild it with \`npm run build:native\``);
  }
  return cached;
}
