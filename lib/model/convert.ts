// RoPE layout normalisation. Kernels use Hugging Face rotate_half pairs (i, i + HS/2);
// Meta's original checkpoints, llama2.c .bin files and GGUF files (llama.cpp's
// converters write q/k in the interleaved (2i, 2i + 1) order) need their q/k rows
// reordered once at load.
import { QuantformError, need } from '../errors.js';

function checkPermute(w: Float32Array, heads: number, cols: number): void {
  need.instance(w, Float32Array, 'w');
  need.positiveInteger(heads, 'heads');
  need.positiveInteger(cols, 'cols');
  if (w.length % (cols * heads * 2) !== 0)
    throw new QuantformError('QF_SHAPE_MISMATCH', `Expected a (heads * headDim, cols) weight with even headDim: ${w.length} elements do not split into ${heads} heads of ${cols} columns`);
}

/**
 * Interleaved -> rotate_half for a (heads * HS, cols) weight: new row h*HS + j*HS/2 + i
 * takes old row h*HS + 2i + j (transformers' convert_llama_weights_to_hf `permute`).
 */
export function permuteInterleavedToHalf(w: Float32Array, heads: number, cols: number): Float32Array {
  checkPermute(w, heads, cols);
  const rows = w.length / cols, hs = rows / heads, half = hs / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const src = (h * hs + 2 * i + j) * cols, dst = (h * hs + j * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
  return out;
}

/** The inverse of permuteInterleavedToHalf (for exporters and tests). */
export function permuteHalfToInterleaved(w: Float32Array, heads: number, cols: number): Float32Array {
  checkPermute(w, heads, cols);
  const rows = w.length / cols, hs = rows / heads, half = hs / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const dst = (h * hs + 2 * i + j) * cols, src = (h * hs + j * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
  return out;
}
