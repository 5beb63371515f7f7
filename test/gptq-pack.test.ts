// GPTQ checkpoint packing against an independent decoder: the GPTQ tools' pack()
// loop and torch dequantizer, re-implemented in numpy (scripts/gptq_pack_oracle.py,
// fixture test/fixtures/gptq-pack.json), for 3-bit (the straddling layout), 2-bit
// and 4-bit, v1 (z - 1) and v2 zero points: quantform's words must equal the tools'
// words bit for bit, and quantform's decoders must read the tools' words back.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { dequantizeGptq, fromGptq, packGptq, type GptqFormat } from '../lib/export/gptq.js';
import { f16ToF32 } from '../lib/io/half.js';
import { unpack, type Bits } from '../lib/ops/quant.js';

interface PackCase {
  bits: Bits; N: number; K: number; groupSize: number; codes: string; zerosV2: number[]; zerosV1: number[]; scalesF16: number[];
  qweight: number[]; qweightShape: [number, number]; qzerosV2: number[]; qzerosV1: number[]; qzerosShape: [number, number];
}
const fixture = JSON.parse(readFileSync(new URL('./fixtures/gptq-pack.json', import.meta.url), 'utf8')) as { cases: PackCase[] };

describe('GPTQ packing vs the tools\' pack/unpack logic', () => {
  for (const c of fixture.cases)
    for (const fmt of ['gptq_v2', 'gptq'] as GptqFormat[])
      it(`${c.bits}-bit, N ${c.N}, K ${c.K}, g${c.groupSize}, ${fmt}`, () => {
        const { N, K, bits, groupSize: gs } = c;
        const G = K / gs;
        const codes8 = Uint8Array.from(Buffer.from(c.codes, 'hex'));
        const zeros = Float32Array.from(fmt === 'gptq' ? c.zerosV1 : c.zerosV2);
        const scales = Uint16Array.from(c.scalesF16);
        const qzWant = fmt === 'gptq' ? c.qzerosV1 : c.qzerosV2;
        // quantform -> the tools' words
        const g = packGptq(codes8, zeros, scales, N, K, bits, gs, fmt);
        expect(g.qweightShape).toEqual(c.qweightShape);
        expect(g.qzerosShape).toEqual(c.qzerosShape);
        expect(Array.from(g.qweight)).toEqual(c.qweight);
        expect(Array.from(g.qzeros)).toEqual(qzWant);
        // the tools' words -> quantform
        const tools = { qweight: Int32Array.from(c.qweight), qzeros: Int32Array.from(qzWant), scales: g.scales, gIdx: g.gIdx };
        const w = dequantizeGptq(tools, N, K, bits, fmt);
        for (let n = 0; n < N; n++)
          for (let k = 0; k < K; k++) {
            const i = n * G + Math.floor(k / gs);
            expect(w[n * K + k]).toBe(Math.fround(f16ToF32(scales[i]) * (codes8[n * K + k] - zeros[i])));
          }
        const q = fromGptq(tools, N, K, bits, fmt)!;
        expect(q).not.toBeNull();
        expect(Buffer.from(unpack(q.codes, [N, K], bits)).equals(Buffer.from(codes8))).toBe(true);
      });
});
