// Backend selection: cpuid-driven tiers, forced policies, the thread pool, and
// the environment override read at load time (checked in child processes).
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { backendInfo, quantize, setKernelPolicy, setThreads, Tensor } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { randomWeights } from './helpers/oracle.js';

describe('backendInfo', () => {
  it('reports a tier the features support', () => {
    const i = backendInfo();
    expect(['ref', 'avx2', 'avx512']).toContain(i.tier);
    if (i.bestTier === 'avx512') expect(i.features.avx512f && i.features.avx512bw && i.features.avx512vl).toBe(true);
    if (i.bestTier !== 'ref') expect(i.features.avx2 && i.features.fma).toBe(true);
    expect(i.threads).toBeGreaterThanOrEqual(1);
    expect(typeof i.cuda.available).toBe('boolean');
    if (!i.cuda.available) expect(i.cuda.reason).toMatch(/\w/);
  });

  it('says which tier runs each engine kernel under the active policy', () => {
    const best = backendInfo();
    expect(best.engineKernels.gemm).toBe(best.tier);
    expect(Object.keys(best.engineKernels)).toContain('attentionBackward');
    setKernelPolicy('ref');
    try {
      expect(new Set(Object.values(backendInfo().engineKernels))).toEqual(new Set(['ref']));
    } finally {
      setKernelPolicy('auto');
    }
  });

  it('setKernelPolicy switches tiers and back', () => {
    const best = backendInfo().bestTier;
    expect(setKernelPolicy('ref')).toBe('ref');
    expect(backendInfo().tier).toBe('ref');
    expect(setKernelPolicy('auto')).toBe(best);
  });

  it('refuses a tier the CPU lacks', () => {
    if (backendInfo().bestTier === 'avx512') return expect(setKernelPolicy('avx512')).toBe('avx512');
    expect(() => setKernelPolicy('avx512')).toThrow(/Kernel tier 'avx512' is not supported by this CPU/);
  });
});

describe('thread pool', () => {
  it('results do not depend on the thread count', () => {
    const w = new Tensor(randomWeights(300 * 129, 9), [300, 129]);
    const one = (setThreads(1), quantize(w, { bits: 4, groupSize: 32 }));
    expect(backendInfo().threads).toBe(1);
    const five = (setThreads(5), quantize(w, { bits: 4, groupSize: 32 }));
    expect(backendInfo().threads).toBe(5);
    setThreads(0);
    expect(Buffer.from(five.codes).equals(Buffer.from(one.codes))).toBe(true);
  });

  it('more threads than cores works but is never silent: a process warning with a code', async () => {
    const cores = availableParallelism();
    const seen: (Error & { code?: string })[] = [];
    const on = (w: Error) => seen.push(w);
    process.on('warning', on);
    try {
      setThreads(cores);
      setThreads(cores + 7);
      expect(backendInfo().threads).toBe(cores + 7);
      await new Promise((r) => setTimeout(r, 20));   // warnings are emitted on a later tick
    } finally {
      setThreads(0);
      process.off('warning', on);
    }
    // (the earlier test's setThreads(5) may warn on this tick too: count only this test's calls)
    const ours = seen.filter((w) => w.code === 'QF_THREADS_OVERSUBSCRIBED').map((w) => w.message);
    expect(ours.filter((m) => m.startsWith(`setThreads(${cores + 7}): above the ${cores} cores`))).toHaveLength(1);
    expect(ours.filter((m) => m.startsWith(`setThreads(${cores}):`))).toHaveLength(0);
  });
});

describe('QUANTFORM_KERNELS (read once at load)', () => {
  // a child process loads the same addon this test run uses
  const probe = (env: Record<string, string>) =>
    execFileSync(process.execPath, ['-e', `
      const root = ${JSON.stringify(packageRoot())};
      const addon = process.env.QUANTFORM_ADDON
        ? require(require('path').resolve(root, process.env.QUANTFORM_ADDON))
        : require(require.resolve('node-gyp-build', { paths: [root] }))(root);
      console.log(addon.backendInfo().tier);`], { env: { ...process.env, ...env }, encoding: 'utf8' }).trim();
  it('forces the reference tier', () => {
    expect(probe({ QUANTFORM_KERNELS: 'ref' })).toBe('ref');
  });
  it('ignores an unknown value', () => {
    expect(probe({ QUANTFORM_KERNELS: 'sse9' })).toBe(backendInfo().bestTier);
  });
});
