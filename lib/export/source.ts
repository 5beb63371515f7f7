// What every exporter needs from the model it exports: the runtime Checkpoint (any
// format quantform loads: GPTQ directories hand their linears over packed), what the
// model's config says about its quantization, and the refusal of models an export
// format cannot express. quantform's own GPTQ output records in
// config.json quantization_config.quantform what a method did beyond weight
// quantization: `activations` (activation quantization, e.g. { bits: 8 }) and
// `kv_cache` (static KV-cache quantization) and `online_transforms` (transforms applied at
// run time: S_n, an online Hadamard). Neither GGUF nor the ONNX graph quantform writes can
// run those (llama.cpp's and onnxruntime's activation and KV quantization are dynamic, per
// block), so such models are refused, every part named, rather than exported as something
// else. A residual rotation (`residual_rotation: 'merged'`) and the mergeable transforms are
// in the weights: those models export as they are.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, need } from '../errors.js';
import { parseJsonObject } from '../io/json.js';
import { isHfDirectory, needCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { openCheckpoint } from '../model/model.js';

export interface ExportSource {
  ck: Checkpoint;
  /** e.g. 'teq W4 g32 sym (GPTQ)' or 'fp32' */
  description: string;
  /** the source's config.json when it has one */
  hfConfig: Record<string, unknown> | null;
  /** closes the checkpoint when the exporter opened it */
  close(): void;
}

/** What a quantform checkpoint runs besides its weights (lib/model/fpt.ts), in words; empty for a weight-only model. */
function runtimeParts(qf: Record<string, unknown>): string[] {
  const out: string[] = [];
  const bits = (v: unknown) => String((v as { bits?: unknown }).bits);
  if (qf.activations !== undefined && qf.activations !== null) out.push(`quantizes activations statically (${bits(qf.activations)}-bit: ${JSON.stringify(qf.activations)})`);
  if (qf.kv_cache !== undefined && qf.kv_cache !== null) out.push(`quantizes the KV cache statically (${bits(qf.kv_cache)}-bit: ${JSON.stringify(qf.kv_cache)})`);
  const online = qf.online_transforms;
  if (online !== undefined && (!Array.isArray(online) || online.length > 0)) {
    const names = (Array.isArray(online) ? online : [online]).map((t) =>
      t === 'residual_scaling' ? 'residual_scaling (S_n dynamic residual scaling)'
        : typeof t === 'string' && t.startsWith('hadamard:') ? `${t} (online Hadamard)` : JSON.stringify(t));
    out.push(`applies transforms at run time: ${names.join(', ')}`);
  }
  return out;
}

export function openExportSource(model: string | Checkpoint, format: string): ExportSource {
  if (typeof model !== 'string') needCheckpoint(model, 'model');
  else need.string(model, 'model');
  const ck = typeof model === 'string' ? openCheckpoint(model) : model;
  const owned = typeof model === 'string';
  try {
    let hfConfig: Record<string, unknown> | null = null;
    const cfgFile = path.join(ck.path, 'config.json');
    if (isHfDirectory(ck) && existsSync(cfgFile)) hfConfig = ck.hfConfig ?? parseJsonObject(readFileSync(cfgFile, 'utf8'), cfgFile);
    const q = hfConfig?.quantization_config as Record<string, unknown> | undefined;
    const qf = (q?.quantform ?? {}) as Record<string, unknown>;
    const runtime = runtimeParts(qf);
    if (runtime.length > 0)
      throw new QuantformError('QF_UNSUPPORTED',
        `${ck.path}: the model ${runtime.join('; ')}; ${format} stores weight-only quantized models with fp activations and KV cache and has no op for ` +
        'run-time transforms, so it cannot express the model (exporting the weights alone would compute something else)');
    if (q && q.quant_method !== undefined && q.quant_method !== 'gptq')
      throw new QuantformError('QF_UNSUPPORTED', `${ck.path}: quantization_config.quant_method '${String(q.quant_method)}' is not supported (gptq only)`);
    const description = q
      ? `${String(qf.method ?? 'gptq')} W${String(q.bits)} g${String(q.group_size)}${q.sym ? ' sym' : ' asym'} (GPTQ)`
      : `${ck.format} (${ck.config.architecture})`;
    return { ck, description, hfConfig, close: () => { if (owned) ck.close(); } };
  } catch (e) {
    if (owned) ck.close();
    throw e;
  }
}
