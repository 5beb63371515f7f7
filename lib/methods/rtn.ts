// Round-to-nearest: no transformation; quantizeModel quantizes the weights as they are.
import type { QuantMethod } from './types.js';

export const rtn: QuantMethod = {
  name: 'rtn',
  description: 'round-to-nearest, per group min/max (symmetric: absmax)',
  needsCalibration: false,
  async prepare() {
    return { lossCurve: [] };
  },
};
