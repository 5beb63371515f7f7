// Child of test/fault-injection.test.ts, run with QUANTFORM_FAULT_ALLOC=N: the
// N-th allocation after the addon loads fails, in the load itself or in the first
// op. Whatever fails must be a QuantformError; the next attempt must give the
// right result. Prints { outcome, code, recovered }.
import { QuantformError, Tensor, dequantize, quantize } from '../../lib/index.js';
import { native } from '../../lib/native.js';

const w = new Tensor(Float32Array.from({ length: 8 * 64 }, (_, i) => ((i * 37) % 17) - 8), [8, 64]);
const attempt = () => dequantize(quantize(w, { bits: 8, groupSize: 64 })).data as Float32Array;
let outcome = 'ok', code: string | undefined;
try {
  attempt();
} catch (e) {
  if (!(e instanceof QuantformError)) throw e;
  outcome = 'error';
  code = e.code;
}
native().faultAlloc?.(0);  // disarmed, in case the N-th allocation was not reached
// every row spans [-8, 8]: 8-bit RTN steps of 16/255, so each value is within half a step
const again = attempt();
const recovered = again.every((v, i) => Math.abs(v - w.data[i]) <= 8 / 255 + 1e-5);
process.stdout.write(JSON.stringify({ outcome, code, recovered }) + '\n');
