import { defineConfig } from 'tsup';

export default defineConfig([
  {
    entry: { index: 'lib/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    shims: true, // import.meta.url in the CJS build (lib/native.ts finds the package root with it)
    clean: true,
    target: 'node20',
    sourcemap: true,
  },
  {
    entry: { cli: 'lib/cli/index.ts' },
    format: ['esm'],
    shims: true,
    target: 'node20',
    banner: { js: '#!/usr/bin/env node' },
    sourcemap: true,
  },
]);
