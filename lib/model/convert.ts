// RoPE layout normalisation. Kernels use Hugging Face rotate_half pairs (i, i + HS/2);
// Meta's original checkpoints, llama2.c .bin files and GGUF files (llama.cpp's
// converters write q/k in the interleaved (2i, 2i + 1) order) need their q/k rows
// reordered once at load.
import { QuantformError, invalidParameter, need } from '../errors.js';

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

/**
 * The same reordering as a row map for loaders that scatter rows while reading:
 * source row h*HS + 2i + j lands in row h*HS + j*HS/2 + i (rows = heads * HS).
 * It is also the row order of permuteHalfToInterleaved (out row r is source row dst[r]).
 */
export function interleavedToHalfRows(heads: number, rows: number): Int32Array {
  need.positiveInteger(heads, 'heads');
  need.positiveInteger(rows, 'rows');
  if (rows % (2 * heads) !== 0) throw invalidParameter(`a multiple of 2 x heads = ${2 * heads} (even head size)`, 'rows', rows);
  const hs = rows / heads, half = hs / 2;
  const dst = new Int32Array(rows);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) dst[h * hs + 2 * i + j] = h * hs + j * half + i;
  return dst;
}

/**
 * Row order of permuteInterleavedToHalf for a (heads * HS)-row weight: out row r is
 * in row order[r], for permuting weights that are not fp32 (quantized rows).
 */
export function interleavedToHalfOrder(heads: number, rows: number): Int32Array {
  const dst = interleavedToHalfRows(heads, rows);
  const order = new Int32Array(rows);
  for (let s = 0; s < rows; s++) order[dst[s]] = s;
  return order;
}

/** The inverse order (permuteHalfToInterleaved). */
export const halfToInterleavedOrder = interleavedToHalfRows;
