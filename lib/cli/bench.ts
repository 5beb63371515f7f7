// `quantform bench <subcommand>`: each benchmark registers itself onto this command
// from its own file (bench-matmul.ts, ...).
import { Command } from 'commander';

export function benchCommand(program: Command): Command {
  return program.command('bench').description('micro-benchmarks against the machine limits measured in the same run');
}
