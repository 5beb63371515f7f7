// What a quantization method is: a named run over the blocks of a model, each handed
// to it by the streaming pipeline (lib/engine/pipeline.ts) with its calibration
// activations; it transforms the block exactly (TEQ's merged scales) and/or quantizes
// linears itself (GPTQ), and every linear it leaves is round-to-nearest quantized. A
// method that needs the whole model at once before the block pass (FPTQuant) declares a
// WholeModelStage; one that trains the packed result after it (EfficientQAT's E2E-QP), afterBlocks.
// Methods register by name (lib/methods/index.ts); the entry points look them up and
// never change when a method is added.
import type { CalibrationSet } from '../engine/calib.js';
import type { ScheduleKind } from '../engine/optim.js';
import type { BlockSource, FrozenDType } from '../engine/block-source.js';
import type { EndToEndPlan } from '../engine/end-to-end.js';
import type { BlockQuant, LlamaShape, TrainableLlama } from '../engine/llama.js';
import type { BlockMethod, MemoryItem } from '../engine/pipeline.js';
import type { ActivationQuant } from '../model/fpt.js';
import type { GptqMethodOptions } from './gptq.js';
import type { FptQuantOptions } from './fptquant.js';
import type { EfficientQatOptions, PackedLlama } from './efficientqat.js';
import type { QuantizedTensor } from '../ops/quant.js';

export interface TrainOptions {
  /** Optimizer steps (block-wise: per block). Default 1000 (TEQ reference). */
  steps: number;
  /** Default 1e-3. */
  lr: number;
  /** Adam betas. Default [0.9, 0.9] (TEQ reference). */
  betas: [number, number];
  weightDecay: number;
  schedule: ScheduleKind;
  /** Fraction of steps warming up. Default 0.05. */
  warmup: number;
  /** Calibration windows per step. Default 2 (1000 steps of stories260K in well under a minute on 2 cores). */
  batchSize: number;
  /** 'e2e': next-token cross-entropy of the whole model; 'block': output MSE per block vs fp32. */
  loss: 'e2e' | 'block';
  seed: number;
  /**
   * TEQ: also train mergeable scales for o_proj's input (per v channel, folded into
   * v_proj rows) and down_proj's input (per intermediate channel, folded into
   * up_proj rows), so o_proj and down_proj are not left as plain RTN. Default false
   * (the reference's scope).
   */
  extraScales: boolean;
}

export interface ProgressEvent {
  /** FPTQuant: 'calibrate' (range search), 'local' (per block), 'e2e' */
  phase: 'train' | 'quantize' | 'calibrate' | 'local' | 'e2e';
  step: number;
  totalSteps: number;
  loss: number;
  lr: number;
  stepsPerSecond: number;
  etaSeconds: number;
  /** block being trained (block-wise loss) */
  layer?: number;
  /** a method's stage (EfficientQAT: 'block-ap', 'e2e-qp'); steps/s and ETA restart with each */
  stage?: string;
}

/** Persistent training state a method can save and restore. */
export interface TrainState {
  step: number;
  arena: Float32Array;
  lossCurve: number[];
  /** more named f32 state (EfficientQAT: the blocks trained so far and their step sizes) */
  tensors?: Map<string, Float32Array | Int32Array>;
}

export interface MethodContext {
  shape: LlamaShape;
  quant: BlockQuant;
  calibration?: CalibrationSet;
  train: TrainOptions;
  onProgress?: (e: ProgressEvent) => void;
  /** set by Ctrl-C: save state and stop */
  signal?: AbortSignal;
  /** called every `checkpointEvery` steps and on abort with the state to persist */
  checkpoint?: (s: TrainState) => Promise<void>;
  checkpointEvery: number;
  /** state to continue from (resume) */
  resume?: TrainState;
  /** GPTQ's options (damping, lazy batch, where group parameters are read) */
  gptq?: GptqMethodOptions;
  /** the budget of a whole-model stage (end-to-end losses), and how errors name it */
  maxMemoryBytes?: number;
  budgetLabel?: string;
  /** storage of frozen weights in a whole-model stage; default exact (bf16 for BF16 checkpoints, else fp32) */
  frozen?: FrozenDType;
  /** FPTQuant's options (bits of activations and KV cache, transforms, stages) */
  fpt?: FptQuantOptions;
  /** EfficientQAT's phases, init and learning rates */
  efficientqat?: EfficientQatOptions;
}

/**
 * The stage of a method that needs the whole fp32 model in memory (FPTQuant trains its
 * transforms end to end against the full-precision model): quantizeModel and
 * quantizeCheckpoint load the model (TrainableLlama.fromCheckpoint) when memory() fits
 * the budget, run() transforms it in place, and the block pass then runs over the result.
 */
export interface WholeModelStage {
  /** what the stage holds (the fp32 model, a teacher copy, ...), checked against --max-memory before anything is read */
  memory(): MemoryItem[];
  run(model: TrainableLlama): Promise<void>;
}

/**
 * One run of a method on one model (its state lives here). The block pass
 * (lib/engine/pipeline.ts) calls block() for every block in order; a method with an
 * end-to-end stage runs it first, over the frozen model (lib/engine/end-to-end.ts).
 */
export interface MethodRun extends BlockMethod {
  /** the end-to-end stage's memory plan, checked before anything runs (throws when it does not fit) */
  planEndToEnd?(src: BlockSource): EndToEndPlan | null;
  /** the whole-model stage before the block pass */
  endToEnd?(src: BlockSource): Promise<void>;
  /** a stage on the whole model in memory before the block pass (which then reads the transformed model) */
  whole?: WholeModelStage;
  /** static activation / KV-cache quantization and run-time transforms the result needs (FPTQuant), known after the stages */
  activations?(): ActivationQuant | null;
  /**
   * the whole-model stage after the block pass, on its packed result (EfficientQAT's E2E-QP):
   * the linears it returns (by HF name) are written instead of the block pass's
   */
  afterBlocks?(m: PackedLlama): Promise<Map<string, QuantizedTensor>>;
  /** the training loss per step so far (all stages, all blocks) */
  lossCurve(): number[];
  /** the loss per stage when there are several (EfficientQAT: each Block-AP block, E2E-QP), for the report and loss.svg */
  lossCurves?(): { label: string; losses: number[] }[];
}

export interface QuantMethod {
  readonly name: string;
  readonly description: string;
  readonly needsCalibration: boolean;
  /** A run on a model of ctx.shape; throws on options the method cannot take (before anything is read). */
  start(ctx: MethodContext): MethodRun;
}
