// Native code never terminates the process: with QUANTFORM_FAULT_ALLOC the addon's
// allocations fail on demand, and every allocation of every op family (quant,
// matmul, model forward, model loading and streaming RTN, the engine's ops and block
// step, GPTQ, the quantized-linear backward, checkpoint reads and the activation
// store, sync and async,
// on the calling thread, the pool's workers and libuv's) must end in a
// QuantformError QF_OUT_OF_MEMORY, after which the same call gives the reference
// result bit for bit. The ops run in a child process: a broken boundary aborts it,
// not the test runner. QF_FAULT_POINTS=n samples n allocations per op (the sanitizer
// step's budget) instead of all of them.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { native, packageRoot } from '../lib/native.js';
import { lastJson, runChild } from './helpers/child.js';

interface Report {
  name: string;
  family: string;
  mode: string;
  allocations: number;
  tried: number;
  cleanFailures: number;
  unaffected: number;
  bad: string[];
}

const addon = process.env.QUANTFORM_ADDON ?? path.join(packageRoot(), 'build', 'Release', 'quantform.node');
const hasNm = (() => {
  try {
    execFileSync('nm', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('fault injection', () => {
  it('is off unless QUANTFORM_FAULT_ALLOC is set at load: no faultAlloc export', () => {
    expect(process.env.QUANTFORM_FAULT_ALLOC).toBeUndefined();
    expect(native().faultAlloc).toBeUndefined();
  });

  it.skipIf(!hasNm || !existsSync(addon))('the replaced operator new stays inside the addon (local symbols only)', () => {
    // the dynamic symbol table decides interposition; the full one (absent from a --strip build) shows the local copies
    const all = execFileSync('nm', [addon], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const news = all.split('\n').filter((l) => / _Znwm$| _Znam$| _ZdlPv$/.test(l));
    if (all.trim().length > 0) {
      expect(news.length).toBe(3);
      for (const l of news) expect(l, l).toMatch(/ t /);
    }
    const dyn = execFileSync('nm', ['-D', '--defined-only', addon], { encoding: 'utf8' });
    expect(dyn).not.toMatch(/_Znwm|_ZdlPv/);
  });

  it('every allocation of every op family fails cleanly, sync and async, and the next call is exact', () => {
    const r = runChild('test/children/fault-injection.ts', { args: [process.env.QF_FAULT_POINTS ?? 'all'], env: { QUANTFORM_FAULT_ALLOC: '0' }, timeoutMs: 300_000 });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const { reports } = lastJson<{ reports: Report[] }>(r.stdout);
    const lines = reports.map((x) => `${x.family.padEnd(6)} ${x.mode.padEnd(5)} ${x.name.padEnd(58)} ${String(x.allocations).padStart(5)} allocations, ` +
      `${x.cleanFailures} failed cleanly, ${x.unaffected} unaffected`);
    const total = reports.reduce((s, x) => s + x.cleanFailures, 0);
    console.log(`fault injection: ${total} allocation points failed cleanly in ${reports.length} ops\n${lines.join('\n')}`);
    for (const family of ['quant', 'matmul', 'model', 'loader', 'train', 'engine', 'gptq', 'qlinear', 'io']) expect(reports.some((x) => x.family === family)).toBe(true);
    for (const mode of ['sync', 'async']) expect(reports.some((x) => x.mode === mode)).toBe(true);
    for (const x of reports) {
      expect(x.bad, `${x.name}: ${x.bad.join('; ')}`).toEqual([]);
      expect(x.allocations, x.name).toBeGreaterThan(0);
      // most points must really fail: one-time allocations (a thread's scratch) may be absent on a later call
      expect(x.cleanFailures, x.name).toBeGreaterThanOrEqual(Math.ceil(x.tried * 0.9));
    }
  });

  it('QUANTFORM_FAULT_ALLOC=N fails the N-th allocation after load: loading or the first call fails cleanly', () => {
    // the first ~55 allocations land in module registration (the load fails with QF_NATIVE_LOAD), the next in the first ops
    for (const n of [1, 10, 30, 50, 54, 56, 58, 60, 62, 64, 100]) {
      const r = runChild('test/children/first-call.ts', { env: { QUANTFORM_FAULT_ALLOC: String(n) }, timeoutMs: 60_000 });
      expect(r.signal, `N=${n}: ${r.stderr}`).toBeNull();
      expect(r.status, `N=${n}: ${r.stderr}`).toBe(0);
      const out = lastJson<{ outcome: string; code?: string; recovered: boolean }>(r.stdout);
      expect(['ok', 'error'], `N=${n}`).toContain(out.outcome);
      if (out.outcome === 'error') expect(['QF_NATIVE_LOAD', 'QF_OUT_OF_MEMORY'], `N=${n}`).toContain(out.code);
      expect(out.recovered, `N=${n}: a later call gives the right result`).toBe(true);
    }
  });
});
