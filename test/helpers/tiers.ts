import { expect } from 'vitest';
import { backendInfo, setKernelPolicy, type KernelPolicy } from '../../lib/index.js';
import { nmse, sameBits } from './numeric.js';

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

// Named tolerances of kernel tests (NMSE = sum (a - b)^2 / sum b^2).
/** the f64-accumulating reference vs a float64 oracle: only the final f32 rounding differs */
export const ORACLE_NMSE = 1e-12;
/** f32 accumulation (SIMD tiers) vs the reference's f64 */
export const TIER_NMSE = 1e-11;
/** the same plus the tiers' polynomial exp (relative error ~2 ulp) */
export const TIER_NMSE_EXP = 1e-10;

export const tiers = availableTiers();
export const simd = tiers.filter((t) => t !== 'ref');

/** fn under every tier, by tier name. */
export function perTier<T>(fn: () => T): Record<string, T> {
  return Object.fromEntries(tiers.map((t) => [t, withTier(t, fn)]));
}
export function expectTiersNear(res: Record<string, Float32Array | Float32Array[]>, tol: number, what = ''): void {
  const ref = ([] as Float32Array[]).concat(res.ref);
  for (const t of simd) ([] as Float32Array[]).concat(res[t]).forEach((v, i) => expect(nmse(v, ref[i]), `${what} ${t} output ${i}`).toBeLessThan(tol));
}
export function expectTiersExact(res: Record<string, Float32Array | Float32Array[]>, what = ''): void {
  const ref = ([] as Float32Array[]).concat(res.ref);
  for (const t of simd) ([] as Float32Array[]).concat(res[t]).forEach((v, i) => expect(sameBits(v, ref[i]), `${what} ${t} output ${i}`).toBe(true));
}
