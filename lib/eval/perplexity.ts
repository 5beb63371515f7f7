// Next-token perplexity with llama2.c's windowing (data/reference/*.json):
// windows of ctx + 1 ids, `stride` apart; each window runs from position 0 with an
// empty KV cache. With stride == ctx every id but the first is predicted exactly
// once; with stride < ctx only the last `stride` predictions of each window after
// the first are scored (the usual sliding-window protocol). NLL = logsumexp - logit
// of the target, accumulated in double.
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { Model } from '../model/model.js';

export interface PerplexityOptions {
  /** tokens fed per window (default 256) */
  ctx?: number;
  /** distance between window starts (default ctx) */
  stride?: number;
  /** score at most this many predictions (keeps the first maxTokens + 1 ids) */
  maxTokens?: number;
  /** windows per native forward call (default 8) */
  batch?: number;
  /** how text is split into documents before encoding (default 'auto') */
  documents?: 'auto' | 'single' | 'endoftext';
}

export interface PerplexityProgress {
  windowsDone: number;
  windows: number;
  tokensDone: number;
  tokens: number;
}

export interface PerplexityResult {
  meanNll: number;
  ppl: number;
  nPredicted: number;
  nIds: number;
  windows: number;
  perWindowMeanNll: number[];
  seconds: number;
  tokensPerSecond: number;
}

const END_OF_TEXT = '<|endoftext|>';

/**
 * Token ids of an evaluation text, as the reference protocol encodes it: CRLF -> LF; a
 * text with <|endoftext|> markers is split into stories (each trimmed, empty ones dropped)
 * encoded separately with BOS and concatenated; any other text is one sequence with BOS.
 */
export function encodeEvalText(model: Model, text: string, documents: PerplexityOptions['documents'] = 'auto', maxIds = Infinity): number[] {
  need.instance(model, Model, 'model');
  if (!is.string(text)) throw invalidParameter('string', 'text', text);
  if (!is.oneOf(documents, ['auto', 'endoftext', 'single'] as const)) throw invalidParameter("'auto', 'endoftext' or 'single'", 'documents', documents);
  if (!(maxIds === Infinity || is.positiveInteger(maxIds))) throw invalidParameter('positive integer', 'maxIds', maxIds);
  const t = text.replace(/\r\n/g, '\n');
  const split = documents === 'endoftext' || (documents !== 'single' && t.includes(END_OF_TEXT));
  if (!split) return model.tokenizer.encode(t, { bos: true });
  const ids: number[] = [];
  for (const story of t.split(END_OF_TEXT)) {
    // stories are encoded independently, so stopping early gives the same prefix
    if (ids.length >= maxIds) break;
    const s = story.trim();
    if (s.length > 0) for (const id of model.tokenizer.encode(s, { bos: true })) ids.push(id);
  }
  return ids;
}

function logSoftmaxNll(logits: Float32Array, offset: number, V: number, target: number): number {
  let mx = -Infinity;
  for (let v = 0; v < V; v++) if (logits[offset + v] > mx) mx = logits[offset + v];
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(logits[offset + v] - mx);
  return mx + Math.log(sum) - logits[offset + target];
}

export async function evaluatePerplexity(
  model: Model,
  input: string | { ids: readonly number[] },
  opts: PerplexityOptions = {},
  hooks: { onProgress?: (p: PerplexityProgress) => void } = {},
): Promise<PerplexityResult> {
  need.instance(model, Model, 'model');
  if (!is.string(input) && !(is.object(input) && Array.isArray(input.ids) && input.ids.every((i) => Number.isInteger(i))))
    throw invalidParameter('text or { ids: integer[] }', 'input', input);
  need.object(opts, 'options');
  need.object(hooks, 'hooks');
  const ctx = opts.ctx ?? 256;
  const stride = opts.stride ?? ctx;
  const batch = opts.batch ?? 8;
  if (!is.positiveInteger(ctx) || ctx > model.maxSeq) throw invalidParameter(`integer in [1, ${model.maxSeq}]`, 'ctx', ctx);
  if (!is.positiveInteger(stride) || stride > ctx) throw invalidParameter(`integer in [1, ctx = ${ctx}]`, 'stride', stride);
  if (!is.positiveInteger(batch)) throw invalidParameter('positive integer', 'batch', batch);
  if (opts.maxTokens !== undefined && !is.positiveInteger(opts.maxTokens)) throw invalidParameter('positive integer', 'maxTokens', opts.maxTokens);
  const maxIds = opts.maxTokens !== undefined ? opts.maxTokens + 1 : Infinity;
  let ids = typeof input === 'string' ? encodeEvalText(model, input, opts.documents, maxIds) : [...input.ids];
  if (opts.maxTokens !== undefined) ids = ids.slice(0, opts.maxTokens + 1);
  if (ids.length < 2) throw invalidParameter('text of at least 2 tokens', 'text', `${ids.length} token(s)`);
  // window w covers ids[w*stride, w*stride + len]; the last one may be shorter
  const starts: number[] = [];
  for (let s = 0; ; s += stride) {
    starts.push(s);
    if (s + ctx + 1 >= ids.length) break;
  }
  const perWindow: number[] = [];
  let sum = 0, count = 0, tokensDone = 0;
  const t0 = performance.now();
  for (let w0 = 0; w0 < starts.length; w0 += batch) {
    // equal-length windows share one batched call; a shorter tail window runs alone
    const group: number[] = [];
    const len = (s: number) => Math.min(ctx, ids.length - 1 - s);
    for (let w = w0; w < Math.min(starts.length, w0 + batch); w++) {
      if (group.length > 0 && len(starts[w]) !== len(starts[group[0]])) break;
      group.push(w);
    }
    const T = len(starts[group[0]]);
    const rows = group.map((w) => ids.slice(starts[w], starts[w] + T));
    const { logits, V } = await model.forwardAsync(rows);
    group.forEach((w, b) => {
      const s = starts[w];
      // predictions already scored by the previous window are skipped
      const first = w === 0 ? 0 : Math.max(0, starts[w - 1] + ctx - s);
      let ws = 0;
      for (let t = first; t < T; t++) ws += logSoftmaxNll(logits, (b * T + t) * V, V, ids[s + t + 1]);
      if (!Number.isFinite(ws))
        throw new QuantformError('QF_NON_FINITE', `Window ${w} (ids ${s}..${s + T}) has a ${ws} negative log-likelihood: the model's logits are not finite there, so there is no perplexity to report`);
      perWindow.push(ws / (T - first));
      sum += ws;
      count += T - first;
    });
    tokensDone += group.length * T;
    w0 += group.length - batch;  // the loop adds `batch`: advance by what ran
    hooks.onProgress?.({ windowsDone: perWindow.length, windows: starts.length, tokensDone, tokens: starts.length * ctx });
  }
  const seconds = (performance.now() - t0) / 1000;
  const meanNll = sum / count;
  return {
    meanNll, ppl: Math.exp(meanNll), nPredicted: count, nIds: ids.length, windows: starts.length, perWindowMeanNll: perWindow,
    seconds, tokensPerSecond: tokensDone / Math.max(seconds, 1e-9),
  };
}
