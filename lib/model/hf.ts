// Hugging Face model directories: config.json + model.safetensors (or shards listed
// in model.safetensors.index.json). Headers are parsed and every tensor's byte
// range and shape checked against config.json before any weight is read; weights
// are then read one at a time (lib/io/safetensors.ts, the one reader).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, need } from '../errors.js';
import { parseJsonObject } from '../io/json.js';
import { SafetensorsCheckpointFiles } from '../io/safetensors.js';
import { readTensor, type StoredTensor } from '../io/tensors.js';
import { loadHfTokenizer } from '../tokenizer/hf.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint, TensorSource } from './checkpoint.js';
import { configFromHf, eachWeightName, weightShape, type LlamaConfig } from './config.js';


const LAYER_HF: Record<string, string> = {
  attn_norm: 'input_layernorm', ffn_norm: 'post_attention_layernorm',
  wq: 'self_attn.q_proj', wk: 'self_attn.k_proj', wv: 'self_attn.v_proj', wo: 'self_attn.o_proj',
  w_gate: 'mlp.gate_proj', w_up: 'mlp.up_proj', w_down: 'mlp.down_proj',
};

/** The Hugging Face module name of a canonical weight (without '.weight'): model.layers.0.self_attn.q_proj ... */
export function hfModuleName(name: string): string {
  if (name === 'embed') return 'model.embed_tokens';
  if (name === 'final_norm') return 'model.norm';
  if (name === 'lm_head') return 'lm_head';
  const m = /^layers\.(\d+)\.(\w+)$/.exec(name);
  if (!m || !LAYER_HF[m[2]]) throw new QuantformError('QF_INVALID_ARGUMENT', `Unknown weight name '${name}'`);
  return `model.layers.${m[1]}.${LAYER_HF[m[2]]}`;
}

/** config.json of a model directory, parsed. */
export function readHfConfigJson(dir: string): Record<string, unknown> {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parseJsonObject(text, file);
}

export class SafetensorsCheckpoint implements Checkpoint {
  readonly format = 'safetensors' as const;
  readonly config: LlamaConfig;
  /** config.json as stored (exporters keep its fields) */
  readonly hfConfig: Record<string, unknown>;
  private readonly st: SafetensorsCheckpointFiles;

  constructor(readonly path: string) {
    need.string(path, 'path');
    this.hfConfig = readHfConfigJson(path);
    const cfg = configFromHf(this.hfConfig, `${path}/config.json`);
    this.st = SafetensorsCheckpointFiles.dir(path);
    try {
      if (cfg.tiedEmbeddings && this.st.get('lm_head.weight')) cfg.tiedEmbeddings = false;  // an explicit head wins
      this.config = cfg;
      if (this.st.get('model.layers.0.self_attn.q_proj.bias'))
        throw new QuantformError('QF_UNSUPPORTED', `${path}: q/k/v projection biases (Qwen2 style) are not supported`);
      // every expected tensor present, a float, with the shape config.json implies
      for (const n of eachWeightName(cfg)) this.stored(n);  // lazily: a config claiming 2^31 layers fails at the first missing one
    } catch (e) {
      this.st.close();
      throw e;
    }
  }

  private stored(name: string): StoredTensor {
    const hf = `${hfModuleName(name)}.weight`;
    const t = this.st.get(hf);
    if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${hf}' is missing`);
    const want = weightShape(this.config, name);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${t.file.path}: tensor '${hf}' has shape [${t.shape.join(', ')}] but config.json implies [${want.join(', ')}]`);
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16')
      throw new QuantformError('QF_UNSUPPORTED', `${t.file.path}: tensor '${hf}' has dtype ${t.dtype}; supported: F32, F16, BF16`);
    return t;
  }

  tensorSource(name: string): TensorSource {
    return { tensor: this.stored(name), dstRow: null };
  }

  weight(name: string): Float32Array {
    return readTensor(this.stored(name));
  }

  async tokenizer(): Promise<Tokenizer> {
    return loadHfTokenizer(this.path, this.config);
  }

  close(): void {
    this.st.close();
  }
}
