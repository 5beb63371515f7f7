// One writer per output directory: `quantize` holds <out>.lock (its pid, created
// with O_EXCL) from before it looks at --out until it exits, so two runs into the
// same --out cannot interleave their checkpoints or their final write: the second
// gets a clear error. A lock whose process is gone (killed with SIGKILL, power
// loss) is stale and taken over, which is what `--resume` after a crash needs.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { QuantformError } from '../errors.js';
import { processAlive } from '../io/atomic.js';

/** Takes the lock of `out` or throws QF_IO naming the process that holds it; returns the release. */
export function lockOutput(out: string): () => void {
  const lock = `${out}.lock`;
  const create = (): boolean => {
    try {
      writeFileSync(lock, String(process.pid), { flag: 'wx' });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw new QuantformError('QF_IO', `Cannot create ${lock}: ${(e as Error).message}`, { cause: e });
    }
  };
  const busy = (holder: string) =>
    new QuantformError('QF_IO', `Another quantize (pid ${holder}) is writing ${out}: wait for it to end or choose another --out ` +
      `(if no such process runs, remove ${lock})`);
  if (!create()) {
    let holder = '';
    try {
      holder = readFileSync(lock, 'utf8').trim();
    } catch {
      // removed by its owner in between: try again below
    }
    if (processAlive(Number(holder))) throw busy(holder);
    rmSync(lock, { force: true });
    if (!create()) throw busy('unknown');  // another run took over the stale lock first
  }
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    try {
      if (readFileSync(lock, 'utf8').trim() === String(process.pid)) rmSync(lock, { force: true });
    } catch {
      // already gone
    }
  };
}
