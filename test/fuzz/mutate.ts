// Seeded mutations of untrusted inputs: bytes (truncation, flips, extreme integers
// written over fields, insertions, deletions, duplicated chunks) and JSON (values
// replaced by extremes or wrong types, keys dropped or duplicated, deep nesting).
// Every choice comes from the case's seeded generator, so a seed is a reproducer.
import { seededRandom } from '../../lib/engine/calib.js';

export class Rng {
  private readonly r: () => number;
  constructor(readonly seed: number) {
    this.r = seededRandom(seed);
  }
  next(): number {
    return this.r();
  }
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.r() < p;
  }
}

/** Integer field values that break arithmetic: zero, -1, 2^31 +- 1, 2^32 - 1, 2^53 +- 1, 2^63, 2^64 - 1, small. */
export const EXTREME_INTS: readonly bigint[] = [
  0n, 1n, 2n, 3n, 7n, 255n, 0xffffn, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, (1n << 53n) - 1n, 1n << 53n,
  0x7fffffffffffffffn, 0x8000000000000000n, 0xffffffffffffffffn, 1n << 40n, 0xfffffff0n,
];

/** Writes an extreme value over a little-endian field of `width` bytes at `off`. */
export function writeExtreme(buf: Buffer, off: number, width: 1 | 2 | 4 | 8, v: bigint): void {
  const mask = (1n << BigInt(width * 8)) - 1n;
  let x = v & mask;
  for (let i = 0; i < width && off + i < buf.length; i++) {
    buf[off + i] = Number(x & 0xffn);
    x >>= 8n;
  }
}

export type ByteMutation = (rng: Rng, b: Buffer, fields?: number[]) => { out: Buffer; what: string };

const byteMutations: Record<string, ByteMutation> = {
  truncate: (rng, b) => {
    const at = rng.chance(0.5) ? rng.int(Math.min(b.length, 512)) : rng.int(b.length);
    return { out: b.subarray(0, at), what: `truncate at ${at}` };
  },
  flipBits: (rng, b) => {
    const out = Buffer.from(b), n = 1 + rng.int(8), hot = rng.chance(0.7) ? Math.min(b.length, 1024) : b.length;
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      const p = rng.int(hot);
      out[p] ^= 1 << rng.int(8);
      at.push(p);
    }
    return { out, what: `flip bits at ${at.join(',')}` };
  },
  randomBytes: (rng, b) => {
    const out = Buffer.from(b), p = rng.int(Math.min(b.length, 2048)), n = 1 + rng.int(16);
    for (let i = 0; i < n && p + i < out.length; i++) out[p + i] = rng.int(256);
    return { out, what: `${n} random bytes at ${p}` };
  },
  extremeInt: (rng, b, fields) => {
    const out = Buffer.from(b);
    const width = rng.pick([4, 8] as const);
    // a known header field when the format gave some, else an aligned offset near the start
    const off = fields && fields.length && rng.chance(0.8) ? rng.pick(fields) : rng.int(Math.max(1, Math.min(b.length, 1024) / width)) * width;
    const v = rng.pick(EXTREME_INTS);
    writeExtreme(out, off, width, v);
    return { out, what: `u${width * 8} ${v} at ${off}` };
  },
  insert: (rng, b) => {
    const p = rng.int(Math.min(b.length, 4096) + 1), n = 1 + rng.int(64);
    const ins = Buffer.from(Array.from({ length: n }, () => rng.int(256)));
    return { out: Buffer.concat([b.subarray(0, p), ins, b.subarray(p)]), what: `insert ${n} bytes at ${p}` };
  },
  remove: (rng, b) => {
    const p = rng.int(Math.min(b.length, 4096)), n = 1 + rng.int(64);
    return { out: Buffer.concat([b.subarray(0, p), b.subarray(p + n)]), what: `delete ${n} bytes at ${p}` };
  },
  duplicateChunk: (rng, b) => {
    const p = rng.int(Math.max(1, b.length - 1)), n = 1 + rng.int(Math.min(256, b.length - p));
    const q = rng.int(b.length + 1);
    return { out: Buffer.concat([b.subarray(0, q), b.subarray(p, p + n), b.subarray(q)]), what: `copy [${p}, ${p + n}) to ${q}` };
  },
  appendGarbage: (rng, b) => {
    const n = 1 + rng.int(4096);
    return { out: Buffer.concat([b, Buffer.from(Array.from({ length: n }, () => rng.int(256)))]), what: `append ${n} bytes` };
  },
};

export function mutateBytes(rng: Rng, b: Buffer, fields?: number[]): { out: Buffer; what: string } {
  const names = Object.keys(byteMutations);
  const rounds = rng.chance(0.8) ? 1 : 2 + rng.int(3);
  let out = b, what: string[] = [];
  for (let i = 0; i < rounds && out.length > 0; i++) {
    const name = rng.pick(names);
    const r = byteMutations[name](rng, out, fields);
    out = r.out;
    what.push(r.what);
  }
  return { out, what: what.join('; ') };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Values a field must survive: extremes, wrong types, empty and huge containers. */
function extremeJson(rng: Rng): Json {
  return rng.pick<() => Json>([
    () => 0, () => -1, () => 2 ** 31, () => 2 ** 31 - 1, () => 2 ** 32, () => 2 ** 53, () => 2 ** 63, () => -(2 ** 63), () => 1e308,
    () => -1e308, () => 0.5, () => -0, () => null, () => true, () => false, () => '', () => 'x', () => '4', () => [], () => {
      return {};
    }, () => [0, 0], () => [-1, 2 ** 53], () => 'A'.repeat(1 + rng.int(5000)), () => Array.from({ length: rng.int(50) }, () => rng.int(100)),
  ])();
}

/** Every path to a value in `j` (objects by key, arrays by index). */
function paths(j: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (out.length > 20000) return out;
  if (Array.isArray(j)) j.forEach((v, i) => { if (i < 64) paths(v, [...prefix, i], out); });
  else if (j && typeof j === 'object') for (const k of Object.keys(j)) paths(j[k], [...prefix, k], out);
  return out;
}

function getAt(j: Json, p: (string | number)[]): Json {
  let x: Json = j;
  for (const k of p) x = (x as Record<string | number, Json>)[k];
  return x;
}

/** Mutates a parsed JSON document and serializes it; some mutations work on the text (duplicate keys, nesting). */
export function mutateJson(rng: Rng, text: string): { out: Buffer; what: string } {
  let j: Json;
  try {
    j = JSON.parse(text) as Json;
  } catch {
    return mutateBytes(rng, Buffer.from(text));
  }
  let all = paths(j);
  const choice = rng.int(10);
  if (choice === 0) {
    // duplicate a key: JSON.parse keeps the last, so the text is edited directly
    const m = [...text.matchAll(/"([^"\\]{1,80})":/g)];
    if (m.length) {
      const hit = rng.pick(m), idx = hit.index ?? 0;
      const dup = `"${hit[1]}":${JSON.stringify(extremeJson(rng))},`;
      return { out: Buffer.from(text.slice(0, idx) + dup + text.slice(idx)), what: `duplicate key '${hit[1]}'` };
    }
  }
  if (choice === 1) {
    const depth = 1000 + rng.int(200000);
    const at = rng.pick(all.filter((p) => p.length > 0)) ?? [];
    setAt(j, at, '__DEEP__');
    const s = JSON.stringify(j).replace('"__DEEP__"', '['.repeat(depth) + ']'.repeat(depth));
    return { out: Buffer.from(s), what: `nest ${depth} arrays at ${at.join('.')}` };
  }
  if (choice === 2) return mutateBytes(rng, Buffer.from(text));
  const n = 1 + rng.int(3);
  const what: string[] = [];
  for (let i = 0; i < n; i++) {
    // paths of the document as it is now: an earlier round may have replaced a subtree
    all = paths(j);
    const p = rng.pick(all);
    if (p.length === 0) {
      j = extremeJson(rng);
      what.push('replace the whole document');
      continue;
    }
    if (rng.chance(0.2)) {
      const parent = getAt(j, p.slice(0, -1));
      if (Array.isArray(parent)) parent.splice(Number(p[p.length - 1]), 1);
      else if (parent && typeof parent === 'object') delete (parent as Record<string, Json>)[String(p[p.length - 1])];
      what.push(`delete ${p.join('.')}`);
    } else {
      const v = extremeJson(rng);
      setAt(j, p, v);
      what.push(`${p.join('.')} = ${JSON.stringify(v)?.slice(0, 40)}`);
    }
  }
  return { out: Buffer.from(JSON.stringify(j)), what: what.join('; ') };
}

function setAt(j: Json, p: (string | number)[], v: Json): void {
  const parent = getAt(j, p.slice(0, -1));
  if (parent && typeof parent === 'object') (parent as Record<string | number, Json>)[p[p.length - 1]] = v;
}
