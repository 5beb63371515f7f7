// quantform quantize: RTN or a trainable method on a Hugging Face Llama directory,
// written as a GPTQ checkpoint. Progress bar (step, loss, steps/s, ETA), atomic
// checkpoints every N steps next to the output, --resume, Ctrl-C leaves a resumable
// checkpoint, and the output directory appears only when complete.
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { calibrationFromFile, calibrationFromText } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { saveGptq } from '../export/save.js';
import { parseJsonObject } from '../io/json.js';
import { methodNames } from '../methods/index.js';
import { dequantizedModel, quantizeModel, type QuantizeModelOptions } from '../methods/quantize-model.js';
import type { Bits } from '../ops/quant.js';
import { loadCalibrationTokenizer, TrainableLlama } from '../engine/llama.js';
import { intOption } from './model-arg.js';
import { lockOutput } from './out-lock.js';
import { DEMO_DEFAULTS, demo, type Demo } from './demo.js';

interface QuantizeCliOpts {
  model?: string;
  method: string;
  bits: number;
  groupSize: number;
  sym?: boolean;
  calib?: string;
  samples: number;
  seqLen: number;
  steps: number;
  lr: number;
  batchSize: number;
  loss: 'e2e' | 'block';
  seed: number;
  teqExtra?: boolean;
  skipDocs?: number;
  out?: string;
  checkpointEvery: number;
  resume?: boolean;
  evalIds?: string;
}

function numberOption(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`Expected a number but received '${v}'`);
  return n;
}

/** Evaluation ids of a shared/data/reference protocol file (token_ids, window). */
export function readEvalIds(file: string): { ids: number[]; window: number } {
  const j = parseJsonObject(readFileSync(file, 'utf8'), file) as { token_ids?: number[]; window?: number };
  if (!Array.isArray(j.token_ids)) throw new QuantformError('QF_CORRUPT_FILE', `${file} holds no token_ids`);
  return { ids: j.token_ids, window: j.window ?? 256 };
}

/** ./quantized-<model>-<method>-w<bits>g<group>[-sym], numbered if taken. */
function defaultOut(o: QuantizeCliOpts): string {
  const name = o.model ? path.basename(path.resolve(o.model)) : 'synthetic';
  const base = `quantized-${name}-${o.method}-w${o.bits}g${o.groupSize}${o.sym ? '-sym' : ''}`;
  let out = base;
  for (let i = 2; existsSync(out); i++) out = `${base}-${i}`;
  return out;
}

/** The demo's evidence: held-out logits of RTN and of the method against fp32. */
async function reportDemo(dm: Demo, q: Awaited<ReturnType<typeof quantizeModel>>, bits: Bits, groupSize: number, symmetric: boolean): Promise<void> {
  const T = 128;
  const n = Math.floor((dm.evalIds.length - 1) / T);
  const tokens = Int32Array.from(dm.evalIds.slice(0, n * T));
  const ref = await dm.model.logits(tokens, n, T);
  const nmse = async (m: TrainableLlama) => {
    const y = await m.logits(tokens, n, T);
    let num = 0, den = 0;
    for (let i = 0; i < y.length; i++) { num += (y[i] - ref[i]) ** 2; den += ref[i] ** 2; }
    return num / den;
  };
  const rtn = dequantizedModel(await quantizeModel(dm.model, { method: 'rtn', bits, groupSize, symmetric }));
  const mine = dequantizedModel(q);
  console.log(`held-out logits vs fp32 (${n} x ${T} tokens of text the calibration never saw), NMSE: ` +
    `rtn ${(await nmse(rtn)).toExponential(3)}, ${q.report.method} ${(await nmse(mine)).toExponential(3)}`);
}

export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .description('quantize a Hugging Face Llama checkpoint (rtn | teq) and save it in GPTQ format')
    .option('--model <dir>', 'Hugging Face model directory (config.json, model.safetensors, tokenizer.json); default: a built-in synthetic Llama with outlier channels and calibration text, nothing to download')
    .option('--method <name>', `method: ${methodNames().join(' | ')}`, 'teq')
    .option('--bits <n>', 'bits per weight: 2, 3, 4 or 8', intOption, 4)
    .option('--group-size <n>', 'weights per quantization group along the input dimension', intOption, 128)
    .option('--sym', 'symmetric quantization (no zero points)')
    .option('--calib <file>', 'calibration text (trainable methods)')
    .option('--samples <n>', 'calibration windows', intOption, 128)
    .option('--seq-len <n>', 'tokens per calibration window', intOption, 256)
    .option('--steps <n>', 'training steps (block loss: per block)', intOption, 1000)
    .option('--lr <x>', 'learning rate', numberOption, 1e-3)
    .option('--batch-size <n>', 'calibration windows per step', intOption, 2)
    .option('--loss <kind>', 'e2e (next-token cross-entropy) | block (per-block output MSE)', 'e2e')
    .option('--seed <n>', 'seed of the calibration windows and batch order', intOption, 0)
    .option('--teq-extra', 'TEQ: also train mergeable v->o and up->down scales (o_proj, down_proj not left as plain RTN)')
    .option('--skip-docs <n>', "documents to skip at the start of --calib (default: 200 when it is split by <|endoftext|>, keeping TinyStories evaluation stories out)", intOption)
    .option('--out <dir>', 'output directory (must not exist; default: ./quantized-<model>-<method>-w<bits>g<group>)')
    .option('--checkpoint-every <n>', 'steps between checkpoints', intOption, 100)
    .option('--resume', 'continue from the checkpoint next to --out (a run killed before its first checkpoint starts over)')
    .option('--eval-ids <file>', 'perplexity protocol JSON (shared/data/reference/ppl_*.json) to evaluate fp32 and the result')
    .action(async (o: QuantizeCliOpts, cmd: Command) => {
      const t0 = performance.now();
      let dm: Demo | null = null;
      if (!o.model) {
        dm = demo();
        // the demo's own defaults, unless the user chose
        for (const [k, v] of Object.entries(DEMO_DEFAULTS))
          if (cmd.getOptionValueSource(k) === 'default') (o as unknown as Record<string, number | string>)[k] = v;
        console.log(`no --model: quantizing the built-in synthetic Llama (${dm.model.shape.layers} layers, hidden ${dm.model.shape.hidden}, ` +
          'outlier channels) on built-in calibration text; pass --model DIR for a real checkpoint');
      }
      const out = path.resolve(o.out ?? defaultOut(o));
      // held until this process exits, also on errors; a SIGKILL leaves a stale lock, taken over by the next run
      process.once('exit', lockOutput(out));
      if (existsSync(out)) throw new QuantformError('QF_IO', `Output directory ${out} already exists: choose another --out or remove it`);
      const model = dm ? dm.model : TrainableLlama.fromHfDir(o.model!);
      if (o.seqLen > model.shape.maxSeq)
        throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --seq-len <= ${model.shape.maxSeq} (the model's context) but received ${o.seqLen}`);
      const opts: QuantizeModelOptions = {
        method: o.method, bits: o.bits as Bits, groupSize: o.groupSize, symmetric: o.sym === true, steps: o.steps, lr: o.lr,
        batchSize: o.batchSize, loss: o.loss, seed: o.seed, extraScales: o.teqExtra === true,
      };
      if (dm && !o.calib) {
        opts.calibration = calibrationFromText(dm.calibrationText, dm.encode, { samples: o.samples, seqLen: o.seqLen, seed: o.seed });
      } else if (o.calib) {
        const text = readFileSync(o.calib, 'utf8');
        const skip = o.skipDocs ?? (text.includes('<|endoftext|>') ? 200 : 0);
        const tok = dm ? { encode: dm.encode } : loadCalibrationTokenizer(o.model!);
        opts.calibration = calibrationFromFile(o.calib, tok.encode, { samples: o.samples, seqLen: o.seqLen, seed: o.seed, skipDocuments: skip });
        console.log(`calibration: ${o.samples} x ${o.seqLen} tokens from ${o.calib} (${opts.calibration.streamLength} tokens after skipping ${skip} documents)`);
      }
      const ckpt = `${out}.ckpt.safetensors`;
      if (!o.resume && existsSync(ckpt))
        throw new QuantformError('QF_IO', `A checkpoint of an earlier run exists at ${ckpt}: pass --resume to continue it, or delete it`);
      // half-written checkpoints of killed runs (this run holds the lock: none is being written)
      for (const f of readdirSync(path.dirname(ckpt)).filter((n) => n.startsWith(`${path.basename(ckpt)}.tmp-`)))
        rmSync(path.join(path.dirname(ckpt), f), { force: true });
      // a run killed before its first checkpoint left nothing to resume: it starts over
      const resume = o.resume === true && existsSync(ckpt);
      if (o.resume && !resume) console.log(`--resume: no checkpoint at ${ckpt}, starting from step 0`);
      const bar = new cliProgress.SingleBar({
        format: '{phase} |{bar}| {value}/{total} loss {loss} | {sps} steps/s | ETA {eta_formatted}',
        hideCursor: true, etaBuffer: 50,
      }, cliProgress.Presets.shades_classic);
      let barPhase = '';
      const abort = new AbortController();
      const onSigint = () => {
        process.stderr.write('\nCtrl-C: saving a checkpoint after this step...\n');
        abort.abort();
      };
      process.on('SIGINT', onSigint);
      let q;
      try {
        q = await quantizeModel(model, opts, {
          signal: abort.signal,
          checkpoint: { path: ckpt, every: o.checkpointEvery },
          resume,
          onProgress: (e) => {
            if (e.phase !== barPhase) {
              if (barPhase) bar.stop();
              barPhase = e.phase;
              bar.start(e.totalSteps, e.step - 1, { phase: e.phase, loss: '-', sps: '-' });
            }
            bar.update(e.step, { phase: e.phase + (e.layer !== undefined && e.phase === 'train' && opts.loss === 'block' ? ` block ${e.layer}` : ''),
              loss: Number.isFinite(e.loss) ? e.loss.toFixed(4) : '-', sps: e.stepsPerSecond ? e.stepsPerSecond.toFixed(1) : '-' });
          },
        });
      } catch (e) {
        if (barPhase) bar.stop();
        if (e instanceof QuantformError && e.code === 'QF_ABORTED') {
          console.error(`${e.message}: ${ckpt}. Continue with the same command and --resume.`);
          process.exitCode = 130;
          return;
        }
        throw e;
      } finally {
        process.off('SIGINT', onSigint);
      }
      if (barPhase) bar.stop();
      saveGptq(q, out, { tokenizerDir: o.model });
      rmSync(ckpt, { force: true });
      const r = q.report;
      console.log(`\n${r.method} W${r.bits} g${r.groupSize} ${r.symmetric ? 'sym' : 'asym'}: training ${r.trainSeconds.toFixed(1)} s, total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      if (r.lossCurve.length) {
        const k = Math.max(1, Math.floor(r.lossCurve.length / 20));
        const avg = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
        console.log(`loss: first ${k} steps ${avg(r.lossCurve.slice(0, k)).toFixed(4)} -> last ${k} steps ${avg(r.lossCurve.slice(-k)).toFixed(4)} (curve: ${path.join(out, 'loss.svg')})`);
      }
      console.log('relative weight error ||Q(W) - W|| / ||W||, RTN before -> after (scales undone):');
      for (const l of r.linears) console.log(`  ${l.name.padEnd(40)} ${l.errorBefore.toFixed(5)} -> ${l.errorAfter.toFixed(5)}`);
      if (o.evalIds) {
        const { ids, window } = readEvalIds(o.evalIds);
        const fp = await model.perplexity(ids, window);
        const back = TrainableLlama.fromHfDir(out);  // the saved GPTQ checkpoint, dequantized to fp32
        const qp = await back.perplexity(ids, window);
        console.log(`perplexity (${path.basename(o.evalIds)}): fp32 ${fp.ppl.toFixed(4)}, ${r.method} (reloaded from ${out}) ${qp.ppl.toFixed(4)}`);
      }
      if (dm) await reportDemo(dm, q, o.bits as Bits, o.groupSize, o.sym === true);
      console.log(`saved ${out}`);
    });
}
