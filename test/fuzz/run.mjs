// `npm run fuzz -- --minutes N`: bundles test/fuzz/cli.ts from the current sources
// (the same way the test suite bundles its children) and runs it.
import { buildSync } from 'esbuild';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.join(root, '.cache', 'test-child', 'fuzz-cli.mjs');
mkdirSync(path.dirname(out), { recursive: true });
buildSync({ entryPoints: [path.join(root, 'test/fuzz/cli.ts')], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node20',
  packages: 'external', sourcemap: 'inline', logLevel: 'error' });
process.chdir(root);
await import(pathToFileURL(out).href);
