// Sums the vitest JSON reports (and the one-check steps: sanitizer reports, libFuzzer,
// the tarball smoke result) of one CI run into
// the closing line CI reads: "N passed, N failed, N skipped".
const fs = require('fs');
const path = require('path');
const dir = process.argv[2];
let passed = 0, failed = 0, skipped = 0;
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.json'))) {
  const r = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
  if (r.smoke) {
    r.smoke === 'passed' ? passed++ : failed++;
    continue;
  }
  // a CI step that is one check (sanitizer reports, the libFuzzer run): { step, passed }
  if (r.step) {
    r.passed === true ? passed++ : failed++;
    continue;
  }
  passed += r.numPassedTests;
  failed += r.numFailedTests + (r.numRuntimeErrorTestSuites ?? 0) + (r.success === false && r.numFailedTests === 0 ? 1 : 0);
  skipped += r.numPendingTests + r.numTodoTests;
}
for (const want of ['main.json', 'gyp.json', 'asan.json', 'sanitizer-reports.json', 'libfuzzer.json', 'smoke.json'])
  if (!fs.existsSync(path.join(dir, want))) { console.log(`missing report ${want}`); failed++; }
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exitCode = failed > 0 ? 1 : 0;
