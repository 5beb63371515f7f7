// GPTQ checkpoints (written by saveGptq or other GPTQ tools with desc_act false) as
// a runtime Checkpoint: quantizedWeight() hands each linear over in the canonical
// packed format, so the model runs it on the dequant-matmul kernels; weight()
// dequantizes to fp32 for callers that need floats (and for act-order checkpoints).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, need } from '../errors.js';
import type { Checkpoint, TensorSource } from './checkpoint.js';
import { configFromHf, eachWeightName, weightShape, type LlamaConfig } from './config.js';
import { hfModuleName, readHfConfigJson } from './hf.js';
import { loadHfTokenizer } from '../tokenizer/hf.js';
import { loadLlama2cTokenizer } from '../tokenizer/sentencepiece.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Bits } from '../ops/quant.js';
import type { QuantizedTensor } from '../ops/quant.js';
import { dequantizeGptq, fromGptq, type GptqFormat } from '../export/gptq.js';
import { parseJsonObject } from '../io/json.js';
import { SafetensorsCheckpointFiles } from '../io/safetensors.js';
import { readInt32, readTensor, readUint16, type StoredTensor } from '../io/tensors.js';

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
  readonly format = 'gptq' as const;
  readonly config: LlamaConfig;
  /** config.json as stored */
  readonly hfConfig: Record<string, unknown>;
  private readonly st: SafetensorsCheckpointFiles;
  private readonly q: { bits: Bits; format: GptqFormat };

  constructor(readonly path: string) {
    need.string(path, 'path');
    const q = gptqConfig(path);
    if (!q) throw new QuantformError('QF_INVALID_ARGUMENT', `${path} is not a GPTQ checkpoint (no quantization_config with quant_method 'gptq')`);
    this.q = q;
    this.hfConfig = readHfConfigJson(path);
    this.config = configFromHf(this.hfConfig, `${path}/config.json`);
    this.st = SafetensorsCheckpointFiles.dir(path);
    if (this.st.get('lm_head.weight') || this.st.get('lm_head.qweight')) this.config.tiedEmbeddings = false;
    try {
      // every weight config.json implies is present (plain or quantized) before anything is
      // sized by it; one at a time, so a config claiming 2^31 layers fails at the first gap
      for (const n of eachWeightName(this.config)) {
        const base = hfModuleName(n);
        if (!this.st.get(`${base}.weight`) && !this.st.get(`${base}.qweight`))
          throw new QuantformError('QF_CORRUPT_FILE', `${path}: neither '${base}.weight' nor '${base}.qweight' is stored`);
      }
    } catch (e) {
      this.st.close();
      throw e;
    }
  }

  private part(name: string): StoredTensor {
    const t = this.st.get(name);
    if (!t) throw new QuantformError('QF_CORRUPT_FILE', `${this.path}: tensor '${name}' is missing`);
    return t;
  }

  private gptqTensors(base: string) {
    return {
      qweight: readInt32(this.part(`${base}.qweight`)), qzeros: readInt32(this.part(`${base}.qzeros`)),
      scales: readUint16(this.part(`${base}.scales`)), gIdx: readInt32(this.part(`${base}.g_idx`)),
    };
  }

  tensorSource(name: string): TensorSource | null {
    const t = this.st.get(`${hfModuleName(name)}.weight`);
    if (!t) return null;
    const want = weightShape(this.config, name);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new QuantformError('QF_SHAPE_MISMATCH', `${t.file.path}: tensor '${t.name}' has shape [${t.shape.join(', ')}] but config.json implies [${want.join(', ')}]`);
    return { tensor: t, dstRow: null };
  }

  weight(name: string): Float32Array {
    const src = this.tensorSource(name);
    if (src) return readTensor(src.tensor);
    const [N, K] = weightShape(this.config, name);
    return dequantizeGptq(this.gptqTensors(hfModuleName(name)), N, K, this.q.bits, this.q.format);
  }

  quantizedWeight(name: string): QuantizedTensor | null {
    const base = hfModuleName(name);
    if (this.st.get(`${base}.weight`) || !this.st.get(`${base}.qweight`)) return null;
    const [N, K] = weightShape(this.config, name);
    return fromGptq(this.gptqTensors(base), N, K, this.q.bits, this.q.format);
  }

  /** tokenizer.json, or the llama2.c tokenizer.bin quantform writes for checkpoints that came without one (llama2.c, GGUF). */
  async tokenizer(): Promise<Tokenizer> {
    const bin = path.join(this.path, 'tokenizer.bin');
    if (!existsSync(path.join(this.path, 'tokenizer.json')) && existsSync(bin)) return loadLlama2cTokenizer(bin, this.config.vocabSize);
    return loadHfTokenizer(this.path, this.config);
  }

  close(): void {
    this.st.close();
  }
}
