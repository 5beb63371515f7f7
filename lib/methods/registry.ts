import { invalidParameter, need } from '../errors.js';
import type { QuantMethod } from './types.js';

const methods = new Map<string, QuantMethod>();

export function registerMethod(m: QuantMethod): void {
  need.object(m, 'method');
  need.string(m.name, 'method.name');
  need.func(m.prepare, 'method.prepare');
  need.bool(m.needsCalibration, 'method.needsCalibration');
  if (typeof m.description !== 'string') throw invalidParameter('string', 'method.description', m.description);
  methods.set(m.name, m);
}

export function getMethod(name: string): QuantMethod {
  const m = methods.get(name);
  if (!m) throw invalidParameter(`one of ${[...methods.keys()].map((k) => `'${k}'`).join(', ')}`, 'method', name);
  return m;
}

export function methodNames(): string[] {
  return [...methods.keys()];
}
