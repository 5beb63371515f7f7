import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrationFromFile, calibrationFromText } from '../lib/engine/calib.js';
import { openCheckpoint } from '../lib/model/model.js';

const shared = path.resolve(process.cwd(), '../shared');
const tsFile = path.join(shared, 'data/tinystories/TinyStories-valid.first1000.txt');
const modelDir = path.join(shared, 'models/stories260K-hf');
const haveShared = existsSync(tsFile) && existsSync(modelDir);
if (!haveShared) console.log(`calib: ${shared} not found, real-text tests skipped`);

const charEncode = (d: string) => [1, ...[...d].map((c) => c.charCodeAt(0) % 500 + 3)];

describe('calibration sampler', () => {
  it('is seeded and reproducible, and windows come from the stream', () => {
    const text = Array.from({ length: 30 }, (_, i) => `story ${i} `.repeat(5)).join('<|endoftext|>');
    const a = calibrationFromText(text, charEncode, { samples: 6, seqLen: 16, seed: 3 });
    const b = calibrationFromText(text, charEncode, { samples: 6, seqLen: 16, seed: 3 });
    const c = calibrationFromText(text, charEncode, { samples: 6, seqLen: 16, seed: 4 });
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens).not.toEqual(c.tokens);
    expect(a.tokens.length).toBe(96);
    expect(a.streamLength).toBe(Array.from({ length: 30 }, (_, i) => 1 + `story ${i} `.repeat(5).trim().length).reduce((x, y) => x + y, 0));
  });

  it('skipDocuments leaves the first documents out', () => {
    const text = ['AAAA', 'BBBB', 'CCCC'].join('<|endoftext|>');
    const s = calibrationFromText(text, charEncode, { samples: 20, seqLen: 3, skipDocuments: 2 });
    const A = 'A'.charCodeAt(0) % 500 + 3, B = 'B'.charCodeAt(0) % 500 + 3;
    expect([...s.tokens].some((t) => t === A || t === B)).toBe(false);
  });

  it('text shorter than one sequence is a clear error', () => {
    expect(() => calibrationFromText('tiny', charEncode, { seqLen: 64 })).toThrow(/too short: 5 tokens, but one sequence needs seqLen = 64/);
    expect(() => calibrationFromText('tiny', charEncode, { samples: 0 })).toThrow(/Expected positive integer for samples but received 0/);
  });

  it.skipIf(!haveShared)('TinyStories calibration skipping 200 stories shares no window with the evaluation ids', async () => {
    const ck = openCheckpoint(modelDir);
    const t = await ck.tokenizer();
    ck.close();
    const tok = { encode: (d: string) => t.encode(d, { bos: true }) };
    const s = calibrationFromFile(tsFile, tok.encode, { samples: 16, seqLen: 64, seed: 1, skipDocuments: 200 });
    const evalIds: number[] = JSON.parse(readFileSync(path.join(shared, 'data/reference/ppl_tinystories_tok512.json'), 'utf8')).token_ids;
    const evalStr = ',' + evalIds.join(',') + ',';
    for (let i = 0; i < 16; i++) {
      const w = ',' + [...s.tokens.subarray(i * 64, (i + 1) * 64)].join(',') + ',';
      expect(evalStr.includes(w)).toBe(false);
    }
    // the tokenizer reproduces the protocol's ids on the first story
    const firstStory = readFileSync(tsFile, 'utf8').split('<|endoftext|>')[0].trim();
    const ids = tok.encode(firstStory);
    expect(ids).toEqual(evalIds.slice(0, ids.length));
  });
});
