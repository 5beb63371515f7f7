// Source lists for both build systems: CMake (cmake/QuantformSources.cmake runs
// this) and node-gyp (binding.gyp expands `node cmake/sources.cjs <set>`).
// Adding a .cpp to one of these folders adds it to both builds.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const sets = {
  common: 'native/common',
  ref: 'native/ref',
  cpu: 'native/cpu',
  avx2: 'native/cpu/avx2',
  avx512: 'native/cpu/avx512',
  avx512vnni: 'native/cpu/avx512vnni',
  avx512bf16: 'native/cpu/avx512bf16',
  addon: 'native/addon',
  cuda: 'native/cuda',
};

function list(set) {
  const dir = sets[set];
  if (!dir) throw new Error(`unknown source set '${set}' (known: ${Object.keys(sets).join(', ')})`);
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  const ext = set === 'cuda' ? /\.(cu|cpp)$/ : /\.cpp$/;
  return fs.readdirSync(abs).filter((f) => ext.test(f)).sort().map((f) => `${dir}/${f}`);
}

if (require.main === module) {
  const out = list(process.argv[2]);
  // CMake wants a ;-list, gyp wants one path per line
  process.stdout.write(process.argv[3] === '--cmake' ? out.join(';') : out.join('\n'));
}
module.exports = { list, sets };
