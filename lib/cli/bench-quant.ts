import type { Command } from 'commander';
import { writeFileAtomic } from '../io/atomic.js';
import { runQuantBench, type QuantBenchRow } from '../bench/quant.js';
import { formatTable } from '../bench/stats.js';
import { setThreads } from '../backend.js';
import type { Bits } from '../ops/quant.js';
import { parseIntOption, parseShapes } from './options.js';

const FULL_SHAPES = '4096x4096,11008x4096,4096x11008,32768x4096';
const QUICK_SHAPES = '4096x4096,11008x4096';

export function registerBenchQuant(bench: Command): void {
  bench
    .command('quant')
    .description('quantize / dequantize GB/s for each kernel tier vs the measured memory bandwidth')
    .option('--shapes <list>', `comma-separated NxK weight shapes (default ${FULL_SHAPES}; --quick: ${QUICK_SHAPES})`)
    .option('--bits <n>', 'bit width: 2, 3, 4 or 8', '4')
    .option('--group-size <n>', 'group size', '128')
    .option('--sym', 'symmetric quantization')
    .option('--iters <n>', 'timed runs per row (median reported)', '5')
    .option('--threads <n>', 'native threads (0 = one per core)', '0')
    .option('--quick', 'smaller shapes and fewer runs (under a minute)')
    .option('--json [file]', 'print JSON (or write it to file)')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      setThreads(parseIntOption(o.threads as string, 'threads', 0));
      const shapes = parseShapes((o.shapes as string | undefined) ?? (o.quick ? QUICK_SHAPES : FULL_SHAPES));
      const res = await runQuantBench({
        shapes,
        bits: parseIntOption(o.bits as string, 'bits', 2) as Bits,
        groupSize: parseIntOption(o.groupSize as string, 'group-size', 1),
        symmetric: Boolean(o.sym),
        iters: o.quick ? 3 : parseIntOption(o.iters as string, 'iters', 1),
        onRow: o.json === true ? undefined : (r: QuantBenchRow) => process.stderr.write(`  ${r.op} ${r.tier} ${r.N}x${r.K}: ${r.gbps.toFixed(1)} GB/s\n`),
      });
      if (o.json === true) {
        console.log(JSON.stringify(res, null, 2));
        return;
      }
      if (typeof o.json === 'string') writeFileAtomic(o.json, JSON.stringify(res, null, 2) + '\n');
      const m = res.machine;
      console.log(`\n${m.cpu}, ${m.threads} threads, best tier ${m.bestTier}`);
      console.log(`memory bandwidth (measured now, ${m.memory.bytes >> 20} MiB, best of 5): read ${m.memory.readGBps.toFixed(1)} GB/s, copy ${m.memory.copyGBps.toFixed(1)} GB/s\n`);
      console.log(formatTable(
        ['op', 'tier', 'shape', 'median ms', 'GB/s', '% of copy BW', 'x vs ref'],
        res.rows.map((r) => [r.op, r.tier, `${r.N}x${r.K}`, r.medianMs, r.gbps, r.pctOfCopyBandwidth, r.speedupVsRef === null ? '-' : r.speedupVsRef]),
      ));
      console.log(`\nbytes per op = N*K*4 (f32 weights) + packed codes + f32 scales/zeros; ${res.config.bits}-bit, group ${res.config.groupSize}, ${res.config.symmetric ? 'sym' : 'asym'}`);
    });
}
