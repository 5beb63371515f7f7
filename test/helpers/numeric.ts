// Numeric helpers every kernel test shares: deterministic data, error measures
// and the finite-difference gradient check.
import { expect } from 'vitest';
import { seededRandom } from '../../lib/engine/calib.js';

/** Uniform [0, 1) stream, the same on every platform (mulberry32). */
export const rng = seededRandom;

/** n values uniform in [offset - scale, offset + scale). */
export function uniform(n: number, seed: number, scale = 1, offset = 0): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = offset + scale * (2 * r() - 1);
  return a;
}

/** n values from N(0, scale^2) (Box-Muller). */
export function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  return out;
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Normalized mean squared error sum((a - b)^2) / sum(b^2) (the plain sum when b is 0). */
export function nmse(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? num : num / den;
}

/** max |a - b| / max |b| */
export function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/** Central differences of f32 kernels: a step and a tolerance sized for f32 rounding. */
export const FD_REL_TOL = 2e-2;

/**
 * Checks the analytic gradient g of f at x on `count` seeded coordinates by central
 * differences: max |fd - g| / max(|g|, |fd|) below tol. x is perturbed in place and
 * restored.
 */
export function fdCheck(f: () => number, x: Float32Array, g: Float32Array, count: number, h = 1e-2, tol = FD_REL_TOL): void {
  const r = rng(99);
  let maxErr = 0, maxG = 0;
  for (let c = 0; c < count; c++) {
    const i = Math.floor(r() * x.length);
    const x0 = x[i];
    x[i] = x0 + h;
    const fp = f();
    x[i] = x0 - h;
    const fm = f();
    x[i] = x0;
    const fd = (fp - fm) / (2 * h);
    maxErr = Math.max(maxErr, Math.abs(fd - g[i]));
    maxG = Math.max(maxG, Math.abs(g[i]), Math.abs(fd));
  }
  expect(maxG).toBeGreaterThan(0);
  expect(maxErr / maxG).toBeLessThan(tol);
}

/** Bit-exact equality of two float arrays (NaN-aware, -0 != +0). */
export function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
