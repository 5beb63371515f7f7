// 16-bit float conversions (native/include/quantform/convert.h) and the native
// checkpoint reader built on them. The expected bits come from oracles written
// here from the IEEE definitions, not from the kernels: every binary16 and every
// bfloat16 pattern (NaN payloads, signalling NaNs, subnormals, infinities, -0),
// random and hand-picked f32 inputs for rounding to bf16 (ties, overflow to Inf),
// awkward lengths and misaligned views on every tier, and guard elements that
// must stay untouched past the end.
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { availableTiers, withTier } from './helpers/tiers.js';

const io = native().io;
const tiers = availableTiers();
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-convert-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number) => { f32[0] = x; return u32[0]; };

/** binary16 -> binary32 bits by the IEEE definition; a NaN comes out quiet with its payload. */
function f16Oracle(h: number): number {
  const sign = (h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 31) return (sign | (m ? 0x7fc00000 | (m << 13) : 0x7f800000)) >>> 0;
  const v = (e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15)) * (h & 0x8000 ? -1 : 1);
  return v === 0 ? sign >>> 0 : bitsOf(v);
}

/** binary32 bits -> bfloat16 bits: nearest of the two neighbours by exact double arithmetic, ties to even. */
function bf16Oracle(x: number): number {
  if ((x & 0x7fffffff) >>> 0 > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  u32[0] = x;
  const v = Math.abs(f32[0]);
  const lo = (x >>> 16) & 0x7fff;  // truncation toward zero (magnitude)
  if ((x & 0xffff) === 0) return x >>> 16;
  const val = (b: number) => { u32[0] = b << 16; return b === 0x7f80 ? 2 ** 128 : f32[0]; };
  const dl = v - val(lo), dh = val(lo + 1) - v;
  const pick = dl < dh || (dl === dh && (lo & 1) === 0) ? lo : lo + 1;
  return ((x >>> 16) & 0x8000) | pick;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0);
}

const LENGTHS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 100, 1027];

describe('f16 -> f32', () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const want = Uint32Array.from(all, f16Oracle);
  for (const tier of tiers)
    it(`${tier}: all 65536 binary16 patterns, bit for bit (signalling NaNs quieted)`, () => {
      const out = new Float32Array(65536);
      withTier(tier, () => io.convert(out, 'f32', all, 'f16'));
      const got = new Uint32Array(out.buffer);
      const bad = want.findIndex((w, i) => got[i] !== w);
      expect(bad, bad >= 0 ? `0x${bad.toString(16)} -> 0x${got[bad].toString(16)}, want 0x${want[bad].toString(16)}` : '').toBe(-1);
      expect(got[0x7c01]).toBe(0x7fc02000);  // sNaN -> qNaN, payload kept
      expect(got[0x0001]).toBe(0x33800000);  // smallest subnormal = 2^-24
      expect(got[0xfc00]).toBe(0xff800000);
    });
});

describe('bf16 -> f32', () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  for (const tier of tiers)
    it(`${tier}: all 65536 bfloat16 patterns widen to exactly bits << 16 (NaN payloads kept)`, () => {
      const out = new Float32Array(65536);
      withTier(tier, () => io.convert(out, 'f32', all, 'bf16'));
      const got = new Uint32Array(out.buffer);
      for (let i = 0; i < 65536; i++) if (got[i] !== (i << 16) >>> 0) expect(got[i]).toBe((i << 16) >>> 0);
      expect(got[0x7f81]).toBe(0x7f810000);  // a signalling NaN stays signalling, as torch widens it
    });
});

describe('f32 -> bf16 (round to nearest even)', () => {
  const r = rng(7);
  const special = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7f800001, 0x7fc00000, 0xffffffff, 0x7f7fffff, 0x7f7f8000, 0x7f7f7fff,
    0x00000001, 0x00008000, 0x00018000, 0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, 0x807fffff, 0xff7fffff];
  const inputs = new Uint32Array(200000);
  inputs.set(special);
  for (let i = special.length; i < inputs.length; i++) inputs[i] = i % 3 === 0 ? (r() & 0xffff8000) | 0x8000 : r();  // a third are exact ties
  const want = Uint16Array.from(inputs, bf16Oracle);
  for (const tier of tiers)
    it(`${tier}: ${inputs.length} inputs (ties, overflow to Inf, NaN, subnormals), bit for bit`, () => {
      const out = new Uint16Array(inputs.length);
      withTier(tier, () => io.convert(out, 'bf16', new Float32Array(inputs.buffer), 'f32'));
      const bad = want.findIndex((w, i) => out[i] !== w);
      expect(bad, bad >= 0 ? `0x${inputs[bad].toString(16)} -> 0x${out[bad].toString(16)}, want 0x${want[bad].toString(16)}` : '').toBe(-1);
      expect(out[special.indexOf(0x7f7fffff)]).toBe(0x7f80);  // rounds up to Inf
      expect(out[special.indexOf(0x3f808000)]).toBe(0x3f80);  // tie to even (down)
      expect(out[special.indexOf(0x3f818000)]).toBe(0x3f82);  // tie to even (up)
    });
});

describe('awkward lengths and misaligned views: the tails take the same path and nothing past the end is written', () => {
  const r = rng(3);
  for (const tier of tiers)
    it(tier, () => {
      for (const n of LENGTHS)
        for (const shift of [0, 1, 3]) {
          const src16 = Uint16Array.from({ length: n + 8 }, () => r() & 0xffff).subarray(shift, shift + n);
          for (const dt of ['f16', 'bf16'] as const) {
            const dstAll = new Float32Array(n + shift + 4).fill(123.5);
            const dst = dstAll.subarray(shift, shift + n);
            withTier(tier, () => io.convert(dst, 'f32', src16, dt));
            const got = new Uint32Array(dst.buffer, dst.byteOffset, n);
            for (let i = 0; i < n; i++) {
              const w = dt === 'f16' ? f16Oracle(src16[i]) : (src16[i] << 16) >>> 0;
              if (got[i] !== w) expect(`${dt} n=${n} i=${i}: 0x${got[i].toString(16)}`).toBe(`0x${w.toString(16)}`);
            }
            expect([...dstAll.subarray(shift + n)]).toEqual([123.5, 123.5, 123.5, 123.5]);
            expect([...dstAll.subarray(0, shift)].every((v) => v === 123.5)).toBe(true);
          }
          const srcF = new Float32Array(Uint32Array.from({ length: n + 8 }, () => r()).buffer).subarray(shift, shift + n);
          const outAll = new Uint16Array(n + shift + 4).fill(0xabcd);
          withTier(tier, () => io.convert(outAll.subarray(shift, shift + n), 'bf16', srcF, 'f32'));
          const srcBits = new Uint32Array(srcF.buffer, srcF.byteOffset, n);
          for (let i = 0; i < n; i++) if (outAll[shift + i] !== bf16Oracle(srcBits[i])) expect(`n=${n} i=${i}`).toBe('exact');
          expect([...outAll.subarray(shift + n)]).toEqual([0xabcd, 0xabcd, 0xabcd, 0xabcd]);
        }
    });
});

describe('long outputs (streaming stores past a masked head) at every destination alignment', () => {
  const r = rng(5);
  const n = 300001;  // above the streaming threshold (2^16), odd
  const src = Uint16Array.from({ length: n + 16 }, () => r() & 0xffff);
  for (const tier of tiers)
    it(tier, () => {
      for (const dt of ['f16', 'bf16'] as const)
        for (const shift of [0, 1, 5, 15]) {  // dst 64-byte aligned, and 4, 20, 60 bytes past it
          const all = new Float32Array(n + 32).fill(-7);
          const dst = all.subarray(shift, shift + n);
          const s = src.subarray(shift, shift + n);
          withTier(tier, () => io.convert(dst, 'f32', s, dt));
          const got = new Uint32Array(dst.buffer, dst.byteOffset, n);
          for (let i = 0; i < n; i++) {
            const w = dt === 'f16' ? f16Oracle(s[i]) : (s[i] << 16) >>> 0;
            if (got[i] !== w) expect(`${dt} shift ${shift} i=${i}: 0x${got[i].toString(16)}`).toBe(`0x${w.toString(16)}`);
          }
          expect(all[shift + n]).toBe(-7);
          if (shift) expect(all[shift - 1]).toBe(-7);
        }
    });
});

describe('readTensor (native positional reads)', () => {
  // (rows, cols) bits at byte `at` of a file after junk, for each stored dtype
  const rows = 700, cols = 1000;  // 1.4 MB of f16: several 1 MiB chunks, both threads
  const r = rng(11);
  const bits16 = Uint16Array.from({ length: rows * cols }, () => r() & 0xffff);
  const bits32 = Uint32Array.from({ length: rows * cols }, () => r());
  const at = 4099;  // not aligned to anything
  const file = (data: ArrayBufferView) => {
    const f = path.join(tmp, `t${Math.random().toString(36).slice(2)}.bin`);
    writeFileSync(f, Buffer.concat([Buffer.alloc(at, 7), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
    return f;
  };
  const perm = (() => {
    const p = Int32Array.from({ length: rows }, (_, i) => i);
    for (let i = rows - 1; i > 0; i--) { const j = r() % (i + 1); [p[i], p[j]] = [p[j], p[i]]; }
    return p;
  })();
  const cases = [
    { dt: 'f16' as const, data: bits16, want: (i: number) => f16Oracle(bits16[i]) },
    { dt: 'bf16' as const, data: bits16, want: (i: number) => (bits16[i] << 16) >>> 0 },
    { dt: 'f32' as const, data: bits32, want: (i: number) => bits32[i] },
  ];
  for (const tier of tiers)
    for (const c of cases)
      it(`${tier} ${c.dt}: in order and with a row permutation`, () => {
        const f = file(c.data);
        const fd = openSync(f, 'r');
        try {
          for (const p of [null, perm]) {
            const out = new Float32Array(rows * cols);
            withTier(tier, () => io.readTensor(fd, at, c.dt, rows, cols, p, out, 'tensor x', false));
            const got = new Uint32Array(out.buffer);
            for (let s = 0; s < rows; s++) {
              const d = p ? p[s] : s;
              for (let j = 0; j < cols; j++)
                if (got[d * cols + j] !== c.want(s * cols + j)) expect(`row ${s} -> ${d}, col ${j}`).toBe('exact');
            }
          }
        } finally {
          closeSync(fd);
        }
      });

  it('async reads resolve with the same bytes', async () => {
    const f = file(bits16);
    const fd = openSync(f, 'r');
    try {
      const a = new Float32Array(rows * cols), b = new Float32Array(rows * cols);
      io.readTensor(fd, at, 'bf16', rows, cols, null, a, 'x', false);
      await io.readTensor(fd, at, 'bf16', rows, cols, null, b, 'x', true);
      expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('refuses lengths it cannot check: a range past the end, a wrong destination, a non-permutation', () => {
    const f = file(bits16.subarray(0, 100));
    const fd = openSync(f, 'r');
    try {
      expect(() => io.readTensor(fd, at, 'f16', 10, 11, null, new Float32Array(110), "tensor 'w' of m.gguf", false))
        .toThrow(/tensor 'w' of m\.gguf spans bytes \[4099, 4319\) but the file has 4299 bytes/);
      expect(() => io.readTensor(fd, at, 'f16', 10, 10, null, new Float32Array(99), 'w', false)).toThrow(/Expected a destination of 100 floats for w/);
      expect(() => io.readTensor(fd, at, 'f16', 2, 50, Int32Array.from([1, 1]), new Float32Array(100), 'w', false))
        .toThrow(/Expected a permutation of \[0, 2\) for the rows of w but entry 1 is 1 \(repeated\)/);
      expect(() => io.readTensor(fd, at, 'f16', 2, 50, Int32Array.from([0, 2]), new Float32Array(100), 'w', false)).toThrow(/entry 1 is 2/);
      expect(() => io.readTensor(fd, at, 'f16', 2, 50, Int32Array.from([0]), new Float32Array(100), 'w', false)).toThrow(/Expected 2 row indices/);
      expect(() => io.readTensor(-1, 0, 'f16', 1, 1, null, new Float32Array(1), 'w', false)).toThrow(/file descriptor/);
    } finally {
      closeSync(fd);
    }
  });
});
