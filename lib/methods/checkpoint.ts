// The training state inside a checkpoint file (--resume), checked before training
// trusts it: a checkpoint is a file on disk, so it may be truncated, edited or
// written by another version. Metadata: fingerprint, step (a decimal integer),
// lossCurve (a JSON array of one loss per step); tensor 'arena': F32 optimizer state;
// any other tensor: a named 1-D F32 or I32 state of the method (TrainState.tensors).
import { QuantformError } from '../errors.js';
import { parseJson } from '../io/json.js';
import type { SafeTensor } from '../io/safetensors.js';
import type { TrainState } from './types.js';

export function trainStateFromCheckpoint(file: string, meta: unknown, arena: SafeTensor | undefined, named?: Map<string, SafeTensor>): TrainState {
  const corrupt = (why: string) => new QuantformError('QF_CORRUPT_FILE', `Checkpoint ${file}: ${why}`);
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) throw corrupt('no __metadata__ object');
  const m = meta as Record<string, unknown>;
  if (typeof m.step !== 'string' || !/^\d{1,15}$/.test(m.step)) throw corrupt(`step ${JSON.stringify(m.step)?.slice(0, 40)} is not a non-negative integer`);
  const step = Number(m.step);
  if (typeof m.lossCurve !== 'string') throw corrupt('no lossCurve');
  const curve = parseJson(m.lossCurve, `Checkpoint ${file}: lossCurve`);
  if (!Array.isArray(curve) || !curve.every((x) => typeof x === 'number' && Number.isFinite(x)))
    throw corrupt('lossCurve is not an array of finite numbers');
  if (curve.length !== step) throw corrupt(`lossCurve holds ${curve.length} losses for ${step} steps`);
  if (!arena || arena.dtype !== 'F32' || arena.shape.length !== 1) throw corrupt('holds no 1-D F32 arena');
  const tensors = new Map<string, Float32Array | Int32Array>();
  for (const [k, v] of named ?? []) {
    if (k === 'arena') continue;
    if ((v.dtype !== 'F32' && v.dtype !== 'I32') || v.shape.length !== 1) throw corrupt(`tensor ${k} is not 1-D F32 or I32`);
    tensors.set(k, v.data as Float32Array | Int32Array);
  }
  return { step, arena: arena.data as Float32Array, lossCurve: curve as number[], tensors };
}
