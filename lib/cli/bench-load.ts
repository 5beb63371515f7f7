// quantform bench load: checkpoint load time (lib/bench/load.ts).
import type { Command } from 'commander';
import { benchLoad } from '../bench/load.js';
import { formatTable } from '../bench/stats.js';
import { intOption } from './model-arg.js';

export function registerBenchLoad(bench: Command): void {
  bench
    .command('load')
    .description('loadModel of a synthetic TinyLlama-shaped F16 GGUF and BF16 sharded safetensors, vs node-llama-cpp and the page-cache read speed')
    .option('--layers <n>', 'transformer blocks (12: 1.3 GB; 22: TinyLlama-1.1B, 2.2 GB)', intOption, 12)
    .option('--rounds <n>', 'interleaved rounds (medians reported)', intOption, 3)
    .option('--dir <dir>', 'where the temporary files go (default: the OS temp dir)')
    .option('--no-peer', 'skip node-llama-cpp')
    .option('--json', 'print JSON')
    .action(async (o: { layers: number; rounds: number; dir?: string; peer: boolean; json?: boolean }) => {
      const r = await benchLoad({ layers: o.layers, rounds: o.rounds, dir: o.dir, peer: o.peer, log: o.json ? undefined : (s) => console.log(s) });
      if (o.json) {
        console.log(JSON.stringify(r, null, 2));
        return;
      }
      const m = r.machine;
      console.log(`\nmachine (same run): one thread reads the file from the page cache at ${m.pageCacheReadGBps.toFixed(2)} GB/s; ` +
        `memory read ${m.memReadGBps.toFixed(1)} GB/s, copy ${m.memCopyGBps.toFixed(1)} GB/s on ${m.threads} threads`);
      console.log(formatTable(['load', 'median s', 'GB/s of file', '% of page-cache read'],
        r.rows.map((x) => [x.name, x.seconds.toFixed(3), x.gbps.toFixed(2), x.pctOfPageCacheRead.toFixed(0)])));
      if (r.peerSkipped) console.log(`node-llama-cpp: ${r.peerSkipped}`);
    });
}
