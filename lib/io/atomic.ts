// The one way quantform writes outputs: nothing appears under its final name until
// it is complete. A file is written as a hidden temp file in the same directory,
// fsynced and renamed; a directory (a checkpoint with shards, config, tokenizer)
// is built as a hidden temp directory next to its destination and renamed at the
// end. Temp paths still registered when the process exits (an error that skipped
// the cleanup, process.exit from a second Ctrl-C) are removed by an exit hook.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { QuantformError, invalidParameter, need } from '../errors.js';

const live = new Set<string>();
let hooked = false;

function track(p: string): void {
  live.add(p);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const q of live) rmSync(q, { recursive: true, force: true });
    });
  }
}

/** A hidden sibling of `dest` that no other process or run can collide with. */
export function tempSibling(dest: string): string {
  return path.join(path.dirname(dest), `.${path.basename(dest)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Milliseconds this process has spent in AtomicFile writes and fsyncs: a run's
 * report takes the difference across it (benchmarks separate I/O from compute).
 */
export const writeTiming = { ms: 0 };

/** Whether process `pid` exists (EPERM: it does, owned by another user). */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temp siblings of `dest` whose writer is gone: a SIGKILL (or power
 * loss) skips the exit hook, and a killed quantize would otherwise leave a
 * half-written checkpoint or output directory behind on every retry.
 */
export function removeStaleTemps(dest: string): void {
  const dir = path.dirname(dest), prefix = `.${path.basename(dest)}.`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+)\.[0-9a-f]{8}\.tmp$/.exec(n.slice(prefix.length));
    if (!m) continue;
    const p = path.join(dir, n), pid = Number(m[1]);
    // with this process's pid but not one of its own temps: a killed run's whose pid was reused (containers)
    const mine = () => [...live].some((q) => path.resolve(q) === path.resolve(p));
    if (pid === process.pid ? !mine() : !processAlive(pid)) rmSync(p, { recursive: true, force: true });
  }
}

function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

/**
 * A file written in place (positional writes allowed) under a temp name, renamed
 * onto `dest` by commit(); abort() (or an error before commit) leaves no trace.
 */
export class AtomicFile {
  readonly dest: string;
  /** the temp file being written */
  readonly path: string;
  private fd: number | null;

  constructor(dest: string) {
    need.string(dest, 'dest');
    this.dest = dest;
    removeStaleTemps(dest);
    this.path = tempSibling(dest);
    try {
      this.fd = openSync(this.path, 'w');
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot create ${this.path}: ${(e as Error).message}`, { cause: e });
    }
    track(this.path);
  }

  /** Writes `data` at byte `position`, or appends when position is omitted. */
  write(data: Uint8Array, position?: number): void {
    if (this.fd === null) throw new QuantformError('QF_IO', `${this.dest} was already committed or aborted`);
    const t0 = performance.now();
    try {
      if (position === undefined) writeAll(this.fd, data);
      else {
        let off = 0;
        while (off < data.length) off += writeSync(this.fd, data, off, data.length - off, position + off);
      }
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot write ${this.dest} (temp ${this.path}): ${(e as Error).message}`, { cause: e });
    } finally {
      writeTiming.ms += performance.now() - t0;
    }
  }

  /** fsync, close and rename onto the destination. */
  commit(): void {
    if (this.fd === null) throw new QuantformError('QF_IO', `${this.dest} was already committed or aborted`);
    const t0 = performance.now();
    try {
      fsyncSync(this.fd);
      writeTiming.ms += performance.now() - t0;
      closeSync(this.fd);
      this.fd = null;
      renameSync(this.path, this.dest);
      live.delete(this.path);
    } catch (e) {
      this.abort();
      throw new QuantformError('QF_IO', `Cannot complete ${this.dest}: ${(e as Error).message}`, { cause: e });
    }
  }

  abort(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    rmSync(this.path, { force: true });
    live.delete(this.path);
  }
}

/** Writes a whole file atomically. */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  need.string(file, 'file');
  if (typeof data !== 'string' && !(data instanceof Uint8Array)) throw invalidParameter('string or Uint8Array', 'data', data);
  const f = new AtomicFile(file);
  try {
    f.write(typeof data === 'string' ? Buffer.from(data) : data);
    f.commit();
  } catch (e) {
    f.abort();
    throw e;
  }
}

/**
 * An output directory built under a temp name next to `dest` and renamed onto it
 * by commit(); `dest` must not exist (outputs are never overwritten).
 */
export class AtomicDir {
  readonly dest: string;
  /** the temp directory being filled */
  readonly path: string;
  private done = false;

  constructor(dest: string) {
    need.string(dest, 'dest');
    this.dest = path.resolve(dest);
    if (existsSync(this.dest)) throw new QuantformError('QF_IO', `Output directory ${this.dest} already exists: choose another --out or remove it`);
    removeStaleTemps(this.dest);
    this.path = tempSibling(this.dest);
    try {
      mkdirSync(this.path, { recursive: true });
    } catch (e) {
      throw new QuantformError('QF_IO', `Cannot create ${this.path}: ${(e as Error).message}`, { cause: e });
    }
    track(this.path);
  }

  /** A path inside the temp directory. */
  file(name: string): string {
    return path.join(this.path, name);
  }

  commit(): void {
    if (this.done) throw new QuantformError('QF_IO', `${this.dest} was already committed or aborted`);
    if (existsSync(this.dest)) {
      this.abort();
      throw new QuantformError('QF_IO', `Output directory ${this.dest} appeared while it was being written: nothing was overwritten`);
    }
    try {
      renameSync(this.path, this.dest);
    } catch (e) {
      this.abort();
      throw new QuantformError('QF_IO', `Cannot move ${this.path} to ${this.dest}: ${(e as Error).message}`, { cause: e });
    }
    this.done = true;
    live.delete(this.path);
  }

  abort(): void {
    this.done = true;
    rmSync(this.path, { recursive: true, force: true });
    live.delete(this.path);
  }
}
