// A worker_thread of test/concurrency.test.ts: loads quantform in its own
// environment (its own instance of the addon module), runs the op set of the
// variant it is given, sync and async, and posts the digests.
import { parentPort, workerData } from 'node:worker_threads';
import { digest, opCases } from '../helpers/op-set.js';

const { variant } = workerData as { variant: number };
const out: Record<string, { sync: string; async: string }> = {};
for (const c of opCases(variant)) {
  const s = digest(await c.sync());
  const a = digest(await c.async());
  out[c.name] = { sync: s, async: a };
}
parentPort!.postMessage(out);
