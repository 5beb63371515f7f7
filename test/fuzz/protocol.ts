// Messages between the fuzz harness (parent) and test/fuzz/child.ts.

export interface CaseSpec {
  id: number;
  /** a suite name of test/fuzz/formats.ts ('napi' for the N-API boundary) */
  format: string;
  seed: number;
  /** replay a stored regression input (test/fuzz/regressions/*.json) instead of generating one */
  replay?: string;
}

export type Outcome =
  | 'ok'        // the entry point accepted the input
  | 'error'     // a QuantformError with an expected code
  | 'uncoded'   // anything else thrown: not a QuantformError, or QF_INTERNAL / QF_OUT_OF_MEMORY
  | 'crash'     // the child died
  | 'hang'      // no result within the case timeout
  | 'memory';   // peak RSS grew past the cap: something was allocated by a header's word

export interface CaseResult {
  id: number;
  format: string;
  seed: number;
  outcome: Outcome;
  code?: string;
  detail?: string;
  /** which mutation made the input */
  mutation?: string;
  ms?: number;
  /** the child's peak RSS after the case (process.resourceUsage().maxRSS, KB) */
  maxRssKb?: number;
}

/** Codes that are a clean rejection of bad input. QF_OUT_OF_MEMORY means a header made us allocate; QF_INTERNAL a bug. */
export const EXPECTED_CODES = new Set([
  'QF_INVALID_ARGUMENT', 'QF_SHAPE_MISMATCH', 'QF_DTYPE_MISMATCH', 'QF_UNSUPPORTED_BITS', 'QF_NON_FINITE', 'QF_IO',
  'QF_CORRUPT_FILE', 'QF_UNSUPPORTED',
]);
