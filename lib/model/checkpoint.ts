// A loaded checkpoint: config, tokenizer and weights fetched lazily by canonical
// name (config.ts weightNames), already in kernel layout (RoPE normalised, fp32).
import type { StoredTensor } from '../io/tensors.js';
import type { QuantizedTensor } from '../ops/quant.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { need } from '../errors.js';
import { needConfig, type LlamaConfig } from './config.js';

export type CheckpointFormat = 'safetensors' | 'llama2c' | 'gguf' | 'gptq' | 'synthetic' | 'memory';

/** Where a weight is stored, for readers that fetch the bytes themselves. */
export interface TensorSource {
  tensor: StoredTensor;
  /** source row s belongs in row dstRow[s] of the kernel layout (RoPE q/k); null: rows in order */
  dstRow: Int32Array | null;
}

export interface Checkpoint {
  readonly format: CheckpointFormat;
  /** file or directory it came from ('synthetic:<seed>' for built ones) */
  readonly path: string;
  readonly config: LlamaConfig;
  /** The config.json it was loaded from (Hugging Face and GPTQ directories): exporters keep its fields. */
  readonly hfConfig?: Record<string, unknown>;
  /** One weight as fp32 (out, in) row-major; reads only that tensor from disk. */
  weight(name: string): Float32Array;
  /**
   * The stored float tensor behind weight(name), when there is one: the native
   * model then reads it straight from the file into its own memory. Null (or
   * absent) when the weight is computed (dequantized, synthetic).
   */
  tensorSource?(name: string): TensorSource | null;
  /**
   * A linear weight stored quantized, in the canonical packed format, for the
   * dequant-matmul kernels; null (or absent) when the weight is plain fp32.
   */
  quantizedWeight?(name: string): QuantizedTensor | null;
  /** The tokenizer that belongs to the checkpoint. */
  tokenizer(): Promise<Tokenizer>;
  close(): void;
}

/** A Checkpoint passed in by a caller (plain JS): its path, config and weight(); `name` names it in errors. */
export function needCheckpoint(ck: unknown, name = 'checkpoint'): asserts ck is Checkpoint {
  need.object(ck, name);
  const o = ck as Record<string, unknown>;
  need.string(o.path, `${name}.path`);
  needConfig(o.config, `${name}.config`);
  need.func(o.weight, `${name}.weight`);
  need.func(o.tokenizer, `${name}.tokenizer`);
}

/** Hugging Face style directories (config.json, tokenizer files beside the weights): plain and GPTQ. */
export function isHfDirectory(ck: Checkpoint): boolean {
  return ck.format === 'safetensors' || ck.format === 'gptq';
}
