// Every public function validates its arguments as if called from plain JavaScript
// (no TypeScript types to lean on): what the types would reject is a QuantformError
// with a code and a sharp-style message naming the parameter, never a TypeError
// from deep inside, a silent wrong result, or a native crash.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as api from '../lib/index.js';
import { tokenizerBinBytes } from './helpers/writers.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'qf-validation-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// functions whose every parameter is optional: calling them bare is a valid call
const ALL_OPTIONAL = new Set(['backendInfo', 'cudaInfo', 'methodNames', 'measureMachine', 'measureMachineSync', 'SyntheticCheckpoint', 'QuantformError', 'defaultMemoryBudget']);
const SHARP = /^Expected .+ for .+ but received .+/;

type AnyFn = (...a: unknown[]) => unknown;
const isClass = (f: unknown) => typeof f === 'function' && /^class /.test(Function.prototype.toString.call(f));

async function outcome(f: () => unknown): Promise<unknown> {
  try {
    const r = f();
    if (r && typeof (r as Promise<unknown>).then === 'function') await r;
    return 'returned';
  } catch (e) {
    return e;
  }
}

describe('every export called bare from plain JS', () => {
  const entries = Object.entries(api).filter(([, v]) => typeof v === 'function').sort(([a], [b]) => a.localeCompare(b));
  it(`finds the exports at run time (${entries.length})`, () => {
    expect(entries.length).toBeGreaterThan(60);
  });
  for (const [name, fn] of entries) {
    if (ALL_OPTIONAL.has(name)) continue;
    it(name, async () => {
      const e = await outcome(() => (isClass(fn) ? new (fn as new (...a: unknown[]) => unknown)() : (fn as AnyFn)()));
      expect(e, `${name}() must throw`).toBeInstanceOf(api.QuantformError);
      const qe = e as api.QuantformError;
      expect(qe.code).toMatch(/^QF_/);
      expect(qe.message, `${name}: ${qe.message}`).toMatch(SHARP);
    });
  }
});

describe('wrong arguments from plain JS get a coded error naming the parameter', () => {
  const js = <T>(f: T) => f as unknown as AnyFn;
  const tokFile = path.join(tmp, 'tok.bin');
  writeFileSync(tokFile, tokenizerBinBytes(['<unk>', '<s>', '</s>', 'a', 'b']));
  const w = api.Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
  const q = api.quantize(w, { bits: 4, groupSize: 3 });
  const synth = new api.SyntheticCheckpoint({ dim: 16, hiddenDim: 24, nLayers: 1, nHeads: 2, vocabSize: 32, maxSeq: 16 });
  const cfg = synth.config;
  const vocab = { tokens: ['<unk>', '<s>', '</s>'], scores: new Float32Array(3), types: Uint8Array.of(2, 3, 3), bosId: 1, eosId: 2, unkId: 0, padId: null,
    addBos: true, addEos: false, addSpacePrefix: true, source: 'test' };
  const source: api.GptqSource = { config: cfg, hfConfig: {}, quant: { bits: 4, groupSize: 16, symmetric: true }, plainDtype: () => 'F32',
    plain: () => new Float32Array(0), linear: () => q };
  const cases: [string, () => unknown, RegExp][] = [
    ['loadLlama2cTokenizer(file) without the vocabulary size', () => js(api.loadLlama2cTokenizer)(tokFile),
      /^Expected positive integer \(the model's vocabulary size\) for vocabSize but received undefined$/],
    ['loadLlama2cTokenizer(file, 1.5)', () => api.loadLlama2cTokenizer(tokFile, 1.5), /for vocabSize but received 1\.5 of type number$/],
    ['packedRowBytes(5, 10)', () => js(api.packedRowBytes)(5, 10), /^Expected one of 2, 3, 4, 8 for bits but received 5 of type number$/],
    ['numGroups(10, 0)', () => api.numGroups(10, 0), /^Expected positive integer for groupSize but received 0 of type number$/],
    ['pack(codes, 12)', () => js(api.pack)(new Uint8Array(6), 12, 4), /^Expected \[N, K\] for shape but received 12 of type number$/],
    ['new QuantizedTensor with a plain array of codes', () => new (api.QuantizedTensor as unknown as new (...a: unknown[]) => unknown)([1, 2], q.scales, q.zeros, [2, 3], 4, 3, false, 'f32'),
      /^Expected Uint8Array for codes but received array of length 2$/],
    ['new QuantizedTensor with f16 scales in a Float32Array', () => new api.QuantizedTensor(q.codes, q.scales, q.zeros, [2, 3], 4, 3, false, 'f16'),
      /^Expected Uint16Array \(paramDtype f16\) for scales but received Float32Array/],
    ['weightShape(cfg, 7)', () => js(api.weightShape)(cfg, 7), /^Expected non-empty string for name but received 7 of type number$/],
    ['weightNames({})', () => js(api.weightNames)({}), /^Expected positive integer for config\.dim but received undefined$/],
    ['permuteInterleavedToHalf(array)', () => js(api.permuteInterleavedToHalf)([1, 2], 1, 1), /^Expected Float32Array for w but received array/],
    ['new Fp32Linear(Float32Array)', () => new (api.Fp32Linear as unknown as new (a: unknown) => unknown)(new Float32Array(4)), /^Expected Tensor for weight but received Float32Array/],
    ['new ByteTokenizer(2)', () => new api.ByteTokenizer(2), /^Expected integer >= 4 for vocabSize but received 2 of type number$/],
    ['new SentencePieceBpe(strings)', () => js((a: unknown, b: unknown) => new api.SentencePieceBpe(a as Buffer[], b as Float32Array))(['a'], new Float32Array(1)),
      /^Expected non-empty array of Buffers/],
    ['calibrationFromText(text, not a function)', () => js(api.calibrationFromText)('some text', 'encode'), /^Expected function for encode but received 'encode' of type string$/],
    ['calibrationFromText with an encode returning strings', () => api.calibrationFromText('abc', () => ['x'] as unknown as number[], { seqLen: 1, samples: 1 }),
      /^Expected non-negative integer token ids for encode\(text\) result but received 'x' of type string$/],
    ['learningRate(1e-3, -1, opts)', () => api.learningRate(1e-3, -1, { kind: 'linear', steps: 10 }), /^Expected non-negative integer for step but received -1/],
    ['evaluatePerplexity(not a model)', () => js(api.evaluatePerplexity)({}, 'text'), /^Expected Model for model but received value of type object$/],
    ['generate(not a model) throws at the call, not at the first next()', () => js(api.generate)(null, 'x'), /^Expected Model for model but received null$/],
    ['quantizeModel(not a model)', () => js(api.quantizeModel)({ shape: {} }, { method: 'rtn', bits: 4 }), /^Expected TrainableLlama for model but received value of type object$/],
    ['saveGptq(not a quantized model)', () => js(api.saveGptq)({}, path.join(tmp, 'o')), /^Expected TrainableLlama for quantized model\.model but received undefined$/],
    ['registerMethod without prepare', () => js(api.registerMethod)({ name: 'x', description: '', needsCalibration: false }), /^Expected function for method\.prepare but received undefined$/],
    ['toGptq(q, "v3")', () => js(api.toGptq)(q, 'v3'), /^Expected 'gptq' or 'gptq_v2' for format but received 'v3' of type string$/],
    ['dequantizeGptq with Uint32 qweight', () => js(api.dequantizeGptq)({ qweight: new Uint32Array(1), qzeros: new Int32Array(1), scales: new Uint16Array(1), gIdx: new Int32Array(1) }, 1, 8, 4, 'gptq'),
      /^Expected Int32Array for qweight but received Uint32Array/],
    ['writeSafetensors with an untyped tensor', () => api.writeSafetensors(path.join(tmp, 'x.safetensors'), new Map([['a', { dtype: 'F32', shape: [2], data: [1, 2] as unknown as Float32Array }]])),
      /^Expected Float32Array for F32 for tensors 'a'\.data but received array of length 2$/],
    ['readSafetensors(42)', () => js(api.readSafetensors)(42), /^Expected non-empty string for file but received 42 of type number$/],
    ['mergeTeqScales with a short alpha', () => api.mergeTeqScales(api.TrainableLlama.fromCheckpoint(new api.SyntheticCheckpoint({ dim: 16, hiddenDim: 24, nLayers: 1, nHeads: 2, vocabSize: 32 })), new Float32Array(3)),
      /^Expected Float32Array of 1 x 32 scales for alpha but received Float32Array of length 3$/],
    ['hasFastLayout({})', () => js(api.hasFastLayout)({}), /^Expected QuantizedTensor for weight but received value of type object$/],
    ['Tensor.fromArray("abc")', () => js(api.Tensor.fromArray)('abc', [3]), /^Expected array of numbers for values but received 'abc' of type string$/],
    ['configFromHf(null)', () => js(api.configFromHf)(null, 'x'), /^Expected object for json but received null$/],
    ['loadHfTokenizer(dir, {})', () => js(api.loadHfTokenizer)(tmp, {}), /^Expected non-negative integer for config\.vocabSize but received undefined$/],
    ['measureMachineSync("fast")', () => js(api.measureMachineSync)('fast'), /^Expected options object for options but received 'fast' of type string$/],
    // main's loader, GPTQ, exporters and I/O
    ['exportGguf(checkpoint, out, { floatType: "Q4" })', () => api.exportGguf(synth, path.join(tmp, 'x.gguf'), { floatType: 'Q4' as 'F16' }),
      /^Expected 'F32' or 'F16' for options\.floatType but received 'Q4' of type string$/],
    ['exportGguf({}, out): an object that is not a Checkpoint', () => js(api.exportGguf)({}, path.join(tmp, 'x.gguf')), /^Expected non-empty string for model\.path but received undefined$/],
    ['exportOnnx(dir, out, { accuracyLevel: 7 })', () => api.exportOnnx(tmp, path.join(tmp, 'onnx'), { accuracyLevel: 7 as 4 }),
      /^Expected one of 0, 1, 2, 3, 4 for options\.accuracyLevel but received 7 of type number$/],
    ['exportOnnx(checkpoint, 42)', () => js(api.exportOnnx)(synth, 42), /^Expected non-empty string for out but received 42 of type number$/],
    ['encodeDirect(q, "Q2_K")', () => js(api.encodeDirect)(q, 'Q2_K'), /^Expected 'Q4_0', 'Q4_1', 'Q5_0' or 'Q8_0' for type but received 'Q2_K' of type string$/],
    ['ggmlType("Q9_9")', () => js(api.ggmlType)('Q9_9'), /^Expected a ggml type quantform writes \(.*Q4_0.*\) for name but received 'Q9_9' of type string$/],
    ['ggmlTypeById(-1)', () => api.ggmlTypeById(-1), /^Expected non-negative integer for id but received -1 of type number$/],
    ['matMulNBitsParts(Float32Array)', () => js(api.matMulNBitsParts)(new Float32Array(4)), /^Expected QuantizedTensor for q but received Float32Array/],
    ['tokenizerJsonFromVocab with scores of the wrong length', () => api.tokenizerJsonFromVocab({ ...vocab, scores: new Float32Array(1) }),
      /^Expected Float32Array of 3 scores for vocab\.scores but received Float32Array of length 1$/],
    ['spmTokenizer with a bos id outside the vocabulary', () => api.spmTokenizer({ ...vocab, bosId: 5 }), /^Expected token id in \[0, 3\) for vocab\.bosId but received 5 of type number$/],
    ['checkVocab(vocab, not a tokenizer)', () => js(api.checkVocab)(vocab, {}), /^Expected function for tok\.encode but received undefined$/],
    ['vocabFromSentencePiece("bytes")', () => js(api.vocabFromSentencePiece)('bytes', 'x'), /^Expected Uint8Array for buf but received 'bytes' of type string$/],
    ['vocabFromTokenizerJson(json, null)', () => js(api.vocabFromTokenizerJson)({}, null, 'x'), /^Expected object for config but received null$/],
    ['vocabFromCheckpoint(a path)', () => js(api.vocabFromCheckpoint)(tmp), /^Expected object for checkpoint but received '.*' of type string$/],
    ['new GptqHessian(1.5)', () => new api.GptqHessian(1.5), /^Expected positive integer for K but received 1\.5 of type number$/],
    ['gptqQuantize with blockSize 0', () => api.gptqQuantize(w, new Float32Array(9), { bits: 4, groupSize: 3, blockSize: 0 }),
      /^Expected integer in \[1, 512\] for blockSize but received 0 of type number$/],
    ['quantLinearBackward with a short x', () => api.quantLinearBackward(new Float32Array(2), new Float32Array(2), q),
      /^Expected Float32Array of 3 elements \(M, K\) for x but received Float32Array of length 2$/],
    ['new ActivationStore({ samples: 0 })', () => new api.ActivationStore({ samples: 0, tokens: 4, hidden: 4 }), /^Expected positive integer for samples but received 0 of type number$/],
    ['quantizeCheckpointRtn(not a checkpoint)', () => js(api.quantizeCheckpointRtn)({ path: 'p' }, path.join(tmp, 'r'), { bits: 4 }),
      /^Expected object for checkpoint\.config but received undefined$/],
    ['quantizedCheckpoint(q, "tokenizer")', () => js(api.quantizedCheckpoint)({}, 'tok'), /^Expected TrainableLlama for quantized model\.model but received undefined$/],
    ['memoryNeed(cfg, "rtn", { samples: -1 })', () => api.memoryNeed(cfg, 'rtn', { samples: -1 }), /^Expected positive integer for train\.samples but received -1 of type number$/],
    ['new GptqWriter(source without plain())', () => new api.GptqWriter({ ...source, plain: undefined } as unknown as api.GptqSource, path.join(tmp, 'g')),
      /^Expected function for source\.plain but received undefined$/],
    ['saveGptq options.maxShardBytes -1', () => new api.GptqWriter(source, path.join(tmp, 'g'), { maxShardBytes: -1 }),
      /^Expected positive number for options\.maxShardBytes but received -1 of type number$/],
    ['new SafetensorsWriter(dir, "specs")', () => js((a: unknown, b: unknown) => new api.SafetensorsWriter(a as string, b as api.TensorSpec[]))(tmp, 'specs'),
      /^Expected array of \{ name, dtype, shape \} for specs but received 'specs' of type string$/],
    ['new SafetensorsWriter with a shape that is not an array', () => new api.SafetensorsWriter(tmp, [{ name: 'a', dtype: 'F32', shape: 3 as unknown as number[] }]),
      /^Expected non-negative integer dimensions for shape of a but received 3 of type number$/],
    ['SafetensorsCheckpointFiles.dir(42)', () => js(api.SafetensorsCheckpointFiles.dir)(42), /^Expected non-empty string for dir but received 42 of type number$/],
    ['readTensor with a file that is a path', () => js(api.readTensor)({ name: 't', shape: [2], dtype: 'F32', file: 'model.safetensors', offset: 0, nbytes: 8 }),
      /^Expected CheckpointFile for tensor\.file but received 'model\.safetensors' of type string$/],
    ['readTensor with a dtype that is no safetensors dtype', () => js(api.readTensor)({ name: 't', shape: [2], dtype: 'toString', file: null, offset: 0, nbytes: 8 }),
      /^Expected a safetensors dtype for tensor\.dtype but received 'toString' of type string$/],
    ['interleavedToHalfRows(3, 10)', () => api.interleavedToHalfRows(3, 10), /^Expected a multiple of 2 x heads = 6 \(even head size\) for rows but received 10 of type number$/],
    ['hfConfigFromLlama({ dim: 8 })', () => js(api.hfConfigFromLlama)({ dim: 8 }), /^Expected positive integer for config\.hiddenDim but received undefined$/],
    ['writeFileAtomic(file, 42)', () => js(api.writeFileAtomic)(path.join(tmp, 'f'), 42), /^Expected string or Uint8Array for data but received 42 of type number$/],
    ['new AtomicDir("")', () => new api.AtomicDir(''), /^Expected non-empty string for dest but received '' of type string$/],
  ];
  for (const [what, call, msg] of cases)
    it(what, async () => {
      const e = await outcome(call);
      expect(e, what).toBeInstanceOf(api.QuantformError);
      expect((e as api.QuantformError).message).toMatch(msg);
    });

  it('Model methods: tokens, options and linears from plain JS', async () => {
    const m = await api.loadModel({ synthetic: { dim: 16, hiddenDim: 24, nLayers: 1, nHeads: 2, vocabSize: 32, maxSeq: 16 } });
    try {
      const f = js(m.forward.bind(m));
      expect(() => f('hello')).toThrow(/^Expected Int32Array or array of token ids for tokens but received 'hello' of type string$/);
      expect(() => f([1, 2], 'fast')).toThrow(/^Expected object for options but received 'fast' of type string$/);
      expect(() => f([1, 99])).toThrow(/^Expected token ids in \[0, 32\) for tokens\[1\] but received 99 of type number$/);
      expect(() => js(m.setLinear.bind(m))('layers.0.wq', new Float32Array(4))).toThrow(/^Expected Linear .* for linear but received Float32Array/);
      expect(() => js(m.linear.bind(m))(3)).toThrow(/^Expected non-empty string for name but received 3 of type number$/);
    } finally {
      m.dispose();
    }
  });
});
