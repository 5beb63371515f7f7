import { availableParallelism } from 'node:os';
import { fromNative, invalidParameter, is } from './errors.js';
import { native, type NativeBackendInfo } from './native.js';
import { cudaInfo, type CudaInfo } from './ops/cuda.js';

export type KernelPolicy = 'auto' | 'ref' | 'avx2' | 'avx512';

export interface BackendInfo extends NativeBackendInfo {
  cuda: CudaInfo;
  /** engine kernel -> the tier whose code runs it under the active policy (a tier without its own runs 'ref') */
  engineKernels: Record<string, 'ref' | 'avx2' | 'avx512'>;
}

/** CPU features, the kernel tier in use, threads, which tier runs each engine kernel, and CUDA availability. */
export function backendInfo(): BackendInfo {
  const n = native();
  return { ...n.backendInfo(), engineKernels: Object.fromEntries(n.engine.kernels().map((k) => [k.name, k.active])), cuda: cudaInfo() };
}

/** Forces a kernel tier (for tests and comparisons); 'auto' returns to the best one. */
export function setKernelPolicy(policy: KernelPolicy): string {
  if (!is.oneOf(policy, ['auto', 'ref', 'avx2', 'avx512'] as const))
    throw invalidParameter("one of 'auto', 'ref', 'avx2', 'avx512'", 'policy', policy);
  try {
    return native().setKernelPolicy(policy);
  } catch (e) {
    throw fromNative(e);
  }
}

/** Sizes the native thread pool; 0 means one thread per core. Returns the size. */
export function setThreads(n: number): number {
  if (!is.nonNegativeInteger(n) || n > 1024) throw invalidParameter('integer in [0, 1024]', 'threads', n);
  // more threads than cores is allowed (containers may under-report) but never silent:
  // the pool's workers then take turns on a core at every barrier, a slow path
  const cores = availableParallelism();
  if (n > cores)
    process.emitWarning(`setThreads(${n}): above the ${cores} cores this process may use; every parallel op will wait on preempted workers`,
      { code: 'QF_THREADS_OVERSUBSCRIBED' });
  return native().setThreads(n);
}

/**
 * Lets the bf16 matmul use AMX tiles (default; QUANTFORM_AMX=0 starts with them off) or
 * keeps it on AVX-512 BF16 dot products. Returns whether AMX is in use now.
 */
export function setAmx(enabled: boolean): boolean {
  if (typeof enabled !== 'boolean') throw invalidParameter('boolean', 'enabled', enabled);
  return native().setAmx(enabled);
}
