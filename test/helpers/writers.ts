// Writers for crafted checkpoints (tests only): safetensors, GGUF v1-v3 and
// llama2.c files built from a weight function, plus knobs to corrupt them.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { permuteHalfToInterleaved, weightNames, weightShape, type LlamaConfig } from '../../lib/index.js';

export type Dt = 'F32' | 'F16' | 'BF16';

/** binary32 -> binary16 bits, round to nearest even (tests use small weights; NaN and +-Inf map to theirs). */
export function f16Bits(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, exp = ((u >>> 23) & 0xff) - 127 + 15, mant = u & 0x7fffff;
  if (Number.isNaN(x)) return sign | 0x7e00;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    const m = (mant | 0x800000) >>> (1 - exp + 13);
    return sign | m;
  }
  let h = sign | (exp << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return h;
}
export function f16Value(h: number): number {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}
export function bf16Bits(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
export function bf16Value(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
}

export function encode(data: Float32Array, dt: Dt): Buffer {
  if (dt === 'F32') return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const b = Buffer.alloc(data.length * 2);
  for (let i = 0; i < data.length; i++) b.writeUInt16LE(dt === 'F16' ? f16Bits(data[i]) : bf16Bits(data[i]), 2 * i);
  return b;
}

export function hfConfig(cfg: LlamaConfig, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: cfg.dim, intermediate_size: cfg.hiddenDim,
    num_hidden_layers: cfg.nLayers, num_attention_heads: cfg.nHeads, num_key_value_heads: cfg.nKvHeads, vocab_size: cfg.vocabSize,
    max_position_embeddings: cfg.maxSeq, rms_norm_eps: cfg.normEps, rope_theta: cfg.ropeTheta, hidden_act: 'silu',
    tie_word_embeddings: cfg.tiedEmbeddings, bos_token_id: 1, eos_token_id: 2, ...extra,
  };
}

export function hfName(name: string): string {
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

export interface StEntry { name: string; dtype: string; shape: number[]; data: Buffer }

/** One safetensors file; `header` lets a test rewrite the parsed header before it is written. */
export function safetensorsBytes(entries: StEntry[], header?: (h: Record<string, unknown>) => void): Buffer {
  const h: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const e of entries) {
    h[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.data.length] };
    off += e.data.length;
  }
  header?.(h);
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...entries.map((e) => e.data)]);
}

export function hfEntries(cfg: LlamaConfig, w: (n: string) => Float32Array, dt: Dt): StEntry[] {
  return weightNames(cfg).map((n) => ({ name: hfName(n), dtype: dt, shape: weightShape(cfg, n), data: encode(w(n), dt) }));
}

export function writeHfDir(dir: string, cfg: LlamaConfig, w: (n: string) => Float32Array, dt: Dt, shards = 1): void {
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hfConfig(cfg)));
  const entries = hfEntries(cfg, w, dt);
  if (shards === 1) {
    writeFileSync(path.join(dir, 'model.safetensors'), safetensorsBytes(entries));
    return;
  }
  const map: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-0000${s + 1}-of-0000${shards}.safetensors`;
    const part = entries.filter((_, i) => i % shards === s);
    part.forEach((e) => { map[e.name] = file; });
    writeFileSync(path.join(dir, file), safetensorsBytes(part));
  }
  writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
}

// llama.cpp's tensor names, written out here rather than imported from lib/model/gguf.ts:
// the fixtures the GGUF reader is tested on must not share its mapping.
export function ggufName(name: string): string {
  if (name === 'embed') return 'token_embd.weight';
  if (name === 'final_norm') return 'output_norm.weight';
  if (name === 'lm_head') return 'output.weight';
  const [, l, w] = name.split('.');
  const map: Record<string, string> = {
    attn_norm: 'attn_norm', ffn_norm: 'ffn_norm', wq: 'attn_q', wk: 'attn_k', wv: 'attn_v', wo: 'attn_output',
    w_gate: 'ffn_gate', w_up: 'ffn_up', w_down: 'ffn_down',
  };
  return `blk.${l}.${map[w]}.weight`;
}

export interface GgufOpts {
  version?: number;
  dtype?: Dt;
  /** metadata values that disagree with the tensors written */
  meta?: Partial<Pick<LlamaConfig, 'hiddenDim' | 'nLayers' | 'nHeads'>>;
  magic?: number;
  tensorCount?: bigint;
  /** replaces the ggml type of every tensor */
  ggmlType?: number;
  vocab?: string[];
}

/** A GGUF file of a model: q/k written interleaved as llama.cpp's converters do. */
export function ggufBytes(cfg: LlamaConfig, w: (n: string) => Float32Array, o: GgufOpts = {}): Buffer {
  const v = o.version ?? 3, v1 = v === 1;
  const parts: Buffer[] = [];
  const u32 = (x: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(x >>> 0); parts.push(b); };
  const cnt = (x: number | bigint) => {
    if (v1) u32(Number(x));
    else { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(x)); parts.push(b); }
  };
  const str = (s: string) => { const b = Buffer.from(s, 'utf8'); cnt(b.length); parts.push(b); };
  const kvU32 = (k: string, x: number) => { str(k); u32(4); u32(x); };
  const kvF32 = (k: string, x: number) => { str(k); u32(6); const b = Buffer.alloc(4); b.writeFloatLE(x); parts.push(b); };
  const names = weightNames(cfg);
  const vocab = o.vocab ?? [];
  u32(o.magic ?? 0x46554747);
  u32(v);
  cnt(o.tensorCount ?? BigInt(names.length));
  cnt(10 + (vocab.length ? 2 : 0));
  str('general.architecture'); u32(8); str('llama');
  kvU32('llama.context_length', cfg.maxSeq);
  kvU32('llama.embedding_length', cfg.dim);
  kvU32('llama.block_count', o.meta?.nLayers ?? cfg.nLayers);
  kvU32('llama.feed_forward_length', o.meta?.hiddenDim ?? cfg.hiddenDim);
  kvU32('llama.attention.head_count', o.meta?.nHeads ?? cfg.nHeads);
  kvU32('llama.attention.head_count_kv', cfg.nKvHeads);
  kvF32('llama.attention.layer_norm_rms_epsilon', cfg.normEps);
  kvU32('general.alignment', 32);
  kvF32('llama.rope.freq_base', cfg.ropeTheta);
  if (vocab.length) {
    str('tokenizer.ggml.tokens'); u32(9); u32(8); cnt(vocab.length); vocab.forEach(str);
    str('tokenizer.ggml.scores'); u32(9); u32(6); cnt(vocab.length);
    vocab.forEach((_, i) => { const b = Buffer.alloc(4); b.writeFloatLE(-i); parts.push(b); });
  }
  const dt = o.dtype ?? 'F32';
  const datas: Buffer[] = [];
  let off = 0;
  for (const n of names) {
    let data = w(n);
    const kind = n.split('.')[2];
    if (kind === 'wq') data = permuteHalfToInterleaved(data, cfg.nHeads, cfg.dim);
    if (kind === 'wk') data = permuteHalfToInterleaved(data, cfg.nKvHeads, cfg.dim);
    const shape = weightShape(cfg, n);
    str(ggufName(n));
    u32(shape.length);
    for (const d of [...shape].reverse()) cnt(d);
    u32(o.ggmlType ?? (dt === 'F32' ? 0 : dt === 'F16' ? 1 : 30));
    const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(off)); parts.push(b);
    const bytes = encode(data, dt);
    const padded = Buffer.alloc(Math.ceil(bytes.length / 32) * 32);
    bytes.copy(padded);
    datas.push(padded);
    off += padded.length;
  }
  const head = Buffer.concat(parts);
  const pad = Buffer.alloc(Math.ceil(head.length / 32) * 32 - head.length);
  return Buffer.concat([head, pad, ...datas]);
}

/** llama2.c v0 checkpoint (q/k interleaved, as llama2.c's export writes them). */
export function llama2cBytes(cfg: LlamaConfig, w: (n: string) => Float32Array): Buffer {
  const h = Buffer.alloc(28);
  [cfg.dim, cfg.hiddenDim, cfg.nLayers, cfg.nHeads, cfg.nKvHeads, cfg.tiedEmbeddings ? cfg.vocabSize : -cfg.vocabSize, cfg.maxSeq]
    .forEach((v, i) => h.writeInt32LE(v, 4 * i));
  const parts: Buffer[] = [h];
  const add = (a: Float32Array) => parts.push(Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  add(w('embed'));
  for (const kind of ['attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w_gate', 'w_down', 'w_up'])
    for (let l = 0; l < cfg.nLayers; l++) {
      let d = w(`layers.${l}.${kind}`);
      if (kind === 'wq') d = permuteHalfToInterleaved(d, cfg.nHeads, cfg.dim);
      if (kind === 'wk') d = permuteHalfToInterleaved(d, cfg.nKvHeads, cfg.dim);
      add(d);
    }
  add(w('final_norm'));
  add(new Float32Array(cfg.maxSeq * cfg.headDim));  // freq_cis_real + imag (unused: RoPE is computed)
  if (!cfg.tiedEmbeddings) add(w('lm_head'));
  return Buffer.concat(parts);
}

/** llama2.c tokenizer.bin for a list of pieces (scores -i). */
export function tokenizerBinBytes(pieces: string[]): Buffer {
  const parts: Buffer[] = [];
  const max = Math.max(...pieces.map((p) => Buffer.byteLength(p)));
  const h = Buffer.alloc(4); h.writeInt32LE(max); parts.push(h);
  pieces.forEach((p, i) => {
    const b = Buffer.from(p, 'utf8'), m = Buffer.alloc(8);
    m.writeFloatLE(-i, 0); m.writeInt32LE(b.length, 4);
    parts.push(m, b);
  });
  return Buffer.concat(parts);
}
