// The model description every loader produces, whatever the file format.
import { QuantformError, invalidParameter, is, need } from '../errors.js';

export interface Llama3RopeScaling {
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface LlamaConfig {
  /** e.g. LlamaForCausalLM, MistralForCausalLM, llama2.c, gguf:llama, synthetic */
  architecture: string;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  /** context length: RoPE table and KV cache capacity */
  maxSeq: number;
  normEps: number;
  ropeTheta: number;
  ropeScaling: Llama3RopeScaling | null;
  tiedEmbeddings: boolean;
  bosId: number;
  eosId: number;
}

/** Canonical weight names (the native model's): shapes as (out, in) row-major. */
export const LAYER_WEIGHTS = ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_up', 'w_down'] as const;
export type LayerWeight = (typeof LAYER_WEIGHTS)[number];
export const LINEAR_WEIGHTS: readonly LayerWeight[] = ['wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down'];

/** A LlamaConfig passed in by a caller: an object whose sizes are positive integers. */
export function needConfig(cfg: unknown, name = 'config'): asserts cfg is LlamaConfig {
  need.object(cfg, name);
  const c = cfg as Record<string, unknown>;
  for (const k of ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'maxSeq'] as const)
    if (!is.positiveInteger(c[k])) throw invalidParameter('positive integer', `${name}.${k}`, c[k]);
  need.bool(c.tiedEmbeddings, `${name}.tiedEmbeddings`);
}

export function weightNames(cfg: LlamaConfig): string[] {
  return [...eachWeightName(cfg)];
}

/**
 * weightNames one at a time: a loader checking a file's tensors against a config
 * it has not yet trusted (nLayers up to 2^31) fails at the first missing tensor
 * instead of building billions of names first.
 */
export function* eachWeightName(cfg: LlamaConfig): Generator<string> {
  needConfig(cfg);
  yield 'embed';
  yield 'final_norm';
  if (!cfg.tiedEmbeddings) yield 'lm_head';
  for (let l = 0; l < cfg.nLayers; l++) for (const w of LAYER_WEIGHTS) yield `layers.${l}.${w}`;
}

export function weightShape(cfg: LlamaConfig, name: string): number[] {
  needConfig(cfg);
  need.string(name, 'name');
  const C = cfg.dim, F = cfg.hiddenDim, Q = cfg.nHeads * cfg.headDim, KV = cfg.nKvHeads * cfg.headDim;
  if (name === 'embed' || name === 'lm_head') return [cfg.vocabSize, C];
  if (name === 'final_norm') return [C];
  const w = name.split('.')[2] as LayerWeight;
  switch (w) {
    case 'attn_norm': case 'ffn_norm': return [C];
    case 'wq': return [Q, C];
    case 'wk': case 'wv': return [KV, C];
    case 'wo': return [C, Q];
    case 'w_gate': case 'w_up': return [F, C];
    case 'w_down': return [C, F];
  }
  throw new QuantformError('QF_INVALID_ARGUMENT', `Unknown weight name '${name}'`);
}

export function validateConfig(cfg: LlamaConfig, source: string): void {
  const ints: (keyof LlamaConfig)[] = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'maxSeq'];
  for (const k of ints) {
    const v = cfg[k];
    if (!is.positiveInteger(v) || (v as number) > 2 ** 31) throw new QuantformError('QF_CORRUPT_FILE', `${source}: expected positive integer below 2^31 for ${k} but received ${String(v)}`);
  }
  if (cfg.nHeads % cfg.nKvHeads !== 0) throw new QuantformError('QF_CORRUPT_FILE', `${source}: num_key_value_heads ${cfg.nKvHeads} does not divide num_attention_heads ${cfg.nHeads}`);
  if (cfg.headDim % 2 !== 0) throw new QuantformError('QF_CORRUPT_FILE', `${source}: head_dim ${cfg.headDim} must be even for RoPE`);
  if (!(cfg.normEps > 0) || !(cfg.ropeTheta > 0)) throw new QuantformError('QF_CORRUPT_FILE', `${source}: expected positive rms_norm_eps and rope_theta but received ${cfg.normEps}, ${cfg.ropeTheta}`);
}

/** RoPE inverse frequencies (headDim/2), with Llama 3 rope_scaling applied as transformers does. */
export function invFreq(cfg: LlamaConfig): Float32Array {
  needConfig(cfg);
  need.finiteNumber(cfg.ropeTheta, 'config.ropeTheta');
  const half = cfg.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = out[i], wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) out[i] = f / s.factor;
      else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        out[i] = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
  }
  return out;
}

/** Reads Hugging Face config.json fields into a LlamaConfig. */
export function configFromHf(json: Record<string, unknown>, source: string): LlamaConfig {
  need.object(json, 'json');
  need.string(source, 'source');
  const num = (k: string, dflt?: number): number => {
    const v = json[k];
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      throw new QuantformError('QF_CORRUPT_FILE', `${source}: missing '${k}'`);
    }
    if (typeof v !== 'number') throw new QuantformError('QF_CORRUPT_FILE', `${source}: expected number for '${k}' but received ${JSON.stringify(v)}`);
    return v;
  };
  const arch = Array.isArray(json.architectures) && typeof json.architectures[0] === 'string' ? json.architectures[0] : String(json.model_type ?? 'unknown');
  const supported = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'];
  if (!supported.includes(arch))
    throw new QuantformError('QF_UNSUPPORTED', `${source}: architecture '${arch}' is not supported (supported: ${supported.join(', ')})`);
  if (json.attention_bias === true || json.mlp_bias === true)
    throw new QuantformError('QF_UNSUPPORTED', `${source}: attention/MLP biases are not supported`);
  if (json.hidden_act !== undefined && json.hidden_act !== 'silu')
    throw new QuantformError('QF_UNSUPPORTED', `${source}: hidden_act '${String(json.hidden_act)}' is not supported (silu only)`);
  const dim = num('hidden_size');
  const nHeads = num('num_attention_heads');
  let ropeScaling: Llama3RopeScaling | null = null;
  const rs = json.rope_scaling as Record<string, unknown> | null | undefined;
  if (rs) {
    const type = rs.rope_type ?? rs.type;
    if (type !== 'llama3') throw new QuantformError('QF_UNSUPPORTED', `${source}: rope_scaling type '${String(type)}' is not supported (llama3 only)`);
    ropeScaling = {
      ropeType: 'llama3',
      factor: Number(rs.factor),
      lowFreqFactor: Number(rs.low_freq_factor),
      highFreqFactor: Number(rs.high_freq_factor),
      originalMaxPositionEmbeddings: Number(rs.original_max_position_embeddings),
    };
  }
  const eos = Array.isArray(json.eos_token_id) ? Number(json.eos_token_id[0]) : num('eos_token_id', 2);
  const cfg: LlamaConfig = {
    architecture: arch,
    dim,
    hiddenDim: num('intermediate_size'),
    nLayers: num('num_hidden_layers'),
    nHeads,
    nKvHeads: num('num_key_value_heads', nHeads),
    headDim: num('head_dim', dim / nHeads),
    vocabSize: num('vocab_size'),
    maxSeq: num('max_position_embeddings', 2048),
    normEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling,
    tiedEmbeddings: json.tie_word_embeddings === true,
    bosId: num('bos_token_id', 1),
    eosId: eos,
  };
  validateConfig(cfg, source);
  return cfg;
}

/** A Hugging Face config.json describing `cfg` (for checkpoints that came without one: llama2.c, GGUF, synthetic). */
export function hfConfigFromLlama(c: LlamaConfig): Record<string, unknown> {
  needConfig(c);
  const out: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: c.dim, intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, num_key_value_heads: c.nKvHeads, head_dim: c.headDim,
    vocab_size: c.vocabSize, max_position_embeddings: c.maxSeq, rms_norm_eps: c.normEps, rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tiedEmbeddings, bos_token_id: c.bosId, eos_token_id: c.eosId, hidden_act: 'silu', torch_dtype: 'float32',
  };
  if (c.ropeScaling)
    out.rope_scaling = {
      rope_type: 'llama3', factor: c.ropeScaling.factor, low_freq_factor: c.ropeScaling.lowFreqFactor,
      high_freq_factor: c.ropeScaling.highFreqFactor, original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
    };
  return out;
}
