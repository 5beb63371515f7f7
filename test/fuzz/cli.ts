// npm run fuzz -- [--minutes N | --cases N] [--formats a,b] [--seed S] [--no-save]
// (QF_FUZZ_TARGETS=name,prefix restricts the napi format to some exports)
// The soak run: fresh seeds per format, round-robin, until the time is up (or a
// fixed number of cases). Every failing input is written to
// test/fuzz/regressions/<format>-<seed>.json (files base64, with the mutation), which
// the CI suite replays on every run. Exit code 1 when anything failed.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FORMATS, format } from './formats.js';
import { isFailure, runCases, summarize } from './harness.js';
import type { CaseResult, CaseSpec } from './protocol.js';

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const minutes = Number(opt('minutes') ?? 0);
const perFormat = Number(opt('cases') ?? (minutes > 0 ? Infinity : 200));
const names = opt('formats')?.split(',') ?? [...FORMATS.map((f) => f.name), 'napi'];
const seed0 = Number(opt('seed') ?? Date.now() % 1_000_000_000);
const save = !argv.includes('--no-save');
const regressions = path.resolve('test/fuzz/regressions');

async function saveRegression(r: CaseResult): Promise<string | null> {
  if (r.format === 'napi') return null;  // the seed reproduces it: napi cases have no input files
  const input = await format(r.format).generate(r.seed);
  mkdirSync(regressions, { recursive: true });
  const file = path.join(regressions, `${r.format}-${r.seed}.json`);
  const files: Record<string, string> = {};
  for (const [n, b] of input.files) files[n] = b.toString('base64');
  writeFileSync(file, JSON.stringify({ format: r.format, seed: r.seed, mutation: input.mutation, outcome: r.outcome, detail: r.detail, files }, null, 1) + '\n');
  return file;
}

async function main(): Promise<void> {
  const t0 = Date.now();
  const deadline = minutes > 0 ? t0 + minutes * 60_000 : Infinity;
  const all: CaseResult[] = [];
  let id = 0, round = 0;
  const batch = minutes > 0 ? 50 : perFormat;
  console.log(`fuzz: formats ${names.join(', ')}; seed base ${seed0}; ${minutes > 0 ? `${minutes} min` : `${perFormat} cases each`}`);
  while (Date.now() < deadline && round * batch < perFormat) {
    for (const name of names) {
      const cases: CaseSpec[] = Array.from({ length: Math.min(batch, perFormat - round * batch) }, (_, i) => ({ id: id++, format: name, seed: seed0 + round * batch + i }));
      const res = await runCases(cases, { onResult: (r) => { if (isFailure(r) || r.outcome === 'uncoded') console.log(`FAIL ${r.format} seed ${r.seed}: ${r.outcome} ${r.code ?? ''} ${r.mutation ?? ''}\n  ${r.detail ?? ''}`); } });
      all.push(...res);
      if (Date.now() >= deadline) break;
    }
    round++;
  }
  const sum = summarize(all);
  let failed = 0;
  for (const [name, s] of sum) {
    const bad = s.failures.length + (s.errors.uncoded ?? 0);
    failed += s.failures.length;
    console.log(`${name.padEnd(20)} ${String(s.cases).padStart(6)} cases: ${s.ok} ok, ${Object.entries(s.errors).map(([c, n]) => `${n} ${c}`).join(', ')}; ${bad ? `${s.failures.length} FAILED` : 'no failures'}`);
  }
  const failures = all.filter((r) => isFailure(r) || r.outcome === 'uncoded');
  failed = failures.length;
  if (save) for (const r of failures) { const f = await saveRegression(r); if (f) console.log(`saved ${f}`); }
  console.log(`${all.length} cases in ${((Date.now() - t0) / 1000).toFixed(0)} s, ${failed} failed`);
  process.exitCode = failed > 0 ? 1 : 0;
}

await main();
