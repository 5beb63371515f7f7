// The fuzz child: receives CaseSpecs over IPC, builds each input (or replays a
// stored one) in a fresh directory, calls the suite's public entry point and
// reports the outcome with its peak RSS. Crashes and hangs are the parent's to see.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { QuantformError } from '../../lib/index.js';
import { format } from './formats.js';
import { napiCase } from './napi.js';
import { EXPECTED_CODES, type CaseResult, type CaseSpec } from './protocol.js';

const work = path.join(tmpdir(), `qf-fuzz-${process.pid}`);
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

function classify(e: unknown): Pick<CaseResult, 'outcome' | 'code' | 'detail'> {
  if (e instanceof QuantformError) {
    if (EXPECTED_CODES.has(e.code)) return { outcome: 'error', code: e.code, detail: e.message.slice(0, 300) };
    return { outcome: 'uncoded', code: e.code, detail: e.message.slice(0, 500) };
  }
  const err = e as Error;
  return { outcome: 'uncoded', code: err?.constructor?.name ?? typeof e, detail: `${String(err?.message ?? e).slice(0, 400)}\n${String(err?.stack ?? '').split('\n').slice(1, 6).join('\n')}` };
}

async function runCase(c: CaseSpec): Promise<CaseResult> {
  const t0 = performance.now();
  if (c.format === 'napi') {
    const r = await napiCase(c.seed);
    return { id: c.id, format: c.format, seed: c.seed, ms: performance.now() - t0, ...r };
  }
  const f = format(c.format);
  const dir = path.join(work, String(c.id));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  let mutation: string;
  if (c.replay) {
    const stored = JSON.parse(readFileSync(c.replay, 'utf8')) as { mutation: string; files: Record<string, string> };
    for (const [name, b64] of Object.entries(stored.files)) writeFileSync(path.join(dir, name), Buffer.from(b64, 'base64'));
    mutation = `replay ${path.basename(c.replay)}: ${stored.mutation}`;
  } else {
    const input = await f.generate(c.seed);
    for (const [name, bytes] of input.files) writeFileSync(path.join(dir, name), bytes);
    mutation = input.mutation;
  }
  let r: Pick<CaseResult, 'outcome' | 'code' | 'detail'>;
  try {
    await f.run(dir);
    r = { outcome: 'ok' };
  } catch (e) {
    r = classify(e);
  }
  rmSync(dir, { recursive: true, force: true });
  return { id: c.id, format: c.format, seed: c.seed, mutation, ms: performance.now() - t0, ...r };
}

process.on('message', (c: CaseSpec) => {
  runCase(c).then((r) => {
    process.send!({ ...r, maxRssKb: process.resourceUsage().maxRSS });
  }, (e) => {
    process.send!({ id: c.id, format: c.format, seed: c.seed, ...classify(e), detail: `harness: ${String((e as Error)?.stack ?? e)}` });
  });
});
