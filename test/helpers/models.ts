// Small training models the method tests share.
import { blockLayout, TrainableLlama, type LlamaShape } from '../../lib/engine/llama.js';
import { rng } from './numeric.js';

/** A random 2-layer GQA Llama (hidden 32, intermediate 48, vocab 64), norms at 1, tied embedding. */
export function syntheticModel(seed: number): TrainableLlama {
  const shape: LlamaShape = { hidden: 32, intermediate: 48, layers: 2, heads: 4, kvHeads: 2, headDim: 8, vocab: 64, maxSeq: 64, rmsEps: 1e-5, ropeTheta: 10000, tied: true };
  const r = rng(seed);
  const lay = blockLayout(shape);
  const blocks = Array.from({ length: shape.layers }, () => {
    const b = Float32Array.from({ length: lay.total }, () => (r() - 0.5) * 0.4);
    b.fill(1, lay.g1.offset, lay.g1.offset + shape.hidden);
    b.fill(1, lay.g2.offset, lay.g2.offset + shape.hidden);
    return b;
  });
  const embed = Float32Array.from({ length: shape.vocab * shape.hidden }, () => r() - 0.5);
  const hf = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: shape.hidden, intermediate_size: shape.intermediate, num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads, num_key_value_heads: shape.kvHeads, head_dim: shape.headDim, vocab_size: shape.vocab,
    max_position_embeddings: shape.maxSeq, rms_norm_eps: shape.rmsEps, rope_theta: shape.ropeTheta, tie_word_embeddings: true,
  };
  return new TrainableLlama(shape, embed, new Float32Array(shape.hidden).fill(1), embed, blocks, hf);
}
