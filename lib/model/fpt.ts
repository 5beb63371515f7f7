// The run-time part of an FPTQuant model: static activation and KV-cache scales and the
// transforms that run at inference (S_n, online Hadamard), as saved in a quantform checkpoint
// and handed to the native model (LlamaModel.setFpt). The checkpoint format:
//
//   config.json quantization_config.quantform:
//     activations: { bits: 8 | 4, scheme: 'static', granularity: 'tensor', symmetric: true,
//                    inputs: ['qkv', 'o_proj', 'gate_up', 'down_proj'],
//                    bits_per_input?: [4 | 8, ...] (in inputs' order; absent: bits everywhere) }
//                                                                           (absent: fp activations)
//     kv_cache:    { bits: 8 | 4, scheme: 'static', granularity: 'head', symmetric: true }
//     online_transforms: ['residual_scaling', 'hadamard:down_proj:<block>']    (the run-time ones)
//   tensors (F32): model.layers.<l>.quantform.act_scales [4]   the four inputs' scales, in order
//                  model.layers.<l>.quantform.kv_scales  [2, Hkv]  K (after RoPE) then V, per kv head
//   q = clamp(rint(x / scale), -(2^(b-1) - 1), 2^(b-1) - 1); the weights are GPTQ tensors (INT4 sym).
import { QuantformError } from '../errors.js';
import { native, type NativeFptRuntime } from '../native.js';
import type { LlamaConfig } from './config.js';

export interface ActivationQuant {
  /** 16: fp activations */
  actBits: number;
  /** mixed precision (ablations): the bits of each of ACT_INPUTS (4 or 8), else actBits everywhere */
  inputBits?: number[];
  /** 16: fp KV cache */
  kvBits: number;
  residualScaling: boolean;
  /** online Hadamard block before down_proj, 0: none */
  hadamardBlock: number;
  /** whether a residual rotation was merged into the weights (no run-time part; informational) */
  residualRotation: boolean;
  /** (layers, 4) */
  actScales: Float32Array;
  /** (layers, 2, Hkv) */
  kvScales: Float32Array;
}

export const ACT_INPUTS = ['qkv', 'o_proj', 'gate_up', 'down_proj'] as const;

/** config.json quantization_config.quantform fields of a model (merged into { method, ... }). */
export function activationConfig(a: ActivationQuant): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (a.actBits < 16) {
    out.activations = {
      bits: a.actBits, scheme: 'static', granularity: 'tensor', symmetric: true, inputs: [...ACT_INPUTS],
      ...(a.inputBits ? { bits_per_input: [...a.inputBits] } : {}),
    };
  }
  if (a.kvBits < 16) out.kv_cache = { bits: a.kvBits, scheme: 'static', granularity: 'head', symmetric: true };
  const online: string[] = [];
  if (a.residualScaling) online.push('residual_scaling');
  if (a.hadamardBlock > 0) online.push(`hadamard:down_proj:${a.hadamardBlock}`);
  if (online.length > 0) out.online_transforms = online;
  if (a.residualRotation) out.residual_rotation = 'merged';
  return out;
}

/** Whether a model needs the run-time part at all (else it is a plain weight-only checkpoint). */
export function needsRuntime(a: ActivationQuant): boolean {
  return a.actBits < 16 || a.kvBits < 16 || a.residualScaling || a.hadamardBlock > 0;
}

export function scaleTensorNames(l: number): { act: string; kv: string } {
  return { act: `model.layers.${l}.quantform.act_scales`, kv: `model.layers.${l}.quantform.kv_scales` };
}

function bitsOf(v: unknown, what: string, where: string): number {
  const b = (v as { bits?: unknown } | undefined)?.bits;
  if (b !== 4 && b !== 8)
    throw new QuantformError('QF_UNSUPPORTED_BITS', `${where}: quantization_config.quantform.${what}.bits must be 4 or 8 but is ${JSON.stringify(b)}`);
  return b;
}

/**
 * The run-time part of a checkpoint from its quantization_config.quantform and scale tensors, or
 * null when it has none. Anything this version cannot run is an error naming it.
 */
export function readActivationQuant(qf: Record<string, unknown> | undefined, cfg: LlamaConfig, where: string,
  tensor: (name: string, n: number) => Float32Array): ActivationQuant | null {
  if (!qf) return null;
  const hasAct = qf.activations !== undefined && qf.activations !== null;
  const hasKv = qf.kv_cache !== undefined && qf.kv_cache !== null;
  const online = qf.online_transforms;
  if (online !== undefined && !Array.isArray(online))
    throw new QuantformError('QF_CORRUPT_FILE', `${where}: quantization_config.quantform.online_transforms must be an array`);
  const list = (online ?? []) as unknown[];
  if (!hasAct && !hasKv && list.length === 0) return null;
  const a: ActivationQuant = {
    actBits: hasAct ? bitsOf(qf.activations, 'activations', where) : 16,
    kvBits: hasKv ? bitsOf(qf.kv_cache, 'kv_cache', where) : 16,
    residualScaling: false, hadamardBlock: 0, residualRotation: qf.residual_rotation === 'merged',
    actScales: new Float32Array(cfg.nLayers * 4), kvScales: new Float32Array(cfg.nLayers * 2 * cfg.nKvHeads),
  };
  if (hasAct) {
    const act = qf.activations as Record<string, unknown>;
    if (act.scheme !== 'static' || act.granularity !== 'tensor' || act.symmetric !== true)
      throw new QuantformError('QF_UNSUPPORTED', `${where}: activations ${JSON.stringify(act)} are not static per-tensor symmetric, the only kind quantform runs`);
    const per = act.bits_per_input;
    if (per !== undefined) {
      if (!Array.isArray(per) || per.length !== ACT_INPUTS.length || per.some((b) => b !== 4 && b !== 8))
        throw new QuantformError('QF_UNSUPPORTED_BITS', `${where}: quantization_config.quantform.activations.bits_per_input must be ${ACT_INPUTS.length} entries of 4 or 8 but is ${JSON.stringify(per)}`);
      a.inputBits = per as number[];
    }
  }
  for (const t of list) {
    if (t === 'residual_scaling') a.residualScaling = true;
    else if (typeof t === 'string' && /^hadamard:down_proj:\d+$/.test(t)) a.hadamardBlock = Number(t.split(':')[2]);
    else throw new QuantformError('QF_UNSUPPORTED', `${where}: online transform ${JSON.stringify(t)} is unknown to this version of quantform`);
  }
  for (let l = 0; l < cfg.nLayers; l++) {
    const n = scaleTensorNames(l);
    if (hasAct) a.actScales.set(tensor(n.act, 4), l * 4);
    if (hasKv) a.kvScales.set(tensor(n.kv, 2 * cfg.nKvHeads), l * 2 * cfg.nKvHeads);
  }
  for (const [name, arr] of [['activation', a.actScales], ['KV-cache', a.kvScales]] as const)
    for (let i = 0; i < arr.length; i++)
      if ((name === 'activation' ? hasAct : hasKv) && !(arr[i] > 0 && Number.isFinite(arr[i])))
        throw new QuantformError('QF_CORRUPT_FILE', `${where}: ${name} scale ${i} is ${arr[i]}, not a positive finite number`);
  return a;
}

/** The native model's FPTQuant options and per-layer parameter arenas (only the scales are read). */
export function nativeRuntime(a: ActivationQuant, cfg: LlamaConfig): { opts: NativeFptRuntime; params: Float32Array[] } {
  const eng = native().engine;
  const lay = eng.fptLayout({
    B: 1, T: 1, D: cfg.dim, F: cfg.hiddenDim, Hq: cfg.nHeads, Hkv: cfg.nKvHeads, hd: cfg.headDim, eps: cfg.normEps,
    invFreq: new Float32Array(cfg.headDim / 2), bits: 0, groupSize: 128, symmetric: true, teq: false,
  });
  const Hkv = cfg.nKvHeads;
  const params = Array.from({ length: cfg.nLayers }, (_, l) => {
    const p = new Float32Array(lay.total);
    for (let i = 0; i < 4; i++) p[lay.actLogScale + i] = a.actBits < 16 ? Math.log(a.actScales[l * 4 + i]) : 0;
    for (let i = 0; i < 2 * Hkv; i++) p[lay.kvLogScale + i] = a.kvBits < 16 ? Math.log(a.kvScales[l * 2 * Hkv + i]) : 0;
    return p;
  });
  return {
    opts: {
      residualScaling: a.residualScaling, hadamardBlock: a.hadamardBlock, actBits: a.actBits < 16 ? a.actBits : 0, kvBits: a.kvBits < 16 ? a.kvBits : 0,
      ...(a.inputBits && a.actBits < 16 ? { inputBits: [...a.inputBits] } : {}),
    },
    params,
  };
}
