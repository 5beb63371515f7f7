// One writer per output directory: `quantize` holds <out>.lock (its pid) from
// before it looks at --out until it exits, so two runs into the same --out cannot
// interleave their checkpoints or their final write: the second gets a clear
// error. A lock whose process is gone (killed with SIGKILL, power loss) is stale
// and taken over, which is what `--resume` after a crash needs.
//
// The lock appears complete or not at all: the pid is written to a private temp
// file which is then hard-linked to <out>.lock (link fails with EEXIST when the lock
// exists, atomically). A lock created with open(O_EXCL) and then written is empty
// for a moment, and a second run reading it then would take it for stale.
import { linkSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { QuantformError } from '../errors.js';
import { processAlive, removeStaleTemps, tempSibling } from '../io/atomic.js';

/** Takes the lock of `out` or throws QF_IO naming the process that holds it; returns the release. */
export function lockOutput(out: string): () => void {
  const lock = `${out}.lock`;
  const mine = String(process.pid);
  // temp names a killed run's leftovers are recognised by (and removed on the next run)
  removeStaleTemps(lock);
  const temp = tempSibling(lock);
  const cannot = (what: string, e: unknown) => new QuantformError('QF_IO', `Cannot ${what} ${lock}: ${(e as Error).message}`, { cause: e });
  const create = (): boolean => {
    try {
      writeFileSync(temp, mine);
      linkSync(temp, lock);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw cannot('create', e);
    } finally {
      rmSync(temp, { force: true });
    }
  };
  const read = (file: string): string => {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch {
      return '';  // removed by its owner in between
    }
  };
  const busy = (holder: string) =>
    new QuantformError('QF_IO', `Another quantize (pid ${holder}) is writing ${out}: wait for it to end or choose another --out ` +
      `(if no such process runs, remove ${lock})`);
  if (!create()) {
    const holder = read(lock);
    // our own pid in it is a killed run's whose pid this process reuses (a container's runs often
    // get the same pid): stale too
    if (holder !== mine && processAlive(Number(holder))) throw busy(holder);
    // stale: move it aside under a name of our own, then check that what moved is the
    // stale lock and not one another run has just taken over (put that one back)
    const aside = tempSibling(lock);
    try {
      renameSync(lock, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw cannot('take over', e);
    }
    const moved = read(aside);
    if (moved !== '' && moved !== holder && processAlive(Number(moved))) {
      try {
        linkSync(aside, lock);
      } catch {
        // a third run holds it now; either way it is not ours
      }
      rmSync(aside, { force: true });
      throw busy(moved);
    }
    rmSync(aside, { force: true });
    if (!create()) throw busy(read(lock) || 'unknown');  // another run took over the stale lock first
  }
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    if (read(lock) === mine) rmSync(lock, { force: true });
  };
}
