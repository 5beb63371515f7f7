// Child of test/out-lock.test.ts: spins until the shared start time (argv[3], epoch
// ms) so that all children try at once, takes the lock of argv[2], holds it for
// argv[4] ms and releases it. Prints { got, code, message }.
import { lockOutput } from '../../lib/cli/out-lock.js';
import { QuantformError } from '../../lib/errors.js';

const [out, startAt, holdMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
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
const until = Date.now() + holdMs;
while (Date.now() < until) { /* hold */ }
release();
console.log(JSON.stringify(result));
