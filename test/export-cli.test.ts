// The built CLI's export paths (dist/cli.js, from `npx tsup`): `quantize --format gguf`
// writes the GPTQ directory and then the GGUF next to it, `export` writes GGUF / ONNX
// and prints what became of the tensors, bad arguments fail with one clear line before
// any work. And the CUDA prebuild check (cmake/prebuild-cuda.cjs) refuses a module
// without device code and accepts the one cmake-js built.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GgufCheckpoint } from '../lib/index.js';
import { ROOT } from './helpers/peers.js';
import { sharedDir } from './helpers/tiers.js';

const cli = path.join(ROOT, 'dist', 'cli.js');
const HF = path.join(sharedDir(), 'models/stories260K-hf');
const haveCli = existsSync(cli);
const haveShared = existsSync(HF);
if (!haveCli) console.warn(`export-cli: skipped, ${cli} not built (run npx tsup)`);
if (!haveShared) console.warn(`export-cli: real-model cases skipped, ${HF} not found`);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-export-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 300_000 });

describe.skipIf(!haveCli)('quantform export / quantize --format (dist/cli.js)', () => {
  it('bad --format fails before any work, naming the value', () => {
    const a = run(['export', '--model', HF, '--format', 'tflite']);
    expect(a.status).toBe(1);
    expect(a.stderr).toMatch(/quantform: Expected gguf or onnx for --format but received 'tflite' \[QF_INVALID_ARGUMENT\]/);
    const out = path.join(tmp, 'never');
    const b = run(['quantize', '--model', HF, '--method', 'rtn', '--out', out, '--format', 'safetensors']);
    expect(b.stderr).toMatch(/Expected gguf or onnx for --format but received 'safetensors'/);
    expect(existsSync(out)).toBe(false);
  });

  it.skipIf(!haveShared)('quantize --format gguf writes the GPTQ directory and <out>.gguf; export --format onnx|gguf --exact', () => {
    const out = path.join(tmp, 'rtn-asym');
    const q = run(['quantize', '--model', HF, '--method', 'rtn', '--bits', '4', '--group-size', '32', '--out', out, '--format', 'gguf']);
    expect(q.status, q.stderr).toBe(0);
    expect(q.stdout).toMatch(/GGUF .*rtn-asym\.gguf: [\d.]+ MB in [\d.]+ s, from rtn W4 g32 asym \(GPTQ\)/);
    expect(q.stdout).toMatch(/35 x INT4 asym g32 \(f16\) -> Q4_1, rounded/);
    const ck = new GgufCheckpoint(`${out}.gguf`);
    expect(ck.storedType('layers.0.wq').name).toBe('Q4_1');
    ck.close();
    const exact = run(['export', '--model', out, '--format', 'gguf', '--exact', '--out', path.join(tmp, 'exact.gguf'), '--json']);
    expect(exact.status, exact.stderr).toBe(0);
    const r = JSON.parse(exact.stdout) as { tensors: { type: string; fidelity: string }[]; ffnPadded: unknown };
    expect(new Set(r.tensors.map((t) => `${t.type} ${t.fidelity}`))).toEqual(new Set(['F32 exact', 'Q5_0 exact']));
    expect(r.ffnPadded).toEqual({ from: 172, to: 192 });
    const onnx = run(['export', '--model', out, '--format', 'onnx']);
    expect(onnx.status, onnx.stderr).toBe(0);
    expect(existsSync(path.join(`${out}-onnx`, 'onnx', 'model_q4.onnx'))).toBe(true);
    expect(onnx.stdout).toMatch(/35 x INT4 asym g32 \(f16\) -> MatMulNBits 4-bit block 32, exact/);
    const again = run(['export', '--model', out, '--format', 'onnx']);
    expect(again.stderr).toMatch(/Output .*rtn-asym-onnx already exists/);
  });
});

describe('CUDA prebuild check (cmake/prebuild-cuda.cjs)', () => {
  const script = path.join(ROOT, 'cmake', 'prebuild-cuda.cjs');
  const cpu = path.join(ROOT, 'build', 'Release', 'quantform.node');
  const cuda = path.join(ROOT, 'build', 'Release', 'quantform_cuda.node');
  const check = (file: string, dir: string) => spawnSync(process.execPath, [script, file], { encoding: 'utf8', env: { ...process.env, QUANTFORM_PREBUILD_DIR: dir } });

  it.skipIf(!existsSync(cpu))('refuses a module without device code', () => {
    const r = check(cpu, path.join(tmp, 'cpu-prebuild'));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/has no \.nv_fatbin section \(no device code\)/);
    expect(check(path.join(tmp, 'missing.node'), tmp).stderr).toMatch(/missing\.node does not exist: build it with `npm run build:native` on a machine with nvcc/);
  });

  it.skipIf(!existsSync(cuda))('accepts the CUDA module cmake-js built: static runtime, sm_80 + sm_90 cubins, compute_90 PTX', () => {
    const dir = path.join(tmp, 'cuda-prebuild');
    const r = check(cuda, dir);
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(readFileSync(path.join(dir, 'quantform_cuda.json'), 'utf8')) as { architectures: string[]; needed: string[]; cudaRuntime: string };
    expect(m.architectures).toEqual(expect.arrayContaining(['sm_80', 'sm_90', 'compute_90']));
    expect(m.needed.some((n) => n.startsWith('libcudart'))).toBe(false);
    // it loads in a fresh process without a driver and says why it cannot run
    const info = execFileSync(process.execPath, ['-e', `const b = require(${JSON.stringify(path.join(dir, 'quantform_cuda.node'))}); console.log(JSON.stringify(b.cudaInfo()))`], { encoding: 'utf8' });
    const ci = JSON.parse(info) as { available: boolean; reason?: string };
    if (!ci.available) expect(ci.reason).toMatch(/driver|device/i);
  });
});
