// The default of `quantform quantize` when no --model is given: the bundled
// stories260K (assets/stories260K, a real 260K-parameter Llama trained on
// TinyStories) with calibration stories 201-400 of TinyStories validation and
// held-out stories 1-64, all shipped in the package (assets/README.md), so the
// main job prints real perplexities on a fresh install with nothing to download.
// `--model synthetic` selects the deterministic random Llama with outlier
// channels instead (benchmarks, shapes without a download).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError } from '../errors.js';
import { packageRoot } from '../native.js';
import type { SyntheticOptions } from '../model/synthetic.js';

export const SYNTHETIC_MODEL: SyntheticOptions = {
  dim: 256, hiddenDim: 688, nLayers: 4, nHeads: 8, nKvHeads: 4, vocabSize: 512, maxSeq: 512, seed: 1,
  outlierChannels: 6, outlierScale: 30,
};

export function assetPath(...parts: string[]): string {
  return path.join(packageRoot(), 'assets', ...parts);
}

export const DEFAULT_MODEL = { dir: () => assetPath('stories260K'), name: 'stories260K' };
export const DEFAULT_CALIBRATION = () => assetPath('tinystories', 'valid-stories-201-400.txt');
export const DEFAULT_EVAL_TEXT = () => assetPath('tinystories', 'valid-stories-1-64.txt');
/** The reference protocol's prediction count (shared/data/reference: 80 windows of 256). */
export const DEFAULT_EVAL_TOKENS = 20480;

/**
 * Defaults of the main job, unless the user chose: TEQ's reference schedule
 * (1000 steps, batch 2 x 256 tokens from 128 calibration windows), INT4 with
 * groups of 32, symmetric (the plain GPTQ v1 layout every GPTQ loader reads),
 * with the extra mergeable v->o and up->down scales. Measured on 2 cores with the
 * bundled texts (README): about 17 s of training; perplexity fp32 3.836, RTN 4.376,
 * TEQ 4.220, 29 % of RTN's loss recovered. (Asymmetric W4 g32: RTN 4.143 ->
 * TEQ 4.096, a smaller win; W3 g32: 6.517 -> 5.706.)
 */
export const DEFAULT_JOB: Record<string, number | string | boolean> = {
  method: 'teq', bits: 4, groupSize: 32, sym: true, samples: 128, seqLen: 256, steps: 1000, loss: 'e2e', teqExtra: true, skipDocs: 0,
};

/** A bundled text without its leading '#' notice lines (the CDLA-Sharing change notice). */
export function readAssetText(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read the bundled text ${file}: ${(e as Error).message} (is the package's assets/ folder missing?)`, { cause: e });
  }
  const lines = text.split('\n');
  let i = 0;
  while (i < lines.length && lines[i].startsWith('#')) i++;
  return lines.slice(i).join('\n');
}

/** The main job with --method fptquant: calibration windows as the TEQ job; the method's own schedule (lib/methods/fptquant.ts). */
export const DEFAULT_FPT_JOB: Record<string, number | string | boolean> = {
  method: 'fptquant', bits: 4, samples: 128, seqLen: 256, skipDocs: 0, batchSize: 4,
};
