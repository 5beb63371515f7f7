// The CUDA module (quantform_cuda.node) is optional and loaded lazily: loading
// quantform never fails because CUDA, a driver or a GPU is missing.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../native.js';

export interface CudaInfo {
  available: boolean;
  /** Why CUDA cannot be used, when it cannot. */
  reason?: string;
  device?: string;
  computeCapability?: string;
  memoryBytes?: number;
  driverVersion?: number;
  runtimeVersion?: number;
  /** the quantform_cuda.node that was loaded (absent when none was found) */
  module?: string;
}

/** A weight resident on the GPU (native/cuda/matmul_addon.cpp). */
export interface NativeCudaWeight {
  readonly __brand: 'NativeCudaWeight';
}

export interface CudaBinding {
  cudaInfo(): CudaInfo;
  cudaMatmulPrepare(codes: Uint8Array, scales: Float32Array | Uint16Array, zeros: Float32Array | Uint16Array | null,
    paramDtype: 'f32' | 'f16', N: number, K: number, bits: number, groupSize: number, symmetric: boolean): NativeCudaWeight;
  cudaMatmulDispose(handle: NativeCudaWeight): void;
  cudaMatmul(handle: NativeCudaWeight, x: Float32Array | Uint16Array, xDtype: 'f32' | 'f16' | 'bf16', M: number, async: false): Float32Array;
  cudaMatmul(handle: NativeCudaWeight, x: Float32Array | Uint16Array, xDtype: 'f32' | 'f16' | 'bf16', M: number, async: true): Promise<Float32Array>;
  [op: string]: unknown;
}

let state: { binding?: CudaBinding; reason?: string; module?: string } | undefined;

function candidates(): string[] {
  const root = packageRoot();
  const out: string[] = [];
  if (process.env.QUANTFORM_CUDA_ADDON) out.push(path.resolve(process.env.QUANTFORM_CUDA_ADDON));
  out.push(path.join(root, 'build', 'Release', 'quantform_cuda.node'));
  // the npm package's prebuild: in cuda/, where node-gyp-build does not mistake it for the CPU addon
  out.push(path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'cuda', 'quantform_cuda.node'));
  return out;
}

/** The CUDA binding, or undefined with the reason in cudaInfo(). */
export function cudaBinding(): CudaBinding | undefined {
  if (state) return state.binding;
  state = {};
  const file = candidates().find((f) => existsSync(f));
  if (!file) {
    state.reason = 'quantform_cuda.node is not built: run `npm run build:native` on a machine with nvcc (see README)';
    return undefined;
  }
  state.module = file;
  try {
    const b = createRequire(import.meta.url)(file) as CudaBinding;
    const info = b.cudaInfo();
    if (!info.available) state.reason = info.reason ?? 'no CUDA device';
    else state.binding = b;
  } catch (e) {
    state.reason = `loading ${file} failed: ${(e as Error).message}`;
  }
  return state.binding;
}

export function cudaInfo(): CudaInfo {
  const b = cudaBinding();
  const module = state?.module;
  if (!b) return { available: false, reason: state?.reason, ...(module ? { module } : {}) };
  return { ...b.cudaInfo(), ...(module ? { module } : {}) };
}
