// quantform bench prefill: W4A8 (FPTQuant's integer kernels) prefill and decode against fp32,
// W4A16 and llama.cpp Q4_0 on the same weights (lib/bench/prefill.ts).
import os from 'node:os';
import type { Command } from 'commander';
import { benchPrefill, type PrefillRow } from '../bench/prefill.js';
import { formatTable } from '../bench/stats.js';
import { intOption } from './model-arg.js';

export function registerBenchPrefill(bench: Command): void {
  bench
    .command('prefill')
    .description('prefill / decode of a synthetic TinyLlama-shaped model: fp32, W4A16, W4A8KV8 (FPTQuant kernels), llama.cpp Q4_0 on the same weights')
    .option('--layers <n>', 'TinyLlama blocks to build (22 in the real model)', intOption, 4)
    .option('--tokens <n>', 'prompt tokens', intOption, 512)
    .option('--decode <n>', 'decode steps timed after a 32-token prompt', intOption, 16)
    .option('--rounds <n>', 'interleaved rounds (medians reported)', intOption, 5)
    .option('--dir <dir>', 'where the temporary checkpoints go (default: the OS temp dir)')
    .option('--no-peer', 'skip llama.cpp (node-llama-cpp in test/peers)')
    .option('--json', 'print JSON')
    .action(async (o: { layers: number; tokens: number; decode: number; rounds: number; dir?: string; peer: boolean; json?: boolean }) => {
      const load0 = os.loadavg()[0];
      const r = await benchPrefill({ layers: o.layers, tokens: o.tokens, decode: o.decode, rounds: o.rounds, dir: o.dir, peer: o.peer,
        log: o.json ? undefined : (s) => console.log(s) });
      if (o.json) {
        console.log(JSON.stringify(r, null, 2));
        return;
      }
      const fp = r.rows[0], w4a16 = r.rows[1], peer = r.rows.find((x) => x.name.startsWith('llama.cpp'));
      console.log(`\n${r.layers} TinyLlama blocks (hidden 2048, intermediate 5632, 32/4 heads, vocab 32000), prefill ${r.tokens} tokens ` +
        `(logits of the last), decode after 32; medians of interleaved rounds. Machine in the same run: fp32 FMA ${r.fmaGflops.toFixed(0)} GFLOP/s, ` +
        `int8 VNNI ${r.vnniGops === null ? 'n/a' : `${r.vnniGops.toFixed(0)} GOP/s`}, int8 AMX ${r.amxInt8Gops === null ? 'n/a' : `${r.amxInt8Gops.toFixed(0)} GOP/s`}; ` +
        `load average ${load0.toFixed(1)} -> ${r.loadAverage[0].toFixed(1)} on ${os.cpus().length} CPUs`);
      const peakOf = (k: PrefillRow['peak']) => (k === 'fma' ? r.fmaGflops : k === 'vnni' ? r.vnniGops : k === 'amx' ? r.amxInt8Gops : null);
      console.log(formatTable(['model', 'prefill s', 'tokens/s', 'vs fp32', 'vs llama.cpp', 'linears GOP/s', '% of peak (unit)', 'decode ms/token', 'decode vs W4A16'],
        r.rows.map((x) => {
          const gops = r.linearOps / x.prefillSeconds / 1e9, pk = peakOf(x.peak);
          return [x.name, x.prefillSeconds.toFixed(3), x.prefillTokensPerSecond.toFixed(0), (fp.prefillSeconds / x.prefillSeconds).toFixed(2),
            peer ? (peer.prefillSeconds / x.prefillSeconds).toFixed(2) : '-', gops.toFixed(0), pk ? `${((100 * gops) / pk).toFixed(0)} (${x.peak})` : '-',
            (1000 * x.decodeSecondsPerToken).toFixed(1), (w4a16.decodeSecondsPerToken / x.decodeSecondsPerToken).toFixed(2)];
        })));
      if (r.peerSkipped) console.log(`llama.cpp: ${r.peerSkipped}`);
    });
}
