// Third-party runtimes and oracles the interop tests run quantform's exports in.
// Each lookup returns the thing or the reason it is missing (tests print it and skip).
//   test/peers/node_modules   node-llama-cpp (llama.cpp's prebuilt CPU binary), Transformers.js
//                             (`npm ci --prefix test/peers --omit=optional --ignore-scripts`, done by .ci/run)
//   onnxruntime-node          the package's optional dependency
//   python with numpy + gguf  $QUANTFORM_PYTHON, .ci-venv (made by .ci/run) or /work/venv
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../../lib/native.js';

export const ROOT = packageRoot();
const PEERS = path.join(ROOT, 'test', 'peers');

export type Found<T> = { ok: true; value: T } | { ok: false; reason: string };

/** CI sets QUANTFORM_REQUIRE_PEERS=1 after installing test/peers: a missing peer then fails instead of skipping. */
function missing<T>(reason: string): Found<T> {
  if (process.env.QUANTFORM_REQUIRE_PEERS === '1') throw new Error(`QUANTFORM_REQUIRE_PEERS is set but ${reason}`);
  return { ok: false, reason };
}

async function importPeer<T>(name: string): Promise<Found<T>> {
  const req = createRequire(path.join(PEERS, 'package.json'));
  let entry: string;
  try {
    entry = req.resolve(name);
  } catch {
    return missing(`${name} is not installed in test/peers (npm ci --prefix test/peers --omit=optional --ignore-scripts)`);
  }
  try {
    return { ok: true, value: (await import(pathToFileURL(entry).href)) as T };
  } catch (e) {
    return missing(`${name} does not load: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** The parts of node-llama-cpp the tests use. */
export interface NodeLlamaCpp {
  getLlama(o: { gpu: false; build: 'never'; logLevel: unknown; progressLogs?: boolean }): Promise<Llama>;
  LlamaLogLevel: { error: unknown };
}
export interface Llama {
  loadModel(o: { modelPath: string }): Promise<LlamaModel>;
  dispose(): Promise<void>;
}
export interface LlamaModel {
  tokenize(text: string): number[];
  createContext(o: Record<string, unknown>): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
export interface LlamaContext {
  getSequence(): LlamaSequence;
  dispose(): Promise<void>;
}
export interface LlamaSequence {
  clearHistory(): Promise<void>;
  controlledEvaluate(input: [number, { generateNext: { probabilities: true } }][]): Promise<({ next: { probabilities?: Map<number, number> } } | undefined)[]>;
  evaluate(tokens: number[], o: { temperature: number }): AsyncGenerator<number>;
}

let llamaCache: Promise<Found<Llama>> | null = null;

/** node-llama-cpp's Llama on the prebuilt CPU binary (never builds, never downloads). */
export function nodeLlamaCpp(): Promise<Found<Llama>> {
  llamaCache ??= (async () => {
    const m = await importPeer<NodeLlamaCpp>('node-llama-cpp');
    if (!m.ok) return m;
    try {
      return { ok: true as const, value: await m.value.getLlama({ gpu: false, build: 'never', logLevel: m.value.LlamaLogLevel.error, progressLogs: false }) };
    } catch (e) {
      return missing<Llama>(`node-llama-cpp has no usable prebuilt binary: ${(e as Error).message.split('\n')[0]}`);
    }
  })();
  return llamaCache;
}

/** The parts of Transformers.js the tests use. */
export interface TransformersJs {
  env: { allowRemoteModels: boolean; allowLocalModels: boolean; localModelPath: string; useFSCache?: boolean };
  AutoTokenizer: { from_pretrained(id: string): Promise<(text: string) => Record<string, unknown>> };
  AutoModelForCausalLM: {
    from_pretrained(id: string, o?: Record<string, unknown>): Promise<{ generate(o: Record<string, unknown>): Promise<{ data: ArrayLike<bigint | number> }>; dispose(): Promise<void> }>;
  };
}

export function transformersJs(): Promise<Found<TransformersJs>> {
  return importPeer<TransformersJs>('@huggingface/transformers');
}

/** onnxruntime-node, the package's optional dependency. */
export interface Ort {
  InferenceSession: { create(file: string, o?: Record<string, unknown>): Promise<OrtSession> };
  Tensor: new (type: string, data: ArrayLike<number | bigint> | BigInt64Array | Float32Array, dims: number[]) => OrtTensor;
}
export interface OrtTensor { data: Float32Array; dims: readonly number[] }
export interface OrtSession {
  inputNames: readonly string[];
  outputNames: readonly string[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
}

export async function onnxRuntime(): Promise<Found<Ort>> {
  try {
    const req = createRequire(path.join(ROOT, 'package.json'));
    return { ok: true, value: (await import(pathToFileURL(req.resolve('onnxruntime-node')).href)) as Ort };
  } catch (e) {
    return missing(`onnxruntime-node is not installed (optional dependency): ${(e as Error).message.split('\n')[0]}`);
  }
}

let pythonCache: Found<string> | null = null;

/** A python with numpy and gguf (and whether it has onnx). */
export function python(modules = ['numpy', 'gguf']): Found<string> {
  if (modules.join() === 'numpy,gguf' && pythonCache) return pythonCache;
  const candidates = [process.env.QUANTFORM_PYTHON, path.join(ROOT, '.ci-venv', 'bin', 'python'), '/work/venv/bin/python'].filter((p): p is string => !!p && existsSync(p));
  let r: Found<string> = { ok: false, reason: `no python with ${modules.join(', ')} (set QUANTFORM_PYTHON, or run .ci/run which makes .ci-venv)` };
  for (const p of candidates) {
    try {
      execFileSync(p, ['-c', `import ${modules.join(', ')}`], { stdio: 'ignore', timeout: 60_000 });
      r = { ok: true, value: p };
      break;
    } catch {
      // try the next one
    }
  }
  if (modules.join() === 'numpy,gguf') pythonCache = r;
  return r;
}

/** The folder of node-llama-cpp's prebuilt shared libraries (libggml-base.so, libllama.so), for the fixture script. */
export function llamaLibDir(): string | null {
  const dir = path.join(PEERS, 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64');
  return existsSync(path.join(dir, 'libggml-base.so')) ? dir : null;
}
