// The built CLI (dist/cli.js, from `npx tsup`): eval reproduces the reference
// perplexity with --json, generate streams the greedy sample, bench model is
// registered next to the other benchmarks.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../lib/native.js';
import { sharedDir } from './helpers/tiers.js';

const cli = path.join(packageRoot(), 'dist', 'cli.js');
const shared = sharedDir();
const HF = path.join(shared, 'models/stories260K-hf');
const TINY = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const REF = path.join(shared, 'data/reference/ppl_tinystories_tok512.json');
const haveCli = existsSync(cli);
const haveShared = [HF, TINY, REF].every((p) => existsSync(p));
if (!haveCli) console.warn(`cli-model: skipped, ${cli} not built (run npx tsup)`);
if (!haveShared) console.warn(`cli-model: real-model cases skipped, shared files not found under ${shared}`);

const PPL_REL_TOL = 1e-4;
const run = (args: string[]) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe.skipIf(!haveCli)('quantform CLI (dist/cli.js)', () => {
  it.skipIf(!haveShared)('eval --json reproduces the TinyStories reference', () => {
    const out = JSON.parse(run(['eval', '--model', HF, '--text', TINY, '--max-tokens', '20480', '--json'])) as { meanNll: number; nPredicted: number };
    const want = (JSON.parse(readFileSync(REF, 'utf8')) as { results: { stories260K: { mean_nll_nats: number } } }).results.stories260K.mean_nll_nats;
    expect(out.nPredicted).toBe(20480);
    expect(Math.abs(out.meanNll - want) / want).toBeLessThan(PPL_REL_TOL);
  });

  it.skipIf(!haveShared)('generate streams the greedy story', () => {
    const out = run(['generate', '--model', HF, '--prompt', 'Once upon a time', '--max-tokens', '12']);
    expect(out.startsWith('Once upon a time, there was a little girl named Lily')).toBe(true);
  });

  it('eval and generate run on the built-in synthetic model; bench lists model', () => {
    expect(run(['generate', '--max-tokens', '5', '--prompt', 'hi']).startsWith('hi')).toBe(true);
    expect(run(['bench', '--help'])).toMatch(/model/);
  });

  it('a bad model path is one clear line, not a stack', () => {
    let err = '';
    try {
      run(['eval', '--model', '/nonexistent/model', '--text', '/nonexistent/text']);
    } catch (e) {
      err = String((e as { stderr: string }).stderr);
    }
    expect(err).toMatch(/quantform: Model path \/nonexistent\/model does not exist \[QF_IO\]/);
    try {
      run(['eval', '--text', '/nonexistent/text']);
    } catch (e) {
      err = String((e as { stderr: string }).stderr);
    }
    expect(err).toMatch(/quantform: Cannot read --text \/nonexistent\/text: .*ENOENT.* \[QF_IO\]/);
  });
});
