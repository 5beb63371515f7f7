#!/usr/bin/env python3
"""Independent GPTQ packing oracle for test/gptq-pack.test.ts.

Re-implements in numpy, from the GPTQ tools' published logic (not quantform's):
  - the packing loop of AutoGPTQ / GPTQModel `pack()`: qweight (K*b/32, N) int32 from
    the transposed codes (K, N); for 2/4/8 bits 32/b codes per word, lowest bits
    first; for 3 bits 32 codes per 3 words in the 10 + 1 + 10 + 1 + 10 pattern, the
    11th and 22nd codes straddling words (2 + 1 bits and 1 + 2 bits); qzeros
    (G, N*b/32) the same along N; checkpoint_format 'gptq' (v1) stores z - 1;
  - their torch dequantization (`dequantize_weight`): right shifts by the `wf`
    table, the two straddling codes reassembled from neighbouring words, and the
    pieces concatenated ([word 0: codes 0-10], [word 1: 11-21], [word 2: 22-31]).
Unpack(pack(x)) == x is asserted here; the fixture holds codes, zeros and scales and
both packed forms, and the test checks quantform's packGptq against the packed words
and its decoders against the codes.

Usage: /work/venv/bin/python scripts/gptq_pack_oracle.py > test/fixtures/gptq-pack.json
"""
import json
import sys

import numpy as np

WF3 = np.array([[0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
                [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
                [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0]], dtype=np.int64)


def xorshift(seed):
    x = seed or 1

    def nxt():
        nonlocal x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        return x

    return nxt


def pack_rows(v, bits):
    """v (L, C) uint32 codes along L -> (L*bits/32, C) words, the GPTQ tools' loop."""
    v = v.astype(np.uint64)
    L, C = v.shape
    out = np.zeros((L // 32 * bits, C), dtype=np.uint64)
    i = row = 0
    while row < out.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                out[row] |= v[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:
            for j in range(i, i + 10):
                out[row] |= v[j] << (3 * (j - i))
            i += 10
            out[row] |= v[i] << 30
            row += 1
            out[row] |= (v[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                out[row] |= v[j] << (3 * (j - i) + 1)
            i += 10
            out[row] |= v[i] << 31
            row += 1
            out[row] |= (v[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                out[row] |= v[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return (out & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def unpack_rows(w, bits):
    """(L*bits/32, C) int32 words -> (L, C) codes, the torch dequantizer's shifts."""
    w = w.astype(np.int64)  # arithmetic shifts of int32 as torch does; masks drop the sign bits
    R, C = w.shape
    if bits in (2, 4, 8):
        wf = np.arange(0, 32, bits, dtype=np.int64)
        v = (w[:, None, :] >> wf[None, :, None]) & ((1 << bits) - 1)
        return v.reshape(-1, C)
    v = np.broadcast_to(w.reshape(R // 3, 3, 1, C), (R // 3, 3, 12, C)) >> WF3[None, :, :, None]
    v = v.copy()
    v[:, 0, 10] = (v[:, 0, 10] & 0x3) | ((v[:, 1, 0] << 2) & 0x4)
    v[:, 1, 11] = (v[:, 1, 11] & 0x1) | ((v[:, 2, 0] << 1) & 0x6)
    v = v & 0x7
    v = np.concatenate([v[:, 0, :11], v[:, 1, 1:12], v[:, 2, 1:11]], axis=1)  # (R/3, 32, C)
    return v.reshape(-1, C)


def case(bits, N, K, gs, seed):
    rnd = xorshift(seed)
    qmax = (1 << bits) - 1
    G = K // gs
    codes = np.array([rnd() % (qmax + 1) for _ in range(N * K)], dtype=np.uint32).reshape(N, K)
    zeros_v2 = np.array([rnd() % (qmax + 1) for _ in range(G * N)], dtype=np.uint32).reshape(G, N)
    zeros_v1 = np.array([1 + rnd() % qmax for _ in range(G * N)], dtype=np.uint32).reshape(G, N)  # v1 cannot hold z = 0
    scales = np.array([0x2000 + rnd() % 0x1c00 for _ in range(G * N)], dtype=np.uint16).reshape(G, N)  # positive halves
    qweight = pack_rows(codes.T.copy(), bits)
    qzeros_v2 = pack_rows(zeros_v2.T.copy(), bits).T.copy()
    qzeros_v1 = pack_rows((zeros_v1 - 1).T.copy(), bits).T.copy()
    assert (unpack_rows(qweight, bits) == codes.T).all()
    assert (unpack_rows(qzeros_v2.T.copy(), bits) == zeros_v2.T).all()
    assert (unpack_rows(qzeros_v1.T.copy(), bits) + 1 == zeros_v1.T).all()
    return {
        'bits': bits, 'N': N, 'K': K, 'groupSize': gs,
        'codes': codes.astype(np.uint8).tobytes().hex(),  # (N, K) one code per byte
        'zerosV2': zeros_v2.T.ravel().tolist(), 'zerosV1': zeros_v1.T.ravel().tolist(),  # (N, G)
        'scalesF16': scales.T.ravel().tolist(),  # (N, G) f16 bits
        'qweight': qweight.ravel().tolist(), 'qweightShape': list(qweight.shape),
        'qzerosV2': qzeros_v2.ravel().tolist(), 'qzerosV1': qzeros_v1.ravel().tolist(), 'qzerosShape': list(qzeros_v2.shape),
    }


def main():
    cases = [case(3, 64, 96, 32, 7), case(3, 32, 128, 64, 8), case(2, 64, 64, 32, 9), case(4, 32, 64, 16, 10)]
    json.dump({'generator': 'scripts/gptq_pack_oracle.py (AutoGPTQ/GPTQModel pack and torch unpack logic in numpy)',
               'cases': cases}, sys.stdout)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
