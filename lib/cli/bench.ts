// The `bench` command group: each benchmark registers its own subcommand
// (bench-model.ts here; bench matmul / bench quant from their own files).
import type { Command } from 'commander';

export function benchCommand(program: Command): Command {
  const existing = program.commands.find((c) => c.name() === 'bench');
  return existing ?? program.command('bench').description('benchmarks on real LLM shapes, with ratios to the machine limit');
}
