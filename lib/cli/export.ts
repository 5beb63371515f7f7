// quantform export: a model quantform loads (a quantized GPTQ directory from
// `quantize`, an HF directory, a llama2.c or GGUF file) written as GGUF for
// llama.cpp / node-llama-cpp, or as an ONNX directory for onnxruntime /
// Transformers.js. Prints what became of every tensor (exact, rounded, re-encoded).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { QuantformError } from '../errors.js';
import { exportGguf, type ExportReport } from '../export/gguf.js';
import { exportOnnx } from '../export/onnx.js';

export interface ExportCliOpts {
  model: string;
  format: string;
  out?: string;
  exact?: boolean;
  floatType?: string;
  accuracyLevel?: number;
  json?: boolean;
}

/** <dir>.gguf / <dir>-onnx next to the model (a .gguf source gets -quantform.gguf). */
export function defaultExportOut(model: string, format: 'gguf' | 'onnx'): string {
  const abs = path.resolve(model).replace(/[\\/]+$/, '');
  const stem = abs.replace(/\.(gguf|bin)$/, '');
  if (format === 'onnx') return `${stem}-onnx`;
  return abs.endsWith('.gguf') ? `${stem}-quantform.gguf` : `${stem}.gguf`;
}

/** One line per kind of tensor: how many, what became of them, the worst error among them. */
export function printExportReport(r: ExportReport): void {
  console.log(`${r.format.toUpperCase()} ${r.out}: ${(r.bytes / 1e6).toFixed(2)} MB in ${r.seconds.toFixed(2)} s, from ${r.source}; vocabulary: ${r.vocab}`);
  if (r.ffnPadded) console.log(`  FFN dimension padded ${r.ffnPadded.from} -> ${r.ffnPadded.to} with zero channels (outputs unchanged)`);
  const groups = new Map<string, { n: number; rel: number; max: number; worst: string }>();
  for (const t of r.tensors) {
    const key = `${t.source} -> ${t.type}, ${t.fidelity}${t.note ? ` (${t.note})` : ''}`;
    const g = groups.get(key) ?? { n: 0, rel: 0, max: 0, worst: t.name };
    g.n++;
    if (t.relError > g.rel) { g.rel = t.relError; g.worst = t.name; }
    g.max = Math.max(g.max, t.maxAbsError);
    groups.set(key, g);
  }
  for (const [k, g] of groups)
    console.log(`  ${String(g.n).padStart(4)} x ${k}${g.max > 0 ? `: worst rel error ${g.rel.toExponential(2)} (${g.worst}), max |dw| ${g.max.toExponential(2)}` : ''}`);
}

/** --format of export and quantize, checked before any work starts. */
export function checkExportFormat(format: string): asserts format is 'gguf' | 'onnx' {
  if (format !== 'gguf' && format !== 'onnx') throw new QuantformError('QF_INVALID_ARGUMENT', `Expected gguf or onnx for --format but received '${format}'`);
}

export async function runExport(o: ExportCliOpts): Promise<ExportReport> {
  checkExportFormat(o.format);
  const out = path.resolve(o.out ?? defaultExportOut(o.model, o.format));
  if (existsSync(out)) throw new QuantformError('QF_IO', `Output ${out} already exists: choose another --out or remove it`);
  const ft = (o.floatType ?? 'f32').toUpperCase();
  if (ft !== 'F32' && ft !== 'F16') throw new QuantformError('QF_INVALID_ARGUMENT', `Expected f32 or f16 for --float-type but received '${o.floatType}'`);
  const r = o.format === 'gguf'
    ? await exportGguf(o.model, out, { exact: o.exact === true, floatType: ft })
    : await exportOnnx(o.model, out, { accuracyLevel: (o.accuracyLevel ?? 0) as 0 | 1 | 2 | 3 | 4 });
  if (o.json) console.log(JSON.stringify(r, null, 2));
  else printExportReport(r);
  return r;
}

export function registerExport(program: Command): void {
  program
    .command('export')
    .description('write a model as GGUF (llama.cpp, node-llama-cpp) or ONNX (onnxruntime, Transformers.js), keeping quantized weights exact where the format can')
    .requiredOption('--model <path>', 'quantized GPTQ directory (from quantize), HF directory, llama2.c .bin or .gguf')
    .requiredOption('--format <gguf|onnx>', 'gguf: one .gguf file; onnx: a directory with onnx/model_q4.onnx, config.json and the tokenizer')
    .option('--out <path>', 'output file (gguf) or directory (onnx); must not exist (default: next to the model)')
    .option('--exact', 'GGUF: refuse tensors it cannot hold bit-exactly instead of re-encoding them (INT4 asymmetric as Q5_0); ONNX is always exact')
    .option('--float-type <f32|f16>', 'GGUF: type of embeddings, an untied head and fp32 linears', 'f32')
    .option('--accuracy-level <n>', 'ONNX: MatMulNBits accuracy_level (0 fp32 arithmetic, 4 int8 activations)', (v) => Number(v), 0)
    .option('--json', 'print the full per-tensor report as JSON')
    .action(async (o: ExportCliOpts) => {
      await runExport(o);
    });
}
