// Child processes for tests whose failure could be fatal (a crash, an abort, a
// hang): the child's TypeScript entry is bundled with esbuild from the current
// sources (so it never runs a stale dist/), then run by node with its own limits.
// The bundle lives under <root>/.cache/test-child/, where lib/native.ts finds the
// package root and the addon as it does from dist/.
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildSync } from 'esbuild';
import { packageRoot } from '../../lib/native.js';

const built = new Map<string, string>();

/** Bundles test/<entry>.ts once per test process; returns the .mjs path. */
export function bundleChild(entry: string): string {
  const cached = built.get(entry);
  if (cached) return cached;
  const root = packageRoot();
  const dir = path.join(root, '.cache', 'test-child');
  mkdirSync(dir, { recursive: true });
  const out = path.join(dir, entry.replace(/^test\//, '').replace(/\.ts$/, '').replace(/[\\/]/g, '-') + '.mjs');
  const r = buildSync({
    entryPoints: [path.join(root, entry)], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node20',
    packages: 'external', sourcemap: 'inline', logLevel: 'error', write: false,
  });
  // temp + rename: test processes running side by side never load half a bundle
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, r.outputFiles[0].contents);
  renameSync(tmp, out);
  built.set(entry, out);
  return out;
}

export interface ChildOptions {
  args?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
  /** node flags, e.g. --max-old-space-size=256 */
  nodeArgs?: string[];
  input?: string;
}

/** Runs a bundled child to completion (sync). */
export function runChild(entry: string, o: ChildOptions = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [...(o.nodeArgs ?? []), bundleChild(entry), ...(o.args ?? [])], {
    encoding: 'utf8', env: { ...process.env, ...o.env }, timeout: o.timeoutMs ?? 120_000, input: o.input,
    maxBuffer: 64 << 20, killSignal: 'SIGKILL',
  });
}

/** Starts a bundled child (async), for tests that kill it at chosen moments. */
export function startChild(entry: string, o: ChildOptions = {}) {
  return spawn(process.execPath, [...(o.nodeArgs ?? []), bundleChild(entry), ...(o.args ?? [])], {
    env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The last line of stdout that parses as JSON (children report one result object). */
export function lastJson<T>(stdout: string): T {
  const lines = stdout.trim().split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      return JSON.parse(lines[i]) as T;
    } catch {
      // progress or log line
    }
  }
  throw new Error(`child printed no JSON result:\n${stdout.slice(-2000)}`);
}
