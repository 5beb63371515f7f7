// FPTQuant (van Breugel, Bondarenko, Whatmough, Nagel; Qualcomm AI Research 2025,
// "Function-Preserving Transforms for LLM Quantization"), on the engine's fpt slot
// (native/include/quantform/engine.h FptTransforms: the transforms, their merge and every
// backward are native; this file is the training schedule).
//
//   0. optional residual rotation (QuaRot-style randomised Hadamard, merged after fusing the
//      RMSNorm weights; the LM head is untied) and online Hadamard before down_proj;
//   1. static activation and KV-cache ranges initialised per block by an Lp-minimising search
//      over calibration activations (actQuantError);
//   2. local stage, block by block on the fp model's inputs: T_k, T_v, T_u and the ranges trained
//      to minimise the block output's relative MSE against the fp block under fake quantization
//      (weights RTN, activations and KV static) plus an outlier penalty (lp_ratio, p = 4) on the
//      merged weights and the activations that will be quantized;
//   3. end-to-end stage: the fp model is the teacher, the Jensen-Shannon divergence of the
//      next-token distributions over the calibration windows trains every transform and range
//      jointly (weights fixed except through the transforms);
//   4. the transforms are merged into the weights (fptMerge) and the weights quantized by GPTQ
//      (on the merged model's real linear inputs: S_n, Hadamard) or RTN.
// Steps 0-4's training and merge need the whole model (the end-to-end stage trains against the
// fp model as a teacher): they are the run's WholeModelStage, on the fp32 model in memory
// (quantizeCheckpoint loads it when it fits --max-memory). The weights are then quantized by the
// streaming block pass over the merged model: GPTQ as a block method whose block step is the
// merged model's own (GptqMethodRun with BlockFpt), or RTN tensor by tensor.
// The result runs on the integer kernels with the static scales (MethodRun.activations).
import { fromNative, invalidParameter, is, QuantformError } from '../errors.js';
import { native, type NativeBlockConfig, type NativeFptConfig, type NativeFptLayout, type NativeFptPackedBlock } from '../native.js';
import { batchIndices, seededRandom, type CalibrationSet } from '../engine/calib.js';
import { AdamW, learningRate } from '../engine/optim.js';
import { blockConfigOf, blockLayout, HF_LINEAR, LINEARS, type TrainableLlama } from '../engine/llama.js';
import { f16ToF32, f32ToF16 } from '../io/half.js';
import { QuantizedTensor } from '../ops/quant.js';
import type { PackedLlama } from './efficientqat.js';
import { NO_ACTIVATIONS, type ActivationNeeds, type BlockResult, type MemoryItem, type PipelineBlock } from '../engine/pipeline.js';
import type { ActivationQuant } from '../model/fpt.js';
import { GptqMethodRun, type BlockFpt } from './gptq.js';
import { nonFinite, Trainer } from './trainer.js';
import type { MethodContext, MethodRun, QuantMethod, WholeModelStage } from './types.js';

/**
 * The range stage after GPTQ (FptQuantOptions.trainWeightRanges) on the packed merged model m: the
 * log step size of every linear's (N, G) groups (groupSize capped at each linear's K) and the log
 * activation / KV ranges of every block (params: its merged-step arena, lay.actLogScale / kvLogScale
 * read) train by the JSD to the teacher,
 * codes frozen, the activation and KV quantizers on (fake-quantized on the dequant-matmul: the
 * integer path's function). Returns the linears with the trained step sizes (f16, as saved); the
 * trained ranges are written into params.
 */
async function trainRanges(m: PackedLlama, groupSize: number, params: Float32Array[], fpt: NativeFptConfig, lay: NativeFptLayout, o: Resolved,
  cal: CalibrationSet, teacher: TrainableLlama, curve: number[], onProgress: MethodContext['onProgress']): Promise<Map<string, QuantizedTensor>> {
  const eng = native().engine, s = m.shape, D = s.hidden, L = s.layers, N = cal.samples, S = cal.seqLen, V = s.vocab;
  const B = Math.min(o.batchSize, N), T = B * S, P = lay.total;
  const first = m.linears.get(`model.layers.0.${HF_LINEAR.q_proj}`);
  if (!first) throw new QuantformError('QF_INTERNAL', 'The packed model holds no model.layers.0.self_attn.q_proj');
  const cfg: NativeBlockConfig = { ...blockConfigOf(s, B, S, null, false), fpt, fq: { bits: first.bits, groupSize, symmetric: true, packed: true } };
  const sn = fpt.residualScaling === true;
  // one arena: every linear's log step sizes, then every block's merged-step parameters
  let total = 0;
  for (const q of m.linears.values()) total += q.scales.length;
  const opt = new AdamW(total + L * P, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const blocks: NativeFptPackedBlock[] = [], scales: Float32Array[][] = [], logs: Float32Array[][] = [], dlogs: Float32Array[][] = [];
  let off = 0;
  for (let l = 0; l < L; l++) {
    const b: NativeFptPackedBlock = { attnNorm: m.norms[l].input, ffnNorm: m.norms[l].post, codes: [], scales: [], zeros: [], grads: { scales: [], zeros: [] } };
    scales.push([]); logs.push([]); dlogs.push([]);
    for (const n of LINEARS) {
      const q = m.linears.get(`model.layers.${l}.${HF_LINEAR[n]}`);
      if (!q || !q.symmetric) throw new QuantformError('QF_INTERNAL', `The packed model holds no symmetric model.layers.${l}.${HF_LINEAR[n]}`);
      const sc = q.paramDtype === 'f16' ? Float32Array.from(q.scales, (h) => f16ToF32(h)) : Float32Array.from(q.scales);
      const lg = opt.params.subarray(off, off + sc.length);
      for (let i = 0; i < sc.length; i++) lg[i] = Math.log(Math.max(sc[i], 1e-30));
      b.codes.push(q.codes);
      b.scales.push(sc);
      b.zeros.push(null);
      b.grads!.scales.push(new Float32Array(sc.length));
      b.grads!.zeros.push(null);
      scales[l].push(sc);
      logs[l].push(lg);
      dlogs[l].push(opt.grads.subarray(off, off + sc.length));
      off += sc.length;
    }
    blocks.push(b);
    opt.params.set(params[l], total + l * P);
  }
  const fp = (l: number) => opt.params.subarray(total + l * P, total + (l + 1) * P);
  const dfp = (l: number) => opt.grads.subarray(total + l * P, total + (l + 1) * P);
  const savedN = eng.blockSizes(cfg).saved;
  const acts = Array.from({ length: L }, () => new Float32Array(savedN));
  const xs = Array.from({ length: L + 1 }, () => new Float32Array(T * D));
  const cs = Array.from({ length: L + 1 }, () => new Float32Array(T).fill(1));
  let dx = new Float32Array(T * D), dprev = new Float32Array(T * D);
  const dc = new Float32Array(T), tok = new Int32Array(T), loss = new Float32Array(T), tprobs = new Float32Array(T * V);
  const teach = await teacherSource(teacher, cal, B, o.teacherCacheBytes);
  const t0 = performance.now();
  for (let k = 0; k < o.qpSteps; k++) {
    const idx = batchIndices(N, B, k, o.seed + 104729);
    for (let b = 0; b < B; b++) tok.set(cal.tokens.subarray(idx[b] * S, (idx[b] + 1) * S), b * S);
    await teach(idx, tprobs);
    opt.zeroGrad();
    for (let l = 0; l < L; l++)
      for (let j = 0; j < LINEARS.length; j++) {
        const sc = scales[l][j], lg = logs[l][j];
        for (let i = 0; i < sc.length; i++) sc[i] = Math.exp(lg[i]);
        blocks[l].grads!.scales[j]!.fill(0);
      }
    let js = 0;
    try {
      eng.embeddingForward(xs[0], tok, m.embed, T, V, D);
      for (let l = 0; l < L; l++)
        await eng.fptBlockForward(cfg, xs[l + 1], acts[l], xs[l], blocks[l], fp(l), sn ? cs[l] : null, sn ? cs[l + 1] : null, null, true);
      dc.fill(0);
      await eng.lmHeadJsd(loss, dx, sn ? dc : null, xs[L], sn ? cs[L] : null, m.finalNorm, m.lmHead, tprobs, T, D, V, s.rmsEps, 1 / T, true);
      for (let i = 0; i < T; i++) js += loss[i];
      js /= T;
      if (!Number.isFinite(js)) throw nonFinite(k, js);
      for (let l = L - 1; l >= 0; l--) {
        await eng.fptBlockBackward(cfg, dprev, dfp(l), sn ? dc : null, dx, acts[l], blocks[l], fp(l), true);
        [dx, dprev] = [dprev, dx];
      }
    } catch (e) {
      throw fromNative(e);
    }
    // d/d log s = s d/ds
    for (let l = 0; l < L; l++)
      for (let j = 0; j < LINEARS.length; j++) {
        const sc = scales[l][j], g = blocks[l].grads!.scales[j]!, dl = dlogs[l][j];
        for (let i = 0; i < sc.length; i++) dl[i] = sc[i] * g[i];
      }
    const lr = learningRate(o.qpLr, k, { kind: 'cosine', steps: o.qpSteps, warmup: 0.05 });
    await opt.update(lr);
    curve.push(js);
    const secs = (performance.now() - t0) / 1000;
    onProgress?.({ phase: 'train', step: k + 1, totalSteps: o.qpSteps, loss: js, lr, stepsPerSecond: (k + 1) / secs,
      etaSeconds: ((o.qpSteps - k - 1) * secs) / (k + 1), stage: 'ranges' });
  }
  for (let l = 0; l < L; l++) params[l].set(fp(l));
  const out = new Map<string, QuantizedTensor>();
  for (let l = 0; l < L; l++)
    for (const [j, n] of LINEARS.entries()) {
      const name = `model.layers.${l}.${HF_LINEAR[n]}`, q = m.linears.get(name)!, lg = logs[l][j];
      out.set(name, new QuantizedTensor(q.codes, Uint16Array.from(lg, (v) => f32ToF16(Math.exp(v))), null, q.shape, q.bits, q.groupSize, true, 'f16'));
    }
  return out;
}

export interface FptQuantOptions {
  /** Activation bits: 8, 4 or 16 (fp activations). Default 8. */
  actBits?: number;
  /** KV-cache bits: 8, 4 or 16. Default: actBits. */
  kvBits?: number;
  /**
   * Mixed activation precision, for ablations: the bits (4 or 8) of each static quantizer (q/k/v,
   * o_proj, gate/up, down_proj inputs), overriding actBits (which must then be 4 or 8). Default: none.
   */
  inputBits?: number[];
  /** The four transforms (for ablations); default all on. S_n only acts on quantized activations. */
  qk?: boolean;
  v?: boolean;
  mlp?: boolean;
  residualScaling?: boolean;
  /** T_v starts from a Hadamard rotation of each value head (QuaRot's) instead of the identity (hd a power of two). Default false. */
  valueHadamard?: boolean;
  /** QuaRot-style residual rotation (randomised Hadamard; a seeded orthogonal matrix when D is no power of two). Default false. */
  residualRotation?: boolean;
  /** Online Hadamard before down_proj over the largest power-of-two blocks dividing the intermediate size. Default false. */
  onlineHadamard?: boolean;
  /** Weight quantizer after the merge. Default 'gptq'. */
  weights?: 'gptq' | 'rtn';
  /**
   * GPTQ's clipping search of every weight row's range (GptqOptions.clipNorm, its norm p; 0: min/max, the
   * reference's). Default 2 (measured as good as the reference GPTQ's 2.4 here, at no pow per weight).
   */
  clipNorm?: number;
  /** Stages to run: 'none' (range search only: the RTN / rotation baselines), 'local', 'local+e2e'. Default 'local+e2e'. */
  stages?: 'none' | 'local' | 'local+e2e';
  /** Local stage: Adam steps per block, learning rate, windows per step. Defaults 150, 5e-3, 4. */
  localSteps?: number;
  localLr?: number;
  /** Outlier penalty weights on activations and merged weights, and its p. Defaults 1e-4, 1e-4, 4 (at 1e-2 it outweighed the block MSE and cost perplexity). */
  lpAct?: number;
  lpWeight?: number;
  lpP?: number;
  /** End-to-end stage: Adam steps, learning rate, windows per step. Defaults 200, 6e-3 (better than 1e-3 at every config, than 3e-3 and 1e-2 at W4A8KV8, stories260K), 4. */
  e2eSteps?: number;
  e2eLr?: number;
  batchSize?: number;
  /** Range search: windows of calibration data and the p of its error. Defaults 16, 2.4. */
  rangeWindows?: number;
  rangeP?: number;
  /**
   * Trains the quantization ranges after GPTQ (our addition; the reference fixes the weight ranges by
   * min/max): an E2E-QP-style stage on the packed result, its codes frozen, every weight step size
   * (per output channel or group) and every static activation / KV range trained jointly by the
   * Jensen-Shannon divergence to the fp teacher, with the activation and KV quantizers on. Default true.
   */
  trainWeightRanges?: boolean;
  /** That stage: Adam steps and the learning rate of the log step sizes and log ranges. Defaults 200, 1e-3. */
  qpSteps?: number;
  qpLr?: number;
  /** Teacher probabilities are cached up to this many bytes, else recomputed per step. Default 1e9. */
  teacherCacheBytes?: number;
  /** Seed of the rotation and the batch order. Default 0. */
  seed?: number;
}

/** What the quantized model runs with besides its weights (lib/model/fpt.ts: the checkpoint's scales and flags). */
export type FptActivationQuant = ActivationQuant;

type Resolved = Required<Omit<FptQuantOptions, 'inputBits'>> & { inputBits: number[] | null };

export function resolveFptOptions(o: FptQuantOptions = {}): Resolved {
  const r: Resolved = {
    actBits: o.actBits ?? 8, kvBits: o.kvBits ?? o.actBits ?? 8, inputBits: o.inputBits ?? null, qk: o.qk ?? true, v: o.v ?? true, mlp: o.mlp ?? true,
    residualScaling: o.residualScaling ?? true, valueHadamard: o.valueHadamard ?? false, residualRotation: o.residualRotation ?? false, onlineHadamard: o.onlineHadamard ?? false,
    weights: o.weights ?? 'gptq', clipNorm: o.clipNorm ?? 2, stages: o.stages ?? 'local+e2e', localSteps: o.localSteps ?? 150, localLr: o.localLr ?? 5e-3,
    lpAct: o.lpAct ?? 1e-4, lpWeight: o.lpWeight ?? 1e-4, lpP: o.lpP ?? 4, e2eSteps: o.e2eSteps ?? 200, e2eLr: o.e2eLr ?? 6e-3,
    trainWeightRanges: o.trainWeightRanges ?? true, qpSteps: o.qpSteps ?? 400, qpLr: o.qpLr ?? 1e-3,
    batchSize: o.batchSize ?? 4, rangeWindows: o.rangeWindows ?? 16, rangeP: o.rangeP ?? 2.4, teacherCacheBytes: o.teacherCacheBytes ?? 1e9,
    seed: o.seed ?? 0,
  };
  for (const k of ['actBits', 'kvBits'] as const)
    if (!is.oneOf(r[k], [4, 8, 16])) throw invalidParameter('4, 8 or 16', k, r[k], 'QF_UNSUPPORTED_BITS');
  if (r.inputBits !== null) {
    const b = r.inputBits;
    if (!Array.isArray(b) || b.length !== 4 || b.some((x) => x !== 4 && x !== 8))
      throw invalidParameter('array of 4 entries of 4 or 8 (q/k/v, o_proj, gate/up, down_proj)', 'inputBits', b, 'QF_UNSUPPORTED_BITS');
    if (r.actBits === 16) throw invalidParameter('4 or 8 (inputBits sets per-input bits of quantized activations)', 'actBits', r.actBits, 'QF_UNSUPPORTED_BITS');
  }
  for (const k of ['qk', 'v', 'mlp', 'residualScaling', 'valueHadamard', 'residualRotation', 'onlineHadamard', 'trainWeightRanges'] as const)
    if (!is.bool(r[k])) throw invalidParameter('boolean', k, r[k]);
  if (!is.oneOf(r.weights, ['gptq', 'rtn'] as const)) throw invalidParameter("'gptq' or 'rtn'", 'weights', r.weights);
  if (!is.oneOf(r.stages, ['none', 'local', 'local+e2e'] as const)) throw invalidParameter("'none', 'local' or 'local+e2e'", 'stages', r.stages);
  for (const k of ['localSteps', 'e2eSteps', 'qpSteps', 'batchSize', 'rangeWindows'] as const)
    if (!is.positiveInteger(r[k])) throw invalidParameter('positive integer', k, r[k]);
  for (const k of ['localLr', 'e2eLr', 'qpLr', 'rangeP', 'teacherCacheBytes'] as const)
    if (!is.finiteNumber(r[k]) || r[k] <= 0) throw invalidParameter('positive number', k, r[k]);
  if (!is.finiteNumber(r.clipNorm) || r.clipNorm < 0 || r.clipNorm > 16) throw invalidParameter('number in [0, 16]', 'clipNorm', r.clipNorm);
  for (const k of ['lpAct', 'lpWeight'] as const)
    if (!is.finiteNumber(r[k]) || r[k] < 0) throw invalidParameter('non-negative number', k, r[k]);
  if (!is.finiteNumber(r.lpP) || r.lpP < 1) throw invalidParameter('number >= 1', 'lpP', r.lpP);
  if (!is.nonNegativeInteger(r.seed)) throw invalidParameter('non-negative integer', 'seed', r.seed);
  return r;
}

/** The largest power of two dividing F (the online Hadamard's block); an error when only 1 does. */
export function hadamardBlockOf(F: number): number {
  let b = 1;
  while (F % (b * 2) === 0) b *= 2;
  if (b < 2)
    throw new QuantformError('QF_INVALID_ARGUMENT',
      `An online Hadamard needs a power-of-two block dividing the intermediate size, but ${F} is odd (no block larger than 1 divides it)`);
  return b;
}

/**
 * A (D, D) orthogonal matrix for the residual rotation: the normalised Sylvester Hadamard matrix
 * with seeded random signs on its columns (QuaRot) when D is a power of two, else the Q of a
 * seeded Gaussian matrix's QR (Gram-Schmidt in float64).
 */
export function residualRotationMatrix(D: number, seed: number): Float32Array {
  const r = seededRandom(seed * 7919 + 17);
  const Q = new Float64Array(D * D);
  if ((D & (D - 1)) === 0) {
    const signs = Array.from({ length: D }, () => (r() < 0.5 ? -1 : 1));
    const s = 1 / Math.sqrt(D);
    for (let i = 0; i < D; i++)
      for (let j = 0; j < D; j++) {
        let bits = i & j, par = 0;
        while (bits) { par ^= bits & 1; bits >>= 1; }
        Q[i * D + j] = (par ? -s : s) * signs[j];
      }
  } else {
    const gauss = () => Math.sqrt(-2 * Math.log(Math.max(r(), 1e-12))) * Math.cos(2 * Math.PI * r());
    for (let j = 0; j < D; j++) {  // column j
      const v = Float64Array.from({ length: D }, gauss);
      for (let pass = 0; pass < 2; pass++)
        for (let k = 0; k < j; k++) {
          let d = 0;
          for (let i = 0; i < D; i++) d += Q[i * D + k] * v[i];
          for (let i = 0; i < D; i++) v[i] -= d * Q[i * D + k];
        }
      let n = 0;
      for (let i = 0; i < D; i++) n += v[i] * v[i];
      n = Math.sqrt(n);
      for (let i = 0; i < D; i++) Q[i * D + j] = v[i] / n;
    }
  }
  return Float32Array.from(Q);
}

/** Merges a residual rotation Q (D, D) into the model: norms fused, every block, the embedding and the (untied) head. */
export function rotateResidual(model: TrainableLlama, Q: Float32Array): void {
  const eng = native().engine, s = model.shape;
  const cfg = { ...model.blockConfig(1, 1), fpt: {} };
  const zeros = new Float32Array(eng.fptLayout(cfg).total);
  try {
    model.untieHead();
    for (const b of model.blocks) eng.fptMerge(cfg, b, zeros, Q);
    eng.fptRotateRows(model.embed, null, Q, s.vocab, s.hidden);
    eng.fptRotateRows(model.lmHead, model.finalNorm, Q, s.vocab, s.hidden);
  } catch (e) {
    throw fromNative(e);
  }
  model.finalNorm.fill(1);
}

/** The engine's fpt config of a training (unmerged) or evaluation step. */
function fptConfig(o: Resolved, hadamardBlock: number, quantized: boolean, lp: boolean): NativeFptConfig {
  return {
    qk: o.qk, v: o.v, mlp: o.mlp, vHadamard: o.v && o.valueHadamard, residualScaling: o.residualScaling && o.actBits < 16, hadamardBlock,
    actBits: quantized && o.actBits < 16 ? o.actBits : 0, kvBits: quantized && o.kvBits < 16 ? o.kvBits : 0,
    ...(quantized && o.inputBits ? { inputBits: o.inputBits } : {}),
    lpAct: lp ? o.lpAct : 0, lpWeight: lp ? o.lpWeight : 0, lpP: o.lpP,
  };
}

/** argmin over a geometric grid of max|x| fractions of sum |fake_quant(x, s) - x|^p. */
function searchScale(x: Float32Array, bits: number, p: number): number {
  let amax = 0;
  for (let i = 0; i < x.length; i++) amax = Math.max(amax, Math.abs(x[i]));
  if (!(amax > 0)) return 1;
  const qmax = (1 << (bits - 1)) - 1, n = 64;
  const cands = Float32Array.from({ length: n }, (_, i) => (amax / qmax) * Math.pow(0.01, 1 - i / (n - 1)));
  const err = new Float32Array(n);
  native().engine.actQuantError(err, x, cands, x.length, bits, p);
  let best = n - 1;
  for (let i = 0; i < n; i++) if (err[i] < err[best]) best = i;
  return cands[best];
}

interface Stage {
  model: TrainableLlama;
  o: Resolved;
  ctx: MethodContext;
  cal: CalibrationSet;
  hb: number;
  P: number;
  lay: NativeFptLayout;
  opt: AdamW;
  curve: number[];
  trainer: Trainer;
  start: number;
}

/** The initial ranges of block l from its fp inputs xin (N * S, D): every quantizer's scale, by search. */
async function initRanges(st: Stage, l: number, xin: Float32Array): Promise<void> {
  const { model, o, cal } = st;
  const eng = native().engine, s = model.shape, S = cal.seqLen, D = s.hidden, Hkv = s.kvHeads, hd = s.headDim;
  const W = Math.min(o.rangeWindows, cal.samples), B = Math.min(o.batchSize, W);
  const cfg: NativeBlockConfig = { ...model.blockConfig(B, S), fpt: fptConfig(o, st.hb, false, false) };
  const lay = eng.blockSavedLayout(cfg);
  const saved = new Float32Array(lay.total);
  const params = st.opt.params.subarray(l * st.P, (l + 1) * st.P);
  const T = B * S, Dq = s.heads * hd, F = s.intermediate, Dkv = Hkv * hd;
  const parts = { xn1: [] as Float32Array[], ao: [] as Float32Array[], xn2: [] as Float32Array[], ah: [] as Float32Array[], kr: [] as Float32Array[], vr: [] as Float32Array[] };
  const out = new Float32Array(T * D), c = new Float32Array(T);
  for (let w0 = 0; w0 + B <= W; w0 += B) {
    await eng.fptBlockForward(cfg, out, saved, xin.subarray(w0 * S * D, (w0 + B) * S * D), model.blocks[l], params, null,
      cfg.fpt!.residualScaling ? c : null, null, true);
    const take = (off: number, n: number) => saved.slice(off, off + n);
    parts.xn1.push(take(lay.xn1, T * D));
    parts.ao.push(take(lay.ao, T * Dq));
    parts.xn2.push(take(lay.xn2, T * D));
    parts.ah.push(take(lay.ah, T * F));
    parts.kr.push(take(lay.kr, T * Dkv));
    parts.vr.push(take(lay.vr, T * Dkv));
  }
  const cat = (a: Float32Array[]) => {
    const r = new Float32Array(a.reduce((n, x) => n + x.length, 0));
    let off = 0;
    for (const x of a) { r.set(x, off); off += x.length; }
    return r;
  };
  if (o.actBits < 16) {
    const acts = [parts.xn1, parts.ao, parts.xn2, parts.ah];
    for (let i = 0; i < 4; i++) params[st.lay.actLogScale + i] = Math.log(searchScale(cat(acts[i]), o.inputBits?.[i] ?? o.actBits, o.rangeP));
  }
  if (o.kvBits < 16)
    for (const [which, arr] of [[0, cat(parts.kr)], [1, cat(parts.vr)]] as const) {
      const rows = arr.length / Dkv, head = new Float32Array(rows * hd);
      for (let g = 0; g < Hkv; g++) {
        for (let r = 0; r < rows; r++) head.set(arr.subarray(r * Dkv + g * hd, r * Dkv + (g + 1) * hd), r * hd);
        params[st.lay.kvLogScale + which * Hkv + g] = Math.log(searchScale(head, o.kvBits, o.rangeP));
      }
    }
}

/** fp outputs of block l for every window (N * S, D). */
async function fpForward(model: TrainableLlama, l: number, from: Float32Array, N: number, S: number): Promise<Float32Array> {
  const eng = native().engine, D = model.shape.hidden;
  const cfg = model.blockConfig(1, S);
  const to = new Float32Array(N * S * D);
  for (let n = 0; n < N; n++)
    await eng.blockForward(cfg, to.subarray(n * S * D, (n + 1) * S * D), null, from.subarray(n * S * D, (n + 1) * S * D), model.blocks[l], null, true);
  return to;
}

function checkParams(st: Stage, layers: number[]): void {
  const eng = native().engine;
  const cfg = { ...st.model.blockConfig(1, 1), fpt: fptConfig(st.o, st.hb, true, false) };
  try {
    for (const l of layers) eng.fptCheck(cfg, st.opt.params.subarray(l * st.P, (l + 1) * st.P));
  } catch (e) {
    const err = fromNative(e);
    throw new QuantformError(err.code, `${err.message}: stopped; the last checkpoint (if any) holds the last good state. Try a lower lr.`, { cause: e });
  }
}

async function localStage(st: Stage): Promise<void> {
  const { model, o, cal, opt, P } = st;
  const eng = native().engine, s = model.shape, D = s.hidden, L = s.layers, N = cal.samples, S = cal.seqLen;
  const B = Math.min(o.batchSize, N), T = B * S, steps = o.stages === 'none' ? 0 : o.localSteps;
  const cfg: NativeBlockConfig = { ...model.blockConfig(B, S, st.ctx.quant), fpt: fptConfig(o, st.hb, true, true) };
  const sn = cfg.fpt!.residualScaling === true;
  const saved = new Float32Array(eng.blockSizes(cfg).saved);
  const xb = new Float32Array(T * D), yb = new Float32Array(T * D), out = new Float32Array(T * D), dout = new Float32Array(T * D),
    dx = new Float32Array(T * D), cout = new Float32Array(T), dc = new Float32Array(T), lp = new Float32Array(1);
  let xin: Float32Array = new Float32Array(N * S * D);
  try {
    eng.embeddingForward(xin, cal.tokens, model.embed, N * S, s.vocab, D);
  } catch (e) {
    throw fromNative(e);
  }
  const firstLayer = steps > 0 ? Math.min(L, Math.floor(st.start / steps)) : 0;
  for (let l = 0; l < L; l++) {
    const yout = await fpForward(model, l, xin, N, S);
    const params = opt.params.subarray(l * P, (l + 1) * P), grads = opt.grads.subarray(l * P, (l + 1) * P);
    const k0 = l < firstLayer ? steps : l === firstLayer ? st.start - l * steps : 0;
    if (k0 === 0) {
      st.ctx.onProgress?.({ phase: 'calibrate', step: l + 1, totalSteps: L, loss: NaN, lr: 0, stepsPerSecond: 0, etaSeconds: 0, layer: l });
      await initRanges(st, l, xin);
    }
    let ysq = 0;
    for (let i = 0; i < yout.length; i++) ysq += yout[i] * yout[i];
    const norm = 1 / Math.max(ysq / yout.length, 1e-30);  // relative MSE
    for (let k = k0; k < steps; k++) {
      const step = l * steps + k;
      const idx = batchIndices(N, B, step, o.seed);
      for (let b = 0; b < B; b++) {
        xb.set(xin.subarray(idx[b] * S * D, (idx[b] + 1) * S * D), b * S * D);
        yb.set(yout.subarray(idx[b] * S * D, (idx[b] + 1) * S * D), b * S * D);
      }
      opt.zeroGrad();
      lp[0] = 0;
      let mse = 0;
      try {
        await eng.fptBlockForward(cfg, out, saved, xb, model.blocks[l], params, null, sn ? cout : null, lp, true);
        const sc = (2 * norm) / (T * D);
        for (let r = 0; r < T; r++) {
          const c = sn ? cout[r] : 1;
          let g = 0;
          for (let i = 0; i < D; i++) {
            const e = out[r * D + i] * c - yb[r * D + i];
            mse += e * e;
            dout[r * D + i] = sc * e * c;
            g += sc * e * out[r * D + i];
          }
          dc[r] = g;
        }
        mse *= norm / (T * D);
        await eng.fptBlockBackward(cfg, dx, grads, sn ? dc : null, dout, saved, model.blocks[l], params, true);
      } catch (e) {
        throw fromNative(e);
      }
      const loss = mse + lp[0];
      if (!Number.isFinite(loss)) throw nonFinite(step, loss);
      const lr = learningRate(o.localLr, k, { kind: 'cosine', steps, warmup: 0.05 });
      // one arena for all blocks: the bias correction restarts per block, finished blocks keep zero moments
      opt.step = k;
      await opt.update(lr);
      st.curve.push(loss);
      await st.trainer.after(step, loss, lr, () => ({ step: step + 1, arena: opt.arena.slice(), lossCurve: st.curve.slice() }), l, 'local');
    }
    opt.arena.fill(0, 2 * opt.size + l * P, 2 * opt.size + (l + 1) * P);
    opt.arena.fill(0, 3 * opt.size + l * P, 3 * opt.size + (l + 1) * P);
    if (steps > 0) checkParams(st, [l]);
    xin = yout;
  }
}

/** Softmax of the fp model's logits for windows idx: (B * S, V). */
async function teacherProbs(teacher: TrainableLlama, cal: CalibrationSet, idx: number[]): Promise<Float32Array> {
  const S = cal.seqLen, B = idx.length, V = teacher.shape.vocab;
  const tok = new Int32Array(B * S);
  for (let b = 0; b < B; b++) tok.set(cal.tokens.subarray(idx[b] * S, (idx[b] + 1) * S), b * S);
  const logits = await teacher.logits(tok, B, S);
  try {
    native().engine.crossEntropyForward(new Float32Array(B * S), logits, new Int32Array(B * S).fill(-1), B * S, V);
  } catch (e) {
    throw fromNative(e);
  }
  return logits;
}

/**
 * The teacher's probabilities of windows idx into out (B * S, V): from a cache of every window when
 * it fits cacheBytes (computed once, B windows at a time), else from the teacher per call.
 */
async function teacherSource(teacher: TrainableLlama, cal: CalibrationSet, B: number, cacheBytes: number):
  Promise<(idx: number[], out: Float32Array) => Promise<void>> {
  const N = cal.samples, S = cal.seqLen, V = teacher.shape.vocab;
  if (N * S * V * 4 > cacheBytes) return async (idx, out) => { out.set(await teacherProbs(teacher, cal, idx)); };
  const cache = new Float32Array(N * S * V);
  for (let n0 = 0; n0 < N; n0 += B) {
    const idx = Array.from({ length: Math.min(B, N - n0) }, (_, i) => n0 + i);
    cache.set(await teacherProbs(teacher, cal, idx), n0 * S * V);
  }
  return async (idx, out) => {
    for (let b = 0; b < idx.length; b++) out.set(cache.subarray(idx[b] * S * V, (idx[b] + 1) * S * V), b * S * V);
  };
}

async function endToEnd(st: Stage, teacher: TrainableLlama, stepOffset: number): Promise<void> {
  const { model, o, cal, opt, P } = st;
  const eng = native().engine, s = model.shape, D = s.hidden, L = s.layers, N = cal.samples, S = cal.seqLen, V = s.vocab;
  const B = Math.min(o.batchSize, N), T = B * S, steps = o.e2eSteps;
  const cfg: NativeBlockConfig = { ...model.blockConfig(B, S, st.ctx.quant), fpt: fptConfig(o, st.hb, true, false) };
  const sn = cfg.fpt!.residualScaling === true;
  const savedN = eng.blockSizes(cfg).saved;
  const acts = Array.from({ length: L }, () => new Float32Array(savedN));
  const xs = Array.from({ length: L + 1 }, () => new Float32Array(T * D));
  const cs = Array.from({ length: L + 1 }, () => new Float32Array(T).fill(1));
  let dx = new Float32Array(T * D), dprev = new Float32Array(T * D);
  const dc = new Float32Array(T), tok = new Int32Array(T), loss = new Float32Array(T);
  const teach = await teacherSource(teacher, cal, B, o.teacherCacheBytes);
  const tprobs = new Float32Array(T * V);
  const begin = Math.max(0, st.start - stepOffset);
  if (begin === 0) {
    opt.arena.fill(0, 2 * opt.size);  // fresh moments for the joint stage
    opt.step = 0;
  }
  for (let k = begin; k < steps; k++) {
    const step = stepOffset + k;
    const idx = batchIndices(N, B, step, o.seed);
    for (let b = 0; b < B; b++) tok.set(cal.tokens.subarray(idx[b] * S, (idx[b] + 1) * S), b * S);
    await teach(idx, tprobs);
    opt.zeroGrad();
    let js = 0;
    try {
      eng.embeddingForward(xs[0], tok, model.embed, T, V, D);
      for (let l = 0; l < L; l++)
        await eng.fptBlockForward(cfg, xs[l + 1], acts[l], xs[l], model.blocks[l], opt.params.subarray(l * P, (l + 1) * P),
          sn ? cs[l] : null, sn ? cs[l + 1] : null, null, true);
      dc.fill(0);
      await eng.lmHeadJsd(loss, dx, sn ? dc : null, xs[L], sn ? cs[L] : null, model.finalNorm, model.lmHead, tprobs, T, D, V, s.rmsEps, 1 / T, true);
      for (let i = 0; i < T; i++) js += loss[i];
      js /= T;
      if (!Number.isFinite(js)) throw nonFinite(step, js);
      for (let l = L - 1; l >= 0; l--) {
        await eng.fptBlockBackward(cfg, dprev, opt.grads.subarray(l * P, (l + 1) * P), sn ? dc : null, dx, acts[l], model.blocks[l],
          opt.params.subarray(l * P, (l + 1) * P), true);
        [dx, dprev] = [dprev, dx];
      }
    } catch (e) {
      throw fromNative(e);
    }
    const lr = learningRate(o.e2eLr, k, { kind: 'cosine', steps, warmup: 0.05 });
    await opt.update(lr);
    st.curve.push(js);
    await st.trainer.after(step, js, lr, () => ({ step: step + 1, arena: opt.arena.slice(), lossCurve: st.curve.slice() }), undefined, 'e2e');
  }
  checkParams(st, Array.from({ length: L }, (_, l) => l));
}

/** An FPTQuant run: the whole-model stage trains and merges the transforms, the block pass quantizes the merged weights. */
class FptQuantRun implements MethodRun {
  readonly needs: ActivationNeeds;
  readonly rewritesNorms = false;  // the block pass reads the merged model: its norms are the ones to write
  readonly whole: WholeModelStage;
  readonly forward?: (layer: number, arena: Float32Array, x: Float32Array, out: Float32Array, batch: number) => Promise<void>;
  /** GPTQ on the merged model's linear inputs; without it (weights 'rtn') the pass quantizes tensor by tensor */
  readonly block?: (b: PipelineBlock) => Promise<BlockResult>;
  private readonly o: Resolved;
  private readonly hb: number;
  private readonly P: number;
  private readonly lay: NativeFptLayout;
  private readonly fpt: BlockFpt;
  private readonly gptq: GptqMethodRun | null;
  private readonly curve: number[] = [];
  private acts: FptActivationQuant | null = null;
  /** the fp model, kept for the range stage after the block pass (trainWeightRanges) */
  private teacher: TrainableLlama | null = null;
  /** the range stage after GPTQ (trainWeightRanges) */
  readonly afterBlocks?: (m: PackedLlama) => Promise<Map<string, QuantizedTensor>>;

  constructor(private readonly ctx: MethodContext) {
    if (!ctx.calibration) throw new QuantformError('QF_INVALID_ARGUMENT', "Method 'fptquant' needs calibration data");
    const o = (this.o = resolveFptOptions(ctx.fpt));
    if (!ctx.quant.symmetric) throw new QuantformError('QF_INVALID_ARGUMENT', 'FPTQuant quantizes weights symmetrically (the integer kernels read no zero points): pass symmetric: true (--sym)');
    const s = ctx.shape;
    // static activations run only on the int8 x int4 kernels (engine_block.cpp's integer path): refused
    // here, before training, rather than written as a checkpoint that eval and generate cannot load
    if (o.actBits < 16) {
      const { bits, groupSize: gs } = ctx.quant;
      const bad = [['hidden size', s.hidden], ['attention width', s.heads * s.headDim], ['intermediate size', s.intermediate]]
        .find(([, K]) => gs % 8 !== 0 && gs < (K as number));
      if (bits !== 4 || bad)
        throw new QuantformError('QF_UNSUPPORTED',
          `Static ${o.actBits}-bit activations run on the int8 x INT4 kernels: they need 4-bit weights with a group size that is a multiple of 8 ` +
          `or covers a whole row, but received bits ${bits}, group size ${gs}${bad ? ` (the ${bad[0]} is ${bad[1]})` : ''}; pass --a-bits 16 for weight-only FPTQuant`);
    }
    this.hb = o.onlineHadamard ? hadamardBlockOf(s.intermediate) : 0;
    try {
      this.lay = native().engine.fptLayout({ ...blockConfigOf(s, 1, 1), fpt: fptConfig(o, this.hb, true, false) });
    } catch (e) {
      throw fromNative(e);
    }
    this.P = this.lay.total;
    // the merged model's block step; its per-layer parameters arrive with the whole-model stage
    this.fpt = { config: { merged: true, residualScaling: o.residualScaling && o.actBits < 16, hadamardBlock: this.hb }, params: [] };
    const gctx = { ...ctx, gptq: { ...ctx.gptq, clipNorm: ctx.gptq?.clipNorm ?? o.clipNorm } };
    this.gptq = o.weights === 'gptq' ? new GptqMethodRun(gctx, { signal: ctx.signal }, false, this.fpt) : null;
    this.needs = this.gptq ? this.gptq.needs : NO_ACTIVATIONS;
    const g = this.gptq;
    if (g) {
      this.forward = g.forward;
      this.block = (b) => {
        if (this.fpt.params.length !== s.layers) throw new QuantformError('QF_INTERNAL', 'FPTQuant block pass before its whole-model stage');
        return g.block(b);
      };
    }
    this.whole = { memory: () => this.wholeMemory(), run: (m) => this.train(m) };
    if (o.trainWeightRanges) this.afterBlocks = (m) => this.trainRanges(m);
  }

  private async trainRanges(m: PackedLlama): Promise<Map<string, QuantizedTensor>> {
    const o = this.o, teacher = this.teacher;
    if (!teacher || this.fpt.params.length !== m.shape.layers) throw new QuantformError('QF_INTERNAL', 'FPTQuant range stage before its whole-model stage');
    const fpt: NativeFptConfig = {
      merged: true, residualScaling: this.fpt.config.residualScaling, hadamardBlock: this.hb, actBits: o.actBits < 16 ? o.actBits : 0,
      kvBits: o.kvBits < 16 ? o.kvBits : 0, ...(o.inputBits && o.actBits < 16 ? { inputBits: o.inputBits } : {}),
    };
    try {
      return await trainRanges(m, this.ctx.quant.groupSize, this.fpt.params, fpt, this.lay, o, this.ctx.calibration!, teacher, this.curve, this.ctx.onProgress);
    } finally {
      this.teacher = null;
      this.acts = this.activationQuant(this.fpt.params);
    }
  }

  /** The run-time quantizers from each block's parameters. */
  private activationQuant(params: Float32Array[]): FptActivationQuant {
    const o = this.o, lay = this.lay, Hkv = this.ctx.shape.kvHeads, L = params.length;
    return {
      actBits: o.actBits, kvBits: o.kvBits, ...(o.inputBits && o.actBits < 16 ? { inputBits: [...o.inputBits] } : {}), residualScaling: this.fpt.config.residualScaling === true,
      hadamardBlock: this.hb, residualRotation: o.residualRotation,
      actScales: Float32Array.from({ length: L * 4 }, (_, i) => Math.exp(params[Math.floor(i / 4)][lay.actLogScale + (i % 4)])),
      kvScales: Float32Array.from({ length: L * 2 * Hkv }, (_, i) => Math.exp(params[Math.floor(i / (2 * Hkv))][lay.kvLogScale + (i % (2 * Hkv))])),
    };
  }

  /** The fp32 model, the teacher's copy and the end-to-end stage's activations and teacher cache. */
  private wholeMemory(): MemoryItem[] {
    const s = this.ctx.shape, o = this.o, cal = this.ctx.calibration!, D = s.hidden, L = s.layers, S = cal.seqLen, N = cal.samples;
    const modelBytes = (L * blockLayout(s).total + (s.tied ? 1 : 2) * s.vocab * D + D) * 4;
    const items: MemoryItem[] = [{ what: 'the fp32 model', bytes: modelBytes }];
    if (o.stages !== 'local+e2e') {
      if (o.trainWeightRanges) items.push({ what: 'the fp teacher (kept for the range stage after GPTQ)', bytes: modelBytes });
      return items;
    }
    const B = Math.min(o.batchSize, N), T = B * S;
    const saved = native().engine.blockSizes({ ...blockConfigOf(s, B, S, this.ctx.quant), fpt: fptConfig(o, this.hb, true, false) }).saved;
    items.push({ what: 'the fp teacher', bytes: modelBytes },
      { what: `end-to-end activations of ${B} x ${S} tokens through ${L} blocks`, bytes: (L * saved + (L + 1) * T * D + 2 * T * s.vocab) * 4 });
    if (N * S * s.vocab * 4 <= o.teacherCacheBytes) items.push({ what: "the teacher's probabilities", bytes: N * S * s.vocab * 4 });
    return items;
  }

  memory(): MemoryItem[] {
    return this.gptq ? this.gptq.memory() : [];
  }

  lossCurve(): number[] {
    return this.curve;
  }

  activations(): FptActivationQuant | null {
    return this.acts;
  }

  /** Steps 0-4 of the schedule on `model` in place: rotation, ranges, local and end-to-end stages, the merge. */
  private async train(model: TrainableLlama): Promise<void> {
    const ctx = this.ctx, o = this.o, hb = this.hb, P = this.P, lay = this.lay;
    const s = model.shape, L = s.layers;
    const teacher = o.stages === 'local+e2e' || o.trainWeightRanges ? model.clone() : null;
    if (o.trainWeightRanges) this.teacher = teacher;
    if (o.residualRotation) rotateResidual(model, residualRotationMatrix(s.hidden, o.seed));
    const eng = native().engine;
    const opt = new AdamW(L * P, { lr: o.localLr, betas: [0.9, 0.999] });
    const curve = this.curve;
    let start = 0;
    if (ctx.resume) {
      opt.load({ step: ctx.resume.step, arena: ctx.resume.arena });
      curve.push(...ctx.resume.lossCurve);
      start = ctx.resume.step;
    }
    const localSteps = o.stages === 'none' ? 0 : o.localSteps;
    const e2eSteps = o.stages === 'local+e2e' ? o.e2eSteps : 0;
    const total = L * localSteps + e2eSteps;
    const st: Stage = {
      model, o, ctx, cal: ctx.calibration!, hb, P, lay, opt, curve, start,
      trainer: new Trainer(ctx, Math.max(total, 1), () => checkParams(st, Array.from({ length: L }, (_, l) => l))),
    };
    await localStage(st);
    if (teacher && e2eSteps > 0) await endToEnd(st, teacher, L * localSteps);
    // the transforms into the weights: the model computes the same function, its linears now the ones to quantize
    const mcfg = { ...model.blockConfig(1, 1), fpt: { ...fptConfig(o, hb, false, false), residualScaling: false } };
    try {
      for (let l = 0; l < L; l++) eng.fptMerge(mcfg, model.blocks[l], opt.params.subarray(l * P, (l + 1) * P), null);
    } catch (e) {
      throw fromNative(e);
    }
    const params = Array.from({ length: L }, (_, l) => opt.params.slice(l * P, (l + 1) * P));
    this.fpt.params.push(...params);
    this.acts = this.activationQuant(params);
  }
}

export const fptquant: QuantMethod = {
  name: 'fptquant',
  description: 'FPTQuant: function-preserving transforms (pre-RoPE q/k, value, MLP, dynamic residual scaling) trained locally and end to end, static INT8/INT4 activations and KV cache',
  needsCalibration: true,
  start: (ctx) => new FptQuantRun(ctx),
};
