// The main job and `quantize` on every format. Without --model, `quantform quantize`
// runs TEQ on the bundled stories260K and prints real perplexities (fp32, RTN, the
// method) on held-out TinyStories; with --model it takes whatever `eval` takes. The
// llama2.c, GGUF and Hugging Face copies of stories260K quantize with RTN to
// bit-identical codes, scales and zeros. RTN streams into sharded output that
// loads back; an interrupted or refused run leaves nothing behind.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ByteTokenizer, Model, QuantformError, SyntheticCheckpoint, loadModel, openCheckpoint, type Checkpoint } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { TrainableLlama } from '../lib/engine/llama.js';
import { SYNTHETIC_MODEL } from '../lib/cli/demo.js';
import { quantizeCheckpointRtn } from '../lib/methods/quantize-model.js';
import { SafetensorsCheckpointFiles } from '../lib/io/safetensors.js';
import { readRaw } from '../lib/io/tensors.js';
import { checkpointBlocks } from '../lib/engine/block-source.js';
import { bf16Bits, bf16Value, f16Bits, f16Value, writeHfDir } from './helpers/writers.js';
import '../lib/methods/index.js';

const cli = path.join(packageRoot(), 'dist', 'cli.js');
const haveCli = existsSync(cli);
if (!haveCli) console.warn(`quantize-cli: CLI cases skipped, ${cli} not built (run npx tsup)`);
const shared = path.resolve(process.cwd(), '../shared');
const models = path.join(shared, 'models');
const copies = {
  llama2c: path.join(models, 'stories260K/stories260K.bin'),
  gguf: path.join(models, 'stories260K/tinyllamas-stories-260k-f32.gguf'),
  hf: path.join(models, 'stories260K-hf'),
};
const haveCopies = Object.values(copies).every((p) => existsSync(p));
if (!haveCopies) console.log(`quantize-cli: ${models} not found, the three-format tests are skipped`);

// two independent forward implementations (training engine, runtime) on the same weights
const ENGINES_NMSE = 1e-10;
// shared/data/MANIFEST.md: stories260K on the first 20,480 predictions of TinyStories valid (llama2.c run.c, fp32)
const REFERENCE_PPL = 3.836085;

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-quantize-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (args: string[], cwd = tmp) => execFileSync(process.execPath, [cli, ...args], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.tmp'));

describe('TrainableLlama.fromCheckpoint', () => {
  it('computes the runtime model\'s logits on the synthetic checkpoint (GQA, outliers)', async () => {
    const ck = new SyntheticCheckpoint({ ...SYNTHETIC_MODEL, nLayers: 2 });
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

describe.skipIf(!haveCli)('quantform quantize without --model: the bundled stories260K', () => {
  it('quantizes it, saves GPTQ, and prints fp32, RTN and TEQ perplexities on held-out stories', () => {
    const dir = mkdtempSync(path.join(tmp, 'main-'));
    const out = run(['quantize', '--steps', '6', '--samples', '8'], dir);
    expect(out).toMatch(/no --model: teq W4 g32 sym on the bundled stories260K/);
    const m = /perplexity on valid-stories-1-64\.txt \((\d+) predictions .*\): fp32 ([\d.]+), rtn ([\d.]+), teq \(reloaded from quantized-stories260K-teq-w4g32-sym\) ([\d.]+)/.exec(out);
    expect(m, out).not.toBeNull();
    const [n, fp, rtn, teq] = [Number(m![1]), Number(m![2]), Number(m![3]), Number(m![4])];
    expect(n).toBe(20480);
    expect(Math.abs(fp - REFERENCE_PPL)).toBeLessThan(1e-4);  // the bundled text and model reproduce the reference protocol
    expect(rtn).toBeGreaterThan(fp);
    expect(teq).toBeGreaterThan(fp);
    expect(teq).toBeLessThan(rtn * 1.05);  // 6 steps cannot win much, but must not wreck the model
    const saved = path.join(dir, 'quantized-stories260K-teq-w4g32-sym');
    const cfg = JSON.parse(readFileSync(path.join(saved, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 32, sym: true, checkpoint_format: 'gptq' });
    expect(existsSync(path.join(saved, 'tokenizer.json'))).toBe(true);
    expect(leftovers(dir)).toEqual([]);
    // a second run does not overwrite the first
    run(['quantize', '--method', 'rtn'], dir);
    run(['quantize', '--method', 'rtn'], dir);
    expect(existsSync(path.join(dir, 'quantized-stories260K-rtn-w4g32-sym-2'))).toBe(true);
  });

  it('--model synthetic keeps the random outlier Llama available', () => {
    const out = run(['quantize', '--model', 'synthetic', '--method', 'rtn', '--out', path.join(tmp, 'synth')]);
    expect(out).toMatch(/rtn W4 g128 asym/);
    expect(JSON.parse(readFileSync(path.join(tmp, 'synth', 'config.json'), 'utf8')).num_hidden_layers).toBe(SYNTHETIC_MODEL.nLayers);
  });

  it('--max-memory too small for one block: a clear error naming the numbers, nothing written', () => {
    const r = spawnSync(process.execPath, [cli, 'quantize', '--method', 'rtn', '--max-memory', '0.0001', '--out', path.join(tmp, 'nomem')], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--max-memory 0\.0001 GB is too small for one block of .*stories260K: RTN holds one tensor at a time; the largest, embed \[512, 64\], needs 0\.3 MB/);
    const t = spawnSync(process.execPath, [cli, 'quantize', '--max-memory', '0.001', '--out', path.join(tmp, 'nomem')], { encoding: 'utf8' });
    expect(t.stderr).toMatch(/--max-memory 0\.001 GB is too small for the end-to-end stage of .*stories260K: teq \(end-to-end loss\) holds the fp32 embedding .*one block's saved activations \(7\.1 MB\).*: 10\.6 MB in all/);
    const b = spawnSync(process.execPath, [cli, 'quantize', '--loss', 'block', '--max-memory', '0.005', '--out', path.join(tmp, 'nomem')], { encoding: 'utf8' });
    expect(b.stderr).toMatch(/--max-memory 0\.005 GB is too small for one block of .*stories260K: teq \(block loss\) holds the block's fp32 weights \(0\.2 MB\), .*: 11\.3 MB in all/);
    expect(existsSync(path.join(tmp, 'nomem'))).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });
});

describe.skipIf(!haveCopies)('every format quantizes (stories260K: llama2.c, GGUF, Hugging Face)', () => {
  it('RTN gives bit-identical codes, scales and zeros from all three copies', async () => {
    const tensors: Record<string, Map<string, Buffer>> = {};
    for (const [k, p] of Object.entries(copies)) {
      const ck = openCheckpoint(p);
      const out = path.join(tmp, `rtn-${k}`);
      await quantizeCheckpointRtn(ck, out, { bits: 4, groupSize: 32 });
      ck.close();
      const st = SafetensorsCheckpointFiles.dir(out);
      tensors[k] = new Map([...st.tensors.values()].filter((t) => /\.(qweight|qzeros|scales|g_idx)$/.test(t.name)).map((t) => [t.name, readRaw(t)]));
      st.close();
    }
    expect(tensors.hf.size).toBe(5 * 7 * 4);
    for (const k of ['llama2c', 'gguf'])
      for (const [name, b] of tensors.hf) expect(tensors[k].get(name)?.equals(b), `${k} ${name}`).toBe(true);
    // and each loads back (the GGUF copy stores its own output.weight, so it is untied; the others share the embedding)
    for (const k of Object.keys(copies)) {
      const m = await loadModel(path.join(tmp, `rtn-${k}`));
      expect(m.forward([1, 403, 407]).logits.length).toBe(3 * 512);
      m.dispose();
    }
  });

  it.skipIf(!haveCli)('the CLI takes a llama2.c .bin and a .gguf (TEQ, the checkpoint\'s own tokenizer), and the output generates', () => {
    const bin = run(['quantize', '--model', copies.llama2c, '--method', 'rtn', '--group-size', '32', '--out', path.join(tmp, 'cli-bin')]);
    expect(bin).toMatch(/rtn W4 g32 asym/);
    expect(existsSync(path.join(tmp, 'cli-bin', 'tokenizer.bin'))).toBe(true);  // llama2.c sources carry their vocabulary along
    const gg = run(['quantize', '--model', copies.gguf, '--steps', '3', '--samples', '4', '--group-size', '32', '--out', path.join(tmp, 'cli-gguf'),
      '--calib', path.join(packageRoot(), 'assets/tinystories/valid-stories-201-400.txt'), '--skip-docs', '0',
      '--eval-text', path.join(packageRoot(), 'assets/tinystories/valid-stories-1-64.txt'), '--eval-tokens', '1024']);
    expect(gg).toMatch(/perplexity on valid-stories-1-64\.txt \(1024 predictions .*\): fp32 [\d.]+, rtn [\d.]+, teq \(reloaded from cli-gguf\) [\d.]+/);
    const gen = run(['generate', '--model', path.join(tmp, 'cli-gguf'), '--prompt', 'Once upon a time', '--max-tokens', '8']);
    expect(gen).toMatch(/^Once upon a time/);
  });
});

describe('streaming RTN output', () => {
  const ck = () => new SyntheticCheckpoint({ dim: 64, hiddenDim: 96, nLayers: 3, nHeads: 4, nKvHeads: 2, vocabSize: 300, maxSeq: 64, seed: 5 });
  it('shards above maxShardBytes (index + model-0000N-of-0000M) and loads back to the single-file model', async () => {
    const one = path.join(tmp, 'st-one'), many = path.join(tmp, 'st-many');
    await quantizeCheckpointRtn(ck(), one, { bits: 4, groupSize: 32 });
    await quantizeCheckpointRtn(ck(), many, { bits: 4, groupSize: 32 }, { save: { maxShardBytes: 40000 } });
    const files = readdirSync(many).filter((f) => f.endsWith('.safetensors')).sort();
    expect(files.length).toBeGreaterThan(2);
    expect(files[0]).toBe(`model-00001-of-${String(files.length).padStart(5, '0')}.safetensors`);
    const index = JSON.parse(readFileSync(path.join(many, 'model.safetensors.index.json'), 'utf8'));
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(files));
    expect(index.metadata.total_size).toBeGreaterThan(0);
    expect(readdirSync(one).filter((f) => f.endsWith('.safetensors'))).toEqual(['model.safetensors']);
    // synthetic weights come with no tokenizer files: the model is built with its byte tokenizer
    const open = (d: string) => new Model(openCheckpoint(d), new ByteTokenizer(300));
    const a = open(one), b = open(many);
    const tokens = [1, 5, 9, 13, 2, 7];
    expect(b.forward(tokens).logits).toEqual(a.forward(tokens).logits);
    a.dispose();
    b.dispose();
  });

  it('a read error half-way through (a truncated shard) leaves neither the output nor a temp directory', async () => {
    const out = path.join(tmp, 'st-fail');
    const good = ck();
    const failing = Object.assign(Object.create(Object.getPrototypeOf(good)) as SyntheticCheckpoint, good, {
      weight: (n: string) => {
        if (n === 'layers.1.w_up') throw new QuantformError('QF_CORRUPT_FILE', 'x.safetensors: unexpected end of file reading tensor w_up');
        return good.weight(n);
      },
    });
    await expect(quantizeCheckpointRtn(failing, out, { bits: 4 })).rejects.toThrow(/unexpected end of file reading tensor w_up/);
    expect(existsSync(out)).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });

  it('an abort mid-way (Ctrl-C) leaves neither the output nor a temp directory', async () => {
    const out = path.join(tmp, 'st-abort');
    const ac = new AbortController();
    await expect(quantizeCheckpointRtn(ck(), out, { bits: 4 }, { signal: ac.signal, onProgress: (e) => { if (e.step === 5) ac.abort(); } }))
      .rejects.toMatchObject({ code: 'QF_ABORTED', message: expect.stringMatching(/interrupted after 5 of \d+ tensors; nothing was written/) });
    expect(existsSync(out)).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });

  // RTN reads BF16 / F16 linears as their stored bits (the next one on a libuv worker while
  // this one is quantized) and quantizes them without an fp32 copy; an F32 checkpoint of the
  // same widened values goes through the fp32 reader and kernel, an independent path
  const halfDir = (dt: 'BF16' | 'F16') => {
    const dir = path.join(tmp, `half-${dt}`);
    if (!existsSync(dir)) {
      mkdirSync(dir);
      const c = ck();
      writeHfDir(dir, c.config, (n) => c.weight(n), dt);
    }
    return dir;
  };
  const quantized = (dir: string) => {
    const st = SafetensorsCheckpointFiles.dir(dir);
    const m = new Map([...st.tensors.values()].map((t) => [t.name, readRaw(t)]));
    st.close();
    return m;
  };
  for (const [dt, bits, value] of [['BF16', bf16Bits, bf16Value], ['F16', f16Bits, f16Value]] as const)
    it(`${dt} linears quantize from their stored bits to what the fp32 path gives on the widened values`, async () => {
      const c = ck(), f32 = path.join(tmp, `widened-${dt}`);
      mkdirSync(f32);
      writeHfDir(f32, c.config, (n) => Float32Array.from(c.weight(n), (x) => value(bits(x))), 'F32');
      const cks: Checkpoint[] = [openCheckpoint(halfDir(dt)), openCheckpoint(f32)];
      expect(cks.map((k) => checkpointBlocks(k).halfLinears)).toEqual([true, false]);
      const reports = [];
      for (const [i, k] of cks.entries()) {
        const r = await quantizeCheckpointRtn(k, path.join(tmp, `rtn-${dt}-${i}`), { bits: 4, groupSize: 32 });
        // the I/O the run waited for is a part of its time (bench scale prints read, write and compute)
        expect(r.readSeconds).toBeGreaterThan(0);
        expect(r.writeSeconds).toBeGreaterThan(0);
        expect(r.readSeconds + r.writeSeconds).toBeLessThan(r.totalSeconds + 1);
        reports.push(r.linears);
        k.close();
      }
      const [a, b] = [0, 1].map((i) => quantized(path.join(tmp, `rtn-${dt}-${i}`)));
      const linears = [...b.keys()].filter((n) => /\.(qweight|qzeros|scales)$/.test(n));
      expect(linears.length).toBe(3 * 7 * 3);
      for (const n of linears) expect(a.get(n)?.equals(b.get(n)!), n).toBe(true);
      expect(reports[0]).toEqual(reports[1]);
    });

  it('a shard truncated after it was opened fails the read in flight: a clear error, nothing written', async () => {
    const src = path.join(tmp, 'half-trunc');
    mkdirSync(src);
    const c = ck();
    writeHfDir(src, c.config, (n) => c.weight(n), 'BF16');
    const k = openCheckpoint(src);
    const file = path.join(src, 'model.safetensors');
    truncateSync(file, Math.floor(statSync(file).size * 0.6));
    const out = path.join(tmp, 'st-trunc');
    await expect(quantizeCheckpointRtn(k, out, { bits: 4 })).rejects.toMatchObject({
      code: 'QF_CORRUPT_FILE', message: expect.stringMatching(/model\.safetensors: unexpected end of file reading tensor 'model\.layers\.\d\.\S+'/),
    });
    k.close();
    expect(existsSync(out)).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });
});
