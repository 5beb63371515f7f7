// The one safetensors writer and the atomic helpers: tensors written in any order
// land at their planned offsets and read back through the one reader (lazily, by
// name, metadata included); shards follow Hugging Face's rule (a new shard when
// the next tensor would overflow, an oversized tensor alone); wrong sizes and
// missing tensors are errors that leave nothing; temp files and directories
// vanish on abort and on process exit.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AtomicDir, AtomicFile, writeFileAtomic } from '../lib/io/atomic.js';
import { SafetensorsCheckpointFiles, SafetensorsWriter, readSafetensors, readSafetensorsMetadata } from '../lib/io/safetensors.js';
import { readInt32, readRaw, readTensor } from '../lib/io/tensors.js';
import { packageRoot } from '../lib/native.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qf-st-io-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const fresh = () => mkdtempSync(path.join(tmp, 'd-'));

describe('SafetensorsWriter', () => {
  it('writes out of order, shards by size, and reads back by name with metadata', () => {
    const dir = fresh();
    const specs = [
      { name: 'a', dtype: 'F32' as const, shape: [10, 10] },   // 400 B
      { name: 'b', dtype: 'I32' as const, shape: [50] },       // 200 B
      { name: 'big', dtype: 'BF16' as const, shape: [600] },   // 1200 B: over the limit, a shard of its own
      { name: 'c', dtype: 'F16' as const, shape: [3, 7] },     // 42 B
    ];
    const w = new SafetensorsWriter(dir, specs, { maxShardBytes: 700, metadata: { format: 'pt', note: 'x' } });
    expect(w.files).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    const a = Float32Array.from({ length: 100 }, (_, i) => i / 3);
    const b = Int32Array.from({ length: 50 }, (_, i) => -i * 1000);
    const big = Uint16Array.from({ length: 600 }, (_, i) => 0x3f80 + i);
    const c = Uint16Array.from({ length: 21 }, (_, i) => 0x3c00 + i);
    w.write('c', c);
    w.write('a', a);
    expect(() => w.write('a', a)).toThrow(/Tensor a was already written/);
    expect(() => w.write('b', new Int32Array(49))).toThrow(/Tensor b: I32 \[50\] needs 200 bytes but received 196/);
    expect(() => w.write('zz', a)).toThrow(/for name but received 'zz'/);
    w.write('big', big);
    w.write('b', b);
    expect(readdirSync(dir).filter((f) => !f.endsWith('.tmp'))).toEqual([]);  // nothing under a final name before finish
    w.finish();
    expect(readdirSync(dir).sort()).toEqual([...w.files, 'model.safetensors.index.json'].sort());
    const index = JSON.parse(readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(index.weight_map).toEqual({ a: w.files[0], b: w.files[0], big: w.files[1], c: w.files[2] });
    expect(index.metadata.total_size).toBe(400 + 200 + 1200 + 42);
    const st = SafetensorsCheckpointFiles.dir(dir);
    expect(st.metadata).toEqual({ format: 'pt', note: 'x' });
    expect([...readTensor(st.get('a')!)]).toEqual([...a]);
    expect([...readInt32(st.get('b')!)]).toEqual([...b]);
    expect(readTensor(st.get('big')!)[1]).toBe(new Float32Array(new Uint32Array([(0x3f80 + 1) << 16]).buffer)[0]);
    expect(Buffer.from(readRaw(st.get('c')!)).equals(Buffer.from(c.buffer))).toBe(true);
    expect(st.get('a')!.offset % 8).toBe(0);  // data starts 8-byte aligned after the header
    st.close();
    expect(readSafetensorsMetadata(path.join(dir, w.files[0]))).toEqual({ format: 'pt', note: 'x' });
    expect(readSafetensors(path.join(dir, w.files[2])).get('c')!.dtype).toBe('F16');
  });

  it('one file when everything fits; a missing tensor at finish is an error that leaves nothing', () => {
    const dir = fresh();
    const w = new SafetensorsWriter(dir, [{ name: 'x', dtype: 'F32', shape: [4] }, { name: 'y', dtype: 'F32', shape: [2] }]);
    expect(w.files).toEqual(['model.safetensors']);
    w.write('x', new Float32Array(4));
    expect(() => w.finish()).toThrow(/1 tensor\(s\) never written \(first: y\)/);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('atomic files and directories', () => {
  it('AtomicFile: positional writes under a temp name, renamed by commit, gone after abort', () => {
    const dir = fresh();
    const f = new AtomicFile(path.join(dir, 'out.bin'));
    f.write(Buffer.from('world'), 6);
    f.write(Buffer.from('hello '), 0);
    expect(existsSync(path.join(dir, 'out.bin'))).toBe(false);
    f.commit();
    expect(readFileSync(path.join(dir, 'out.bin'), 'utf8')).toBe('hello world');
    const g = new AtomicFile(path.join(dir, 'never.bin'));
    g.write(Buffer.from('x'));
    g.abort();
    expect(readdirSync(dir)).toEqual(['out.bin']);
    writeFileAtomic(path.join(dir, 'out.bin'), 'replaced');
    expect(readFileSync(path.join(dir, 'out.bin'), 'utf8')).toBe('replaced');
  });

  it('AtomicDir refuses an existing destination and appears only on commit', () => {
    const dir = fresh();
    writeFileSync(path.join(dir, 'taken'), '');
    expect(() => new AtomicDir(path.join(dir, 'taken'))).toThrow(/already exists/);
    const d = new AtomicDir(path.join(dir, 'model'));
    writeFileSync(d.file('a.txt'), 'a');
    expect(existsSync(path.join(dir, 'model'))).toBe(false);
    d.commit();
    expect(readFileSync(path.join(dir, 'model', 'a.txt'), 'utf8')).toBe('a');
  });

  it("a killed run's temps are removed by the next writer of the same path, also when its pid is now this process's (containers); a live temp of this process is not", () => {
    const dir = fresh();
    const dead = path.join(dir, '.model.2147483646.0badcafe.tmp'), reused = path.join(dir, `.model.${process.pid}.deadbeef.tmp`);
    mkdirSync(dead);
    mkdirSync(reused);
    writeFileSync(path.join(dir, `.x.bin.${process.pid}.feedf00d.tmp`), 'half');
    const a = new AtomicDir(path.join(dir, 'model'));
    expect(existsSync(dead) || existsSync(reused)).toBe(false);
    // a second writer of the same destination in this process (by a relative path) leaves the first one's temp alone
    const b = new AtomicDir(path.relative(process.cwd(), path.join(dir, 'model')));
    expect(existsSync(a.path) && existsSync(b.path)).toBe(true);
    b.abort();
    a.abort();
    const f = new AtomicFile(path.join(dir, 'x.bin'));
    f.abort();
    expect(readdirSync(dir)).toEqual([]);
  });

  const dist = path.join(packageRoot(), 'dist', 'index.js');
  it.skipIf(!existsSync(dist))('temp files and directories still open when the process exits are removed', () => {
    const dir = fresh();
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
      const q = await import(${JSON.stringify(dist)});
      const d = new q.AtomicDir(${JSON.stringify(path.join(dir, 'model'))});
      const f = new q.AtomicFile(${JSON.stringify(path.join(dir, 'x.bin'))});
      f.write(Buffer.from('half'));
      process.exit(3);`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(3);
    expect(readdirSync(dir)).toEqual([]);
  });
});
