// Export to an ONNX decoder that onnxruntime (and Transformers.js on top of it)
// runs: the directory layout of a Hugging Face ONNX repository,
//   config.json, generation_config.json, tokenizer.json, tokenizer_config.json
//   onnx/model_q4.onnx (+ model_q4.onnx_data)   4-bit linears (model.onnx otherwise)
// The graph (opset 17 + com.microsoft 1, IR 8) takes input_ids, attention_mask,
// position_ids (B, T) int64 and past_key_values.<l>.key|value (B, n_kv, P, hd) and
// returns logits (B, T, V) and present.<l>.key|value (B, n_kv, P + T, hd), the
// names Transformers.js feeds and reads.
//   linears      com.microsoft MatMulNBits, block_size = group size: quantform's
//                INT2/INT3/INT4 codes as 4-bit blobs (low nibble first along K, as
//                formats.h), f32 scales, packed 4-bit zero points when they are not
//                all 8; INT8 as bits = 8. Exact: the op computes s * (q - z) from the
//                same codes. Group sizes that are not a power of two >= 16 (and
//                fp32 linears) become a MatMul with the (dequantized, exact) fp32 weight:
//                every value is exact, so there is no `exact` option; the report says
//                which linears are not MatMulNBits.
//   RMSNorm      x / sqrt(mean(x^2) + eps) * g, RoPE (rotate_half, cos/sin caches
//                gathered by position_ids), SwiGLU: standard ops, which onnxruntime's
//                optimizer fuses
//   attention    causal + padding mask from attention_mask, softmax(q k^T / sqrt(hd)) v,
//                grouped query heads by broadcasting (B, n_kv, rep, T, hd) against
//                (B, n_kv, 1, S, hd), no copy of K/V
//   head         Gemm(transB) on the embedding itself when tied (no transposed copy)
// Initializers above 1 KiB go to the external data file (those of 1 MiB or more page aligned).
import { closeSync, copyFileSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { isHfDirectory, type Checkpoint } from '../model/checkpoint.js';
import { invFreq, weightShape, type LlamaConfig } from '../model/config.js';
import { dequantize, packedRowBytes, QuantizedTensor } from '../ops/quant.js';
import { VERSION } from '../version.js';
import { scaleValues, zeroPoints } from './canonical.js';
import { writeAll } from './gguf-writer.js';
import { quantLabel, type ExportReport, type TensorExport } from './gguf.js';
import { modelProto, nodeProto, ONNX_DTYPE, tensorProto, valueInfo, type AttrValue, type OnnxDType } from './onnx-proto.js';
import type { ProtoWriter } from '../io/protobuf.js';
import { openExportSource } from './source.js';
import { checkVocab, needVocab, tokenizerJsonFromVocab, vocabFromCheckpoint, VOCAB_PROBE, type SpmVocab } from './vocab.js';

export interface OnnxExportOptions {
  /** MatMulNBits accuracy_level: 0 = fp32 arithmetic (default, closest to quantform), 4 = int8 activations (faster). */
  accuracyLevel?: 0 | 1 | 2 | 3 | 4;
  /** The vocabulary, when the checkpoint has no tokenizer.json (not checked against its tokenizer). */
  vocab?: SpmVocab;
  onProgress?: (e: { done: number; total: number; tensor: string }) => void;
}

const EXTERNAL_THRESHOLD = 1024;
/** tensors of 1 MiB or more start on a page (onnxruntime can map them); smaller ones on 64 bytes */
const PAGE_ALIGN_FROM = 1 << 20;
/** torch.finfo(float32).min: the masked score (a fully masked row then stays finite) */
const MASKED = -3.4028234663852886e38;

/** Builds the graph: named values, initializers streamed to the external data file as they are added. */
class Graph {
  readonly nodes: ProtoWriter[] = [];
  readonly initializers: ProtoWriter[] = [];
  readonly inputs: ProtoWriter[] = [];
  readonly outputs: ProtoWriter[] = [];
  private n = 0;
  private dataOffset = 0;
  private readonly consts = new Map<string, string>();

  constructor(private readonly dataFd: number, private readonly dataName: string) {}

  get dataBytes(): number {
    return this.dataOffset;
  }

  /** One node; returns its output names (fresh ones unless given). */
  op(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs: string[] | number = 1, domain = ''): string[] {
    const id = `/${op}_${this.n++}`;
    const outs = typeof outputs === 'number' ? Array.from({ length: outputs }, (_, i) => `${id}/output_${i}`) : outputs;
    this.nodes.push(nodeProto(op, inputs, outs, id, attrs, domain));
    return outs;
  }

  op1(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, domain = ''): string {
    return this.op(op, inputs, attrs, 1, domain)[0];
  }

  init(name: string, dtype: OnnxDType, dims: number[], raw: Uint8Array): string {
    if (raw.length <= EXTERNAL_THRESHOLD) {
      this.initializers.push(tensorProto(name, dtype, dims, raw));
      return name;
    }
    const align = raw.length >= PAGE_ALIGN_FROM ? 4096 : 64;
    const pad = (align - (this.dataOffset % align)) % align;
    if (pad) writeAll(this.dataFd, new Uint8Array(pad));
    this.dataOffset += pad;
    writeAll(this.dataFd, raw);
    this.initializers.push(tensorProto(name, dtype, dims, null, { location: this.dataName, offset: this.dataOffset, length: raw.length }));
    this.dataOffset += raw.length;
    return name;
  }

  f32(name: string, dims: number[], v: Float32Array): string {
    return this.init(name, ONNX_DTYPE.FLOAT, dims, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }

  /** An int64 constant, shared by every use of the same name (a name means one value). */
  i64(name: string, v: number[]): string {
    const key = v.join(',');
    const seen = this.consts.get(name);
    if (seen !== undefined) {
      if (seen !== key) throw new QuantformError('QF_INTERNAL', `ONNX constant '${name}' defined as [${seen}] and [${key}]`);
      return name;
    }
    this.consts.set(name, key);
    const b = new BigInt64Array(v.map((x) => BigInt(x)));
    return this.init(name, ONNX_DTYPE.INT64, [v.length], new Uint8Array(b.buffer));
  }

  scalarF32(name: string, v: number): string {
    return this.init(name, ONNX_DTYPE.FLOAT, [], new Uint8Array(Float32Array.of(v).buffer));
  }
}

/** MatMulNBits inputs for q: 4-bit blobs (8-bit for INT8), scales, zero points; null if the op cannot hold q. */
export function matMulNBitsParts(q: QuantizedTensor): { bits: 4 | 8; blockSize: number; B: Uint8Array; kBlocks: number; blob: number; scales: Float32Array; zeroPoints: Uint8Array | null } | null {
  need.instance(q, QuantizedTensor, 'q');
  const [N, K] = q.shape, g = q.groupSize;
  if (g < 16 || (g & (g - 1)) !== 0) return null;
  const z = zeroPoints(q);
  if (!z.every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** q.bits)) return null;
  const bits: 4 | 8 = q.bits === 8 ? 8 : 4;
  const kBlocks = Math.ceil(K / g), blob = (g * bits) / 8, G = q.numGroups;
  const rowIn = packedRowBytes(q.bits, K);
  const B = new Uint8Array(N * kBlocks * blob);
  if (q.bits === 4 || q.bits === 8) {
    // canonical rows are already low-nibble-first along K; the last block is zero padded
    for (let n = 0; n < N; n++) B.set(q.codes.subarray(n * rowIn, (n + 1) * rowIn), n * kBlocks * blob);
  } else {
    // INT2 / INT3 codes widen to 4-bit nibbles (same values, same zero points)
    const shift = q.bits;
    for (let n = 0; n < N; n++)
      for (let k = 0; k < K; k++) {
        let c: number;
        if (shift === 2) c = (q.codes[n * rowIn + (k >> 2)] >> (2 * (k & 3))) & 3;
        else {
          const b0 = n * rowIn + Math.floor(k / 8) * 3, j = k % 8;
          const word = q.codes[b0] | (q.codes[b0 + 1] << 8) | (q.codes[b0 + 2] << 16);
          c = (word >> (3 * j)) & 7;
        }
        B[n * kBlocks * blob + (k >> 1)] |= c << (4 * (k & 1));
      }
  }
  const scales = Float32Array.from(scaleValues(q));
  const defaultZero = 2 ** (bits - 1);
  let zeroPts: Uint8Array | null = null;
  if (!z.every((v) => v === defaultZero)) {
    if (bits === 8) zeroPts = Uint8Array.from(z);
    else {
      const zb = Math.ceil(kBlocks / 2);
      zeroPts = new Uint8Array(N * zb);
      for (let n = 0; n < N; n++) for (let b = 0; b < G; b++) zeroPts[n * zb + (b >> 1)] |= z[n * G + b] << (4 * (b & 1));
    }
  }
  return { bits, blockSize: g, B, kBlocks, blob, scales, zeroPoints: zeroPts };
}

function hfConfigOf(cfg: LlamaConfig, base: Record<string, unknown> | null): Record<string, unknown> {
  const c: Record<string, unknown> = {
    ...(base ?? {}),
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: cfg.dim, intermediate_size: cfg.hiddenDim,
    num_hidden_layers: cfg.nLayers, num_attention_heads: cfg.nHeads, num_key_value_heads: cfg.nKvHeads, head_dim: cfg.headDim,
    vocab_size: cfg.vocabSize, max_position_embeddings: cfg.maxSeq, rms_norm_eps: cfg.normEps, rope_theta: cfg.ropeTheta,
    tie_word_embeddings: cfg.tiedEmbeddings, bos_token_id: cfg.bosId, eos_token_id: cfg.eosId, hidden_act: 'silu',
    use_cache: true,
  };
  if (cfg.ropeScaling) c.rope_scaling = {
    rope_type: 'llama3', factor: cfg.ropeScaling.factor, low_freq_factor: cfg.ropeScaling.lowFreqFactor,
    high_freq_factor: cfg.ropeScaling.highFreqFactor, original_max_position_embeddings: cfg.ropeScaling.originalMaxPositionEmbeddings,
  };
  delete c.quantization_config;
  return c;
}

/**
 * Writes `model` as an ONNX directory at `out` (which must not exist), atomically:
 * everything goes to a temp directory renamed at the end.
 */
export async function exportOnnx(model: string | Checkpoint, out: string, opts: OnnxExportOptions = {}): Promise<ExportReport> {
  need.string(out, 'out');
  need.object(opts, 'options');
  if (opts.accuracyLevel !== undefined && !is.oneOf(opts.accuracyLevel, [0, 1, 2, 3, 4] as const))
    throw invalidParameter('one of 0, 1, 2, 3, 4', 'options.accuracyLevel', opts.accuracyLevel);
  if (opts.vocab !== undefined) needVocab(opts.vocab, 'options.vocab');
  if (opts.onProgress !== undefined) need.func(opts.onProgress, 'options.onProgress');
  const t0 = performance.now();
  const dest = path.resolve(out);
  if (existsSync(dest)) throw new QuantformError('QF_IO', `Output directory ${dest} already exists: choose another --out or remove it`);
  const src = openExportSource(model, 'ONNX');
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(path.join(tmp, 'onnx'), { recursive: true });
  try {
    const ck = src.ck, cfg = ck.config;
    const accuracyLevel = opts.accuracyLevel ?? 0;
    if (![0, 1, 2, 3, 4].includes(accuracyLevel)) throw new QuantformError('QF_INVALID_ARGUMENT', `Expected 0-4 for accuracyLevel but received ${String(accuracyLevel)}`);
    // the tokenizer files first: a model whose tokenizer cannot be written is refused before any weight is read
    const tokenizerFiles = await writeTokenizerFiles(ck, tmp, opts.vocab);
    // the file name follows Transformers.js' dtype convention, decided by the first linear
    const firstQ = ck.quantizedWeight?.('layers.0.wq') ?? null;
    const q4 = firstQ !== null && firstQ.bits <= 4;
    const fileName = q4 ? 'model_q4.onnx' : 'model.onnx';
    const dataName = `${fileName}_data`;
    const dataFd = openSync(path.join(tmp, 'onnx', dataName), 'w');
    const g = new Graph(dataFd, dataName);
    const tensors: TensorExport[] = [];
    const total = 3 + cfg.nLayers * 9;
    const note = (t: TensorExport) => { tensors.push(t); opts.onProgress?.({ done: tensors.length, total, tensor: t.name }); };
    try {
      buildDecoder(g, ck, cfg, accuracyLevel, note);
      fsyncSync(dataFd);
    } finally {
      closeSync(dataFd);
    }
    const proto = modelProto({ name: 'quantform_llama', nodes: g.nodes, initializers: g.initializers, inputs: g.inputs, outputs: g.outputs }, {
      producerVersion: VERSION, docString: `quantform export of ${src.description}`, metadata: { 'quantform.source': src.description },
    });
    const fd = openSync(path.join(tmp, 'onnx', fileName), 'w');
    try {
      for (const part of proto.parts()) writeAll(fd, part);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (g.dataBytes === 0) rmSync(path.join(tmp, 'onnx', dataName));
    const config = hfConfigOf(cfg, src.hfConfig);
    config['transformers.js_config'] = { dtype: q4 ? 'q4' : 'fp32', ...(g.dataBytes > 0 ? { use_external_data_format: true } : {}) };
    config.quantform = { source: src.description, version: VERSION };
    writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    const gen = path.join(ck.path, 'generation_config.json');
    if (isHfDirectory(ck) && existsSync(gen)) copyFileSync(gen, path.join(tmp, 'generation_config.json'));
    else writeFileSync(path.join(tmp, 'generation_config.json'), JSON.stringify({ bos_token_id: cfg.bosId, eos_token_id: cfg.eosId }, null, 2) + '\n');
    renameSync(tmp, dest);
    const bytes = proto.length + g.dataBytes;
    return { format: 'onnx', out: dest, bytes, seconds: (performance.now() - t0) / 1000, source: src.description, vocab: tokenizerFiles, tensors };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    src.close();
  }
}

/** tokenizer.json / tokenizer_config.json: copied from an HF source, else written from the vocabulary and checked. */
async function writeTokenizerFiles(ck: Checkpoint, dir: string, vocab?: SpmVocab): Promise<string> {
  const tj = path.join(ck.path, 'tokenizer.json');
  if (isHfDirectory(ck) && existsSync(tj)) {
    copyFileSync(tj, path.join(dir, 'tokenizer.json'));
    const tc = path.join(ck.path, 'tokenizer_config.json');
    if (existsSync(tc)) copyFileSync(tc, path.join(dir, 'tokenizer_config.json'));
    return tj;
  }
  const v = vocab ?? vocabFromCheckpoint(ck);
  const json = tokenizerJsonFromVocab(v);
  const config = {
    add_bos_token: v.addBos, add_eos_token: v.addEos, bos_token: v.tokens[v.bosId], eos_token: v.tokens[v.eosId], unk_token: v.tokens[v.unkId],
    pad_token: v.padId === null ? null : v.tokens[v.padId], clean_up_tokenization_spaces: false, legacy: true,
    model_max_length: ck.config.maxSeq, tokenizer_class: 'LlamaTokenizer',
  };
  if (!vocab) {
    // the written tokenizer.json (read by tokenizers.js, Transformers.js' tokenizer) must tokenize like the model
    checkVocab(v, await ck.tokenizer());
    const hf = new HfTokenizer(json, config);
    const tok = await ck.tokenizer();
    for (const text of VOCAB_PROBE) {
      const want = tok.encode(text, { bos: false }), got = hf.encode(text, { add_special_tokens: false }).ids;
      if (want.join() !== got.join())
        throw new QuantformError('QF_UNSUPPORTED', `${v.source}: the tokenizer.json written for it tokenizes ${JSON.stringify(text)} differently from the model's tokenizer`);
    }
  }
  writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json) + '\n');
  writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 2) + '\n');
  return `${v.source} (tokenizer.json written from it)`;
}

function hfName(name: string): string {
  if (name === 'embed') return 'model.embed_tokens.weight';
  if (name === 'final_norm') return 'model.norm.weight';
  if (name === 'lm_head') return 'lm_head.weight';
  const [, l, w] = name.split('.');
  const map: Record<string, string> = {
    attn_norm: 'input_layernorm', ffn_norm: 'post_attention_layernorm', wq: 'self_attn.q_proj', wk: 'self_attn.k_proj',
    wv: 'self_attn.v_proj', wo: 'self_attn.o_proj', w_gate: 'mlp.gate_proj', w_up: 'mlp.up_proj', w_down: 'mlp.down_proj',
  };
  return `model.layers.${l}.${map[w]}.weight`;
}

function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

function buildDecoder(g: Graph, ck: Checkpoint, cfg: LlamaConfig, accuracyLevel: number, note: (t: TensorExport) => void): void {
  const D = cfg.dim, H = cfg.nHeads, KV = cfg.nKvHeads, hd = cfg.headDim, V = cfg.vocabSize, rep = H / KV, half = hd / 2;
  g.inputs.push(valueInfo('input_ids', ONNX_DTYPE.INT64, ['batch_size', 'sequence_length']));
  g.inputs.push(valueInfo('attention_mask', ONNX_DTYPE.INT64, ['batch_size', 'total_sequence_length']));
  g.inputs.push(valueInfo('position_ids', ONNX_DTYPE.INT64, ['batch_size', 'sequence_length']));
  for (let l = 0; l < cfg.nLayers; l++)
    for (const kv of ['key', 'value']) g.inputs.push(valueInfo(`past_key_values.${l}.${kv}`, ONNX_DTYPE.FLOAT, ['batch_size', KV, 'past_sequence_length', hd]));
  g.outputs.push(valueInfo('logits', ONNX_DTYPE.FLOAT, ['batch_size', 'sequence_length', V]));
  for (let l = 0; l < cfg.nLayers; l++)
    for (const kv of ['key', 'value']) g.outputs.push(valueInfo(`present.${l}.${kv}`, ONNX_DTYPE.FLOAT, ['batch_size', KV, 'total_sequence_length', hd]));

  const f32Tensor = (name: string) => {
    const w = ck.weight(name);
    note({ name: hfName(name), source: 'f32', type: 'FLOAT', shape: weightShape(cfg, name), fidelity: 'exact', relError: 0, maxAbsError: 0 });
    return g.f32(hfName(name), weightShape(cfg, name), w);
  };
  const embed = f32Tensor('embed');
  const x0 = g.op1('Gather', [embed, 'input_ids'], { axis: 0 });

  // RoPE caches (maxSeq, hd/2), angles in float as the runtime computes them
  const inv = invFreq(cfg);
  const cosC = new Float32Array(cfg.maxSeq * half), sinC = new Float32Array(cfg.maxSeq * half);
  for (let p = 0; p < cfg.maxSeq; p++)
    for (let i = 0; i < half; i++) {
      const a = Math.fround(p * inv[i]);
      cosC[p * half + i] = Math.cos(a);
      sinC[p * half + i] = Math.sin(a);
    }
  const cosG = g.op1('Gather', [g.f32('cos_cache', [cfg.maxSeq, half], cosC), 'position_ids'], { axis: 0 });  // (B, T, hd/2)
  const sinG = g.op1('Gather', [g.f32('sin_cache', [cfg.maxSeq, half], sinC), 'position_ids'], { axis: 0 });
  const ax1 = g.i64('axes_1', [1]);
  const cos4 = g.op1('Unsqueeze', [g.op1('Concat', [cosG, cosG], { axis: -1 }), ax1]);  // (B, 1, T, hd)
  const sin4 = g.op1('Unsqueeze', [g.op1('Concat', [sinG, sinG], { axis: -1 }), ax1]);

  // mask (B, 1, 1, T, S): key j visible to query i (absolute P + i) when j <= P + i and attention_mask[b, j]
  const past = g.op1('Shape', ['past_key_values.0.key'], { start: 2, end: 3 });
  const seq = g.op1('Shape', ['input_ids'], { start: 1, end: 2 });
  const total = g.op1('Shape', ['attention_mask'], { start: 1, end: 2 });
  const zero = g.i64('zero_1', [0]), one = g.i64('one_1', [1]);
  const scalar = (v: string) => g.op1('Squeeze', [v, g.i64(`axes_0_${v.replace(/\W/g, '')}`, [0])]);
  const qpos = g.op1('Range', [scalar(past), scalar(g.op1('Add', [past, seq])), scalar(one)]);
  const kpos = g.op1('Range', [scalar(zero), scalar(total), scalar(one)]);
  const causal = g.op1('LessOrEqual', [g.op1('Unsqueeze', [kpos, g.i64('axes_0', [0])]), g.op1('Unsqueeze', [qpos, ax1])]);  // (T, S)
  const padMask = g.op1('Unsqueeze', [g.op1('Cast', ['attention_mask'], { to: ONNX_DTYPE.BOOL }), g.i64('axes_1_2_3', [1, 2, 3])]);  // (B, 1, 1, 1, S)
  const allowed = g.op1('And', [causal, padMask]);  // (B, 1, 1, T, S)
  const masked = g.scalarF32('masked_score', MASKED);
  const scale = g.scalarF32('attn_scale', 1 / Math.sqrt(hd));
  const eps = g.scalarF32('rms_eps', cfg.normEps);

  const rmsnorm = (x: string, w: string) => {
    const ms = g.op1('ReduceMean', [g.op1('Mul', [x, x])], { axes: [-1], keepdims: 1 });
    return g.op1('Mul', [g.op1('Div', [x, g.op1('Sqrt', [g.op1('Add', [ms, eps])])]), w]);
  };
  const linear = (x: string, name: string): string => {
    const [N, K] = weightShape(cfg, name);
    const q = ck.quantizedWeight?.(name) ?? null;
    const parts = q ? matMulNBitsParts(q) : null;
    const base = hfName(name).replace(/\.weight$/, '');
    if (q && parts) {
      const inputs = [x, g.init(`${base}.qweight`, ONNX_DTYPE.UINT8, [N, parts.kBlocks, parts.blob], parts.B), g.f32(`${base}.scales`, [N * parts.kBlocks], parts.scales)];
      if (parts.zeroPoints) inputs.push(g.init(`${base}.qzeros`, ONNX_DTYPE.UINT8, [parts.zeroPoints.length], parts.zeroPoints));
      note({ name: base, source: quantLabel(q), type: `MatMulNBits ${parts.bits}-bit block ${parts.blockSize}`, shape: [N, K], fidelity: 'exact', relError: 0, maxAbsError: 0,
        note: q.bits < parts.bits ? `INT${q.bits} codes as ${parts.bits}-bit` : undefined });
      return g.op1('MatMulNBits', inputs, { K, N, bits: parts.bits, block_size: parts.blockSize, accuracy_level: accuracyLevel }, 'com.microsoft');
    }
    const w = q ? (dequantize(q).data as Float32Array) : ck.weight(name);
    note({ name: base, source: q ? quantLabel(q) : 'f32', type: 'MatMul (FLOAT)', shape: [N, K], fidelity: 'exact', relError: 0, maxAbsError: 0,
      note: q ? 'does not fit MatMulNBits (block size a power of two >= 16, integer zero points): its exact values as an fp32 MatMul' : undefined });
    return g.op1('MatMul', [x, g.f32(`${base}.weight_t`, [K, N], transpose(w, N, K))]);
  };
  const rotate = (x: string) => {
    const [a, b] = g.op('Split', [x, g.i64(`split_${half}`, [half, half])], { axis: -1 }, 2);
    const rot = g.op1('Concat', [g.op1('Neg', [b]), a], { axis: -1 });
    return g.op1('Add', [g.op1('Mul', [x, cos4]), g.op1('Mul', [rot, sin4])]);
  };
  const heads = (x: string, n: number) => g.op1('Transpose', [g.op1('Reshape', [x, g.i64(`shape_bt_${n}_${hd}`, [0, 0, n, hd])])], { perm: [0, 2, 1, 3] });

  let x = x0;
  for (let l = 0; l < cfg.nLayers; l++) {
    const p = `layers.${l}`;
    const h = rmsnorm(x, f32Tensor(`${p}.attn_norm`));
    const q = rotate(heads(linear(h, `${p}.wq`), H));       // (B, H, T, hd)
    const k = rotate(heads(linear(h, `${p}.wk`), KV));      // (B, KV, T, hd)
    const v = heads(linear(h, `${p}.wv`), KV);
    const kAll = g.op('Concat', [`past_key_values.${l}.key`, k], { axis: 2 }, [`present.${l}.key`])[0];    // (B, KV, S, hd)
    const vAll = g.op('Concat', [`past_key_values.${l}.value`, v], { axis: 2 }, [`present.${l}.value`])[0];
    const q5 = g.op1('Reshape', [q, g.i64(`shape_gqa_q`, [0, KV, rep, -1, hd])]);      // (B, KV, rep, T, hd)
    const kT = g.op1('Transpose', [g.op1('Unsqueeze', [kAll, g.i64('axes_2', [2])])], { perm: [0, 1, 2, 4, 3] });  // (B, KV, 1, hd, S)
    const scores = g.op1('Mul', [g.op1('MatMul', [q5, kT]), scale]);                   // (B, KV, rep, T, S)
    const probs = g.op1('Softmax', [g.op1('Where', [allowed, scores, masked])], { axis: -1 });
    const o5 = g.op1('MatMul', [probs, g.op1('Unsqueeze', [vAll, g.i64('axes_2', [2])])]);  // (B, KV, rep, T, hd)
    const o = g.op1('Reshape', [g.op1('Transpose', [g.op1('Reshape', [o5, g.i64('shape_heads', [0, H, -1, hd])])], { perm: [0, 2, 1, 3] }), g.i64('shape_bt_d', [0, 0, H * hd])]);
    x = g.op1('Add', [x, linear(o, `${p}.wo`)]);
    const h2 = rmsnorm(x, f32Tensor(`${p}.ffn_norm`));
    const gate = linear(h2, `${p}.w_gate`);
    const act = g.op1('Mul', [g.op1('Mul', [gate, g.op1('Sigmoid', [gate])]), linear(h2, `${p}.w_up`)]);
    x = g.op1('Add', [x, linear(act, `${p}.w_down`)]);
  }
  const n = rmsnorm(x, f32Tensor('final_norm'));
  let logits: string;
  const headQ = cfg.tiedEmbeddings ? null : ck.quantizedWeight?.('lm_head') ?? null;
  if (headQ) logits = linear(n, 'lm_head');
  else {
    const head = cfg.tiedEmbeddings ? embed : f32Tensor('lm_head');
    const flat = g.op1('Gemm', [g.op1('Reshape', [n, g.i64('shape_flat', [-1, D])]), head], { transB: 1 });  // (B*T, V)
    const bt = g.op1('Shape', ['input_ids']);
    logits = g.op1('Reshape', [flat, g.op1('Concat', [bt, g.i64('vocab_dim', [V])], { axis: 0 })]);
  }
  g.op('Identity', [logits], {}, ['logits']);
}

