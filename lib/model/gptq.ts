// GPTQ checkpoints (written by saveGptq or other GPTQ tools with desc_act false) as
// a runtime Checkpoint: quantizedWeight() hands each linear over in the canonical
// packed format, so the model runs it on the dequant-matmul kernels; weight()
// dequantizes to fp32 for callers that need floats (and for act-order checkpoints).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, need } from '../errors.js';
import type { Checkpoint } from './checkpoint.js';
import { LAYER_WEIGHTS, configFromHf, weightShape, type LlamaConfig } from './config.js';
import { loadHfTokenizer } from '../tokenizer/hf.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Bits } from '../ops/quant.js';
import type { QuantizedTensor } from '../ops/quant.js';
import { dequantizeGptq, fromGptq, type GptqFormat } from '../export/gptq.js';
import { readSafetensors, type SafeTensor } from '../io/safetensors.js';
import { parseJsonObject } from '../io/json.js';

const LAYER_HF: Record<string, string> = {
  attn_norm: 'input_layernorm', ffn_norm: 'post_attention_layernorm', wq: 'self_attn.q_proj', wk: 'self_attn.k_proj',
  wv: 'self_attn.v_proj', wo: 'self_attn.o_proj', w_gate: 'mlp.gate_proj', w_up: 'mlp.up_proj', w_down: 'mlp.down_proj',
};

/** The quantization_config of a model directory's config.json when it is a GPTQ checkpoint, else null. */
export function gptqConfig(dir: string): { bits: Bits; format: GptqFormat } | null {
  let json: { quantization_config?: { quant_method?: string; bits?: number; checkpoint_format?: string } };
  try {
    json = parseJsonObject(readFileSync(path.join(dir, 'config.json'), 'utf8'), path.join(dir, 'config.json'));
  } catch {
    return null;
  }
  const q = json.quantization_config;
  if (!q || q.quant_method !== 'gptq') return null;
  if (q.bits !== 2 && q.bits !== 3 && q.bits !== 4 && q.bits !== 8)
    throw new QuantformError('QF_UNSUPPORTED_BITS', `${dir}: GPTQ bits ${q.bits} are not supported`);
  return { bits: q.bits, format: q.checkpoint_format === 'gptq_v2' ? 'gptq_v2' : 'gptq' };
}

export class GptqCheckpoint implements Checkpoint {
  readonly format = 'safetensors' as const;
  readonly config: LlamaConfig;
  private readonly tensors: Map<string, SafeTensor>;
  private readonly q: { bits: Bits; format: GptqFormat };

  constructor(readonly path: string) {
    need.string(path, 'path');
    const q = gptqConfig(path);
    if (!q) throw new QuantformError('QF_INVALID_ARGUMENT', `${path} is not a GPTQ checkpoint (no quantization_config with quant_method 'gptq')`);
    this.q = q;
    const cfgPath = `${path}/config.json`;
    this.config = configFromHf(parseJsonObject(readFileSync(cfgPath, 'utf8'), cfgPath), cfgPath);
    this.tensors = readSafetensors(`${path}/model.safetensors`);
    if (this.tensors.has('lm_head.weight')) this.config.tiedEmbeddings = false;
    // every weight config.json implies is present (plain or quantized) before anything
    // is sized by it; layer by layer, so a config claiming 2^31 layers fails at the first gap
    const present = (name: string) => this.tensors.has(`${this.hf(name)}.weight`) || this.tensors.has(`${this.hf(name)}.qweight`);
    for (const n of ['embed', 'final_norm', ...(this.config.tiedEmbeddings ? [] : ['lm_head'])])
      if (!present(n)) throw new QuantformError('QF_CORRUPT_FILE', `${path}: tensor '${this.hf(n)}.weight' is missing`);
    for (let l = 0; l < this.config.nLayers; l++)
      for (const w of LAYER_WEIGHTS)
        if (!present(`layers.${l}.${w}`)) throw new QuantformError('QF_CORRUPT_FILE', `${path}: layer ${l} has no ${this.hf(`layers.${l}.${w}`)} weight`);
  }

  private hf(name: string): string {
    if (name === 'embed') return 'model.embed_tokens';
    if (name === 'final_norm') return 'model.norm';
    if (name === 'lm_head') return 'lm_head';
    const m = /^layers\.(\d+)\.(\w+)$/.exec(name);
    if (!m || !LAYER_HF[m[2]]) throw new QuantformError('QF_INVALID_ARGUMENT', `Unknown weight name '${name}'`);
    return `model.layers.${m[1]}.${LAYER_HF[m[2]]}`;
  }

  weight(name: string): Float32Array {
    const base = this.hf(name);
    const shape = weightShape(this.config, name);
    const n = shape.reduce((a, b) => a * b, 1);
    const plain = this.tensors.get(`${base}.weight`);
    if (plain) {
      if (plain.dtype !== 'F32' || plain.data.length !== n)
        throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: ${base}.weight should be F32 [${shape}] but is ${plain.dtype} [${plain.shape}]`);
      return plain.data as Float32Array;
    }
    const part = (s: string) => {
      const t = this.tensors.get(base + s);
      if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${base}${s}' is missing`);
      return t.data;
    };
    const [N, K] = shape;
    return dequantizeGptq({ qweight: part('.qweight') as Int32Array, qzeros: part('.qzeros') as Int32Array,
      scales: part('.scales') as Uint16Array, gIdx: part('.g_idx') as Int32Array }, N, K, this.q.bits, this.q.format);
  }

  quantizedWeight(name: string): QuantizedTensor | null {
    const base = this.hf(name);
    if (this.tensors.has(`${base}.weight`) || !this.tensors.has(`${base}.qweight`)) return null;
    const part = (s: string) => {
      const t = this.tensors.get(base + s);
      if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${base}${s}' is missing`);
      return t.data;
    };
    const [N, K] = weightShape(this.config, name);
    return fromGptq({ qweight: part('.qweight') as Int32Array, qzeros: part('.qzeros') as Int32Array,
      scales: part('.scales') as Uint16Array, gIdx: part('.g_idx') as Int32Array }, N, K, this.q.bits, this.q.format);
  }

  async tokenizer(): Promise<Tokenizer> {
    return loadHfTokenizer(this.path, this.config);
  }

  close(): void {
    this.tensors.clear();
  }
}
