// What every exporter needs from the model it exports: the runtime Checkpoint (any
// format quantform loads: GPTQ directories hand their linears over packed), what the
// model's config says about its quantization, and the refusal of models an export
// format cannot express. quantform's own GPTQ output records in
// config.json quantization_config.quantform what a method did beyond weight
// quantization: `activations` (activation quantization, e.g. { bits: 8 }) and
// `online_transforms` (transforms applied at run time, e.g. ['hadamard:down_proj']).
// Neither GGUF nor the ONNX graph quantform writes can run those, so such models are
// refused rather than exported as something else.
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
    if (qf.activations !== undefined && qf.activations !== null)
      throw new QuantformError('QF_UNSUPPORTED',
        `${ck.path}: the model quantizes activations (${JSON.stringify(qf.activations)}); ${format} stores weight-only quantized models, so it cannot express it`);
    if (Array.isArray(qf.online_transforms) && qf.online_transforms.length > 0)
      throw new QuantformError('QF_UNSUPPORTED',
        `${ck.path}: the model applies transforms at run time (${qf.online_transforms.join(', ')}); ${format} has no op for them, so it cannot express the model`);
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
