// Losing nothing: a `quantform quantize` child (TEQ, checkpoints every few steps) is
// killed with SIGKILL at chosen points: early (before any checkpoint), between
// checkpoints, while a checkpoint is being written, while the output is being
// written, and at random times. After each kill the output directory must not
// exist or be complete; `--resume` must finish from whatever is left and give the
// uninterrupted run's output bit for bit (same seed). Two runs started at once
// into the same --out: one wins, the other gets a clear error, nothing is mixed.
// Runs on the bundled stories260K (assets/) with the bundled calibration stories.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, watch } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ByteTokenizer, SyntheticCheckpoint, TrainableLlama, calibrationFromText, loadModel, quantizeModel, type QuantizeModelOptions } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { seededRandom } from '../lib/engine/calib.js';

const root = packageRoot();
const cli = path.join(root, 'dist', 'cli.js');
const haveCli = existsSync(cli);
if (!haveCli) console.warn(`kill-resume: skipped, ${cli} not built (run npx tsup)`);
const model = path.join(root, 'assets', 'stories260K'), calib = path.join(root, 'assets', 'tinystories', 'valid-stories-201-400.txt');

// on disk (not /tmp, which may be tmpfs): fsync takes long enough for a kill to land inside a write
mkdirSync(path.join(root, '.cache'), { recursive: true });   // absent on a clean clone
const work = mkdtempSync(path.join(root, '.cache', 'kill-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const args = (out: string) => [cli, 'quantize', '--model', model, '--calib', calib, '--method', 'teq', '--bits', '4',
  '--group-size', '32', '--samples', '8', '--seq-len', '64', '--steps', '40', '--checkpoint-every', '4', '--seed', '3',
  // 50 stories are plenty for 8 windows of 64 tokens
  '--skip-docs', '150', '--out', out];

/** The output's content that must be deterministic: everything but the timings of the report. */
function contents(out: string): Record<string, string> {
  const r: Record<string, string> = {};
  for (const f of readdirSync(out).sort()) {
    let b = readFileSync(path.join(out, f));
    if (f === 'quantform_report.json') {
      const j = JSON.parse(b.toString()) as Record<string, unknown>;
      delete j.trainSeconds;
      delete j.totalSeconds;
      b = Buffer.from(JSON.stringify(j));
    }
    r[f] = b.toString('base64');
  }
  return r;
}

function runToEnd(out: string, extra: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...args(out), ...extra], { cwd: path.dirname(out), encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

type Trigger = 'early' | 'after-checkpoint' | 'random' | `preload ${string}`;
const preload = path.join(root, 'test', 'children', 'kill-preload.cjs');

/**
 * Starts a run and SIGKILLs it at `trigger`: from outside after a delay or a
 * checkpoint's appearance (fs.watch), or from inside one of the product's writes
 * (test/children/kill-preload.cjs). Resolves with what the kill hit.
 */
function killAt(out: string, trigger: Trigger, delayMs: number): Promise<{ killed: boolean; at: string }> {
  const dir = path.dirname(out), base = path.basename(out);
  return new Promise((resolve) => {
    const inside = trigger.startsWith('preload ') ? trigger.slice(8) : null;
    const child = spawn(process.execPath, [...(inside ? ['--require', preload] : []), ...args(out)], {
      cwd: dir, stdio: 'ignore', env: { ...process.env, ...(inside ? { QF_KILL_AT: inside, QF_KILL_OUT: out } : {}) },
    });
    let at = inside ? `inside the product at ${inside}` : 'before any trigger', done = false;
    const kill = (why: string) => {
      if (done) return;
      done = true;
      at = why;
      child.kill('SIGKILL');
    };
    const w = watch(dir, (_e, name) => {
      if (trigger === 'after-checkpoint' && name === `${base}.ckpt.safetensors`) setTimeout(() => kill(`${delayMs} ms after a checkpoint`), delayMs);
    });
    if (trigger === 'early' || trigger === 'random') setTimeout(() => kill(`after ${delayMs} ms`), delayMs);
    child.on('exit', (code, signal) => {
      w.close();
      resolve({ killed: signal === 'SIGKILL', at: signal === 'SIGKILL' ? at : `exited ${code} before the kill` });
    });
  });
}

describe('resume equals an uninterrupted run (in process, both losses)', () => {
  // stopping at every step of a short run, including a block's last step (the
  // block-wise loss restarts its optimizer state per block) and resuming
  const ck = new SyntheticCheckpoint({ dim: 32, hiddenDim: 48, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 64, maxSeq: 32, seed: 4 });
  const bt = new ByteTokenizer(64);
  const text = Array.from({ length: 600 }, (_, i) => String.fromCharCode(97 + ((i * 7 + (i >> 3)) % 26))).join('');
  const calibration = calibrationFromText(text, (d) => bt.encode(d), { samples: 6, seqLen: 16, seed: 2 });
  for (const loss of ['e2e', 'block'] as const)
    it(loss, async () => {
      const model = TrainableLlama.fromCheckpoint(ck);
      const opts: QuantizeModelOptions = { method: 'teq', bits: 3, groupSize: 16, calibration, steps: 4, batchSize: 2, loss, extraScales: true };
      const total = loss === 'e2e' ? 4 : 8;
      const ref = await quantizeModel(model, opts);
      const refBytes = [...ref.linears.values()].map((q) => Buffer.from(q.codes).toString('base64') + Buffer.from(q.scales.buffer).toString('base64'));
      for (let stopAt = 1; stopAt < total; stopAt++) {
        const file = path.join(work, `resume-${loss}-${stopAt}.safetensors`);
        const abort = new AbortController();
        await expect(quantizeModel(model, opts, {
          signal: abort.signal, checkpoint: { path: file, every: 1000 },
          onProgress: (e) => { if (e.phase === 'train' && e.step === stopAt) abort.abort(); },
        })).rejects.toMatchObject({ code: 'QF_ABORTED' });
        const res = await quantizeModel(model, opts, { checkpoint: { path: file, every: 1000 }, resume: true });
        const bytes = [...res.linears.values()].map((q) => Buffer.from(q.codes).toString('base64') + Buffer.from(q.scales.buffer).toString('base64'));
        expect(bytes, `${loss}: stopped after step ${stopAt}`).toEqual(refBytes);
        expect(res.report.lossCurve).toEqual(ref.report.lossCurve);
      }
    });
});

describe.skipIf(!haveCli)('SIGKILL at any point loses nothing', () => {
  it('kills during training, between checkpoints, during checkpoint and output writes; --resume gives the uninterrupted output bit for bit', async () => {
    const refDir = path.join(work, 'ref');
    mkdirSync(refDir);
    const t0 = performance.now();
    const r0 = runToEnd(path.join(refDir, 'out'));
    const tRef = performance.now() - t0;
    expect(r0.status, r0.stderr).toBe(0);
    const ref = contents(path.join(refDir, 'out'));
    expect(Object.keys(ref)).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'quantform_report.json']));

    const rand = seededRandom(14);
    const plan: [Trigger, number][] = [
      ['early', 40 + rand() * 150], ['after-checkpoint', 5 + rand() * 60],
      ['preload checkpoint-write:3', 0], ['preload checkpoint-rename:5', 0], ['preload output-write:1', 0], ['preload output-rename:1', 0],
      ['preload checkpoint-remove:1', 0], ['random', rand() * tRef],
    ];
    const lines: string[] = [];
    for (const [i, [trigger, delay]] of plan.entries()) {
      const dir = path.join(work, `t${i}`);
      mkdirSync(dir);
      const out = path.join(dir, 'out');
      const k = await killAt(out, trigger, Math.round(delay));
      const left = readdirSync(dir).sort();
      // the output directory appears only complete
      const outExists = existsSync(out);
      if (outExists) expect(contents(out), `trial ${i}: a complete output`).toEqual(ref);
      let how = outExists ? 'output already complete' : '';
      if (!outExists) {
        const r = runToEnd(out, ['--resume']);
        expect(r.status, `trial ${i} (${k.at}) --resume: ${r.stderr}`).toBe(0);
        expect(contents(out), `trial ${i} (${k.at}): resumed output equals the uninterrupted run`).toEqual(ref);
        how = /starting from step 0/.test(r.stdout) ? 'resumed from step 0 (no checkpoint was left)' : 'resumed from the last checkpoint';
        // nothing of the killed run remains: no temp files, lock or checkpoint
        expect(readdirSync(dir).sort(), `trial ${i}: leftovers`).toEqual(['out']);
        (await loadModel(out)).dispose();  // and it loads
      }
      expect(k.killed, `trial ${i}: the kill happened (${k.at})`).toBe(true);
      lines.push(`  ${trigger.padEnd(28)} killed ${k.killed ? k.at : `-- ${k.at}`}; left [${left.join(', ')}]; ${how}`);
    }
    console.log(`kill points (${plan.length}, reference run ${(tRef / 1000).toFixed(1)} s):\n${lines.join('\n')}`);
  }, 600_000);

  it('two runs into the same --out at once: one wins, the other gets a clear error, nothing is mixed', async () => {
    const refDir = path.join(work, 'ref2');
    mkdirSync(refDir);
    expect(runToEnd(path.join(refDir, 'out')).status).toBe(0);
    const ref = contents(path.join(refDir, 'out'));
    const dir = path.join(work, 'race');
    mkdirSync(dir);
    const out = path.join(dir, 'out');
    const run = () => new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, args(out), { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
      c.on('exit', (code) => resolve({ code, stderr }));
    });
    const [a, b] = await Promise.all([run(), run()]);
    const codes = [a.code, b.code].sort();
    expect(codes, `${a.stderr}\n${b.stderr}`).toEqual([0, 1]);
    const loser = a.code === 1 ? a : b;
    expect(loser.stderr).toMatch(/Another quantize \(pid \d+\) is writing .*out|already exists/);
    expect(contents(out)).toEqual(ref);
    expect(readdirSync(dir).sort()).toEqual(['out']);
  }, 300_000);
});
