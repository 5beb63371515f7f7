// Child of test/out-lock.test.ts: waits for the shared start time (argv[3], epoch
// ms; spinning through its last milliseconds so that all children try at once),
// tries to take the lock of argv[2], marks its attempt done, and, if it got the lock,
// holds it until all argv[4] children have tried (or 30 s), then releases it.
// Prints { got, code, message }.
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { lockOutput } from '../../lib/cli/out-lock.js';
import { QuantformError } from '../../lib/errors.js';

const [out, startAt, children] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
while (Date.now() < startAt - 5) sleep(1);
while (Date.now() < startAt) { /* spin: a timer's wake-up jitter would spread the children apart */ }
let result: { got: boolean; code?: string; message?: string };
let release = () => {};
try {
  release = lockOutput(out);
  result = { got: true };
} catch (e) {
  if (!(e instanceof QuantformError)) throw e;
  result = { got: false, code: e.code, message: e.message };
}
const marks = `${out}-tried`;
writeFileSync(path.join(marks, String(process.pid)), '');
if (result.got) {
  const until = Date.now() + 30_000;
  while (readdirSync(marks).length < children && Date.now() < until) sleep(5);
}
release();
console.log(JSON.stringify(result));
