// Fuzzing in every CI run: a fixed set of seeded mutations per parser of untrusted
// input (test/fuzz/formats.ts) and random calls of every native export
// (test/fuzz/napi.ts), each case in a child with a memory cap and a timeout. Every
// case must end in success or a QuantformError with an expected code: never a
// crash, a hang, an uncoded exception or a header-sized allocation. The committed
// regression inputs (test/fuzz/regressions/, written by `npm run fuzz`) replay too.
// QF_FUZZ_CASES scales the per-format count (default 300; napi gets 5x, its cases are cheap).
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FORMATS } from './fuzz/formats.js';
import { isFailure, runCases, summarize } from './fuzz/harness.js';
import type { CaseResult, CaseSpec } from './fuzz/protocol.js';
import { napiTargets, untemplated } from './fuzz/napi.js';
import { native } from '../lib/native.js';

const CASES = Number(process.env.QF_FUZZ_CASES ?? 300);
// fixed seeds: a CI failure reproduces with `npm run fuzz -- --formats <f> --seed <s> --cases 1`
const SEED = 1_000_000;

function report(name: string, results: CaseResult[]): void {
  const s = summarize(results).get(name)!;
  const errs = Object.entries(s.errors).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${n} ${c}`).join(', ');
  console.log(`fuzz ${name}: ${s.cases} cases, ${s.ok} accepted, ${errs}; ${s.failures.length} failures`);
}

function expectClean(results: CaseResult[]): void {
  const bad = results.filter((r) => isFailure(r) || r.outcome === 'uncoded');
  expect(bad.map((r) => `seed ${r.seed}: ${r.outcome} ${r.code ?? ''} [${r.mutation}] ${r.detail ?? ''}`.slice(0, 600))).toEqual([]);
}

describe('fuzz: parsers of untrusted input', () => {
  for (const f of FORMATS)
    it(`${f.name}: ${CASES} mutated inputs through ${f.entry}`, async () => {
      const cases: CaseSpec[] = Array.from({ length: CASES }, (_, i) => ({ id: i, format: f.name, seed: SEED + i }));
      const results = await runCases(cases);
      report(f.name, results);
      expect(results.length).toBe(CASES);
      expectClean(results);
      // the suite must reach past the first check: some inputs load, most are refused for a reason
      expect(results.some((r) => r.outcome === 'ok'), 'no mutated input was accepted: the base inputs are broken').toBe(true);
      expect(results.some((r) => r.outcome === 'error')).toBe(true);
    }, 600_000);

  const dir = path.join(process.cwd(), 'test', 'fuzz', 'regressions');
  const stored = readdirSync(dir).filter((f) => f.endsWith('.json'));
  it.skipIf(stored.length === 0)(`regressions: ${stored.length} stored inputs replay cleanly`, async () => {
    const cases: CaseSpec[] = stored.map((f, i) => ({ id: i, format: f.replace(/-\d+\.json$/, ''), seed: Number(/-(\d+)\.json$/.exec(f)?.[1] ?? 0), replay: path.join(dir, f) }));
    const results = await runCases(cases);
    expectClean(results);
  }, 600_000);
});

describe('fuzz: the N-API boundary', () => {
  it('enumerates every export at run time (functions added later are covered)', () => {
    const targets = napiTargets();
    console.log(`napi targets (${targets.length}): ${targets.join(', ')}`);
    const bare = untemplated();
    if (bare.length) console.log(`napi targets without a valid-call template (random arguments only): ${bare.join(', ')}`);
    for (const t of ['quantize', 'matmul', 'new LlamaModel', 'LlamaModel#forward', 'LlamaModel#setWeightsFromFile', 'engine.gemm', 'engine.blockBackward',
      'engine.lmHeadLoss', 'io.readTensor', 'new io.SpillBuffer', 'io.SpillBuffer#read', 'gptqQuantize', 'quantLinearBackward']) expect(targets).toContain(t);
    // every engine op of the native list is a target: the binder registers them all
    for (const op of native().engine.ops()) expect(targets).toContain(`engine.${op}`);
  });

  it(`${CASES * 5} random calls: every inconsistent one is rejected with a coded error, none crashes`, async () => {
    const n = CASES * 5;
    const cases: CaseSpec[] = Array.from({ length: n }, (_, i) => ({ id: i, format: 'napi', seed: SEED + i }));
    const results = await runCases(cases, { timeoutMs: 20_000 });
    report('napi', results);
    expectClean(results);
    expect(results.filter((r) => r.outcome === 'error').length).toBeGreaterThan(n / 2);
  }, 600_000);
});
