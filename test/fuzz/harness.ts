// The parent side of the fuzz suites: runs seeded cases in a child process (the
// bundled test/fuzz/child.ts) with a memory cap, a timeout per case and crash
// isolation. A child that dies, hangs or grows its peak RSS past the cap is
// recorded against the case it was running (with its seed), killed, and replaced
// by a fresh one that continues with the next case.
import { spawn, type ChildProcess } from 'node:child_process';
import { bundleChild } from '../helpers/child.js';
import type { CaseResult, CaseSpec } from './protocol.js';

export interface HarnessOptions {
  /** per-case wall-clock limit */
  timeoutMs?: number;
  /** peak RSS growth above the child's first-case baseline that counts as a header-driven allocation */
  rssCapMb?: number;
  /** address-space limit of the child (ulimit -v), MB; 0 disables (required under ASan) */
  addressSpaceMb?: number;
  env?: Record<string, string>;
  onResult?: (r: CaseResult) => void;
}

export type Failure = CaseResult & { kind: 'crash' | 'hang' | 'memory' | 'uncoded' };

interface Live {
  proc: ChildProcess;
  stderr: string;
  baselineKb: number | null;
}

const underAsan = () => (process.env.LD_PRELOAD ?? '').includes('asan');

/** Runs `cases` in order; returns every result (failures included). */
export async function runCases(cases: CaseSpec[], o: HarnessOptions = {}): Promise<CaseResult[]> {
  const timeoutMs = o.timeoutMs ?? 10_000;
  // ASan keeps freed memory in quarantine (256 MB by default): peaks mean little there
  const rssCapKb = (o.rssCapMb ?? (underAsan() ? 2048 : 256)) * 1024;
  const asMb = underAsan() ? 0 : (o.addressSpaceMb ?? 3072);
  const entry = bundleChild('test/fuzz/child.ts');
  const results: CaseResult[] = [];
  let live: Live | null = null;

  const start = (): Live => {
    // ulimit -v through a shell that execs node: the IPC channel fd and env pass through
    const cmd = asMb > 0 ? `ulimit -v ${asMb * 1024} && exec "$0" "$@"` : 'exec "$0" "$@"';
    const proc = spawn('/bin/sh', ['-c', cmd, process.execPath, '--max-old-space-size=512', entry], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: { ...process.env, ...o.env },
    });
    const l: Live = { proc, stderr: '', baselineKb: null };
    proc.stderr!.on('data', (d: Buffer) => { l.stderr = (l.stderr + d.toString()).slice(-4000); });
    return l;
  };

  const runOne = (l: Live, c: CaseSpec): Promise<CaseResult> => new Promise((resolve) => {
    let done = false;
    const finish = (r: CaseResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      l.proc.off('message', onMessage);
      l.proc.off('exit', onExit);
      resolve(r);
    };
    const onMessage = (m: CaseResult) => {
      if (m.id !== c.id) return;
      if (l.baselineKb === null) l.baselineKb = m.maxRssKb ?? 0;
      else if ((m.maxRssKb ?? 0) - l.baselineKb > rssCapKb)
        return finish({ ...m, outcome: 'memory', detail: `peak RSS grew by ${(((m.maxRssKb ?? 0) - l.baselineKb) / 1024).toFixed(0)} MB (${m.detail ?? ''})` });
      finish(m);
    };
    const onExit = (code: number | null, signal: string | null) =>
      finish({ id: c.id, format: c.format, seed: c.seed, outcome: 'crash', detail: `child exited (code ${code}, signal ${signal}): ${l.stderr.slice(-1500)}` });
    const timer = setTimeout(() => {
      l.proc.kill('SIGKILL');
      finish({ id: c.id, format: c.format, seed: c.seed, outcome: 'hang', detail: `no result after ${timeoutMs} ms` });
    }, timeoutMs);
    l.proc.on('message', onMessage);
    l.proc.once('exit', onExit);
    l.proc.send(c);
  });

  try {
    for (const c of cases) {
      if (!live || live.proc.exitCode !== null || live.proc.signalCode !== null) live = start();
      const r = await runOne(live, c);
      results.push(r);
      o.onResult?.(r);
      if (r.outcome === 'crash' || r.outcome === 'hang' || r.outcome === 'memory') {
        live.proc.kill('SIGKILL');
        live = null;
      }
    }
  } finally {
    if (live) {
      live.proc.disconnect?.();
      live.proc.kill('SIGKILL');
    }
  }
  return results;
}

/** Outcomes that fail a fuzz run: anything but success or a coded, expected QuantformError. */
export function isFailure(r: CaseResult): boolean {
  return r.outcome !== 'ok' && r.outcome !== 'error';
}

/** counts per format: { ok, error (by code), failures } */
export function summarize(results: CaseResult[]): Map<string, { cases: number; ok: number; errors: Record<string, number>; failures: CaseResult[] }> {
  const m = new Map<string, { cases: number; ok: number; errors: Record<string, number>; failures: CaseResult[] }>();
  for (const r of results) {
    const s = m.get(r.format) ?? { cases: 0, ok: 0, errors: {}, failures: [] };
    s.cases++;
    if (r.outcome === 'ok') s.ok++;
    else if (r.outcome === 'error') s.errors[r.code ?? '?'] = (s.errors[r.code ?? '?'] ?? 0) + 1;
    else s.failures.push(r);
    m.set(r.format, s);
  }
  return m;
}
