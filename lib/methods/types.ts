// What a quantization method is: a named, optional, exact transformation of the
// fp32 model (trained on calibration data or not) that runs before every linear is
// round-to-nearest quantized, or that quantizes linears itself (MethodResult.linears). Methods register by name (lib/methods/index.ts);
// quantizeModel looks them up and never changes when a method is added.
import type { CalibrationSet } from '../engine/calib.js';
import type { ScheduleKind } from '../engine/optim.js';
import type { BlockQuant, TrainableLlama } from '../engine/llama.js';
import type { QuantizedTensor } from '../ops/quant.js';
import type { GptqMethodOptions } from './gptq.js';
import type { EfficientQatOptions } from './efficientqat.js';

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
  phase: 'train' | 'quantize';
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
  tensors?: Map<string, Float32Array>;
}

export interface MethodContext {
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
  /** EfficientQAT's phases, init and learning rates */
  efficientqat?: EfficientQatOptions;
}

export interface MethodResult {
  lossCurve: number[];
  /**
   * Per-input-channel scales folded into linears, by HF linear name
   * (model.layers.<l>.self_attn.q_proj ...): the transformed weight is W diag(s).
   */
  inputScales?: Map<string, Float32Array>;
  /** Per-output-row scales folded into linears (rows of W divided by them). */
  outputScales?: Map<string, Float32Array>;
  /**
   * Linears the method quantized itself (HF linear names -> f16-parameter tensors of
   * the context's bits, group size and symmetry), e.g. GPTQ's codes and scales:
   * quantizeModel keeps these instead of round-to-nearest quantizing those weights.
   */
  linears?: Map<string, QuantizedTensor>;
  /** loss curves by stage (EfficientQAT: one per Block-AP block, then E2E-QP), for the report and loss.svg */
  lossCurves?: { label: string; losses: number[] }[];
}

export interface QuantMethod {
  readonly name: string;
  readonly description: string;
  readonly needsCalibration: boolean;
  /** Transforms `model` in place; the result must compute the same function in fp32. */
  prepare(model: TrainableLlama, ctx: MethodContext): Promise<MethodResult>;
}
