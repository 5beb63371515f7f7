// quantform quantize: RTN or a trainable method on any checkpoint `eval` loads
// (Hugging Face single or sharded, llama2.c .bin, GGUF, GPTQ directories), written
// as a GPTQ directory. RTN streams tensor by tensor (bounded memory at any model
// size); trainable methods show a progress bar (step, loss, steps/s, ETA), write
// atomic checkpoints every N steps next to the output, continue with --resume,
// and leave a resumable checkpoint on Ctrl-C. The output directory appears only
// when complete. Perplexities come from the one evaluator (lib/eval/perplexity.ts)
// on loaded models: fp32, and the result as saved.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { calibrationFromText, type CalibrationSet } from '../engine/calib.js';
import { QuantformError } from '../errors.js';
import { evaluatePerplexity } from '../eval/perplexity.js';
import { tokenizerDirOf, type SaveOptions } from '../export/save.js';
import { getMethod, methodNames, type ProgressEvent } from '../methods/index.js';
import { checkpointLinears, checkSameModel, EFFICIENTQAT_RECIPES, type EfficientQatOptions, type EfficientQatPhases } from '../methods/efficientqat.js';
import { quantizeCheckpoint, quantizeCheckpointE2eQp, quantizeModel, quantizedCheckpoint, rtnCheckpoint, type QuantizeModelOptions, type QuantizeReport } from '../methods/quantize-model.js';
import { shapeOfConfig, TrainableLlama } from '../engine/llama.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { Model, loadModel, openCheckpoint } from '../model/model.js';
import { SyntheticCheckpoint } from '../model/synthetic.js';
import type { Bits } from '../ops/quant.js';
import type { FptQuantOptions } from '../methods/fptquant.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import {
  DEFAULT_CALIBRATION, DEFAULT_EVAL_TEXT, DEFAULT_EVAL_TOKENS, DEFAULT_FPT_JOB, DEFAULT_JOB, DEFAULT_MODEL, SYNTHETIC_MODEL, readAssetText,
} from './demo.js';
import { parseJsonObject } from '../io/json.js';
import { intOption } from './model-arg.js';
import { lockOutput } from './out-lock.js';
import { checkExportFormat, runExport } from './export.js';

interface QuantizeCliOpts {
  model?: string;
  tokenizer?: string;
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
  evalText?: string;
  evalTokens?: number;
  maxMemory?: number;
  actDtype: 'f32' | 'bf16';
  frozenDtype?: 'f32' | 'bf16';
  shardSize: number;
  format?: string;
  damp?: number;
  gptqParams?: 'updated' | 'batch-start' | 'best';
  actOrder?: boolean;
  wBits?: number;
  aBits?: number;
  kvBits?: number;
  residualRotation?: boolean;
  onlineHadamard?: boolean;
  valueHadamard?: boolean;
  clipNorm?: number;
  trainWeightRanges?: boolean;
  qpSteps?: number;
  qpLr?: number;
  fptStages?: 'none' | 'local' | 'local+e2e';
  fptWeights?: 'gptq' | 'rtn';
  localSteps?: number;
  e2eSteps?: number;
  localLr?: number;
  e2eLr?: number;
  noTransforms?: string;
  phases?: EfficientQatPhases;
  init?: 'rtn' | 'gptq';
  start?: string;
  recipe?: string;
  epochs?: number;
  e2eEpochs?: number;
}

function numberOption(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`Expected a number but received '${v}'`);
  return n;
}

/** Evaluation ids of a shared/data/reference protocol file (token_ids, window). */
export function readEvalIds(file: string): { ids: number[]; window: number } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  const j = parseJsonObject(text, file) as { token_ids?: number[]; window?: number };
  if (!Array.isArray(j.token_ids)) throw new QuantformError('QF_CORRUPT_FILE', `${file} holds no token_ids`);
  return { ids: j.token_ids, window: j.window ?? 256 };
}

/** ./quantized-<model>-<method>-w<bits>g<group>[-sym], numbered if taken. */
function defaultOut(name: string, o: QuantizeCliOpts): string {
  const base = o.method === 'fptquant'
    ? `quantized-${name}-fptquant-w${o.bits}a${o.aBits ?? 8}kv${o.kvBits ?? o.aBits ?? 8}${o.groupSize < 1 << 20 ? `g${o.groupSize}` : ''}`
    : `quantized-${name}-${o.method}-w${o.bits}g${o.groupSize}${o.sym ? '-sym' : ''}`;
  let out = base;
  for (let i = 2; existsSync(out); i++) out = `${base}-${i}`;
  return out;
}

/** Text as documents for calibration: a bundled asset without its notice lines, else the file as it is. */
function readText(file: string, bundled: boolean): string {
  if (bundled) return readAssetText(file);
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuantformError('QF_IO', `Cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
}

interface EvalSpec {
  label: string;
  run(model: Model): Promise<{ ppl: number; nPredicted: number }>;
}

function evalSpec(o: QuantizeCliOpts, defaultJob: boolean): EvalSpec | null {
  if (o.evalIds) {
    const { ids, window } = readEvalIds(o.evalIds);
    return { label: path.basename(o.evalIds), run: (m) => evaluatePerplexity(m, { ids }, { ctx: window, stride: window }) };
  }
  const file = o.evalText ?? (defaultJob ? DEFAULT_EVAL_TEXT() : undefined);
  if (!file) return null;
  const text = readText(file, !o.evalText);
  const maxTokens = o.evalTokens ?? (defaultJob ? DEFAULT_EVAL_TOKENS : undefined);
  return { label: path.basename(file), run: (m) => evaluatePerplexity(m, text, { ctx: 256, stride: 256, maxTokens }) };
}

function progressBar(blockLoss: boolean): { onProgress: (e: ProgressEvent) => void; stop: () => void } {
  const bar = new cliProgress.SingleBar({
    format: '{phase} |{bar}| {value}/{total} loss {loss} | {sps} steps/s | ETA {eta_formatted}',
    hideCursor: true, etaBuffer: 50,
  }, cliProgress.Presets.shades_classic);
  let phase = '';
  return {
    onProgress: (e) => {
      const key = e.stage ?? e.phase;  // a new bar per phase and per method stage (EfficientQAT's Block-AP, E2E-QP)
      if (key !== phase) {
        if (phase) bar.stop();
        phase = key;
        bar.start(e.totalSteps, e.step - 1, { phase: key, loss: '-', sps: '-' });
      }
      bar.update(e.step, { phase: key + (e.layer !== undefined && ((e.phase === 'train' && (blockLoss || e.stage === 'block-ap')) || e.phase === 'local' || e.phase === 'calibrate') ? ` block ${e.layer}` : ''),
        loss: Number.isFinite(e.loss) ? e.loss.toFixed(4) : '-', sps: e.stepsPerSecond ? e.stepsPerSecond.toFixed(1) : '-' });
    },
    stop: () => { if (phase) bar.stop(); phase = ''; },
  };
}

export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .description(`quantize a Llama checkpoint (${methodNames().join(' | ')}) and save it in GPTQ format; without --model, the bundled stories260K`)
    .option('--model <path>', 'what `eval --model` accepts: Hugging Face directory (single or sharded safetensors), llama2.c .bin, .gguf, GPTQ directory; ' +
      "'synthetic' for the built-in random Llama with outlier channels; default: the bundled stories260K with TinyStories calibration and held-out text")
    .option('--tokenizer <file>', 'llama2.c tokenizer.bin when it is not next to a .bin checkpoint')
    .option('--method <name>', `method: ${methodNames().join(' | ')}`, 'teq')
    .option('--bits <n>', 'bits per weight: 2, 3, 4 or 8', intOption, 4)
    .option('--group-size <n>', 'weights per quantization group along the input dimension', intOption, 128)
    .option('--sym', 'symmetric quantization (no zero points; the default job uses it)')
    .option('--no-sym', 'asymmetric quantization (integer zero points)')
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
    .option('--damp <x>', 'GPTQ: fraction of the mean Hessian diagonal added to it', numberOption, 0.01)
    .option('--act-order', "GPTQ (and FPTQuant's GPTQ): columns in order of decreasing Hessian diagonal (the reference's --act-order); weights per output channel only")
    .option('--gptq-params <from>', "GPTQ: group scale/zero chosen from the 'updated' weights, as the reference code from the lazy batch's 'batch-start' weights, or the 'best' of both per group", 'updated')
    .option('--w-bits <n>', 'FPTQuant: weight bits (the same as --bits)', intOption)
    .option('--a-bits <n>', 'FPTQuant: static activation bits, 8 | 4 | 16 (fp activations)', intOption)
    .option('--kv-bits <n>', 'FPTQuant: KV-cache bits, 8 | 4 | 16 (default: --a-bits)', intOption)
    .option('--residual-rotation', 'FPTQuant: merge a randomised Hadamard rotation of the residual stream (the LM head is untied)')
    .option('--online-hadamard', 'FPTQuant: grouped Hadamard before down_proj at run time (largest power-of-two block dividing the intermediate size)')
    .option('--value-hadamard', 'FPTQuant: start T_v from a Hadamard rotation of each value head instead of the identity (head size a power of two)')
    .option('--clip-norm <p>', "FPTQuant: GPTQ's clipping search of the weight ranges, its norm (default 2; the reference GPTQ's --mse uses 2.4; 0: min/max, the FPTQuant reference's)", Number)
    .option('--no-train-weight-ranges', 'FPTQuant: skip the stage after GPTQ that trains every weight step size and activation / KV range end to end (JSD to the fp model)')
    .option('--qp-steps <n>', 'FPTQuant: steps of that stage (default 400)', intOption)
    .option('--qp-lr <x>', 'FPTQuant: its learning rate on the log step sizes and ranges (default 1e-3)', Number)
    .option('--fpt-stages <s>', "FPTQuant: 'local+e2e' (default), 'local', or 'none' (ranges only)")
    .option('--fpt-weights <q>', "FPTQuant: weight quantizer after the merge, 'gptq' (default) or 'rtn'")
    .option('--no-transforms <list>', 'FPTQuant: transforms to leave out, comma-separated from qk,v,mlp,sn (ablations)')
    .option('--local-steps <n>', 'FPTQuant: local-stage steps per block (default 150)', intOption)
    .option('--e2e-steps <n>', 'FPTQuant: end-to-end steps (default 200)', intOption)
    .option('--local-lr <x>', 'FPTQuant: local-stage learning rate (default 5e-3)', numberOption)
    .option('--e2e-lr <x>', "end-to-end learning rate: FPTQuant's (default 6e-3), EfficientQAT's E2E-QP (the recipe's when not given)", numberOption)
    .option('--phases <which>', 'EfficientQAT: block-ap | e2e-qp | both; e2e-qp on a GPTQ --model refines its step sizes', 'both')
    .option('--init <rtn|gptq>', "EfficientQAT: Block-AP's start, min-max RTN (the reference) or GPTQ's codes and scales (the recipe's when not given)")
    .option('--start <dir>', 'EfficientQAT with --phases e2e-qp: the GPTQ checkpoint of --model whose step sizes E2E-QP trains')
    .option('--recipe <name>', `EfficientQAT hyperparameters: ${Object.keys(EFFICIENTQAT_RECIPES).join(' | ')} (README)`, 'reference')
    .option('--epochs <n>', 'EfficientQAT: Block-AP passes over the calibration windows (default 2)', intOption)
    .option('--e2e-epochs <n>', 'EfficientQAT: E2E-QP passes over the calibration windows (the recipe\'s when not given)', intOption)
    .option('--eval-ids <file>', 'perplexity protocol JSON (shared/data/reference/ppl_*.json): evaluate fp32 and the result')
    .option('--eval-text <file>', 'held-out text to evaluate fp32 and the result on (ctx 256, stride 256)')
    .option('--eval-tokens <n>', 'score at most this many predictions of --eval-text', intOption)
    .option('--max-memory <GB>', 'memory quantization may use: one block, its working state, and the calibration activations in RAM (the rest spill to a temp file); default: what the OS reports available', numberOption)
    .option('--act-dtype <f32|bf16>', 'storage of the calibration activations (bf16: half the memory, rounded)', 'f32')
    .option('--frozen-dtype <f32|bf16>', 'end-to-end losses: frozen block weights (default: bf16 for BF16 checkpoints, else f32)')
    .option('--shard-size <GB>', 'split the output safetensors into shards of at most this size', numberOption, 5)
    .option('--format <gguf|onnx>', 'also export the saved checkpoint (quantform export) next to --out: <out>.gguf or <out>-onnx/')
    .action(async (o: QuantizeCliOpts, cmd: Command) => {
      const t0 = performance.now();
      if (o.format !== undefined) checkExportFormat(o.format);
      const defaultJob = !o.model;
      const fptJob = o.method === 'fptquant';
      if (defaultJob)
        for (const [k, v] of Object.entries(fptJob ? DEFAULT_FPT_JOB : DEFAULT_JOB))
          if (cmd.getOptionValueSource(k) !== 'cli') (o as unknown as Record<string, unknown>)[k] = v;
      if (fptJob) {
        if (o.wBits !== undefined) o.bits = o.wBits;
        // FPTQuant's weights: symmetric (the integer kernels read no zero points), per output channel unless --group-size
        if (cmd.getOptionValueSource('sym') !== 'cli') o.sym = true;
        if (cmd.getOptionValueSource('groupSize') !== 'cli') o.groupSize = 1 << 20;
      }
      const synthetic = o.model === 'synthetic';
      const source = defaultJob ? DEFAULT_MODEL.dir() : synthetic ? 'synthetic' : path.resolve(o.model!);
      const name = defaultJob ? DEFAULT_MODEL.name : synthetic ? 'synthetic' : path.basename(source).replace(/\.(bin|gguf)$/, '');
      const out = path.resolve(o.out ?? defaultOut(name, o));
      // held until this process exits, also on errors; a SIGKILL leaves a stale lock, taken over by the next run
      process.once('exit', lockOutput(out));
      if (existsSync(out)) throw new QuantformError('QF_IO', `Output directory ${out} already exists: choose another --out or remove it`);
      if (!(o.shardSize > 0)) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected a positive number of GB for --shard-size but received ${o.shardSize}`);
      const ck: Checkpoint = synthetic ? new SyntheticCheckpoint(SYNTHETIC_MODEL) : openCheckpoint(source, { tokenizer: o.tokenizer });
      try {
        if (o.maxMemory !== undefined && !(o.maxMemory > 0))
          throw new QuantformError('QF_INVALID_ARGUMENT', `Expected a positive number of GB for --max-memory but received ${o.maxMemory}`);
        const maxMemoryBytes = o.maxMemory !== undefined ? o.maxMemory * 1e9 : os.freemem();
        const budgetLabel = o.maxMemory !== undefined ? `--max-memory ${o.maxMemory} GB` : `The ${(maxMemoryBytes / 1e9).toFixed(2)} GB of available memory`;
        for (const [flag, v] of [['--act-dtype', o.actDtype], ['--frozen-dtype', o.frozenDtype]] as const)
          if (v !== undefined && v !== 'f32' && v !== 'bf16') throw new QuantformError('QF_INVALID_ARGUMENT', `Expected f32 or bf16 for ${flag} but received '${v}'`);
        const method = getMethod(o.method);
        const runsGptq = o.method === 'gptq' || (o.method === 'fptquant' && o.fptWeights !== 'rtn') || (o.method === 'efficientqat' && o.init === 'gptq');
        if (o.actOrder && !runsGptq)
          throw new QuantformError('QF_INVALID_ARGUMENT', `--act-order applies to GPTQ (--method gptq, fptquant, or efficientqat --init gptq), not to ${o.method}${o.fptWeights === 'rtn' ? ' --fpt-weights rtn' : ''}`);
        if (defaultJob)
          console.log(`no --model: ${o.method} W${o.bits} ${o.groupSize >= 1 << 20 ? 'per-channel' : `g${o.groupSize}`}${o.sym ? ' sym' : ''}${fptJob ? ` A${o.aBits ?? 8} KV${o.kvBits ?? o.aBits ?? 8}` : ''} on the bundled ${DEFAULT_MODEL.name} (${ck.config.nLayers} layers, hidden ${ck.config.dim}), ` +
            'calibration TinyStories stories 201-400, evaluation on held-out stories 1-64; pass --model PATH for your own checkpoint');
        const tokenizer = await ck.tokenizer();
        const save: SaveOptions = { tokenizerDir: tokenizerDirOf(ck), tokenizer, maxShardBytes: o.shardSize * 1e9 };
        const evaluation = evalSpec(o, defaultJob);
        if (method.needsCalibration && o.seqLen > ck.config.maxSeq)
          throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --seq-len <= ${ck.config.maxSeq} (the model's context) but received ${o.seqLen}`);
        const calibration = method.needsCalibration ? calibrationOf(o, defaultJob, synthetic, tokenizer) : undefined;
        const ckpt = `${out}.ckpt.safetensors`;
        const trains = method.needsCalibration;
        if (trains && !o.resume && existsSync(ckpt))
          throw new QuantformError('QF_IO', `A checkpoint of an earlier run exists at ${ckpt}: pass --resume to continue it, or delete it`);
        // a run killed before its first checkpoint left nothing to resume: it starts over
        const resume = trains && o.resume === true && existsSync(ckpt);
        if (trains && o.resume && !resume) console.log(`--resume: no checkpoint at ${ckpt}, starting from step 0`);
        const abort = new AbortController();
        const onSigint = () => {
          process.stderr.write(trains ? '\nCtrl-C: saving a checkpoint after this step...\n' : '\nCtrl-C: stopping; nothing is written...\n');
          abort.abort();
        };
        process.on('SIGINT', onSigint);
        const bar = progressBar(o.loss === 'block');
        const opts: QuantizeModelOptions = {
          method: o.method, bits: o.bits as Bits, groupSize: o.groupSize, symmetric: o.sym === true, steps: o.steps, lr: o.lr,
          batchSize: o.batchSize, loss: o.loss, seed: o.seed, extraScales: o.teqExtra === true, calibration,
          gptq: { damp: o.damp, paramsFrom: o.gptqParams, ...(o.actOrder ? { actOrder: true } : {}) }, maxMemoryBytes, activationDtype: o.actDtype, frozenDtype: o.frozenDtype,
          fpt: fptJob ? fptOptionsOf(o, (k) => cmd.getOptionValueSource(k) === 'cli' || (defaultJob && k in DEFAULT_FPT_JOB)) : undefined,
        };
        let report: QuantizeReport;
        let startLabel = 'fp32';
        try {
          if (o.method === 'efficientqat' && o.phases === 'e2e-qp' && !o.start && ck.quantizedWeight?.('layers.0.wq')) {
            // E2E-QP of a quantized checkpoint: the model stays packed (no fp32 copy of its linears)
            for (const k of ['bits', 'groupSize', 'sym'])
              if (cmd.getOptionValueSource(k) === 'cli')
                throw new QuantformError('QF_INVALID_ARGUMENT', `--${k === 'groupSize' ? 'group-size' : k} does not apply to E2E-QP of ${source}: it keeps the checkpoint's quantization`);
            report = await quantizeCheckpointE2eQp(ck, out, { calibration: calibration!, seed: o.seed, efficientqat: eqatRecipe(o, o.bits as Bits) },
              { signal: abort.signal, onProgress: bar.onProgress, save, checkpoint: { path: ckpt, every: o.checkpointEvery }, resume });
            startLabel = `start (${path.basename(source)})`;
          } else {
            if (o.method === 'efficientqat') efficientQatOptions(o, cmd, opts, ck);
            report = await quantizeCheckpoint(ck, out, opts, {
              signal: abort.signal, onProgress: bar.onProgress, save, budgetLabel,
              ...(trains ? { checkpoint: { path: ckpt, every: o.checkpointEvery }, resume } : {}),
            });
          }
          bar.stop();
          rmSync(ckpt, { force: true });
        } catch (e) {
          bar.stop();
          if (e instanceof QuantformError && e.code === 'QF_ABORTED') {
            console.error(trains ? `${e.message}: ${ckpt}. Continue with the same command and --resume.` : `${e.message}.`);
            process.exitCode = 130;
            return;
          }
          throw e;
        } finally {
          bar.stop();
          process.off('SIGINT', onSigint);
        }
        printReport(report, t0, out);
        // the baseline the method is measured against: plain RTN of the same weights, quantized as the runtime loads them
        // (FPTQuant: and the same static activation / KV quantizers, ranges by the same search, no transforms, in memory)
        const rtn = !evaluation || o.method === 'rtn' ? null
          : fptJob ? new Model(quantizedCheckpoint(await quantizeModel(TrainableLlama.fromCheckpoint(ck), { ...opts, fpt: {
            ...opts.fpt, stages: 'none', weights: 'rtn', qk: false, v: false, mlp: false, residualScaling: false, residualRotation: false,
          } }), tokenizer), tokenizer)
          : new Model(rtnCheckpoint(ck, { bits: o.bits as Bits, groupSize: o.groupSize, symmetric: o.sym === true }), tokenizer);
        if (evaluation) await printPerplexities(evaluation, synthetic ? ck : source, o.tokenizer, rtn, out, report.method, startLabel);
        console.log(`saved ${out}`);
      } finally {
        ck.close();
      }
      if (o.format) await runExport({ model: out, format: o.format });
    });
}

/** FPTQuant's options from the CLI flags (validated by the method: a-bits other than 4, 8, 16 is an error). */
function fptOptionsOf(o: QuantizeCliOpts, given: (key: string) => boolean): FptQuantOptions {
  const off = new Set((o.noTransforms ?? '').split(',').map((t) => t.trim()).filter((t) => t.length > 0));
  for (const t of off)
    if (!['qk', 'v', 'mlp', 'sn'].includes(t))
      throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --no-transforms from qk, v, mlp, sn but received '${t}'`);
  return {
    actBits: o.aBits ?? 8, kvBits: o.kvBits ?? o.aBits ?? 8, residualRotation: o.residualRotation === true, onlineHadamard: o.onlineHadamard === true,
    valueHadamard: o.valueHadamard === true, clipNorm: o.clipNorm, qpSteps: o.qpSteps, qpLr: o.qpLr,
    trainWeightRanges: o.trainWeightRanges !== false,
    stages: o.fptStages, weights: o.fptWeights, localSteps: o.localSteps, e2eSteps: o.e2eSteps, localLr: o.localLr, e2eLr: o.e2eLr,
    batchSize: given('batchSize') ? o.batchSize : undefined, seed: o.seed,
    qk: !off.has('qk'), v: !off.has('v'), mlp: !off.has('mlp'), residualScaling: !off.has('sn'),
  };
}

/** The recipe's EfficientQAT options with the command line's overrides. */
function eqatRecipe(o: QuantizeCliOpts, bits: Bits): EfficientQatOptions {
  const recipe = EFFICIENTQAT_RECIPES[o.recipe ?? 'reference'];
  if (!recipe) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected --recipe ${Object.keys(EFFICIENTQAT_RECIPES).join(' or ')} but received '${o.recipe}'`);
  const eq: EfficientQatOptions = { ...recipe(bits), phases: o.phases };
  if (o.init !== undefined) eq.init = o.init;
  if (o.epochs !== undefined) eq.epochs = o.epochs;
  if (o.e2eEpochs !== undefined) eq.e2eEpochs = o.e2eEpochs;
  if (o.e2eLr !== undefined) eq.e2eLr = o.e2eLr;
  return eq;
}

/**
 * EfficientQAT's options from the command line. E2E-QP alone on a quantized --model (or
 * --start) refines that checkpoint's step sizes; its bits, group size and symmetry are
 * the checkpoint's unless given (then they must agree).
 */
function efficientQatOptions(o: QuantizeCliOpts, cmd: Command, opts: QuantizeModelOptions, ck: Checkpoint): void {
  const eq = eqatRecipe(o, opts.bits);
  let from: Checkpoint | null = null;
  if (o.start) {
    from = openCheckpoint(path.resolve(o.start));
    checkSameModel({ shape: shapeOfConfig(ck.config), embed: ck.weight('embed') }, from);
  } else if (o.phases === 'e2e-qp' && ck.quantizedWeight?.('layers.0.wq')) {
    from = ck;
  }
  if (from) {
    const { linears, quant } = checkpointLinears(from);
    for (const [k, v] of [['bits', quant.bits], ['groupSize', quant.groupSize], ['sym', quant.symmetric]] as const)
      if (cmd.getOptionValueSource(k) !== 'cli') (o as unknown as Record<string, unknown>)[k] = v;
    Object.assign(opts, { bits: o.bits as Bits, groupSize: o.groupSize, symmetric: o.sym === true });
    eq.start = linears;
    eq.phases = 'e2e-qp';
  }
  opts.efficientqat = eq;
}

function calibrationOf(o: QuantizeCliOpts, defaultJob: boolean, synthetic: boolean, tok: Tokenizer): CalibrationSet {
  const file = o.calib ?? (defaultJob || synthetic ? DEFAULT_CALIBRATION() : undefined);
  if (!file) throw new QuantformError('QF_INVALID_ARGUMENT', `Method '${o.method}' needs calibration text: pass --calib FILE`);
  const text = readText(file, !o.calib);
  const skip = o.skipDocs ?? (o.calib && text.includes('<|endoftext|>') ? 200 : 0);
  const cal = calibrationFromText(text, (d) => tok.encode(d, { bos: true }), { samples: o.samples, seqLen: o.seqLen, seed: o.seed, skipDocuments: skip });
  console.log(`calibration: ${o.samples} x ${o.seqLen} tokens from ${o.calib ?? path.basename(file)} (${cal.streamLength} tokens${skip ? ` after skipping ${skip} documents` : ''})`);
  return cal;
}

function printReport(r: QuantizeReport, t0: number, out: string): void {
  const a = r.activations;
  const acts = a ? ` A${a.actBits < 16 ? a.actBits : '16 (fp)'} KV${a.kvBits < 16 ? a.kvBits : '16 (fp)'} (static)${a.onlineTransforms.length ? `, online: ${a.onlineTransforms.join(', ')}` : ''}` : '';
  console.log(`\n${r.method} W${r.bits} ${r.groupSize >= 1 << 20 ? 'per-channel' : `g${r.groupSize}`} ${r.symmetric ? 'sym' : 'asym'}${acts}: training ${r.trainSeconds.toFixed(1)} s, total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const avg = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
  for (const c of r.lossCurves ?? (r.lossCurve.length ? [{ label: 'loss', losses: r.lossCurve }] : [])) {
    if (c.losses.length === 0) continue;
    const k = Math.max(1, Math.floor(c.losses.length / 20));
    console.log(`${c.label}: first ${k} steps ${avg(c.losses.slice(0, k)).toPrecision(5)} -> last ${k} steps ${avg(c.losses.slice(-k)).toPrecision(5)}`);
  }
  if (r.lossCurve.length) console.log(`loss curve${(r.lossCurves?.length ?? 0) > 1 ? 's' : ''}: ${path.join(out, 'loss.svg')}`);
  if (r.linears.length === 0) return;
  const mean = (f: (l: QuantizeReport['linears'][number]) => number) => r.linears.reduce((s, l) => s + f(l), 0) / r.linears.length;
  console.log(`relative weight error ||Q(W) - W|| / ||W||, mean over ${r.linears.length} linears: ${r.method === 'rtn' ? mean((l) => l.errorAfter).toFixed(5)
    : `RTN ${mean((l) => l.errorBefore).toFixed(5)} -> ${r.method} ${mean((l) => l.errorAfter).toFixed(5)} (${r.activations ? 'of the transformed weights' : 'scales undone'})`} (per linear: ${path.join(out, 'quantform_report.json')})`);
}

/** fp32 (the source, loaded), RTN (in memory, when the method is not RTN) and the result as saved (reloaded), on the same text. */
async function printPerplexities(ev: EvalSpec, source: string | Checkpoint, tokenizerFile: string | undefined, rtn: Model | null, out: string, method: string,
  sourceLabel: string): Promise<void> {
  const rows: [string, Model][] = [];
  try {
    rows.push([sourceLabel, typeof source === 'string' ? await loadModel(source, { tokenizer: tokenizerFile }) : new Model(source, await source.tokenizer())]);
    if (rtn) rows.push([method === 'fptquant' ? 'rtn (same static quantizers, no transforms)' : 'rtn', rtn]);
    rows.push([`${method} (reloaded from ${path.basename(out)})`, await loadModel(out)]);
    const parts: string[] = [];
    let n = 0;
    for (const [label, m] of rows) {
      const r = await ev.run(m);
      n = r.nPredicted;
      parts.push(`${label} ${r.ppl.toFixed(4)}`);
    }
    console.log(`perplexity on ${ev.label} (${n} predictions of text the calibration never saw): ${parts.join(', ')}`);
  } finally {
    for (const [, m] of rows) m.dispose();
  }
}
