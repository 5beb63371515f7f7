// JSON from files we did not write (config.json, safetensors headers, shard
// indexes, tokenizer.json, checkpoint metadata). JSON.parse accepts any nesting, but
// the code that reads the result (error messages that print a value, the tokenizer
// library) recurses: a header of 100,000 nested arrays overflowed the stack with a
// RangeError. Documents deeper than any real one are refused here, with the file's name.
import { QuantformError } from '../errors.js';

/** Real configs, headers and tokenizer.json files nest fewer than 10 levels. */
export const MAX_JSON_DEPTH = 64;

/** JSON.parse, with syntax errors and excessive nesting as QF_CORRUPT_FILE naming `what`. */
export function parseJson(text: string, what: string): unknown {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new QuantformError('QF_CORRUPT_FILE', `${what} is not valid JSON (${(e as Error).message})`, { cause: e });
  }
  // iterative walk: the check itself must not recurse
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length > 0) {
    const [x, d] = stack.pop()!;
    if (x === null || typeof x !== 'object') continue;
    if (d > MAX_JSON_DEPTH) throw new QuantformError('QF_CORRUPT_FILE', `${what} nests deeper than ${MAX_JSON_DEPTH} levels`);
    for (const c of Array.isArray(x) ? x : Object.values(x)) if (c !== null && typeof c === 'object') stack.push([c, d + 1]);
  }
  return v;
}

/** parseJson for documents that must be a JSON object (configs, headers). */
export function parseJsonObject(text: string, what: string): Record<string, unknown> {
  const v = parseJson(text, what);
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new QuantformError('QF_CORRUPT_FILE', `${what} is not a JSON object`);
  return v as Record<string, unknown>;
}
