// A loaded checkpoint: config, tokenizer and weights fetched lazily by canonical
// name (config.ts weightNames), already in kernel layout (RoPE normalised, fp32).
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { LlamaConfig } from './config.js';

export type CheckpointFormat = 'safetensors' | 'llama2c' | 'gguf' | 'synthetic';

import type { QuantizedTensor } from '../ops/quant.js';

export interface Checkpoint {
  readonly format: CheckpointFormat;
  /** file or directory it came from ('synthetic:<seed>' for built ones) */
  readonly path: string;
  readonly config: LlamaConfig;
  /** One weight as fp32 (out, in) row-major; reads only that tensor from disk. */
  weight(name: string): Float32Array;
  /**
   * A linear weight stored quantized, in the canonical packed format, for the
   * dequant-matmul kernels; null (or absent) when the weight is plain fp32.
   */
  quantizedWeight?(name: string): QuantizedTensor | null;
  /** The tokenizer that belongs to the checkpoint. */
  tokenizer(): Promise<Tokenizer>;
  close(): void;
}
