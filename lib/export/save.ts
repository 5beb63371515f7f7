// Writes a quantized model as a GPTQ checkpoint directory: safetensors (quantized
// linears as qweight/qzeros/scales/g_idx, norms and embeddings as stored), one file
// or Hugging Face shards + index above maxShardBytes, config.json with
// quantization_config, the tokenizer, quantform_report.json and loss.svg.
//
// Tensors are written one at a time as the source produces them (GptqWriter.step),
// so a streaming quantizer holds one linear at a time. The directory appears only
// when complete: it is built as a temp directory next to `out` and renamed at the
// end (lib/io/atomic.ts); an error or abort() removes it.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QuantformError, invalidParameter, is, need } from '../errors.js';
import { AtomicDir, writeFileAtomic } from '../io/atomic.js';
import { DEFAULT_MAX_SHARD_BYTES, SafetensorsWriter, type TensorSpec } from '../io/safetensors.js';
import type { StoredDType } from '../io/tensors.js';
import { configOfModel } from '../engine/block-source.js';
import type { BlockQuant } from '../engine/llama.js';
import { needQuantizedModel, type QuantizedModel, type QuantizeReport } from '../methods/quantize-model.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { needConfig, weightNames, weightShape, type LlamaConfig } from '../model/config.js';
import { hfModuleName } from '../model/hf.js';
import type { QuantizedTensor } from '../ops/quant.js';
import { SentencePieceBpe } from '../tokenizer/sentencepiece.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { toGptq, type GptqFormat } from './gptq.js';
import { activationConfig, needsRuntime, scaleTensorNames, type ActivationQuant } from '../model/fpt.js';
import { lossCurveSvg, lossCurvesSvg } from './svg.js';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'tokenizer.model'];
const QUANTIZED = /^layers\.\d+\.(wq|wk|wv|wo|w_gate|w_up|w_down)$/;

/** Whether the GPTQ export stores weight `name` quantized (the block linears; lm_head stays as it is). */
export function isQuantizedLinear(name: string): boolean {
  return QUANTIZED.test(name);
}

/** The directory whose tokenizer files an export of `ck` copies (Hugging Face and GPTQ directories). */
export function tokenizerDirOf(ck: Checkpoint): string | undefined {
  return ck.format === 'safetensors' || ck.format === 'gptq' ? ck.path : undefined;
}

/** What the layout of a GPTQ directory is planned from (the header is planned before any bytes). */
export interface GptqPlan {
  config: LlamaConfig;
  /** config.json fields to keep (quantization_config is added) */
  hfConfig: Record<string, unknown>;
  quant: BlockQuant;
  /** dtype of a norm or embedding as it will be stored */
  plainDtype(name: string): 'F32' | 'F16' | 'BF16';
  /** FPTQuant's run-time part: scale tensors and config fields (lib/model/fpt.ts) */
  activations?: ActivationQuant;
}

/** What a GPTQ directory is written from, one canonical weight at a time (weightNames order, GptqWriter.step). */
export interface GptqSource extends GptqPlan {
  /** bytes of a norm or embedding, little-endian, in plainDtype(name) */
  plain(name: string): ArrayBufferView;
  /** a block linear quantized with f16 parameters; called once, when it is written */
  linear(name: string): QuantizedTensor;
}

export interface SaveOptions {
  /** Directory holding the tokenizer files to copy (tokenizer.json, ...): usually the source model. */
  tokenizerDir?: string;
  /** Written as a llama2.c tokenizer.bin when tokenizerDir holds no tokenizer.json (llama2.c and GGUF sources). */
  tokenizer?: Tokenizer;
  /** Default: 'gptq' (v1) for symmetric models, 'gptq_v2' for asymmetric ones (v1 zero points overflow). */
  format?: GptqFormat;
  /** Above this many bytes the safetensors are split into shards with an index (default 5e9, as Hugging Face). */
  maxShardBytes?: number;
}

/** A GptqPlan or GptqSource passed in by a caller (plain JS): its config, quantization and callbacks. */
function needGptqPlan(src: unknown): asserts src is GptqPlan {
  need.object(src, 'source');
  const o = src as Record<string, unknown>;
  needConfig(o.config, 'source.config');
  need.object(o.hfConfig, 'source.hfConfig');
  need.object(o.quant, 'source.quant');
  const q = o.quant as Record<string, unknown>;
  if (!is.oneOf(q.bits, [2, 3, 4, 8] as const)) throw invalidParameter('one of 2, 3, 4, 8', 'source.quant.bits', q.bits, 'QF_UNSUPPORTED_BITS');
  need.positiveInteger(q.groupSize, 'source.quant.groupSize');
  need.bool(q.symmetric, 'source.quant.symmetric');
  need.func(o.plainDtype, 'source.plainDtype');
  // a source to pull from has both callbacks; a plan (the caller pushes the weights) has neither
  if (o.plain !== undefined || o.linear !== undefined) for (const f of ['plain', 'linear'] as const) need.func(o[f], `source.${f}`);
}

export function needSaveOptions(opts: unknown): asserts opts is SaveOptions {
  need.object(opts, 'options');
  const o = opts as Record<string, unknown>;
  if (o.tokenizerDir !== undefined) need.string(o.tokenizerDir, 'options.tokenizerDir');
  if (o.format !== undefined && !is.oneOf(o.format, ['gptq', 'gptq_v2'] as const)) throw invalidParameter("'gptq' or 'gptq_v2'", 'options.format', o.format);
  if (o.maxShardBytes !== undefined && !(is.finiteNumber(o.maxShardBytes) && o.maxShardBytes > 0))
    throw invalidParameter('positive number', 'options.maxShardBytes', o.maxShardBytes);
  if (o.tokenizer !== undefined) need.object(o.tokenizer, 'options.tokenizer');
}

/** GPTQ tensor shapes of a (N, K) linear: qweight [ceil(K b / 32), N], qzeros [G, ceil(N b / 32)], scales [G, N], g_idx [K]. */
function linearSpecs(base: string, N: number, K: number, q: BlockQuant): TensorSpec[] {
  const G = Math.ceil(K / Math.min(q.groupSize, K));
  return [
    { name: `${base}.qweight`, dtype: 'I32', shape: [Math.ceil((K * q.bits) / 32), N] },
    { name: `${base}.qzeros`, dtype: 'I32', shape: [G, Math.ceil((N * q.bits) / 32)] },
    { name: `${base}.scales`, dtype: 'F16', shape: [G, N] },
    { name: `${base}.g_idx`, dtype: 'I32', shape: [K] },
  ];
}

export class GptqWriter {
  readonly dir: AtomicDir;
  readonly format: GptqFormat;
  /** canonical weight names, in the order step() writes them */
  readonly names: string[];
  private readonly writer: SafetensorsWriter;
  private next = 0;
  private written = 0;

  /**
   * `src`: a GptqSource to pull weights from with step(), or only the plan when the
   * caller pushes them (writePlain / writeLinear, in any order: the streaming pipeline).
   */
  constructor(private readonly src: GptqPlan | GptqSource, out: string, private readonly opts: SaveOptions = {}) {
    needGptqPlan(src);
    need.string(out, 'out');
    needSaveOptions(opts);
    const q = src.quant;
    this.format = opts.format ?? (q.symmetric ? 'gptq' : 'gptq_v2');
    if (this.format === 'gptq' && !q.symmetric)
      throw new QuantformError('QF_INVALID_ARGUMENT', "Asymmetric models need checkpoint_format 'gptq_v2': v1 stores z - 1, which overflows for z = 0");
    if (this.format === 'gptq' && q.bits === 8) throw new QuantformError('QF_UNSUPPORTED', '8-bit v1 zero points overflow: use gptq_v2');
    this.names = weightNames(src.config);
    const specs: TensorSpec[] = [];
    for (const name of this.names) {
      const shape = weightShape(src.config, name);
      if (isQuantizedLinear(name)) specs.push(...linearSpecs(hfModuleName(name), shape[0], shape[1], q));
      else specs.push({ name: `${hfModuleName(name)}.weight`, dtype: src.plainDtype(name) as StoredDType, shape });
    }
    const aq = src.activations && needsRuntime(src.activations) ? src.activations : null;
    if (aq)
      for (let l = 0; l < src.config.nLayers; l++) {
        const n = scaleTensorNames(l);
        if (aq.actBits < 16) specs.push({ name: n.act, dtype: 'F32', shape: [4] });
        if (aq.kvBits < 16) specs.push({ name: n.kv, dtype: 'F32', shape: [2, src.config.nKvHeads] });
      }
    this.dir = new AtomicDir(out);
    try {
      this.writer = new SafetensorsWriter(this.dir.path, specs, { maxShardBytes: opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES, metadata: { format: 'pt' } });
    } catch (e) {
      this.dir.abort();
      throw e;
    }
  }

  /** Safetensors files this writer produces (one, or shards). */
  get files(): string[] {
    return this.writer.files;
  }

  /** Writes the next weight pulled from the source; returns its name, or null when every weight is written. */
  step(): string | null {
    if (!('linear' in this.src)) throw new QuantformError('QF_INTERNAL', 'GptqWriter.step() needs a GptqSource, not only a plan');
    if (this.next >= this.names.length) return null;
    const name = this.names[this.next++];
    if (isQuantizedLinear(name)) this.writeLinear(name, this.src.linear(name));
    else this.writePlain(name, this.src.plain(name));
    return name;
  }

  /** A norm or embedding: its bytes in the planned dtype. */
  writePlain(name: string, data: ArrayBufferView): void {
    try {
      this.writer.write(`${hfModuleName(name)}.weight`, data);
    } catch (e) {
      this.abort();
      throw e;
    }
    this.written++;
  }

  /** A block linear (f16 parameters, the plan's bits and group size) as qweight / qzeros / scales / g_idx. */
  writeLinear(name: string, ql: QuantizedTensor): void {
    const base = hfModuleName(name);
    try {
      const [N, K] = weightShape(this.src.config, name);
      if (ql.shape[0] !== N || ql.shape[1] !== K || ql.bits !== this.src.quant.bits || ql.groupSize !== Math.min(this.src.quant.groupSize, K))
        throw new QuantformError('QF_SHAPE_MISMATCH', `${name}: expected a W${this.src.quant.bits} g${Math.min(this.src.quant.groupSize, K)} [${N}, ${K}] linear but received W${ql.bits} g${ql.groupSize} [${ql.shape}]`);
      const g = toGptq(ql, this.format);
      this.writer.write(`${base}.qweight`, g.qweight);
      this.writer.write(`${base}.qzeros`, g.qzeros);
      this.writer.write(`${base}.scales`, g.scales);
      this.writer.write(`${base}.g_idx`, g.gIdx);
    } catch (e) {
      this.abort();
      throw e;
    }
    this.written++;
  }

  /**
   * After the last step(): config, tokenizer, report; then the directory is renamed onto `out`.
   * `activations`: the run-time quantizers as they ended (a stage after the block pass retrains them), else the plan's.
   */
  finish(report: QuantizeReport, activations?: ActivationQuant): void {
    const final = activations ?? this.src.activations;
    try {
      if (this.written < this.names.length) throw new QuantformError('QF_INTERNAL', `GptqWriter.finish() after ${this.written} of ${this.names.length} weights`);
      const aq = final && needsRuntime(final) ? final : null;
      if (aq) {
        const L = this.src.config.nLayers, kv = 2 * this.src.config.nKvHeads;
        for (let l = 0; l < L; l++) {
          const n = scaleTensorNames(l);
          if (aq.actBits < 16) this.writer.write(n.act, aq.actScales.slice(l * 4, (l + 1) * 4));
          if (aq.kvBits < 16) this.writer.write(n.kv, aq.kvScales.slice(l * kv, (l + 1) * kv));
        }
      }
      this.writer.finish();
      const q = this.src.quant;
      // per-channel (a group size >= every linear's K) is -1 in GPTQ tools' configs
      const perChannel = this.names.filter(isQuantizedLinear).every((n) => q.groupSize >= weightShape(this.src.config, n)[1]);
      const config = {
        ...this.src.hfConfig,
        quantization_config: {
          quant_method: 'gptq', bits: q.bits, group_size: perChannel ? -1 : q.groupSize, sym: q.symmetric, desc_act: false,
          checkpoint_format: this.format, true_sequential: true, damp_percent: 0,
          quantform: { method: report.method, ...(final ? activationConfig(final) : {}) },
        },
      };
      writeFileAtomic(this.dir.file('config.json'), JSON.stringify(config, null, 2) + '\n');
      const tdir = this.opts.tokenizerDir;
      const hfTokenizer = tdir !== undefined && existsSync(path.join(tdir, 'tokenizer.json'));
      if (hfTokenizer) {
        for (const f of TOKENIZER_FILES) if (existsSync(path.join(tdir, f))) writeFileAtomic(this.dir.file(f), readFileSync(path.join(tdir, f)));
      } else if (this.opts.tokenizer instanceof SentencePieceBpe) {
        writeFileAtomic(this.dir.file('tokenizer.bin'), this.opts.tokenizer.toLlama2cBytes());
      }
      writeFileAtomic(this.dir.file('quantform_report.json'), JSON.stringify(report, null, 2) + '\n');
      if (report.lossCurve.length > 0) {
        const title = `${report.method} W${q.bits} g${q.groupSize}${q.symmetric ? ' sym' : ''}`;
        writeFileAtomic(this.dir.file('loss.svg'), report.lossCurves && report.lossCurves.length > 1 ? lossCurvesSvg(report.lossCurves, title) : lossCurveSvg(report.lossCurve, title));
      }
      this.dir.commit();
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  abort(): void {
    this.writer.abort();
    this.dir.abort();
  }
}

/** The in-memory result of quantizeModel as a GptqSource (norms and embeddings fp32, as transformed). */
export function gptqSourceOf(q: QuantizedModel): GptqSource {
  needQuantizedModel(q);
  const m = q.model;
  return {
    config: configOfModel(m),
    hfConfig: m.hfConfig,
    quant: q.quant,
    plainDtype: () => 'F32',
    plain: (name) => {
      if (name === 'embed') return m.embed;
      if (name === 'final_norm') return m.finalNorm;
      if (name === 'lm_head') return m.lmHead;
      const [, l, w] = name.split('.');
      return m.norm(Number(l), w === 'attn_norm' ? 'input' : 'post');
    },
    linear: (name) => {
      const ql = q.linears.get(hfModuleName(name));
      if (!ql) throw new QuantformError('QF_INTERNAL', `No quantized weight for ${name}`);
      return ql;
    },
    activations: q.activations,
  };
}

/** Saves the result of quantizeModel (see GptqWriter for the layout). */
export function saveGptq(q: QuantizedModel, out: string, opts: SaveOptions = {}): void {
  needQuantizedModel(q);
  const w = new GptqWriter(gptqSourceOf(q), out, opts);
  while (w.step() !== null);
  w.finish(q.report);
}
