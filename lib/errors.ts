// One error type for the whole package. Native errors arrive with the same codes
// (native/include/quantform/status.h); validation errors are raised here first
// with a message that names the parameter, the expectation and what was received.

export type ErrorCode =
  | 'QF_INVALID_ARGUMENT'
  | 'QF_SHAPE_MISMATCH'
  | 'QF_DTYPE_MISMATCH'
  | 'QF_UNSUPPORTED_BITS'
  | 'QF_NON_FINITE'
  | 'QF_OUT_OF_MEMORY'
  | 'QF_IO'
  | 'QF_CORRUPT_FILE'
  | 'QF_CUDA'
  | 'QF_UNSUPPORTED'
  | 'QF_NATIVE_LOAD'
  | 'QF_ABORTED'
  | 'QF_INTERNAL';

export class QuantformError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QuantformError';
    this.code = code;
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value)) return `${value.constructor.name} of length ${(value as { length?: number }).length ?? value.byteLength}`;
  if (Array.isArray(value)) return `array of length ${value.length}`;
  const t = typeof value;
  if (t === 'string') return `'${value as string}' of type string`;
  if (t === 'number' || t === 'boolean' || t === 'bigint') return `${String(value)} of type ${t}`;
  if (t === 'undefined') return 'undefined';
  if (t === 'object') {
    const c = (value as object).constructor?.name;
    return c && c !== 'Object' ? `${c} object` : 'value of type object';
  }
  return `value of type ${t}`;
}

/** `Expected positive integer for groupSize but received 1.5 of type number` */
export function invalidParameter(
  expected: string,
  name: string,
  actual: unknown,
  code: ErrorCode = 'QF_INVALID_ARGUMENT',
): QuantformError {
  return new QuantformError(code, `Expected ${expected} for ${name} but received ${describe(actual)}`);
}

/** Re-raises a native error as QuantformError, keeping the caller's stack. */
export function fromNative(e: unknown): QuantformError {
  if (e instanceof QuantformError) return e;
  const err = e as { code?: string; message?: string };
  let code = (typeof err?.code === 'string' && err.code.startsWith('QF_') ? err.code : 'QF_INTERNAL') as ErrorCode;
  let message = err?.message ?? String(e);
  // node-addon-api's last-resort boundary (CPP_EXCEPTIONS_ALL, around its ObjectWrap
  // and AsyncWorker glue) reports a C++ exception by its what() alone
  if (code === 'QF_INTERNAL' && message === 'std::bad_alloc') {
    code = 'QF_OUT_OF_MEMORY';
    message = 'native call: out of memory (std::bad_alloc)';
  }
  const out = new QuantformError(code, message, { cause: e });
  Error.captureStackTrace?.(out, fromNative);
  return out;
}

export const is = {
  positiveInteger: (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0,
  nonNegativeInteger: (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0,
  finiteNumber: (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v),
  bool: (v: unknown): v is boolean => typeof v === 'boolean',
  string: (v: unknown): v is string => typeof v === 'string',
  oneOf: <T>(v: unknown, values: readonly T[]): v is T => values.includes(v as T),
  object: (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v),
  func: (v: unknown): v is (...a: never[]) => unknown => typeof v === 'function',
};

interface Need {
  positiveInteger(v: unknown, name: string): asserts v is number;
  nonNegativeInteger(v: unknown, name: string): asserts v is number;
  finiteNumber(v: unknown, name: string): asserts v is number;
  bool(v: unknown, name: string): asserts v is boolean;
  /** a non-empty string (paths, names) */
  string(v: unknown, name: string): asserts v is string;
  /** a non-null, non-array object (options, configs) */
  object(v: unknown, name: string): asserts v is object;
  func(v: unknown, name: string): asserts v is (...a: never[]) => unknown;
  instance<T>(v: unknown, ctor: abstract new (...a: never[]) => T, name: string): asserts v is T;
  /** [N, K] of positive integers */
  shape2(v: unknown, name: string): asserts v is readonly [number, number];
}

/** The throwing forms of `is`: the first lines of a public function, called from plain JS as from TS. */
export const need: Need = {
  positiveInteger(v, name) { if (!is.positiveInteger(v)) throw invalidParameter('positive integer', name, v); },
  nonNegativeInteger(v, name) { if (!is.nonNegativeInteger(v)) throw invalidParameter('non-negative integer', name, v); },
  finiteNumber(v, name) { if (!is.finiteNumber(v)) throw invalidParameter('finite number', name, v); },
  bool(v, name) { if (!is.bool(v)) throw invalidParameter('boolean', name, v); },
  string(v, name) { if (!is.string(v) || v.length === 0) throw invalidParameter('non-empty string', name, v); },
  object(v, name) { if (!is.object(v)) throw invalidParameter('object', name, v); },
  func(v, name) { if (!is.func(v)) throw invalidParameter('function', name, v); },
  instance(v, ctor, name) { if (!(v instanceof ctor)) throw invalidParameter(ctor.name, name, v); },
  shape2(v, name) {
    if (!Array.isArray(v) || v.length !== 2 || !v.every((d) => is.positiveInteger(d))) throw invalidParameter('[N, K] of positive integers', name, v);
  },
};
