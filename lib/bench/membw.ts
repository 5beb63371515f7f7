import { invalidParameter } from '../errors.js';
import { native } from '../native.js';
import { median } from './stats.js';

export interface MemoryBandwidth {
  /** Median GB/s of a multi-threaded streaming read. */
  readGBps: number;
  /** Median GB/s of a multi-threaded memcpy, counting bytes read + written. */
  copyGBps: number;
  bytes: number;
}

/** The machine's memory bandwidth, measured now on the native thread pool. */
export function measureMemoryBandwidth(bytes = 512 * 2 ** 20, iters = 5): MemoryBandwidth {
  if (!Number.isInteger(bytes) || bytes < 2 ** 20) throw invalidParameter('integer >= 1 MiB', 'bytes', bytes);
  const n = native() as unknown as { measureMemoryBandwidth(mode: string, bytes: number, iters: number): { gbps: number[] } };
  return {
    readGBps: median(n.measureMemoryBandwidth('read', bytes, iters).gbps),
    copyGBps: median(n.measureMemoryBandwidth('copy', bytes, iters).gbps),
    bytes,
  };
}
