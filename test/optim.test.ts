import { describe, expect, it } from 'vitest';
import { AdamW, learningRate } from '../lib/engine/optim.js';

describe('AdamW arena', () => {
  it('matches a hand-written AdamW on a quadratic, in f64 within f32 tolerance', async () => {
    const P = 37;
    const opt = new AdamW(P, { lr: 0.05, betas: [0.9, 0.95], weightDecay: 0.01 });
    const target = Float64Array.from({ length: P }, (_, i) => Math.sin(i));
    const p = new Float64Array(P), m = new Float64Array(P), v = new Float64Array(P);
    for (let i = 0; i < P; i++) { p[i] = Math.cos(i); opt.params[i] = p[i]; }
    for (let t = 1; t <= 20; t++) {
      for (let i = 0; i < P; i++) opt.grads[i] = 2 * (opt.params[i] - target[i]);
      await opt.update();
      for (let i = 0; i < P; i++) {
        const g = 2 * (p[i] - target[i]);
        m[i] = 0.9 * m[i] + 0.1 * g;
        v[i] = 0.95 * v[i] + 0.05 * g * g;
        p[i] -= 0.05 * (m[i] / (1 - 0.9 ** t) / (Math.sqrt(v[i] / (1 - 0.95 ** t)) + 1e-8) + 0.01 * p[i]);
      }
    }
    for (let i = 0; i < P; i++) expect(opt.params[i]).toBeCloseTo(p[i], 4);
  });

  it('clamps to minValue and keeps NaN visible', async () => {
    const opt = new AdamW(3, { lr: 1, minValue: 1e-5 });
    opt.params.set([0.5, 2, 1]);
    opt.grads.set([10, -10, NaN]);
    await opt.update();
    expect(opt.params[0]).toBe(Math.fround(1e-5));
    expect(opt.params[1]).toBeCloseTo(3, 4);
    expect(Number.isNaN(opt.params[2])).toBe(true);
  });

  it('rejects bad options with named parameters', () => {
    expect(() => new AdamW(0)).toThrow(/Expected positive integer for size but received 0/);
    expect(() => new AdamW(2, { betas: [0.9, 1] })).toThrow(/betas/);
    expect(() => new AdamW(2, { lr: -1 })).toThrow(/for lr but received -1/);
  });
});

describe('learning-rate schedules', () => {
  it('linear warm-up then linear decay to zero (5 % of 1000 steps)', () => {
    const lr = (s: number) => learningRate(1e-3, s, { kind: 'linear', steps: 1000, warmup: 0.05 });
    expect(lr(0)).toBeCloseTo(1e-3 / 50, 12);
    expect(lr(49)).toBeCloseTo(1e-3, 12);
    expect(lr(50)).toBeCloseTo(1e-3, 12);
    expect(lr(525)).toBeCloseTo(0.5e-3, 12);
    expect(lr(999)).toBeCloseTo(1e-3 / 950, 12);
  });
  it('cosine decay and constant', () => {
    expect(learningRate(2, 0, { kind: 'cosine', steps: 100 })).toBe(2);
    expect(learningRate(2, 50, { kind: 'cosine', steps: 100 })).toBeCloseTo(1, 12);
    expect(learningRate(2, 100, { kind: 'cosine', steps: 100 })).toBeCloseTo(0, 12);
    expect(learningRate(2, 70, { kind: 'constant', steps: 100, warmup: 0.1 })).toBe(2);
    expect(() => learningRate(1, 0, { kind: 'linear', steps: 10, warmup: 1 })).toThrow(/warmup/);
  });
});
