// Calibration activations for block-wise training: samples x tokens x hidden, f32
// or bf16, held in RAM up to a byte budget and spilled beyond it to a memory-mapped
// temporary file (native/include/quantform/spill_buffer.h). The spill file is
// unlinked the moment it is created, so it is gone however the process ends
// (success, error, Ctrl-C, kill), and its space is reserved up front so a full disk
// is an error here, not a crash later. Pages of the file part are dropped from the
// process after each access: the resident set stays near the budget.
import { existsSync, statSync } from 'node:fs';
import os from 'node:os';
import { QuantformError, fromNative, invalidParameter, is } from '../errors.js';
import { native, type NativeSpillBuffer } from '../native.js';

export type ActivationDType = 'f32' | 'bf16';

export interface ActivationStoreOptions {
  samples: number;
  tokens: number;
  hidden: number;
  /** Storage type; reads and writes are always f32 (bf16 rounds to nearest even). Default 'f32'. */
  dtype?: ActivationDType;
  /** Bytes the store may keep in RAM; samples beyond it spill to the file. Default defaultMemoryBudget(). */
  maxMemoryBytes?: number;
  /** Directory of the spill file. Default os.tmpdir(). */
  tmpDir?: string;
}

/** Half of the memory the OS reports available now: the rest is for weights, gradients and the OS. */
export function defaultMemoryBudget(): number {
  return Math.floor(os.freemem() / 2);
}

export class ActivationStore {
  readonly samples: number;
  readonly tokens: number;
  readonly hidden: number;
  readonly dtype: ActivationDType;
  /** floats of one sample: tokens * hidden */
  readonly sampleElements: number;
  /** samples [0, memorySamples) live in RAM, the rest in the spill file */
  readonly memorySamples: number;
  /** total bytes of storage, RAM and file together */
  readonly bytes: number;
  /** where the spill file was created (already unlinked: never on disk under this name); null when nothing spills */
  readonly spillFile: string | null;
  private buf: NativeSpillBuffer | null;

  constructor(opts: ActivationStoreOptions) {
    if (opts === null || typeof opts !== 'object') throw invalidParameter('options object', 'options', opts);
    for (const k of ['samples', 'tokens', 'hidden'] as const)
      if (!is.positiveInteger(opts[k])) throw invalidParameter('positive integer', k, opts[k]);
    const dtype = opts.dtype ?? 'f32';
    if (!is.oneOf(dtype, ['f32', 'bf16'] as const)) throw invalidParameter("'f32' or 'bf16'", 'dtype', dtype);
    const budget = opts.maxMemoryBytes ?? defaultMemoryBudget();
    if (!is.finiteNumber(budget) || budget < 0) throw invalidParameter('non-negative number of bytes', 'maxMemoryBytes', budget);
    const dir = opts.tmpDir ?? os.tmpdir();
    if (!is.string(dir) || !existsSync(dir) || !statSync(dir).isDirectory()) throw invalidParameter('an existing directory', 'tmpDir', dir);
    this.samples = opts.samples;
    this.tokens = opts.tokens;
    this.hidden = opts.hidden;
    this.dtype = dtype;
    this.sampleElements = opts.tokens * opts.hidden;
    const sampleBytes = this.sampleElements * (dtype === 'f32' ? 4 : 2);
    this.memorySamples = Math.min(this.samples, Math.floor(budget / sampleBytes));
    this.bytes = this.samples * sampleBytes;
    if (!Number.isSafeInteger(this.samples * this.sampleElements))
      throw invalidParameter('samples * tokens * hidden below 2^53', 'samples', this.samples);
    try {
      this.buf = new (native().io.SpillBuffer)(this.samples * this.sampleElements, dtype, this.memorySamples * this.sampleElements, dir);
    } catch (e) {
      throw fromNative(e);
    }
    this.spillFile = this.buf.info().file;
  }

  private live(): NativeSpillBuffer {
    if (!this.buf) throw new QuantformError('QF_INVALID_ARGUMENT', 'ActivationStore was disposed');
    return this.buf;
  }

  private range(sample: number, count: number): void {
    if (!is.nonNegativeInteger(sample) || sample >= this.samples) throw invalidParameter(`integer in [0, ${this.samples})`, 'sample', sample);
    if (!is.positiveInteger(count) || sample + count > this.samples)
      throw invalidParameter(`positive integer with sample + count <= ${this.samples}`, 'count', count);
  }

  /** Stores samples [sample, sample + data.length / sampleElements): data (count, tokens, hidden). */
  write(sample: number, data: Float32Array): void {
    if (!(data instanceof Float32Array) || data.length === 0 || data.length % this.sampleElements !== 0)
      throw invalidParameter(`Float32Array of a multiple of ${this.sampleElements} (tokens x hidden) floats`, 'data', data);
    this.range(sample, data.length / this.sampleElements);
    try {
      this.live().write(sample * this.sampleElements, data);
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** Samples [sample, sample + count) as f32 (count, tokens, hidden), into `out` when given. */
  read(sample: number, count = 1, out?: Float32Array): Float32Array {
    this.range(sample, count);
    const dst = out ?? new Float32Array(count * this.sampleElements);
    if (!(dst instanceof Float32Array) || dst.length !== count * this.sampleElements)
      throw invalidParameter(`Float32Array of ${count * this.sampleElements} floats`, 'out', dst);
    try {
      this.live().read(sample * this.sampleElements, dst);
    } catch (e) {
      throw fromNative(e);
    }
    return dst;
  }

  /** Frees the RAM part and the spill file now (also done by GC, but not promptly). */
  dispose(): void {
    this.buf?.dispose();
    this.buf = null;
  }
}
