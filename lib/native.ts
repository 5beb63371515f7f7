// Loads the CPU addon and describes its contract. Nothing else in lib/ touches
// the untyped binding: every call goes through the NativeBinding interface below.
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QuantformError } from './errors.js';

export type NativeDType = 'f32' | 'f16' | 'bf16';
export type FloatArray = Float32Array | Uint16Array;

export interface NativeBackendInfo {
  tier: 'ref' | 'avx2' | 'avx512';
  bestTier: 'ref' | 'avx2' | 'avx512';
  threads: number;
  vendor: string;
  cpu: string;
  features: Record<string, boolean>;
  envPolicy: string | null;
}

export interface NativeQuantized {
  codes: Uint8Array;
  scales: FloatArray;
  zeros: FloatArray | null;
}

export interface NativeFakeQuantGrads {
  gradW: Float32Array;
  gradScales: Float32Array;
  gradZeros: Float32Array | null;
}

/** A repacked weight owned by native code (native/include/quantform/matmul_ops.h). */
export interface NativePreparedWeight {
  readonly __brand: 'NativePreparedWeight';
}

export interface NativeMachineLimits {
  readGBps: number;
  readBytes: number;
  fmaGflops: number;
  vnniGops: number | null;
  threads: number;
}

/** The CPU addon's functions (native/addon). Arguments are validated in TS first. */
export interface NativeBinding {
  abiVersion: number;
  backendInfo(): NativeBackendInfo;
  setKernelPolicy(policy: string): string;
  setThreads(n: number): number;
  quantize(w: FloatArray, dtype: NativeDType, N: number, K: number, bits: number, groupSize: number,
    symmetric: boolean, paramDtype: 'f32' | 'f16', async: false): NativeQuantized;
  quantize(w: FloatArray, dtype: NativeDType, N: number, K: number, bits: number, groupSize: number,
    symmetric: boolean, paramDtype: 'f32' | 'f16', async: true): Promise<NativeQuantized>;
  pack(codes8: Uint8Array, N: number, K: number, bits: number, async: false): Uint8Array;
  pack(codes8: Uint8Array, N: number, K: number, bits: number, async: true): Promise<Uint8Array>;
  unpack(codes: Uint8Array, N: number, K: number, bits: number, async: false): Uint8Array;
  unpack(codes: Uint8Array, N: number, K: number, bits: number, async: true): Promise<Uint8Array>;
  dequantize(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, outDtype: NativeDType,
    async: false, out?: FloatArray | null): FloatArray;
  dequantize(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16',
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, outDtype: NativeDType,
    async: true, out?: FloatArray | null): Promise<FloatArray>;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: false): Float32Array;
  fakeQuantForward(w: Float32Array, scales: Float32Array, zeros: Float32Array | null, N: number, K: number,
    bits: number, groupSize: number, symmetric: boolean, async: true): Promise<Float32Array>;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: false): NativeFakeQuantGrads;
  fakeQuantBackward(g: Float32Array, w: Float32Array, scales: Float32Array, zeros: Float32Array | null,
    N: number, K: number, bits: number, groupSize: number, symmetric: boolean, async: true): Promise<NativeFakeQuantGrads>;
  matmulPrepare(codes: Uint8Array, scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number,
    K: number, bits: number, groupSize: number, symmetric: boolean): NativePreparedWeight;
  matmulUnprepare(handle: NativePreparedWeight): NativeQuantized;
  matmulDispose(handle: NativePreparedWeight): void;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8', async: false): Float32Array;
  matmul(x: FloatArray, xDtype: NativeDType, M: number, handle: NativePreparedWeight | null, codes: Uint8Array,
    scales: FloatArray, zeros: FloatArray | null, paramDtype: 'f32' | 'f16', N: number, K: number, bits: number,
    groupSize: number, symmetric: boolean, accuracy: 'fp32' | 'int8', async: true): Promise<Float32Array>;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: false): Float32Array;
  sgemm(x: Float32Array, w: Float32Array, M: number, N: number, K: number, async: true): Promise<Float32Array>;
  measureMachine(bytes: number, reps: number, seconds: number, async: false): NativeMachineLimits;
  measureMachine(bytes: number, reps: number, seconds: number, async: true): Promise<NativeMachineLimits>;
}

/** The package root (holds package.json, build/ and prebuilds/), from src or dist. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const pj = path.join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'quantform') return dir;
      } catch {
        // not our package.json: keep walking up
      }
    }
    dir = path.dirname(dir);
  }
  throw new QuantformError('QF_NATIVE_LOAD', 'Cannot find the quantform package root (package.json) above ' + fileURLToPath(import.meta.url));
}

let cached: NativeBinding | undefined;

/**
 * The CPU addon. QUANTFORM_ADDON=/path/to/quantform.node loads a specific build
 * (CI uses it to test the node-gyp build); otherwise node-gyp-build looks in
 * build/Release, then prebuilds/<platform>-<arch>.
 */
export function native(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const explicit = process.env.QUANTFORM_ADDON;
  try {
    if (explicit) {
      cached = require(path.resolve(explicit)) as NativeBinding;
    } else {
      const load = require('node-gyp-build') as (dir: string) => unknown;
      cached = load(packageRoot()) as NativeBinding;
    }
  } catch (e) {
    const why = (e as Error).message;
    throw new QuantformError(
      'QF_NATIVE_LOAD',
      `quantform could not load its native addon (${why}). ` +
        (process.platform !== 'linux' || process.arch !== 'x64'
          ? `Prebuilt binaries exist for linux-x64 only; this is ${process.platform}-${process.arch}. `
          : '') +
        'Build it from source with `npm run build:native` (needs cmake and a C++17 compiler), ' +
        'or set QUANTFORM_ADDON to the path of a quantform.node.',
      { cause: e },
    );
  }
  if (cached.abiVersion !== 1) {
    const v = cached.abiVersion;
    cached = undefined;
    throw new QuantformError('QF_NATIVE_LOAD', `quantform's native addon has ABI version ${v}, expected 1: rebuild it with \`npm run build:native\``);
  }
  return cached;
}
