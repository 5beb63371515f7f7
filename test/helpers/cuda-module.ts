// quantform_cuda.node loaded directly, without the GPU check lib/ops/cuda.ts makes: its input checks
// run before any CUDA call, so they are tested wherever the module is built (CI has nvcc, no GPU).
import { createRequire } from 'node:module';

export type CudaModuleFn = (...a: unknown[]) => unknown;

/** The module's exports, from the file cudaInfo().module names. */
export function cudaModule(file: string): Record<string, CudaModuleFn> {
  return createRequire(import.meta.url)(file) as Record<string, CudaModuleFn>;
}

/** The QF_ code a call throws, or 'no error'. */
export function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return String((e as { code?: string }).code);
  }
  return 'no error';
}
