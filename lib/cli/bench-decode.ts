// quantform bench decode: a TinyLlama-shaped INT4 model end to end next to
// node-llama-cpp and onnxruntime on the same weights (lib/bench/decode.ts).
import { Command, InvalidArgumentError, Option } from 'commander';
import { benchDecode, DECODE_ENGINES, runChild, type DecodeBenchResult, type DecodeEngine } from '../bench/decode.js';
import { formatTable } from '../bench/stats.js';
import type { MatmulAccuracy } from '../ops/matmul.js';
import { intOption } from './model-arg.js';

function intList(v: string): number[] {
  const out = v.split(',').map((s) => Number(s.trim()));
  if (out.some((n) => !Number.isInteger(n) || n <= 0)) throw new InvalidArgumentError(`Expected comma-separated positive integers but received '${v}'`);
  return out;
}

function engineList(v: string): DecodeEngine[] {
  const out = v.split(',').map((s) => s.trim());
  const bad = out.find((e) => !(DECODE_ENGINES as readonly string[]).includes(e));
  if (bad !== undefined) throw new InvalidArgumentError(`Expected engines among ${DECODE_ENGINES.join(', ')} but received '${bad}'`);
  return out as DecodeEngine[];
}

const ACCURACIES: readonly MatmulAccuracy[] = ['fp32', 'bf16', 'int8'];
function accuracyList(v: string): MatmulAccuracy[] {
  const out = v.split(',').map((s) => s.trim());
  const bad = out.find((a) => !(ACCURACIES as readonly string[]).includes(a));
  if (bad !== undefined) throw new InvalidArgumentError(`Expected accuracies among ${ACCURACIES.join(', ')} but received '${bad}'`);
  return out as MatmulAccuracy[];
}

const f = (x: number | null, d = 1) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(d));

/** The table the README and the reports carry: one row per engine and model. */
export function formatDecodeTable(r: DecodeBenchResult): string {
  const head = ['model', 'engine', 'load s', ...r.prompts.map((T) => `prefill ${T} tok/s`), `decode tok/s`, '% of read BW',
    ...(r.longContext ? [`decode @${r.longContext} tok/s`, '% of read BW'] : [])];
  const rows: (string | number)[][] = [];
  for (const m of r.models) {
    const q = m.engines.find((e) => e.engine === 'quantform');
    for (const e of m.engines) {
      if (e.skipped) {
        rows.push([`${m.layers} layers`, e.label, `skipped: ${e.skipped.slice(0, 60)}`]);
        continue;
      }
      rows.push([`${m.layers} layers`, e.label, f(e.loadSeconds, 2), ...r.prompts.map((T) => f(e.prefillTokensPerSecond[T], 0)),
        f(e.decodeShortTokensPerSecond), f(e.decodeShortPctOfRead, 0),
        ...(r.longContext ? [f(e.decodeLongTokensPerSecond), f(e.decodeLongPctOfRead, 0)] : [])]);
    }
    if (q && !q.skipped)
      for (const e of m.engines.filter((x) => x.engine !== 'quantform' && !x.skipped))
        rows.push([`${m.layers} layers`, `quantform / ${e.label}`, f(e.loadSeconds / q.loadSeconds, 2),
          ...r.prompts.map((T) => `${f(q.prefillTokensPerSecond[T] / e.prefillTokensPerSecond[T], 2)}x`),
          `${f(q.decodeShortTokensPerSecond / e.decodeShortTokensPerSecond, 2)}x`, '',
          ...(r.longContext ? [`${f((q.decodeLongTokensPerSecond ?? NaN) / (e.decodeLongTokensPerSecond ?? NaN), 2)}x`, ''] : [])]);
  }
  return formatTable(head, rows);
}

export function registerBenchDecode(bench: Command): void {
  bench
    .command('decode')
    .description('a TinyLlama-shaped INT4 g32 model end to end (load, prefill, decode) vs node-llama-cpp (GGUF Q4_0) and onnxruntime (MatMulNBits) on the same weights')
    .option('--layers <list>', 'block counts of the TinyLlama shape (12: 0.6B parameters; 22: TinyLlama-1.1B)', intList, [12])
    .option('--rounds <n>', 'interleaved rounds, each engine in a fresh process (medians reported)', intOption, 3)
    .option('--threads <n>', 'threads of every engine', intOption, 2)
    .option('--prompts <list>', 'prefill prompt lengths', intList, [8, 256, 1024])
    .option('--decode-tokens <n>', 'greedy tokens per decode measurement', intOption, 64)
    .option('--long-context <n>', 'context before the second decode measurement (0 skips it)', intOption, 2048)
    .option('--engines <list>', `engines to run (${DECODE_ENGINES.join(',')})`, engineList)
    .option('--no-llama-cpp-single-thread', 'skip the extra one-thread node-llama-cpp run')
    .option('--accuracy <list>', "quantform's matmul accuracies, one row each (fp32, bf16, int8; see loadModel's accuracy)", accuracyList, ['fp32'])
    .option('--ort-accuracy-level <n>', "MatMulNBits accuracy_level of the ONNX export (4: int8 activations, onnxruntime's fastest CPU path)", intOption, 4)
    .option('--dir <dir>', 'where the model files go (default: a temp dir, removed after)')
    .option('--keep', 'keep the model files in --dir and reuse them next time')
    .option('--json', 'print JSON')
    .addOption(new Option('--child <spec>', 'internal: run one engine of a round').hideHelp())
    .action(async (o: { layers: number[]; rounds: number; threads: number; prompts: number[]; decodeTokens: number; longContext: number;
      engines?: DecodeEngine[]; llamaCppSingleThread: boolean; accuracy: MatmulAccuracy[]; ortAccuracyLevel: number; dir?: string; keep?: boolean; json?: boolean; child?: string }) => {
      if (o.child) {
        process.stdout.write(`\n${JSON.stringify(await runChild(o.child))}\n`);
        return;
      }
      const r = await benchDecode({ layers: o.layers, rounds: o.rounds, threads: o.threads, prompts: o.prompts, decodeTokens: o.decodeTokens,
        longContext: o.longContext, engines: o.engines, llamaCppSingleThread: o.llamaCppSingleThread, accuracies: o.accuracy, ortAccuracyLevel: o.ortAccuracyLevel, dir: o.dir, keep: o.keep,
        log: o.json ? undefined : (s) => console.log(s) });
      if (o.json) {
        console.log(JSON.stringify(r, null, 2));
        return;
      }
      const m = r.machine;
      console.log(`\n${m.cpu}, tier ${m.tier}, ${r.threads} threads; memory read ${m.readGBpsMedian.toFixed(1)} GB/s (median of ${m.readGBps.length} probes ` +
        `between the runs: ${m.readGBps.map((x) => x.toFixed(1)).join(' ')}); load average ${m.loadAverage.map((x) => x.toFixed(2)).join(' ')}`);
      for (const x of r.models)
        console.log(`${x.layers} layers: ${(x.params / 1e9).toFixed(2)} B parameters, ${(x.weightBytesPerToken / 1e6).toFixed(0)} MB of INT4 weights read per decoded token`);
      console.log(formatDecodeTable(r));
      for (const x of r.models) for (const e of x.engines) if (!e.skipped) console.log(`${x.layers} layers, ${e.label}: ${e.path}`);
    });
}
