import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // native kernels use the addon's own thread pool: one test file at a time keeps timings and memory sane on 2 cores
    fileParallelism: false,
  },
});
