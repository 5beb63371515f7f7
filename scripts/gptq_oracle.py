#!/usr/bin/env python3
"""Independent GPTQ oracle for test/gptq-oracle.test.ts.

Written from the published algorithm (Frantar et al. 2022, Algorithm 1, and the
description of IST-DASLab/gptq's fasterquant), not from quantform's code, in
float64 with numpy's LAPACK Cholesky. Only the quantizer follows quantform's
definition bit for bit (formats.h: asymmetric range [min(w, 0), max(w, 0)] over
2^b - 1 steps, symmetric scale max|w| / (2^(b-1) - 1) with zero 2^(b-1), the scale
rounded to f16 before codes are chosen, f32 arithmetic, round half to even).

  'updated'      the column loop without lazy batching: every group's parameters
                 are chosen from the fully updated weights (what lazy batching
                 computes in exact arithmetic).
  'batch-start'  the reference's batching: blocks of 128 columns, in-block updates
                 in a copy W1, group parameters read from W (the block-start values).

Inputs are generated with the same xorshift32 and the same f32 operations as
test/helpers/gptq-data.ts, so both sides see identical layers.

Usage: /work/venv/bin/python scripts/gptq_oracle.py > test/fixtures/gptq-oracle.json
"""
import json
import sys

import numpy as np

f32 = np.float32


def xorshift(seed):
    x = (seed & 0xFFFFFFFF) or 1

    def nxt():
        nonlocal x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        return x / 4294967296.0

    return nxt


def inputs(T, K, seed, dead):
    u = xorshift(seed)
    X = np.zeros((T, K), dtype=np.float32)
    for t in range(T):
        common = f32(u() - 0.5)
        for k in range(K):
            v = f32(u() - 0.5)
            v = f32(v + f32(common * f32((k % 5) * 0.25)))
            if k % 13 == 5:
                v = f32(v * f32(6))
            X[t, k] = 0 if k == dead else v
    return X


def weights(N, K, seed):
    # oracle.ts randomWeights: (8 or 1) * (u - 0.5) * 0.2 in double, stored as f32
    u = xorshift(seed)
    out = np.zeros(N * K, dtype=np.float32)
    for i in range(N * K):
        v = u() - 0.5
        out[i] = (8 if i % 97 == 3 else 1) * v * 0.2
    return out.reshape(N, K)


def f16(x):
    return f32(np.float16(f32(x)))


def group_params(v32, bits, sym):
    """scale, zero of a group's f32 values (quant_common.h choose_group_params)."""
    lo = min(f32(0), v32.min())
    hi = max(f32(0), v32.max())
    qmax = (1 << bits) - 1
    if sym:
        amax = max(-lo, hi)
        s = f16(f32(amax) / f32((1 << (bits - 1)) - 1))
        return s, f32(1 << (bits - 1))
    s = f16(f32(f32(hi) - f32(lo)) / f32(qmax))
    if s == 0:
        return s, f32(0)
    z = np.rint(f32(f32(-lo) / s))
    return s, f32(min(max(z, 0), qmax))


def quantize_col(w64, s, z, bits):
    """codes and dequantized values of one column (per-row s, z)."""
    w = w64.astype(np.float32)
    qmax = (1 << bits) - 1
    q = np.where(s == 0, z, np.clip(np.rint((w / np.where(s == 0, f32(1), s)).astype(np.float32)) + z, 0, qmax))
    q = q.astype(np.float32)
    dq = ((q - z).astype(np.float32) * s).astype(np.float32)
    return q.astype(np.uint8), dq.astype(np.float64)


def upper_inverse_factor(H32, damp):
    H = H32.astype(np.float64).copy()
    K = H.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    lam = f32(damp * np.mean(np.diag(H)))
    H[np.arange(K), np.arange(K)] += float(lam)
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    Hinv = Linv.T @ Linv
    return np.linalg.cholesky(Hinv).T, dead


def gptq(W32, H32, bits, gs, sym, mode, damp=0.01, block=128, act_order=False):
    N, K = W32.shape
    if act_order:
        # the reference (IST-DASLab gptq.py --act-order): dead inputs get H[c, c] = 1 first, then
        # columns by decreasing diagonal (ties: lower index first); codes return in column order
        assert gs >= K, 'act-order is per output channel here'
        d = np.diag(H32).astype(np.float64).copy()
        d[d == 0] = 1
        perm = np.array(sorted(range(K), key=lambda c: (-d[c], c)))
        codes, scales, zeros, loss = gptq(W32[:, perm], H32[perm][:, perm], bits, gs, sym, mode, damp, block)
        out = np.zeros_like(codes)
        out[:, perm] = codes
        return out, scales, zeros, loss
    U, dead = upper_inverse_factor(H32, damp)
    W = W32.astype(np.float64)
    W[:, dead] = 0
    G = (K + gs - 1) // gs
    codes = np.zeros((N, K), dtype=np.uint8)
    scales = np.zeros((N, G), dtype=np.float32)
    zeros = np.zeros((N, G), dtype=np.float32)
    loss = 0.0

    def choose(src, c):
        ce = min(c + gs, K)
        g = c // gs
        for r in range(N):
            scales[r, g], zeros[r, g] = group_params(src[r, c:ce].astype(np.float32), bits, sym)

    if mode == 'updated':
        for c in range(K):
            if c % gs == 0:
                choose(W, c)
            g = c // gs
            q, dq = quantize_col(W[:, c], scales[:, g], zeros[:, g], bits)
            codes[:, c] = q
            e = (W[:, c] - dq) / U[c, c]
            loss += float(np.sum(e * e) / 2)
            W[:, c + 1:] -= np.outer(e, U[c, c + 1:])
    else:
        for i1 in range(0, K, block):
            i2 = min(i1 + block, K)
            W1 = W[:, i1:i2].copy()
            E1 = np.zeros_like(W1)
            for i in range(i2 - i1):
                c = i1 + i
                if c % gs == 0:
                    choose(W, c)  # the reference reads W, not the block copy
                g = c // gs
                q, dq = quantize_col(W1[:, i], scales[:, g], zeros[:, g], bits)
                codes[:, c] = q
                e = (W1[:, i] - dq) / U[c, c]
                loss += float(np.sum(e * e) / 2)
                W1[:, i + 1:] -= np.outer(e, U[c, c + 1:i2])
                E1[:, i] = e
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return codes, scales, zeros, loss


def dequant(codes, scales, zeros, gs):
    K = codes.shape[1]
    g = np.arange(K) // gs
    return ((codes.astype(np.float32) - zeros[:, g]).astype(np.float32) * scales[:, g]).astype(np.float64)


CASES = [
    # name, N, K, T, seed, dead, bits, group, sym, mode
    ('W4 g32 asym, K 172 ragged, dead input 17', 16, 172, 512, 101, 17, 4, 32, False, 'updated'),
    ('W4 g32 asym, K 172, reference batch-start groups', 16, 172, 512, 101, 17, 4, 32, False, 'batch-start'),
    ('W3 g100 sym, K 300: groups cross lazy batches', 8, 300, 700, 202, -1, 3, 100, True, 'updated'),
    ('W2 per-channel asym, K 64', 12, 64, 256, 303, -1, 2, 64, False, 'updated'),
    ('W8 g48 asym, K 200, batch-start', 6, 200, 400, 404, 0, 8, 48, False, 'batch-start'),
    ('W4 per-channel sym, K 172, act-order, dead input 5', 16, 172, 512, 505, 5, 4, 172, True, 'updated', True),
    ('W3 per-channel asym, K 300, act-order across lazy batches', 8, 300, 700, 606, -1, 3, 300, False, 'updated', True),
]


def main():
    out = {'generator': 'scripts/gptq_oracle.py (float64 numpy, quantform quantizer); inputs: test/helpers/gptq-data.ts',
           'damp': 0.01, 'blockSize': 128, 'cases': []}
    for name, N, K, T, seed, dead, bits, gs, sym, mode, *rest in CASES:
        act_order = bool(rest and rest[0])
        X = inputs(T, K, seed, dead)
        W = weights(N, K, seed + 1)
        H = (2.0 / T) * (X.astype(np.float64).T @ X.astype(np.float64))
        H32 = H.astype(np.float32)
        codes, scales, zeros, loss = gptq(W, H32, bits, gs, sym, mode, act_order=act_order)
        E = W.astype(np.float64) - dequant(codes, scales, zeros if not sym else np.full_like(zeros, 1 << (bits - 1)), gs)
        obj = float(np.einsum('nk,kj,nj->', E, H32.astype(np.float64), E))
        out['cases'].append({
            'name': name, 'N': N, 'K': K, 'T': T, 'seed': seed, 'dead': dead, 'bits': bits, 'groupSize': gs,
            'symmetric': sym, 'paramsFrom': mode, **({'actOrder': True} if act_order else {}),
            'codes': codes.tobytes().hex(), 'scales': [float(v) for v in scales.ravel()],
            'zeros': None if sym else [float(v) for v in zeros.ravel()],
            'objective': obj, 'loss': loss,
        })
        print(f'{name}: objective {obj:.6g}, loss {loss:.6g}', file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
