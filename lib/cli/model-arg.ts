// --model handling shared by the model commands: a path, or the built-in synthetic model.
import { loadModel, type LoadOptions, type Model } from '../model/model.js';

export async function modelFromArgs(opts: { model?: string; tokenizer?: string }, load: LoadOptions = {}): Promise<Model> {
  if (!opts.model) {
    process.stderr.write('No --model given: using the built-in synthetic Llama (random weights, byte tokenizer).\n');
    return loadModel({ synthetic: { seed: 0 } }, load);
  }
  return loadModel(opts.model, { ...load, tokenizer: opts.tokenizer });
}

export function intOption(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`Expected an integer but received '${v}'`);
  return n;
}
