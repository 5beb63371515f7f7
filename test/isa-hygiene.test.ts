// The prebuilt binary must run on x86-64 CPUs without AVX-512. The hazard is a
// function with external linkage (an inline helper, a template instance) compiled
// into an AVX2/AVX-512 object: the linker may keep that copy and call it from
// generic code. So ISA objects may define exactly one kind of global symbol:
// their kernel tables (data). The addon itself exports only Node's entry points.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../lib/native.js';

const root = packageRoot();
const objRoot = path.join(root, 'build', 'CMakeFiles', 'qf_cpu.dir', 'native', 'cpu');
const hasNm = (() => {
  try {
    execFileSync('nm', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const haveObjects = existsSync(objRoot) && hasNm;
if (!haveObjects) console.warn(`isa-hygiene: skipped, needs nm and the CMake objects under ${objRoot} (run npm run build:native)`);

function definedGlobals(file: string): { type: string; name: string }[] {
  const out = execFileSync('nm', ['-C', '--defined-only', '--extern-only', file], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean).map((l) => {
    const [, type, ...name] = l.trim().split(/\s+/);
    return { type, name: name.join(' ') };
  });
}

describe.skipIf(!haveObjects)('ISA-specific objects define only their kernel tables', () => {
  const isas = haveObjects ? readdirSync(objRoot).filter((d) => /^avx/.test(d)) : [];
  for (const isa of isas)
    for (const obj of readdirSync(path.join(objRoot, isa)).filter((f) => f.endsWith('.o')))
      it(`${isa}/${obj}`, () => {
        const syms = definedGlobals(path.join(objRoot, isa, obj));
        expect(syms.length).toBeGreaterThan(0);
        for (const s of syms) {
          expect(s.type, `${s.name} is code or a weak symbol`).toMatch(/^[DRB]$/);
          expect(s.name).toMatch(new RegExp(`^qf::\\w+_${isa}$`));
        }
      });
});

const addon = path.join(root, 'build', 'Release', 'quantform.node');
describe.skipIf(!hasNm || !existsSync(addon))('the addon exports only the Node-API entry points', () => {
  it(addon, () => {
    const out = execFileSync('nm', ['-D', '--defined-only', addon], { encoding: 'utf8' });
    const names = out.split('\n').filter(Boolean).map((l) => l.trim().split(/\s+/).pop());
    expect(names).toContain('napi_register_module_v1');
    for (const n of names) expect(['napi_register_module_v1', 'node_api_module_get_api_version_v1']).toContain(n);
  });
});
