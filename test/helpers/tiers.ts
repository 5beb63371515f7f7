import { backendInfo, setKernelPolicy, type KernelPolicy } from '../../lib/index.js';

/** Kernel tiers this CPU can run, best last; tests loop over them. */
export function availableTiers(): Exclude<KernelPolicy, 'auto'>[] {
  const best = backendInfo().bestTier;
  const all: Exclude<KernelPolicy, 'auto'>[] = ['ref', 'avx2', 'avx512'];
  return all.slice(0, all.indexOf(best) + 1);
}

/** Runs fn with a forced tier, restoring automatic selection afterwards. */
export function withTier<T>(tier: KernelPolicy, fn: () => T): T {
  setKernelPolicy(tier);
  try {
    return fn();
  } finally {
    setKernelPolicy('auto');
  }
}

export function sharedDir(): string {
  return new URL('../../../shared', import.meta.url).pathname;
}
