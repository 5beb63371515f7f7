// FPTQuant checkpoints made by the real CLI (dist/cli.js) on stories260K with a few steps, and
// what other paths do with them (issue 11, "Bad input"): GGUF / ONNX export refuses every part
// llama.cpp and onnxruntime cannot run (static activation and KV quantization, S_n, the online
// Hadamard), naming it, and writes nothing; a model whose transforms are all merged (here with
// the residual rotation) exports and computes what the checkpoint computes; eval refuses a
// matmul accuracy that cannot run static activations; quantize refuses A-bits other than 4 / 8 /
// 16 and a weight layout the int8 kernels cannot take before any work; a diverging run stops
// with a clear error, writes no output and keeps its last good checkpoint.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { ROOT } from './helpers/peers.js';
import { sharedDir } from './helpers/tiers.js';

const cli = path.join(ROOT, 'dist', 'cli.js');
const HF = path.join(sharedDir(), 'models/stories260K-hf');
const TEXT = path.join(sharedDir(), 'data/tinystories/TinyStories-valid.first1000.txt');
const ready = existsSync(cli) && existsSync(HF) && existsSync(TEXT);
if (!ready) console.warn(`fptquant-cli: skipped, needs ${cli} (npx tsup), ${HF} and ${TEXT}`);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-fpt-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 300_000 });

/** quantize --method fptquant on stories260K: 8 x 64 calibration tokens, 2 + 2 + 2 steps (about 2 s). */
function fpt(name: string, extra: string[]): { out: string; stderr: string; status: number | null } {
  const out = path.join(tmp, name);
  const r = run(['quantize', '--model', HF, '--calib', TEXT, '--method', 'fptquant', '--bits', '4', '--sym', '--group-size', '64',
    '--samples', '8', '--seq-len', '64', '--local-steps', '2', '--e2e-steps', '2', '--qp-steps', '2', '--out', out, ...extra]);
  return { out, stderr: r.stderr, status: r.status };
}

function quantformConfig(dir: string): Record<string, unknown> {
  return (JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as { quantization_config: { quantform: Record<string, unknown> } }).quantization_config.quantform;
}

/** The perplexity `eval` reports on the first 1000 predictions of held-out text. */
function ppl(model: string): number {
  const r = run(['eval', '--model', model, '--text', TEXT, '--ctx', '64', '--max-tokens', '1000', '--json']);
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { ppl: number }).ppl;
}

describe.skipIf(!ready)('FPTQuant checkpoints from the CLI, exported and loaded elsewhere', () => {
  it('W4A8KV8 (S_n): GGUF and ONNX export refuse, naming the static activations, the KV cache and S_n; eval refuses --accuracy bf16 / int8', () => {
    const q = fpt('a8', ['--a-bits', '8']);
    expect(q.status, q.stderr).toBe(0);
    expect(quantformConfig(q.out)).toMatchObject({ activations: { bits: 8 }, kv_cache: { bits: 8 }, online_transforms: ['residual_scaling'] });
    for (const [format, file] of [['gguf', 'a8.gguf'], ['onnx', 'a8-onnx']]) {
      const e = run(['export', '--model', q.out, '--format', format, '--out', path.join(tmp, file)]);
      expect(e.status).toBe(1);
      expect(e.stderr).toMatch(/quantizes activations statically \(8-bit: .*; quantizes the KV cache statically \(8-bit: .*; applies transforms at run time: residual_scaling \(S_n dynamic residual scaling\); (GGUF|ONNX) stores weight-only .*compute something else\) \[QF_UNSUPPORTED\]/);
      expect(existsSync(path.join(tmp, file))).toBe(false);
    }
    expect(ppl(q.out)).toBeLessThan(20);
    for (const acc of ['bf16', 'int8']) {
      const e = run(['eval', '--model', q.out, '--text', TEXT, '--ctx', '64', '--max-tokens', '100', '--accuracy', acc]);
      expect(e.status).toBe(1);
      expect(e.stderr).toContain(`Static 8-bit activations run on the int8 kernels with the checkpoint's scales; the model was created with matmul accuracy '${acc}'`);
      expect(e.stderr).toMatch(/\[QF_UNSUPPORTED\]/);
    }
  });

  it("W4A16 whose only non-mergeable part is the online Hadamard, and W4A16KV8: refused by both exporters, naming what they cannot run", () => {
    const had = fpt('a16-had', ['--a-bits', '16', '--kv-bits', '16', '--online-hadamard']);
    expect(had.status, had.stderr).toBe(0);
    expect(quantformConfig(had.out)).toEqual({ method: 'fptquant', online_transforms: ['hadamard:down_proj:4'] });
    const kv = fpt('a16-kv8', ['--a-bits', '16', '--kv-bits', '8']);
    expect(kv.status, kv.stderr).toBe(0);
    expect(quantformConfig(kv.out)).toMatchObject({ kv_cache: { bits: 8 } });
    for (const format of ['gguf', 'onnx']) {
      const dest = path.join(tmp, `x-${format}`);
      const a = run(['export', '--model', had.out, '--format', format, '--out', dest]);
      expect(a.status).toBe(1);
      expect(a.stderr).toMatch(/the model applies transforms at run time: hadamard:down_proj:4 \(online Hadamard\); .* \[QF_UNSUPPORTED\]/);
      const b = run(['export', '--model', kv.out, '--format', format, '--out', dest]);
      expect(b.status).toBe(1);
      expect(b.stderr).toMatch(/the model quantizes the KV cache statically \(8-bit: .* \[QF_UNSUPPORTED\]/);
      expect(existsSync(dest)).toBe(false);
    }
    // bf16 matmuls on a weight-only model are the user's choice (no static activations to contradict)
    const bf = run(['eval', '--model', had.out, '--text', TEXT, '--ctx', '64', '--max-tokens', '100', '--accuracy', 'bf16']);
    expect(bf.status, bf.stderr).toBe(0);
  });

  it('W4A16 with every transform merged (T_k, T_v, T_u and the residual rotation): the GGUF export computes what the checkpoint computes', () => {
    const q = fpt('a16-rot', ['--a-bits', '16', '--kv-bits', '16', '--residual-rotation']);
    expect(q.status, q.stderr).toBe(0);
    expect(quantformConfig(q.out)).toEqual({ method: 'fptquant', residual_rotation: 'merged' });
    const gguf = path.join(tmp, 'a16-rot.gguf');
    const e = run(['export', '--model', q.out, '--format', 'gguf', '--out', gguf]);
    expect(e.status, e.stderr).toBe(0);
    expect(e.stdout).toMatch(/INT4 sym g64 \(f16\) -> Q4_0, exact/);
    const onnx = run(['export', '--model', q.out, '--format', 'onnx', '--out', path.join(tmp, 'a16-rot-onnx')]);
    expect(onnx.status, onnx.stderr).toBe(0);
    expect(onnx.stdout).toMatch(/INT4 sym g64 \(f16\) -> MatMulNBits 4-bit block 64, exact/);
    const a = ppl(q.out), b = ppl(gguf);
    expect(a).toBeLessThan(20);
    // the same weights (Q4_0 holds the codes and f16 scales exactly; the untied LM head included): fp32 summation order only
    expect(Math.abs(b - a) / a).toBeLessThan(1e-4);
  });

  it('quantize refuses, before any work: A-bits 6, static activations on weights the int8 kernels cannot take (group 12, 8-bit weights), act-order with groups or without GPTQ', () => {
    const six = fpt('a6', ['--a-bits', '6']);
    expect(six.status).toBe(1);
    expect(six.stderr).toMatch(/Expected 4, 8 or 16 for actBits but received 6 .*\[QF_UNSUPPORTED_BITS\]/);
    expect(existsSync(six.out)).toBe(false);
    const g12 = fpt('g12', ['--a-bits', '8', '--group-size', '12']);
    expect(g12.status).toBe(1);
    expect(g12.stderr).toMatch(/Static 8-bit activations run on the int8 x INT4 kernels: .* received bits 4, group size 12 \(the hidden size is 64\); pass --a-bits 16 .*\[QF_UNSUPPORTED\]/);
    expect(existsSync(g12.out)).toBe(false);
    const w8 = fpt('w8a8', ['--a-bits', '8', '--bits', '8']);
    expect(w8.status).toBe(1);
    expect(w8.stderr).toMatch(/received bits 8, group size 64; pass --a-bits 16/);
    // group 12 is fine weight-only
    expect(fpt('g12-a16', ['--a-bits', '16', '--group-size', '12']).status).toBe(0);
    // GPTQ's act-order: per output channel only, and only where GPTQ runs
    const ao = fpt('act-order-g64', ['--act-order']);
    expect(ao.status).toBe(1);
    expect(ao.stderr).toMatch(/act-order needs weights per output channel \(a group size of at least 172\) but received group size 64.*\[QF_INVALID_ARGUMENT\]/);
    expect(existsSync(ao.out)).toBe(false);
    const aoRtn = fpt('act-order-rtn', ['--act-order', '--fpt-weights', 'rtn']);
    expect(aoRtn.status).toBe(1);
    expect(aoRtn.stderr).toMatch(/--act-order applies to GPTQ \(--method gptq, fptquant, or efficientqat --init gptq\), not to fptquant --fpt-weights rtn/);
  });

  it('a run whose value transform becomes singular stops with QF_NON_FINITE, writes no output, and keeps a valid last checkpoint', () => {
    const q = fpt('diverge', ['--local-steps', '30', '--local-lr', '2', '--checkpoint-every', '1']);
    expect(q.status).toBe(1);
    expect(q.stderr).toMatch(/became singular: cond_1\(A\) = .* \(limit 1e\+06\): stopped; the last checkpoint \(if any\) holds the last good state\. Try a lower lr\. \[QF_NON_FINITE\]/);
    expect(existsSync(q.out)).toBe(false);
    const ck = `${q.out}.ckpt.safetensors`;
    expect(existsSync(ck), 'the run diverged before its first checkpoint: lower --local-lr in this test').toBe(true);
    const arena = readSafetensors(ck).get('arena')!.data as Float32Array;
    // stories260K's block: every layer's kept parameters pass the check the failed step did not
    const hd = 8;
    const c = { B: 1, T: 1, D: 64, F: 172, Hq: 8, Hkv: 4, hd, eps: 1e-5, invFreq: new Float32Array(hd / 2), bits: 0, groupSize: 64, symmetric: true,
      teq: false, fpt: { qk: true, v: true, mlp: true, residualScaling: true, actBits: 8, kvBits: 8 } };
    const P = native().engine.fptLayout(c).total;
    for (let l = 0; l < 5; l++) native().engine.fptCheck(c, arena.subarray(l * P, (l + 1) * P));
  });
});
