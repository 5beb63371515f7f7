// The machine's limits, measured natively in the same run as a benchmark so every
// row can say how close it is: streaming read bandwidth, fp32 FMA, int8 VNNI and int8 AMX peaks.
import { fromNative, invalidParameter, is } from '../errors.js';
import { native } from '../native.js';

export interface MachineLimits {
  /** Multi-threaded streaming read of `readBytes`, best of the repetitions, GB/s (1e9). */
  readGBps: number;
  readBytes: number;
  /** Multi-threaded memcpy of the same buffer, bytes read + written, GB/s: the limit of streaming ops that write. */
  copyGBps: number;
  /** fp32 FMA peak on all threads, GFLOP/s (register-only loop). */
  fmaGflops: number;
  /** int8 vpdpbusd peak on all threads, GOP/s (2 ops per multiply-add); null without VNNI. */
  vnniGops: number | null;
  /** int8 TDPBSUD peak on AMX tiles, all threads, GOP/s; null without AMX-INT8 (or with setAmx(false)). */
  amxInt8Gops: number | null;
  threads: number;
}

export type ProbePart = 'read' | 'copy' | 'fma' | 'vnni' | 'amx';
const PART_BITS: Record<ProbePart, number> = { read: 1, copy: 2, fma: 4, vnni: 8, amx: 16 };

export interface MeasureOptions {
  /** Which limits to measure (the others read 0 / null); default all. */
  parts?: ProbePart[];
  /** Bytes streamed per repetition; default 512 MiB (far beyond any cache). */
  bytes?: number;
  /** Default 5. */
  reps?: number;
  /** Seconds per compute-peak loop; default 0.3. */
  seconds?: number;
}

function args(opts: MeasureOptions): [number, number, number, number] {
  if (typeof opts !== 'object' || opts === null) throw invalidParameter('options object', 'options', opts);
  const bytes = opts.bytes ?? 512 * 2 ** 20;
  const reps = opts.reps ?? 5;
  const seconds = opts.seconds ?? 0.3;
  if (!is.positiveInteger(bytes) || bytes < 2 ** 20) throw invalidParameter('integer >= 1048576', 'bytes', bytes);
  if (!is.positiveInteger(reps) || reps > 1000) throw invalidParameter('integer in [1, 1000]', 'reps', reps);
  if (!is.finiteNumber(seconds) || seconds <= 0 || seconds > 60) throw invalidParameter('number in (0, 60]', 'seconds', seconds);
  const parts = opts.parts ?? (['read', 'copy', 'fma', 'vnni', 'amx'] as ProbePart[]);
  if (!Array.isArray(parts) || parts.length === 0 || parts.some((p) => !(p in PART_BITS)))
    throw invalidParameter("non-empty array of 'read', 'copy', 'fma', 'vnni', 'amx'", 'parts', parts);
  return [bytes, reps, seconds, parts.reduce((m, p) => m | PART_BITS[p], 0)];
}

/** Measures on the native thread pool (setThreads decides how many threads). */
export async function measureMachine(opts: MeasureOptions = {}): Promise<MachineLimits> {
  const [bytes, reps, seconds, parts] = args(opts);
  try {
    return await native().measureMachine(bytes, reps, seconds, parts, true);
  } catch (e) {
    throw fromNative(e);
  }
}

/** measureMachine on the calling thread: for probes interleaved with synchronous timings. */
export function measureMachineSync(opts: MeasureOptions = {}): MachineLimits {
  const [bytes, reps, seconds, parts] = args(opts);
  try {
    return native().measureMachine(bytes, reps, seconds, parts, false);
  } catch (e) {
    throw fromNative(e);
  }
}
