// Writes a quantized model as a GPTQ checkpoint directory next to its tokenizer
// files: model.safetensors (quantized linears + fp32 embeddings and norms),
// config.json with quantization_config, the tokenizer files, quantform_report.json
// and the loss curve as loss.svg. The directory appears only when complete: it is
// written as a temp directory next to `out` and renamed at the end.
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { needQuantizedModel, type QuantizedModel } from '../methods/quantize-model.js';
import { toGptq, type GptqFormat } from './gptq.js';
import { writeSafetensors, type SafeTensor } from '../io/safetensors.js';
import { lossCurveSvg } from './svg.js';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'tokenizer.model'];

export interface SaveOptions {
  /** Directory holding the tokenizer files to copy (usually the source model). */
  tokenizerDir?: string;
  /** Default: 'gptq' (v1) for symmetric models, 'gptq_v2' for asymmetric ones (v1 zero points overflow). */
  format?: GptqFormat;
}

/** Temp directories of writers that were killed mid-write (their pid is gone). */
function removeStaleTemps(dest: string): void {
  const prefix = `.${path.basename(dest)}.tmp-`;
  let names: string[] = [];
  try {
    names = readdirSync(path.dirname(dest)).filter((n) => n.startsWith(prefix));
  } catch {
    return;
  }
  for (const n of names) {
    const pid = Number(n.slice(prefix.length));
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = true;
    } catch (e) {
      alive = (e as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (!alive && pid !== process.pid) rmSync(path.join(path.dirname(dest), n), { recursive: true, force: true });
  }
}

export function saveGptq(q: QuantizedModel, out: string, opts: SaveOptions = {}): void {
  needQuantizedModel(q);
  need.string(out, 'out');
  need.object(opts, 'options');
  if (opts.tokenizerDir !== undefined) need.string(opts.tokenizerDir, 'options.tokenizerDir');
  if (opts.format !== undefined && !is.oneOf(opts.format, ['gptq', 'gptq_v2'] as const)) throw invalidParameter("'gptq' or 'gptq_v2'", 'options.format', opts.format);
  const dest = path.resolve(out);
  if (existsSync(dest)) throw new QuantformError('QF_IO', `Output directory ${dest} already exists: choose another --out or remove it`);
  const format: GptqFormat = opts.format ?? (q.quant.symmetric ? 'gptq' : 'gptq_v2');
  if (format === 'gptq' && !q.quant.symmetric)
    throw new QuantformError('QF_INVALID_ARGUMENT', "Asymmetric models need checkpoint_format 'gptq_v2': v1 stores z - 1, which overflows for z = 0");
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-${process.pid}`);
  removeStaleTemps(dest);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const tensors = new Map<string, SafeTensor>();
    for (const [name, t] of q.model.tensors()) {
      const base = name.replace(/\.weight$/, '');
      const ql = q.linears.get(base);
      if (!ql) {
        tensors.set(name, t);
        continue;
      }
      const g = toGptq(ql, format);
      tensors.set(`${base}.qweight`, { dtype: 'I32', shape: g.qweightShape, data: g.qweight });
      tensors.set(`${base}.qzeros`, { dtype: 'I32', shape: g.qzerosShape, data: g.qzeros });
      tensors.set(`${base}.scales`, { dtype: 'F16', shape: g.scalesShape, data: g.scales });
      tensors.set(`${base}.g_idx`, { dtype: 'I32', shape: [g.gIdx.length], data: g.gIdx });
    }
    writeSafetensors(path.join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    const config = {
      ...q.model.hfConfig,
      quantization_config: {
        quant_method: 'gptq', bits: q.quant.bits, group_size: q.quant.groupSize, sym: q.quant.symmetric, desc_act: false,
        checkpoint_format: format, true_sequential: true, damp_percent: 0,
        quantform: { method: q.report.method },
      },
    };
    writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    if (opts.tokenizerDir)
      for (const f of TOKENIZER_FILES) if (existsSync(path.join(opts.tokenizerDir, f))) copyFileSync(path.join(opts.tokenizerDir, f), path.join(tmp, f));
    writeFileSync(path.join(tmp, 'quantform_report.json'), JSON.stringify(q.report, null, 2) + '\n');
    if (q.report.lossCurve.length > 0) writeFileSync(path.join(tmp, 'loss.svg'), lossCurveSvg(q.report.lossCurve, `${q.report.method} W${q.quant.bits} g${q.quant.groupSize}${q.quant.symmetric ? ' sym' : ''}`));
    renameSync(tmp, dest);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
