// quantform's public API.
export { QuantformError, type ErrorCode } from './errors.js';
export { Tensor, type DType } from './ops/tensor.js';
export { backendInfo, setAmx, setKernelPolicy, setThreads, type BackendInfo, type KernelPolicy } from './backend.js';
export { cudaInfo, type CudaInfo } from './ops/cuda.js';
export {
  QuantizedTensor, quantize, quantizeAsync, dequantize, dequantizeAsync, pack, packAsync, unpack, unpackAsync,
  fakeQuantize, fakeQuantizeAsync, fakeQuantizeBackward, fakeQuantizeBackwardAsync, packedRowBytes, numGroups,
  SUPPORTED_BITS, type Bits, type QuantOptions, type FakeQuantParams, type FakeQuantGrads, type DequantizeOptions,
} from './ops/quant.js';
export { GptqHessian, gptqQuantize, gptqQuantizeAsync, gptqObjective, type GptqOptions, type GptqResult } from './ops/gptq.js';
export { quantLinearBackward, quantLinearBackwardAsync, cudaQuantLinearBackward, type QuantLinearBackwardOptions, type QuantLinearGrads } from './ops/qlinear.js';
export { cudaQuantize, cudaDequantize, cudaFakeQuantize, cudaFakeQuantizeBackward } from './ops/cuda-quant.js';
export {
  cudaQuantizeActivations, cudaMatmulInt8, cudaMatmulStatic, cudaMatmulStaticAsync, cudaInt8Kernel,
  type CudaInt8Kernel, type QuantizedActivations, type StaticActivationOptions,
} from './ops/cuda-w4a8.js';
export {
  loadModel, openCheckpoint, Model, type LoadOptions, type ForwardOptions, type ForwardResult,
} from './model/model.js';
export { type Checkpoint, type CheckpointFormat, type TensorSource } from './model/checkpoint.js';
export {
  type LlamaConfig, type Llama3RopeScaling, configFromHf, hfConfigFromLlama, invFreq, weightNames, weightShape, LINEAR_WEIGHTS,
} from './model/config.js';
export { type Linear, Fp32Linear, QuantizedLinear } from './model/linear.js';
export { SyntheticCheckpoint, ByteTokenizer, LLAMA2_7B, type SyntheticOptions } from './model/synthetic.js';
export { permuteInterleavedToHalf, permuteHalfToInterleaved, interleavedToHalfRows } from './model/convert.js';
export { SafetensorsCheckpoint } from './model/hf.js';
export { readGgufHeader, GgufCheckpoint, type GgufHeader, type GgufTensor } from './model/gguf.js';
export { type Tokenizer } from './tokenizer/tokenizer.js';
export { SentencePieceBpe, loadLlama2cTokenizer } from './tokenizer/sentencepiece.js';
export { loadSentencePieceTokenizer, readSentencePieceModel, type SentencePieceModel } from './tokenizer/sentencepiece-model.js';
export { loadHfTokenizer } from './tokenizer/hf.js';
export {
  evaluatePerplexity, encodeEvalText, type PerplexityOptions, type PerplexityProgress, type PerplexityResult,
} from './eval/perplexity.js';
export { generate, type GenerateOptions, type GeneratedToken } from './eval/generate.js';
export {
  quantizeModel, quantizeCheckpoint, quantizePlan, dequantizedModel, quantizeCheckpointRtn, quantizeCheckpointE2eQp, quantizedCheckpoint, rtnCheckpoint,
  modelCheckpoint, type QuantizeModelOptions, type QuantizeModelHooks, type QuantizedModel, type QuantizeReport, type LinearReport, type StreamHooks,
  type CheckpointTrainHooks,
} from './methods/quantize-model.js';
export {
  trainStepSizes, packedFromCheckpoint, checkpointLinears, e2eControl, EFFICIENTQAT_RECIPES,
  type EfficientQatOptions, type EfficientQatPhases, type PackedLlama, type StepSizeHooks,
} from './methods/efficientqat.js';
export { getMethod, methodNames, registerMethod, type QuantMethod, type MethodContext, type MethodRun, type ProgressEvent, type TrainOptions, type TrainState } from './methods/index.js';
export { checkpointBlocks, modelBlocks, type BlockSource, type FrozenDType } from './engine/block-source.js';
export {
  planBlockPass, runBlockPass, NO_ACTIVATIONS, type ActivationNeeds, type BlockMethod, type BlockPassOptions, type BlockPassPlan, type BlockResult,
  type BlockSink, type MemoryItem, type PipelineBlock,
} from './engine/pipeline.js';
export { EndToEnd, type E2EStep, type EndToEndOptions, type EndToEndPlan, type FrozenBlock } from './engine/end-to-end.js';
export { mergeTeqScales } from './methods/teq.js';
export { TrainableLlama, blockLayout, type LlamaShape, type BlockQuant } from './engine/llama.js';
export { AdamW, learningRate, type AdamWOptions, type ScheduleKind, type ScheduleOptions } from './engine/optim.js';
export { calibrationFromFile, calibrationFromText, type CalibrationOptions, type CalibrationSet } from './engine/calib.js';
export { saveGptq, GptqWriter, gptqSourceOf, type SaveOptions, type GptqSource } from './export/save.js';
export { exportGguf, encodeDirect, type GgufExportOptions, type ExportReport, type TensorExport, type Fidelity } from './export/gguf.js';
export { exportOnnx, matMulNBitsParts, type OnnxExportOptions } from './export/onnx.js';
export { GGML_TYPES, ggmlType, ggmlTypeById, type GgmlType, type GgmlTypeName, type CanonicalParts } from './export/ggml.js';
export {
  vocabFromCheckpoint, vocabFromTokenizerJson, vocabFromSentencePiece, tokenizerJsonFromVocab, checkVocab, spmTokenizer, TOKEN_TYPE, type SpmVocab,
} from './export/vocab.js';
export { GptqCheckpoint } from './model/gptq.js';
export { toGptq, packGptq, dequantizeGptq, type GptqFormat, type GptqLinear } from './export/gptq.js';
export {
  readSafetensors, readSafetensorsMetadata, readSafetensorsHeader, parseSafetensorsHeader, writeSafetensors, SafetensorsCheckpointFiles,
  SafetensorsWriter, DEFAULT_MAX_SHARD_BYTES, type SafeTensor, type SafeDType, type TensorSpec, type SafetensorsHeader, type SafetensorsWriterOptions,
} from './io/safetensors.js';
export { readTensor, type StoredTensor, type StoredDType, type ReadOptions } from './io/tensors.js';
export { CheckpointFile } from './io/file.js';
export { writeFileAtomic, AtomicFile, AtomicDir } from './io/atomic.js';
export { ActivationStore, defaultMemoryBudget, type ActivationStoreOptions, type ActivationDType } from './io/activation-store.js';
export {
  matmul, matmulAsync, matmulF32, matmulPath, prepareMatmulWeight, unprepareMatmulWeight, hasFastLayout, PreparedMatmulWeight,
  prepareMatmulWeightCuda, CudaMatmulWeight,
  type MatmulAccuracy, type MatmulOptions, type MatmulPath,
} from './ops/matmul.js';
export { measureMachine, measureMachineSync, type MachineLimits, type MeasureOptions, type ProbePart } from './bench/machine.js';
