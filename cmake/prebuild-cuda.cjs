// Turns the CUDA module cmake-js built (build/Release/quantform_cuda.node) into the
// prebuild npm users get: checks it before shipping it, then copies it stripped to
// prebuilds/<platform>-<arch>/cuda/ with a manifest of what it holds.
//   - the CUDA runtime must be linked statically (no libcudart.so in DT_NEEDED): the
//     user needs a driver, not a toolkit
//   - its fat binaries must hold cubins for sm_80 and sm_90 and PTX for compute_90
//     (cmake/QuantformCuda.cmake says why each), read from the .nv_fatbin headers
// The folder is cuda/ and not next to the CPU addon because node-gyp-build takes
// any *.node in prebuilds/<platform>-<arch>/ as a candidate for the CPU addon.
// Usage: node cmake/prebuild-cuda.cjs [path/to/quantform_cuda.node]   (QUANTFORM_PREBUILD_DIR overrides the output folder)
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const ROOT = path.resolve(__dirname, '..');
const src = path.resolve(process.argv[2] || path.join(ROOT, 'build', 'Release', 'quantform_cuda.node'));
const REQUIRED = ['sm_80', 'sm_90', 'compute_90'];

function fail(msg) {
  console.error(`prebuild-cuda: ${msg}`);
  process.exit(1);
}

if (!fs.existsSync(src)) fail(`${src} does not exist: build it with \`npm run build:native\` on a machine with nvcc`);
const b = fs.readFileSync(src);
if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) fail(`${src} is not a 64-bit little-endian ELF file`);

/** Section headers of an ELF64 file: name, type, offset, size, link. */
function sections(buf) {
  const shoff = Number(buf.readBigUInt64LE(0x28)), shentsize = buf.readUInt16LE(0x3a), shnum = buf.readUInt16LE(0x3c), shstrndx = buf.readUInt16LE(0x3e);
  const raw = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * shentsize;
    raw.push({ nameOff: buf.readUInt32LE(o), type: buf.readUInt32LE(o + 4), offset: Number(buf.readBigUInt64LE(o + 0x18)),
      size: Number(buf.readBigUInt64LE(o + 0x20)), link: buf.readUInt32LE(o + 0x28) });
  }
  const names = raw[shstrndx];
  const cstr = (s, off) => buf.toString('latin1', s.offset + off, buf.indexOf(0, s.offset + off));
  return raw.map((s) => ({ ...s, name: cstr(names, s.nameOff), cstr: (off) => cstr(s, off) }));
}

const secs = sections(b);
const dynamic = secs.find((s) => s.name === '.dynamic');
const needed = [];
if (dynamic) {
  const strtab = secs[dynamic.link];
  for (let o = dynamic.offset; o < dynamic.offset + dynamic.size; o += 16) {
    const tag = b.readBigInt64LE(o);
    if (tag === 0n) break;
    if (tag === 1n) needed.push(strtab.cstr(Number(b.readBigUInt64LE(o + 8))));  // DT_NEEDED
  }
}
if (needed.some((n) => /^libcudart\.so/.test(n))) fail(`${src} links the CUDA runtime dynamically (${needed.join(', ')}): build with CUDA_RUNTIME_LIBRARY Static`);

// .nv_fatbin: fatbin headers (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size), then
// entries (u16 kind 1 = PTX / 2 = cubin, u16, u32 header size, u64 padded size, ..., u32 sm at +28)
const fatbin = secs.find((s) => s.name === '.nv_fatbin');
if (!fatbin) fail(`${src} has no .nv_fatbin section (no device code)`);
const archs = new Set();
for (let i = fatbin.offset; i < fatbin.offset + fatbin.size - 16;) {
  if (b.readUInt32LE(i) !== 0xba55ed50) { i += 8; continue; }
  const hs = b.readUInt16LE(i + 6), size = Number(b.readBigUInt64LE(i + 8));
  for (let p = i + hs; p < i + hs + size;) {
    const kind = b.readUInt16LE(p), ehs = b.readUInt32LE(p + 4), padded = Number(b.readBigUInt64LE(p + 8)), sm = b.readUInt32LE(p + 28);
    archs.add(`${kind === 1 ? 'compute' : 'sm'}_${sm}`);
    p += ehs + padded;
  }
  i += hs + size;
}
const missing = REQUIRED.filter((a) => !archs.has(a));
if (missing.length) fail(`${src} lacks ${missing.join(', ')} (holds ${[...archs].join(', ')})`);

const destDir = process.env.QUANTFORM_PREBUILD_DIR ? path.resolve(process.env.QUANTFORM_PREBUILD_DIR) : path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'cuda');
fs.mkdirSync(destDir, { recursive: true });
const dest = path.join(destDir, 'quantform_cuda.node');
fs.copyFileSync(src, dest);
const strip = spawnSync('strip', ['--strip-unneeded', dest], { stdio: 'inherit' });
const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' });
const manifest = {
  file: 'quantform_cuda.node',
  architectures: [...archs].sort(),
  cudaRuntime: 'static',
  needed,
  nvcc: nvcc.status === 0 ? nvcc.stdout.trim().split('\n').pop() : 'unknown',
  stripped: strip.status === 0,
  bytes: fs.statSync(dest).size,
  note: 'compiled by CI without a GPU; not yet run on a GPU',
};
fs.writeFileSync(path.join(destDir, 'quantform_cuda.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log(`prebuild-cuda: ${path.relative(ROOT, dest)} (${(manifest.bytes / 1e6).toFixed(2)} MB, ${manifest.architectures.join(' ')}, needs ${needed.join(' ')})`);
