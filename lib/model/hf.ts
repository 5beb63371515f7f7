// Hugging Face model directories: config.json + model.safetensors (or shards listed
// in model.safetensors.index.json). The header is parsed and every tensor's byte
// range validated before any weight is read; weights are read one at a time.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, need } from '../errors.js';
import { loadHfTokenizer } from '../tokenizer/hf.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Checkpoint } from './checkpoint.js';
import { configFromHf, weightShape, type LlamaConfig } from './config.js';
import { CheckpointFile } from '../io/file.js';
import { readTensor, validateLayout, type StoredDType, type StoredTensor } from '../io/tensors.js';
import { parseJson, parseJsonObject } from '../io/json.js';

/** Headers beyond this are refused before allocation (real ones are a few MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const DTYPES: Record<string, StoredDType> = { F32: 'F32', F16: 'F16', BF16: 'BF16' };

/** Parses one .safetensors file's header into stored tensors (no weight bytes read). */
export function readSafetensorsHeader(file: CheckpointFile): StoredTensor[] {
  need.instance(file, CheckpointFile, 'file');
  if (file.size < 8) throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: ${file.size} bytes is too short for a safetensors header length`);
  const len64 = file.read(0, 8, 'header length').readBigUInt64LE(0);
  if (len64 > BigInt(file.size - 8))
    throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header length ${len64} runs past the end of the file (${file.size} bytes)`);
  const len = Number(len64);
  if (len > MAX_HEADER_BYTES) throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header length ${len} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  let header: Record<string, unknown>;
  try {
    header = parseJson(file.read(8, len, 'header').toString('utf8'), `${file.path}: header`) as Record<string, unknown>;
  } catch (e) {
    throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header is not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: header is not a JSON object`);
  const dataStart = 8 + len;
  const out: StoredTensor[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const info = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = DTYPES[String(info?.dtype)];
    if (!dtype) throw new QuantformError('QF_UNSUPPORTED', `${file.path}: tensor '${name}' has dtype ${JSON.stringify(info?.dtype)}; supported: F32, F16, BF16`);
    if (!Array.isArray(info.shape) || !Array.isArray(info.data_offsets) || info.data_offsets.length !== 2)
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' lacks a shape or data_offsets pair`);
    const [b, e] = info.data_offsets as number[];
    if (!Number.isSafeInteger(b) || !Number.isSafeInteger(e) || b < 0 || e < b)
      throw new QuantformError('QF_CORRUPT_FILE', `${file.path}: tensor '${name}' has invalid data_offsets [${String(b)}, ${String(e)}]`);
    out.push({ name, shape: (info.shape as number[]).map(Number), dtype, file, offset: dataStart + b, nbytes: e - b });
  }
  validateLayout(out);
  return out;
}

function hfName(name: string): string {
  if (name === 'embed') return 'model.embed_tokens.weight';
  if (name === 'final_norm') return 'model.norm.weight';
  if (name === 'lm_head') return 'lm_head.weight';
  const [, l, w] = name.split('.');
  const map: Record<string, string> = {
    attn_norm: 'input_layernorm', ffn_norm: 'post_attention_layernorm',
    wq: 'self_attn.q_proj', wk: 'self_attn.k_proj', wv: 'self_attn.v_proj', wo: 'self_attn.o_proj',
    w_gate: 'mlp.gate_proj', w_up: 'mlp.up_proj', w_down: 'mlp.down_proj',
  };
  return `model.layers.${l}.${map[w]}.weight`;
}

export class SafetensorsCheckpoint implements Checkpoint {
  readonly format = 'safetensors' as const;
  readonly config: LlamaConfig;
  private readonly files: CheckpointFile[] = [];
  private readonly tensors = new Map<string, StoredTensor>();

  constructor(readonly path: string) {
    const cfgPath = join(path, 'config.json');
    let json: Record<string, unknown>;
    try {
      json = parseJsonObject(readFileSync(cfgPath, 'utf8'), cfgPath);
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot read ${cfgPath}: ${(e as Error).message}`, { cause: e });
    }
    const cfg = configFromHf(json, cfgPath);
    const single = join(path, 'model.safetensors'), index = join(path, 'model.safetensors.index.json');
    let shardNames: string[];
    if (existsSync(single)) shardNames = ['model.safetensors'];
    else if (existsSync(index)) {
      let map: Record<string, string>;
      try {
        map = (parseJsonObject(readFileSync(index, 'utf8'), index) as { weight_map: Record<string, string> }).weight_map;
      } catch (e) {
        throw new QuantformError('QF_CORRUPT_FILE', `${index}: not a valid index (${(e as Error).message})`, { cause: e });
      }
      if (!map || typeof map !== 'object') throw new QuantformError('QF_CORRUPT_FILE', `${index}: missing weight_map`);
      shardNames = [...new Set(Object.values(map))];
      if (shardNames.some((s) => typeof s !== 'string' || s.includes('/') || s.includes('\\')))
        throw new QuantformError('QF_CORRUPT_FILE', `${index}: shard names must be plain file names in ${path}`);
    } else throw new QuantformError('QF_IO', `${path}: neither model.safetensors nor model.safetensors.index.json exists`);
    try {
      for (const s of shardNames) {
        const f = new CheckpointFile(join(path, s));
        this.files.push(f);
        for (const t of readSafetensorsHeader(f)) {
          if (this.tensors.has(t.name)) throw new QuantformError('QF_CORRUPT_FILE', `${f.path}: tensor '${t.name}' also appears in ${this.tensors.get(t.name)!.file.path}`);
          this.tensors.set(t.name, t);
        }
      }
      const hasHead = this.tensors.has('lm_head.weight');
      if (cfg.tiedEmbeddings && hasHead) cfg.tiedEmbeddings = false;  // an explicit head wins
      this.config = cfg;
      if (this.tensors.has('model.layers.0.self_attn.q_proj.bias'))
        throw new QuantformError('QF_UNSUPPORTED', `${path}: q/k/v projection biases (Qwen2 style) are not supported`);
      // every expected tensor present with the shape config.json implies
      for (const n of this.weightNamesForCheck()) this.stored(n);  // lazily: a config claiming 2^31 layers fails at the first missing one
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private *weightNamesForCheck(): Generator<string> {
    yield 'embed';
    yield 'final_norm';
    if (!this.config.tiedEmbeddings) yield 'lm_head';
    for (let l = 0; l < this.config.nLayers; l++)
      for (const w of ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_up', 'w_down']) yield `layers.${l}.${w}`;
  }

  private stored(name: string): StoredTensor {
    const hf = hfName(name);
    const t = this.tensors.get(hf);
    if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${hf}' is missing`);
    const want = weightShape(this.config, name);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${t.file.path}: tensor '${hf}' has shape [${t.shape.join(', ')}] but config.json implies [${want.join(', ')}]`);
    return t;
  }

  weight(name: string): Float32Array {
    return readTensor(this.stored(name));
  }

  async tokenizer(): Promise<Tokenizer> {
    return loadHfTokenizer(this.path, this.config);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function join(dir: string, f: string): string {
  return path.join(dir, f);
}
