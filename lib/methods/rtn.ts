// Round-to-nearest: no transformation and no block hook, so the pipeline streams the
// weights tensor by tensor (read, quantize, pack, write, drop).
import { NO_ACTIVATIONS } from '../engine/pipeline.js';
import type { QuantMethod } from './types.js';

export const rtn: QuantMethod = {
  name: 'rtn',
  description: 'round-to-nearest, per group min/max (symmetric: absmax)',
  needsCalibration: false,
  start: () => ({ needs: NO_ACTIVATIONS, rewritesNorms: false, memory: () => [], lossCurve: () => [] }),
};
