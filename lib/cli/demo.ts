// The built-in default of `quantform quantize` when no --model is given: a
// synthetic Llama with outlier channels (the runtime's deterministic builder) and
// a short calibration text written for this package, so the main job runs on a
// fresh install with nothing to download. Held-out windows of the same text
// measure how far each quantized model's logits move from the fp32 model's.
import { ByteTokenizer, SyntheticCheckpoint, type SyntheticOptions } from '../model/synthetic.js';
import { TrainableLlama } from '../engine/llama.js';

export const DEMO_MODEL: SyntheticOptions = {
  dim: 256, hiddenDim: 688, nLayers: 4, nHeads: 8, nKvHeads: 4, vocabSize: 512, maxSeq: 512, seed: 1,
  outlierChannels: 6, outlierScale: 30,
};

/**
 * Defaults that keep the demo well under a minute on two cores. The block-wise
 * loss (each block's output against the fp32 block's) is the objective that
 * means something for a random model; next-token cross-entropy needs a model
 * that has learned the text.
 */
export const DEMO_DEFAULTS: Record<string, number | string> = { samples: 32, seqLen: 128, steps: 150, groupSize: 32, loss: 'block' };

const DEMO_TEXT = `
A quantized model keeps most of what its full-precision parent knew while storing each weight in a few bits.
The trick is in choosing where the rounding error lands. Round-to-nearest treats every weight alike, so a
single channel with unusually large values stretches the grid for its whole group and the small weights
beside it collapse onto a handful of levels. Trainable methods look at the data instead: they learn scales
that move the difficulty from the weights into the activations, or step sizes that fit each group, and they
check their choices against the outputs of the original network rather than against the weights alone.
The workshop on the hill kept its ledgers in pencil. Every evening the keeper copied the day's numbers into
a second book, rounding each to the nearest whole unit, and every month she compared the totals. The
differences were small but never zero, and she learned that the order of the sums mattered as much as the
rounding itself. When the river rose in spring the ledgers were carried upstairs, and the pencil marks,
being light, were easy to carry. A lamp, a scale, a row of jars: each jar held seeds sorted by size, and the
smallest seeds were the hardest to count because they slipped between the marks on the measuring cup.
Children who visited were asked to guess the number of seeds in a jar. Most guesses were too low for the
jars of tiny seeds and too high for the jars of beans, and the keeper wrote each guess beside the true count
so that, over the years, the book showed how people round what they cannot see.
Engineers do the same with numbers they cannot afford to store in full. They measure, compare, and adjust,
and the best of them write down not only the result but the error, so the next person knows what was lost.
`.trim();

export interface Demo {
  model: TrainableLlama;
  /** tokens for calibration (the first two thirds of the text) and for evaluation (the rest) */
  calibrationText: string;
  evalIds: number[];
  encode: (text: string) => number[];
}

export function demo(): Demo {
  const ck = new SyntheticCheckpoint(DEMO_MODEL);
  const tok = new ByteTokenizer(ck.config.vocabSize);
  const cut = Math.floor((DEMO_TEXT.length * 2) / 3);
  return {
    model: TrainableLlama.fromCheckpoint(ck),
    calibrationText: DEMO_TEXT.slice(0, cut),
    evalIds: tok.encode(DEMO_TEXT.slice(cut)),
    encode: (t: string) => tok.encode(t),
  };
}
