// Preloaded into a `quantform quantize` child by test/kill-resume.test.ts
// (node --require): QF_KILL_AT=<event>:<n> makes the process SIGKILL itself at the
// n-th such event, inside the product's own file writes, where a kill from outside
// lands only by luck:
//   checkpoint-write:n   halfway through writing the n-th checkpoint's temp file
//   checkpoint-rename:n  the n-th checkpoint fully written, not yet renamed into place
//   output-write:1       halfway through the output's model.safetensors
//   output-rename:1      the output directory complete, not yet renamed to --out
//   checkpoint-remove:1  the output in place, the checkpoint not yet deleted
'use strict';
const fs = require('fs');
const path = require('path');
const [event, nthText] = (process.env.QF_KILL_AT || '').split(':');
const nth = Number(nthText || 1);
const die = () => process.kill(process.pid, 'SIGKILL');
// temp names of lib/io/atomic.ts: .<name>.<pid>.<8 hex>.tmp next to <name>; QF_KILL_OUT is --out
const out = process.env.QF_KILL_OUT || '';
const tempOf = (dir, name, p) => path.dirname(p) === dir && new RegExp(`^\\.${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.\\d+\\.[0-9a-f]{8}\\.tmp$`).test(path.basename(p));
const isCkptTmp = (p) => tempOf(path.dirname(out), `${path.basename(out)}.ckpt.safetensors`, p);
const isOutTmpDir = (p) => tempOf(path.dirname(out), path.basename(out), p);
const isOutModel = (p) => isOutTmpDir(path.dirname(p)) && tempOf(path.dirname(p), 'model.safetensors', p);

const files = new Map();  // fd -> { path, index of this kind of file }
const opened = { ckpt: 0, out: 0 };
const openSync = fs.openSync;
fs.openSync = function (p, ...rest) {
  const fd = openSync.call(this, p, ...rest);
  const s = String(p);
  if (isCkptTmp(s)) files.set(fd, { kind: 'ckpt', index: ++opened.ckpt });
  else if (isOutModel(s)) files.set(fd, { kind: 'out', index: ++opened.out });
  return fd;
};
const writeSync = fs.writeSync;
fs.writeSync = function (fd, buf, ...rest) {
  const f = files.get(fd);
  const bytes = buf && buf.byteLength;
  if (f && bytes > 64 && ((event === 'checkpoint-write' && f.kind === 'ckpt') || (event === 'output-write' && f.kind === 'out')) && f.index === nth) {
    writeSync.call(this, fd, new Uint8Array(buf.buffer, buf.byteOffset, Math.floor(bytes / 2)));
    die();
  }
  return writeSync.call(this, fd, buf, ...rest);
};
let renames = 0;
const renameSync = fs.renameSync;
fs.renameSync = function (a, b) {
  const s = String(a);
  if (event === 'checkpoint-rename' && isCkptTmp(s) && ++renames === nth) die();
  if (event === 'output-rename' && isOutTmpDir(s) && ++renames === nth) die();
  return renameSync.call(this, a, b);
};
const rmSync = fs.rmSync;
fs.rmSync = function (p, o) {
  if (event === 'checkpoint-remove' && /\.ckpt\.safetensors$/.test(String(p))) die();
  return rmSync.call(this, p, o);
};
require('module').syncBuiltinESMExports();
