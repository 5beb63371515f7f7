import { invalidParameter } from '../errors.js';

export function parseIntOption(v: string, name: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw invalidParameter(`integer >= ${min}`, `--${name}`, v);
  return n;
}

/** "4096x4096,11008x4096" -> [[4096, 4096], [11008, 4096]] */
export function parseShapes(v: string): [number, number][] {
  return v.split(',').map((s) => {
    const m = /^\s*(\d+)x(\d+)\s*$/.exec(s);
    if (!m || +m[1] <= 0 || +m[2] <= 0) throw invalidParameter("shapes like '4096x4096,11008x4096'", '--shapes', v);
    return [+m[1], +m[2]] as [number, number];
  });
}
