// The main job: `quantform quantize` with no --model runs on the built-in
// synthetic Llama and calibration text, writes a loadable GPTQ directory and
// reports held-out logit error vs fp32 for RTN and the method. Also: the training
// model built from a runtime checkpoint computes the runtime's logits.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ByteTokenizer, Model, SyntheticCheckpoint } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { TrainableLlama } from '../lib/engine/llama.js';
import { DEMO_MODEL } from '../lib/cli/demo.js';

const cli = path.join(packageRoot(), 'dist', 'cli.js');
const haveCli = existsSync(cli);
if (!haveCli) console.warn(`quantize-cli: CLI cases skipped, ${cli} not built (run npx tsup)`);

// two independent forward implementations (training engine, runtime) on the same weights
const ENGINES_NMSE = 1e-10;

describe('TrainableLlama.fromCheckpoint', () => {
  it('computes the runtime model\'s logits on the synthetic checkpoint (GQA, outliers)', async () => {
    const ck = new SyntheticCheckpoint({ ...DEMO_MODEL, nLayers: 2 });
    const trainable = TrainableLlama.fromCheckpoint(ck);
    const runtime = new Model(ck, new ByteTokenizer(ck.config.vocabSize));
    const tokens = Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % ck.config.vocabSize);
    const a = await trainable.logits(Int32Array.from(tokens), 1, tokens.length);
    const b = runtime.forward(tokens).logits;
    let num = 0, den = 0;
    for (let i = 0; i < b.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
    expect(a.length).toBe(b.length);
    expect(num / den).toBeLessThan(ENGINES_NMSE);
    runtime.dispose();
  });
});

describe.skipIf(!haveCli)('quantform quantize without --model', () => {
  it('quantizes the built-in model, saves GPTQ, and compares RTN and TEQ on held-out text', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qf-demo-'));
    try {
      const out = execFileSync(process.execPath, [cli, 'quantize', '--steps', '4', '--samples', '4'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      expect(out).toMatch(/no --model: quantizing the built-in synthetic Llama/);
      const m = /held-out logits vs fp32 .* NMSE: rtn ([\d.e+-]+), teq ([\d.e+-]+)/.exec(out);
      expect(m).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThan(0);
      expect(Number(m![2])).toBeGreaterThan(0);
      const saved = path.join(dir, 'quantized-synthetic-teq-w4g32');
      const cfg = JSON.parse(readFileSync(path.join(saved, 'config.json'), 'utf8'));
      expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 32 });
      expect(TrainableLlama.fromHfDir(saved).shape.layers).toBe(DEMO_MODEL.nLayers);
      // a second run does not overwrite the first
      execFileSync(process.execPath, [cli, 'quantize', '--method', 'rtn'], { cwd: dir, stdio: 'ignore' });
      execFileSync(process.execPath, [cli, 'quantize', '--method', 'rtn'], { cwd: dir, stdio: 'ignore' });
      expect(existsSync(path.join(dir, 'quantized-synthetic-rtn-w4g32-2'))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
