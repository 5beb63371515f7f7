// The machine's limits, measured natively in the same run as a benchmark so every
// row can say how close it is: streaming read bandwidth, fp32 FMA and int8 VNNI peaks.
import { fromNative, invalidParameter, is } from '../errors.js';
import { native } from '../native.js';

export interface MachineLimits {
  /** Multi-threaded streaming read of `readBytes`, best of the repetitions, GB/s (1e9). */
  readGBps: number;
  readBytes: number;
  /** fp32 FMA peak on all threads, GFLOP/s (register-only loop). */
  fmaGflops: number;
  /** int8 vpdpbusd peak on all threads, GOP/s (2 ops per multiply-add); null without VNNI. */
  vnniGops: number | null;
  threads: number;
}

export interface MeasureOptions {
  /** Bytes streamed per repetition; default 512 MiB (far beyond any cache). */
  bytes?: number;
  /** Default 5. */
  reps?: number;
  /** Seconds per compute-peak loop; default 0.3. */
  seconds?: number;
}

function args(opts: MeasureOptions): [number, number, number] {
  const bytes = opts.bytes ?? 512 * 2 ** 20;
  const reps = opts.reps ?? 5;
  const seconds = opts.seconds ?? 0.3;
  if (!is.positiveInteger(bytes) || bytes < 2 ** 20) throw invalidParameter('integer >= 1048576', 'bytes', bytes);
  if (!is.positiveInteger(reps) || reps > 1000) throw invalidParameter('integer in [1, 1000]', 'reps', reps);
  if (!is.finiteNumber(seconds) || seconds <= 0 || seconds > 60) throw invalidParameter('number in (0, 60]', 'seconds', seconds);
  return [bytes, reps, seconds];
}

/** Measures on the native thread pool (setThreads decides how many threads). */
export async function measureMachine(opts: MeasureOptions = {}): Promise<MachineLimits> {
  const [bytes, reps, seconds] = args(opts);
  try {
    return await native().measureMachine(bytes, reps, seconds, true);
  } catch (e) {
    throw fromNative(e);
  }
}
