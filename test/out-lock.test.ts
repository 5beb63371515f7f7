// The one-writer lock of an output directory (lib/cli/out-lock.ts), raced by real
// processes: of several runs started at the same instant exactly one takes the
// lock and the others get a clear error naming it, a stale lock (its process gone)
// is taken over, a live one is not, and nothing is left behind.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lockOutput } from '../lib/cli/out-lock.js';
import { packageRoot } from '../lib/native.js';
import { bundleChild, lastJson } from './helpers/child.js';

mkdirSync(path.join(packageRoot(), '.cache'), { recursive: true });  // absent on a clean clone
const work = mkdtempSync(path.join(packageRoot(), '.cache', 'out-lock-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Result { got: boolean; code?: string; message?: string }
const child = (out: string, startAt: number, children: number) => new Promise<Result>((resolve, reject) => {
  const c = spawn(process.execPath, [bundleChild('test/children/out-lock.ts'), out, String(startAt), String(children)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  c.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  c.on('exit', (code) => (code === 0 ? resolve(lastJson<Result>(stdout)) : reject(new Error(`child exited ${code}: ${stderr}`))));
});

describe('the output lock', () => {
  it('6 processes at the same instant, 30 rounds: exactly one holds the lock each round, the others are told who does', async () => {
    bundleChild('test/children/out-lock.ts');
    for (let round = 0; round < 30; round++) {
      const out = path.join(work, `race-${round}`);
      // each child marks its attempt in <out>-tried/; the winner holds the lock until all 6 have tried
      mkdirSync(`${out}-tried`);
      const startAt = Date.now() + 400;  // for the children to start
      const results = await Promise.all(Array.from({ length: 6 }, () => child(out, startAt, 6)));
      rmSync(`${out}-tried`, { recursive: true });
      expect(results.filter((r) => r.got).length, `round ${round}: ${JSON.stringify(results)}`).toBe(1);
      for (const r of results.filter((x) => !x.got)) {
        expect(r.code).toBe('QF_IO');
        expect(r.message).toMatch(/^Another quantize \(pid (\d+|unknown)\) is writing .*race-\d+: wait for it to end/);
      }
      expect(readdirSync(work).filter((n) => n.includes(`race-${round}`)), 'no lock or temp file left').toEqual([]);
    }
  }, 120_000);

  it('a stale lock (its process is gone, or its pid is now ours) is taken over; a live one is refused; the release removes only its own lock', () => {
    const out = path.join(work, 'stale');
    const lock = `${out}.lock`;
    writeFileSync(lock, '2147483646');  // no such process
    const release = lockOutput(out);
    expect(readFileSync(lock, 'utf8')).toBe(String(process.pid));
    release();
    expect(existsSync(lock)).toBe(false);

    const live = process.ppid;  // a process that is alive and is not this one
    writeFileSync(lock, String(live));
    expect(() => lockOutput(out)).toThrow(new RegExp(`Another quantize \\(pid ${live}\\)`));
    expect(readFileSync(lock, 'utf8')).toBe(String(live));

    // this process's own pid: a killed run's whose pid was reused (containers): stale, not busy
    writeFileSync(lock, String(process.pid));
    lockOutput(out)();
    expect(existsSync(lock)).toBe(false);

    // an empty or garbled lock names no process: stale
    writeFileSync(lock, '');
    const r2 = lockOutput(out);
    writeFileSync(lock, String(live));  // someone else's now: releasing must not remove it
    r2();
    expect(readFileSync(lock, 'utf8')).toBe(String(live));
    rmSync(lock);
    expect(readdirSync(work).filter((n) => n.includes('stale'))).toEqual([]);
  });
});
